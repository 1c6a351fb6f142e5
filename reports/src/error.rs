//! The one error type: every variant names the file it is about and why.

use std::path::PathBuf;

/// Why a report could not be made. The message starts with the file.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file could not be read, written or listed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file was read but its content is not what a run directory holds
    /// (bad JSON, a missing field, an undecodable histogram).
    #[error("{}: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },
    /// A plot could not be drawn or encoded.
    #[error("{}: cannot draw: {reason}", path.display())]
    Plot { path: PathBuf, reason: String },
}

impl ReportError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ReportError::Io { path: path.into(), source }
    }

    pub(crate) fn malformed(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        ReportError::Malformed { path: path.into(), reason: reason.into() }
    }
}
