//! `bakeoff-report`: the comparison report, computed from results files alone (bench, eval,
//! answers, compare manifest, quantize measurements), rendered as Markdown and as a
//! self-contained HTML page from one document model, with SVG charts; and the run history in
//! SQLite. Pure functions from records to documents: nothing here runs a model.

pub mod charts;
pub mod doc;
pub mod error;
pub mod history;
pub mod inputs;
pub mod published;
pub mod report;
pub mod rules;

pub use error::{ReportError, Result};
pub use inputs::Inputs;
pub use report::{Rendered, render, write};
