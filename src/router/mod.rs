//! Read/write routing: which SQL texts may run on a streaming replica.
//!
//! Everything here is pure (no sockets, no async) and works on plain SQL text:
//!
//! - [`mod@classify`]: one text → a [`Plan`]: replica-safe or not, may it write, transaction control,
//!   hint, local command.
//! - [`hint`]: `/* shardgate: primary|replica */` as the leading comment.
//! - [`local`]: `SET/RESET/SHOW shardgate.*`, answered by the proxy itself.
//! - [`shard`]: which shards a statement touches (keys, hints, refusals, INSERT/COPY splitting).
//! - [`normalize`]: the cache key, shared by texts that differ only in literal values.
//! - [`cache`]: a bounded per-thread [`RouteCache`] of plans by cache key.

pub mod cache;
pub mod classify;
pub mod hint;
mod lex;
pub mod local;
pub mod normalize;
pub mod shard;

pub use cache::RouteCache;
pub use classify::{ClassifyOptions, Plan, TxControl, classify};
pub use hint::{Hint, ShardHint};
