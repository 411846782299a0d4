//! One typed record per fact, shared by every stage (engine, bench, eval, serve, quantize,
//! report). This crate has no heavy dependencies, so the report reads what the engine, bench
//! and eval write without linking them.
//!
//! - [`generation`]: how one answer ended (finish reason, usage, timings, the decode-rate formula).
//! - [`model`]: which model a record is about ([`ModelIdentity`]).
//! - [`header`]: the kind and schema version every results file starts with, and the one
//!   function that recognises a results file ([`ResultsFile::parse`]).
//! - [`bench`](mod@bench), [`eval`], [`compare`], [`quantize`], [`routing`]: each results file's schema,
//!   declared once.
//! - [`stats`] (estimates with 95% intervals), [`paired`] (paired tests, the 1-10 scale),
//!   [`hash`] (SHA-256 as hex), [`nan`] (NaN-as-null readers), [`time`] (UTC dates).
//! - [`fsio`]: atomic file writes (temporary, fsync, rename) for every file bakeoff writes.
//! - [`redact`]: URLs without their credentials, for messages and results files.
//! - [`stream`]: the OpenAI streaming format as a client reads it (bench's and serve's remotes).

pub mod bench;
pub mod compare;
pub mod eval;
pub mod fsio;
pub mod generation;
pub mod hash;
pub mod header;
pub mod model;
pub mod nan;
pub mod paired;
pub mod quantize;
pub mod redact;
pub mod routing;
pub mod stats;
pub mod stream;
pub mod time;

pub use generation::{FinishReason, Timings, Usage, decode_rate};
pub use header::{ResultsFile, ResultsHeader, ResultsKind};
pub use model::{EngineKind, FileDigest, ModelIdentity};
