//! One typed record per fact, shared by every stage (engine, bench, eval, serve, quantize,
//! report). This crate has no heavy dependencies, so the report reads what the engine writes
//! without linking the engine.

mod generation;
pub mod stream;

pub use generation::{FinishReason, Timings, Usage, decode_rate};
