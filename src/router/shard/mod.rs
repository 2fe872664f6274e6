//! Which shards a statement touches: the shard key values it names, found on the parse tree.
//!
//! Pure: SQL text and the `[[tables]]` list in, a [`ShardPlan`] out; [`resolve`] turns its key
//! values (literals, or `$n` parameters supplied at Bind) into shards through the hash contract
//! (`crate::hash`). What is found:
//!
//! - `key = literal | $n` (either side, casts on the value allowed), `key IN (...)`, anywhere in a
//!   chain of ANDs in WHERE (an OR narrows only when both sides do), for SELECT, UPDATE, DELETE;
//! - INSERT with the key column in its column list: one key per VALUES row, in order;
//! - joins of sharded tables: routed by the key found for any of them; the join must equate their
//!   shard keys (co-located), otherwise the plan says so (`cross_shard_join`);
//! - an UPDATE that assigns the shard key (`moves_key`), which the proxy refuses;
//! - statements on tables not in `[[tables]]` only (`Unsharded`): reads go to one shard, writes and
//!   DDL to every shard.
//!
//! Plans never depend on literal values except through [`KeyValue::Literal`]'s `index`, so a plan
//! can be cached under the route cache's literal-blind key and [`rebind`] to each text of that
//! shape (one lexer pass) instead of parsing it again.
//!
//! Not yet wired into the session loop (issue 4 continues); `shardgate route` prints plans.
//!
//! Files: `find.rs` (the walk over the parse tree), `literals.rs` (literal positions and
//! `rebind`), `explain.rs` (keys to shards, and the decision in words).

mod explain;
mod find;
mod literals;

pub use explain::{Shards, explain, resolve};
pub use find::plan;
pub use literals::{literals, rebind};

/// Where a shard key value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyValue {
    /// A literal in the text (`42`, `'alice'`, `-3`): its value, and which literal of the text it
    /// is (`index`, counting numbers and strings from the start), so a plan cached for one text
    /// can take the value from another text of the same shape ([`rebind`]).
    Literal {
        text: String,
        index: usize,
        negative: bool,
    },
    /// The n-th Bind parameter (1-based).
    Param(usize),
}

impl KeyValue {
    /// The value as text (a literal) or `$n`.
    pub fn describe(&self) -> String {
        match self {
            KeyValue::Literal { text, negative, .. } => {
                format!("{}{text}", if *negative { "-" } else { "" })
            }
            KeyValue::Param(n) => format!("${n}"),
        }
    }
}

/// The rows a statement touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardScope {
    /// Rows of the sharded table `table` with these keys (for an INSERT, one key per row).
    Keys { table: String, keys: Vec<KeyValue> },
    /// A sharded table without a usable key: every shard.
    AllShards { table: String },
    /// Only tables not in `[[tables]]` (or none): a read goes to one shard, anything else to all.
    Unsharded,
    /// The text could not be parsed.
    Unparsed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlan {
    pub scope: ShardScope,
    /// INSERT, UPDATE, DELETE, DDL or anything else that is not a plain query.
    pub write: bool,
    /// An UPDATE assigns the shard key: the row could have to move to another shard.
    pub moves_key: bool,
    /// Two sharded tables are joined without equating their shard keys.
    pub cross_shard_join: bool,
}

#[cfg(test)]
mod tests;
