//! `shard-map.toml` → a validated [`Config`].
//!
//! Owns: the file format (serde structs), loading through the `config` crate (so any scalar key can be
//! overridden by a `SHARDGATE_<SECTION>__<KEY>` environment variable), and validation that names the key
//! and the problem. It never opens sockets and never talks to a server.

mod load;
mod types;

pub(crate) use load::resolve;
pub use load::{HASH_SPACE_END, load, load_str, locate};
pub use types::*;

use thiserror::Error;

/// Everything that can be wrong with a shard map. Each variant names the key (`proxy.pool_size`,
/// `shards[1].primary`, ...) so the operator can go straight to the line.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
}

impl ConfigError {
    /// The message with the line of the map text the error is about, when it can be told.
    pub fn located(&self, text: &str) -> String {
        match self {
            ConfigError::Invalid { key, .. } => match locate(text, key) {
                Some(line) => format!("line {line}: {self}"),
                None => self.to_string(),
            },
            _ => self.to_string(),
        }
    }

    /// The key the error is about, if it names one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }

    pub(crate) fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }
}
