//! One error type for every kernel; `py.rs` maps each variant to the most specific Python builtin.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model file is not where the manifest says it is.
    #[error("file not found: {path}")]
    FileNotFound { path: PathBuf },

    /// A file exists but cannot be read or parsed.
    #[error("cannot load {path}: {reason}")]
    CorruptFile { path: PathBuf, reason: String },

    /// Arrays or arguments that break the kernel's contract (shape, range, unknown name).
    #[error("{0}")]
    InvalidArgument(String),

    /// A pooled row holds NaN or infinity: the model's hidden states are not finite there.
    #[error("the model's hidden states for row {row} are not finite (NaN or infinity)")]
    NonFinite { row: usize },

    /// A rerank query is too long for the model with its prompt; queries are never cut, so the
    /// pair cannot be scored. `pair` counts from the caller's first pair.
    #[error(
        "query of pair {pair} has {tokens} tokens; with the prompt it must stay under the max \
         length {max_length} (queries are never cut)"
    )]
    QueryTooLong {
        pair: usize,
        tokens: usize,
        max_length: usize,
    },

    /// The tokenizer failed on an input text.
    #[error("tokenization failed for text {index}: {reason}")]
    Tokenize { index: usize, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;
