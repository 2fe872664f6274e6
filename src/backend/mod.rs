//! Connections to Postgres servers: connect and log in, remember per-connection state, cancel.
//!
//! Owns: the server side of one connection. It never decides where a statement goes and never reads
//! client sockets; the session loop (`frontend::session`) moves bytes between the two.

mod conn;

pub use conn::{BackendConn, InternalResult, ServerParams, send_cancel};
