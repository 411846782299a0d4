//! # bakeoff-bench
//!
//! `bakeoff bench`: speed, latency and memory of local and remote chat models, measured the
//! same way every time. The parent ([`runner::run`]) expands the command line ([`job::BenchConfig`])
//! into one [`job::Job`] per model and sweep point and runs each in its own child process
//! ([`worker`]), one after the other. A worker loads the model, warms up, and times fixed prompt
//! sets ([`scenarios`]) and context depths with greedy decoding and EOS ignored, keeping every
//! token's timestamp. `bakeoff_record::bench` holds the versioned results file and turns the raw
//! samples into rates, latencies and 95% intervals; [`output`] renders it as tables,
//! JSON, JSONL, CSV or Markdown. [`remote`] measures OpenAI-compatible servers from their stream.
//!
//! The method (what is timed, warm-up, isolation, noise, overhead) is in `docs/bench.md`.

pub mod env;
pub mod error;
pub mod job;
pub mod journal;
pub mod membw;
pub mod output;
pub mod remote;
pub mod runner;
pub mod scenarios;
pub mod worker;

pub use error::{BenchError, Result};
