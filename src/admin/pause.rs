//! `PAUSE [shard]` / `RESUME [shard]`: new transactions of paused shards wait (at the moment they
//! would take a server connection) until resumed; transactions already running finish.

use std::collections::BTreeSet;

/// Which shards hold new transactions now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paused {
    /// Every shard.
    pub all: bool,
    /// These shards (by name).
    pub shards: BTreeSet<String>,
}

impl Paused {
    pub fn any(&self) -> bool {
        self.all || !self.shards.is_empty()
    }

    /// Whether a new transaction on `shard` waits.
    pub fn holds(&self, shard: &str) -> bool {
        self.all || self.shards.contains(shard)
    }

    /// What `SHOW SHARDS` says.
    pub fn describe(&self, shard: &str) -> &'static str {
        if self.holds(shard) {
            "paused"
        } else {
            "running"
        }
    }
}
