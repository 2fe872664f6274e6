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
//! The classifier (`router::classify`) stores one plan per data statement of a text in its
//! `Plan`; the session resolves them with [`shards_of`] for each execution.
//!
//! Files: `find.rs` (the walk over the parse tree), `literals.rs` (literal positions and
//! `rebind`), `resolve.rs` (keys to shards, refusals), `explain.rs` (the decision in words).

mod copy;
mod explain;
mod find;
mod literals;
mod resolve;
mod split;

pub use copy::{CopyIn, Line, RowSplitter, copy_in};
pub use explain::explain;
pub use find::{plan, plan_statement};
pub use literals::{literals, rebind};
pub use resolve::{
    MAX_SHARDS, RouteError, ShardSet, Shards, key_shards, needs_literals, shards_of,
};
pub use split::{split_insert, split_insert_params, values_rows};

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
    /// An INSERT into a sharded table whose rows' keys cannot be read (no key column in the column
    /// list, or INSERT ... SELECT): refused rather than written to every shard.
    pub keyless_insert: bool,
    /// An unparsed text that seems to read or change rows of this sharded table: refused, since
    /// its shard cannot be told (a shard hint routes it).
    pub unparsed_table: Option<String>,
    /// The keys are those of an INSERT's VALUES rows, one per row: rows for several shards must
    /// be split, not sent whole to each.
    pub insert_rows: bool,
    /// A read of replicated tables only (`[[tables]] replicated = true`): any shard answers it,
    /// so reads are spread over the shards.
    pub replicated_only: bool,
}

impl ShardPlan {
    /// A plan touching no sharded table.
    pub fn unsharded(write: bool) -> ShardPlan {
        ShardPlan {
            scope: ShardScope::Unsharded,
            write,
            moves_key: false,
            cross_shard_join: false,
            keyless_insert: false,
            unparsed_table: None,
            insert_rows: false,
            replicated_only: false,
        }
    }
}

#[cfg(test)]
mod tests;
