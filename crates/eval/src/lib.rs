//! # bakeoff-eval
//!
//! Quality scores for local chat models that anyone can reproduce: public benchmarks read in
//! their upstream formats ([`data`]), items chosen by a frozen hash rule ([`select`]),
//! log-likelihood multiple choice, generative exact match, IFEval's checkers ([`ifeval`]),
//! sandboxed code execution ([`sandbox`], [`code`]), perplexity and generation hygiene; each
//! component with n, a 95% Wilson interval and the 1-10 mapping ([`bakeoff_record::paired`], [`score`]); paired
//! tests between models; an optional judge ([`judge`]); and a JSONL audit trail ([`audit`]).
//! See docs/eval.md.

pub mod audit;
pub mod candidate;
pub mod code;
pub mod data;
pub mod error;
pub mod gsm8k;
pub mod hygiene;
pub mod ifeval;
pub mod journal;
pub mod judge;
pub mod report;
pub mod sandbox;
pub mod score;
pub mod select;
pub mod suite;

pub use error::{Error, Result};
