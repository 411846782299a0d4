//! # bakeoff-engine
//!
//! Files to a running generator. A model source (Hugging Face folder, GGUF file or hub id) is
//! probed and loaded into a [`generate::LoadedModel`]: one decoder implementation per architecture
//! (`models/llama.rs`, `models/qwen2.rs`) over a compute [`backend`], plus its tokenizer, chat
//! template and stop ids. [`generate`] turns a prompt into a stream of events whose final `Done`
//! carries the timings that the CLI, bench, eval and server all report.
//!
//! The CPU hot path (quantized and 16-bit matrix-vector kernels, attention, norms) is bakeoff's
//! own, in [`kernels`]; candle provides the file formats and the CUDA/Metal backend.

pub mod backend;
pub mod constrain;
pub mod detok;
pub mod dtype;
pub mod error;
pub mod generate;
pub mod kernels;
pub mod loader;
pub mod memory;
pub mod model;
pub mod models;
pub mod prompt;
pub mod sampling;
pub mod template;
pub mod tokenizer;
pub mod tools;

pub use dtype::WeightType;
pub use error::{Error, Result};
