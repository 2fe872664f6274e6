//! Merging the answers of several shards to one SELECT into the answer one database holding all
//! the rows would give.
//!
//! - [`plan`]: from the SQL text, what the merge must do (sort keys, LIMIT/OFFSET, aggregates,
//!   HAVING, DISTINCT) and the statement each shard runs instead; or a refusal naming the
//!   construct that cannot be merged exactly.
//! - [`rows`]: the merge itself, on DataRow bytes: k-way by sort keys (streaming), or grouped
//!   (aggregates, DISTINCT), then HAVING, order, OFFSET and LIMIT.
//! - [`value`], [`numeric`]: decoding and comparing the values the merge needs (sort keys, group
//!   keys, aggregate partials) by type OID and format; nothing else is decoded. [`encode`]: the
//!   computed aggregates in the client's format, as Postgres prints or sends them.
//! - `nested`: shapes inside a query that refuse a merge (window functions, subqueries over
//!   sharded tables that aggregate or cut).

pub mod encode;
mod nested;
pub mod numeric;
pub mod plan;
pub mod rows;
pub mod value;

pub use plan::{Merge, MergePlan, MergeRefusal, merge_plan};

/// A text's merge plan, or why it cannot be merged.
pub type MergeResult = Result<Merge, MergeRefusal>;
