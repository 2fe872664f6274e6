//! Merging the answers of several shards to one SELECT into the answer one database holding all
//! the rows would give.
//!
//! - [`plan`]: from the SQL text, what the merge must do (sort keys, LIMIT/OFFSET, aggregates,
//!   HAVING, DISTINCT) and the statement each shard runs instead; or a refusal naming the
//!   construct that cannot be merged exactly.

pub mod plan;

pub use plan::{Merge, MergePlan, MergeRefusal, merge_plan};
