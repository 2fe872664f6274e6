//! shardgate: a PostgreSQL proxy that pools connections and (in later steps) splits reads from writes and
//! shards by key, behind one Postgres endpoint.
//!
//! The path of a client's bytes:
//!
//! ```text
//! frontend::listener (accept, hand to a worker)
//!   → frontend::startup (pgwire: SSLRequest refusal, startup packet, SCRAM/md5 auth; ParameterStatus
//!                        and BackendKeyData from a real server)
//!   → frontend::session (one task owns the client socket and, while it holds one, a server connection;
//!                        frames are forwarded as the bytes that arrived)
//!       → pool (per-worker deadpool pools of backend::BackendConn, one per server)
//!       ← backend frames forwarded; ReadyForQuery 'I' with nothing owed → connection back to the pool
//! ```
//!
//! Module map:
//! - [`config`]: `shard-map.toml` → validated [`config::Config`].
//! - [`protocol`]: frame headers, tags, the few fields the proxy reads, the few messages it writes.
//! - [`frontend`]: listener and workers, startup and auth, the session loop, prepared-statement renaming.
//! - [`backend`]: one server connection: connect, login, internal queries, cancel.
//! - [`pool`]: per-server connection pools.
//! - [`session_state`]: session settings that follow a client across pooled connections.
//! - [`cancel`]: CancelRequest routing.
//! - [`errors`]: every error a client can get from the proxy, with its SQLSTATE.
//! - [`reload`]: the shard map in force (generations) and live reloads of it.
//! - [`admin`]: the admin console (database `shardgate`).
//! - [`metrics`]: `/metrics` in Prometheus text format.
//! - [`router`]: where a statement goes (parsed once per text, cached); [`merge`]: answers of
//!   several shards made into one.
//! - [`topology`]: every shard's servers, their state and statistics; [`health`]: probes;
//!   [`failover`]: who takes writes when a primary dies; [`hash`]: the shard hash;
//!   [`twophase`]: the decision log of transactions over shards.
//! - [`localcluster`]: real Postgres servers in temp dirs, for `shardgate demo` and the test suite.

#![forbid(unsafe_code)]

pub mod admin;
pub mod backend;
pub mod cancel;
pub mod config;
pub mod errors;
pub mod failover;
pub mod frontend;
pub mod hash;
pub mod health;
pub mod localcluster;
pub mod merge;
pub mod metrics;
pub mod pool;
pub mod protocol;
pub mod reload;
pub mod router;
pub mod session_state;
pub mod topology;
pub mod twophase;

pub use frontend::listener::{ProxyHandle, start, start_with_map};
