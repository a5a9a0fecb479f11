//! slimembed's native core: batch tokenization and pooling kernels.
//!
//! The kernels (`tokenize`, `pooling`) never see a PyO3 type, so `cargo test` runs without Python;
//! `py.rs`, behind the `python` feature, is the only place that does.

pub mod cpu;
pub mod error;
pub mod pieces;
pub mod pooling;
pub mod static_embed;
pub mod tokenize;

#[cfg(feature = "python")]
mod py;

pub use error::{Error, Result};
