//! # bakeoff-serve
//!
//! An OpenAI-compatible HTTP server in front of bakeoff's engine, with a tiered router.
//!
//! ```text
//! HTTP request -> routes (auth, body limit, parse + validate: openai)
//!   -> router (policy: complexity | cascade | fixed; tier or model by name; fallback)
//!   -> replica: engine::LocalModel (own thread, bounded queue, continuous batching)
//!             | remote::RemoteModel (OpenAI-compatible upstream)
//!   -> events (token, done, error) -> JSON body or server-sent events
//! ```
//!
//! Errors map to status codes in [`error`] only. Metrics are Prometheus text at `/metrics`.

pub mod backend;
pub mod calibrate;
pub mod cascade;
pub mod complexity;
pub mod config;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod openai;
pub mod remote;
pub mod router;
pub mod routes;
pub mod server;

pub use config::{ConfigFile, ModelEntry, ServeSettings};
pub use error::{ApiError, ErrorKind};
pub use routes::{AppState, HttpSettings, app};
pub use server::{ServeError, Stopped, build_state, run_blocking};
