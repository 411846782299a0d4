//! The report's sections, one file each, in the order [`super::render`] writes them.

mod appendix;
mod chat;
mod cost;
mod environment;
mod executive;
mod hardware;
mod intro;
mod methodology;
mod overview;
mod performance;
mod quality;
mod quantization;
mod recommendations;
mod resources;
mod routing;

pub(crate) use appendix::*;
pub(crate) use chat::*;
pub(crate) use cost::*;
pub(crate) use environment::*;
pub(crate) use executive::*;
pub(crate) use hardware::*;
pub(crate) use intro::*;
pub(crate) use methodology::*;
pub(crate) use overview::*;
pub(crate) use performance::*;
pub(crate) use quality::*;
pub(crate) use quantization::*;
pub(crate) use recommendations::*;
pub(crate) use resources::*;
pub(crate) use routing::*;
