pub mod bench;
pub mod demo;
pub mod eval;
pub mod generate;
pub mod info;
pub mod synth;
pub mod tokenize;
