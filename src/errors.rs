//! Every error shardgate reports to a client, with its SQLSTATE and the text that tells the user what to
//! do. This is the only file that names SQLSTATEs (see `shared/conventions.md`). Errors that Postgres
//! itself sends are never rebuilt here: their original bytes are forwarded.

use bytes::BytesMut;
use thiserror::Error;

use crate::config::ServerAddr;
use crate::protocol::ProtocolError;
use crate::protocol::backend::{Severity, write_error};

/// A Postgres error as a server sent it: the raw ErrorResponse body, kept to forward or to quote.
#[derive(Debug, Clone)]
pub struct ServerError {
    pub body: bytes::Bytes,
}

impl ServerError {
    pub fn field(&self, code: u8) -> Option<String> {
        crate::protocol::backend::error_field(&self.body, code)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
    pub fn sqlstate(&self) -> String {
        self.field(b'C').unwrap_or_else(|| "XX000".into())
    }
    pub fn message(&self) -> String {
        self.field(b'M').unwrap_or_default()
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message(), self.sqlstate())
    }
}

/// Why talking to a backend server failed.
#[derive(Debug, Error)]
pub enum BackendError {
    #[error("cannot connect to server {addr}: {source}")]
    Connect {
        addr: ServerAddr,
        source: std::io::Error,
    },
    #[error("connecting to server {addr} timed out")]
    ConnectTimeout { addr: ServerAddr },
    #[error("server {addr} refused the login: {error}")]
    Rejected {
        addr: ServerAddr,
        error: ServerError,
    },
    #[error(
        "server {addr} asks for authentication method {method}, which shardgate does not support"
    )]
    UnsupportedAuth { addr: ServerAddr, method: i32 },
    #[error("server {addr} needs a password; set backend.password in the shard map")]
    NoPassword { addr: ServerAddr },
    #[error("server {addr} broke the protocol during {during}")]
    Protocol {
        addr: ServerAddr,
        during: &'static str,
    },
    #[error("lost the connection to server {addr}: {source}")]
    Io {
        addr: ServerAddr,
        source: std::io::Error,
    },
    #[error("server {addr} closed the connection")]
    Closed { addr: ServerAddr },
}

/// An error a client session reports. Each variant knows its SQLSTATE and whether the session can go on.
#[derive(Debug, Error)]
pub enum SessionError {
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    #[error("no server is reachable for shard {shard}: {source}")]
    BackendUnavailable { shard: String, source: BackendError },
    #[error(
        "timed out after {waited:?} waiting for a free connection to server {server} of shard {shard}"
    )]
    PoolTimeout {
        shard: String,
        server: ServerAddr,
        waited: std::time::Duration,
    },
    #[error("the connection to server {server} was lost in the middle of a request: {reason}")]
    BackendLost { server: ServerAddr, reason: String },
    #[error("prepared statement \"{0}\" already exists")]
    DuplicateStatement(String),
    #[error("current transaction is aborted, commands ignored until end of transaction block")]
    InFailedTransaction,
    #[error("role \"{0}\" does not exist")]
    UnknownUser(String),
    #[error("password authentication failed for user \"{0}\"")]
    BadPassword(String),
    #[error("database \"{0}\" does not exist")]
    UnknownDatabase(String),
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
    #[error("replication connections are not supported by shardgate")]
    Replication,
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("sorry, too many clients already")]
    TooManyClients,
    #[error("authentication failed: {0}")]
    AuthFailed(String),
    #[error("server refused a startup setting: {0}")]
    StartupSettingRejected(ServerError),
    #[error("invalid value for parameter \"shardgate.{name}\": \"{value}\"")]
    InvalidShardgateValue {
        name: String,
        value: String,
        allowed: &'static str,
    },
    #[error("unrecognized configuration parameter \"shardgate.{0}\"")]
    UnknownShardgateSetting(String),
    #[error("{0}")]
    ShardgateCommand(String),
    #[error("the PROXY protocol header is missing or malformed: {0}")]
    ProxyProtocol(String),
    #[error("{0}")]
    Route(#[from] crate::router::shard::RouteError),
    #[error("{0}")]
    BadShardHint(String),
    #[error("{0}")]
    CrossShard(String),
    #[error("the two-phase commit over shards failed: {0}")]
    TwoPhase(String),
    /// The client was idle longer than `proxy.idle_client_timeout`.
    #[error("terminating connection due to idle-session timeout (proxy.idle_client_timeout)")]
    IdleTimeout,
    /// shardgate shuts down.
    #[error("terminating connection due to administrator command: shardgate is shutting down")]
    Shutdown,
    /// A shard has no writable primary now.
    #[error("shard {shard} has no writable primary now: {reason}")]
    NoPrimary { shard: String, reason: String },
    /// The rows of several shards could not be merged.
    #[error("{0}")]
    Merge(#[from] crate::merge::rows::MergeError),
    /// An error a server sent, passed on as it is.
    #[error("{0}")]
    Server(ServerError),
    /// A user not marked `admin = true` asked for the admin console.
    #[error("permission denied: user \"{0}\" may not use the admin console")]
    NotAdmin(String),
    /// The admin console does not know the command.
    #[error("{0}")]
    AdminSyntax(String),
    /// A reload found the shard map invalid (the previous one keeps serving).
    #[error("the shard map was not reloaded: {0}")]
    ReloadRefused(String),
    /// The statement ran longer than `proxy.query_timeout` and was cancelled.
    #[error("canceling statement due to query_timeout ({0:?}, proxy.query_timeout)")]
    QueryTimeout(std::time::Duration),
}

impl SessionError {
    /// A server connection failed under a request.
    pub fn lost(server: ServerAddr, e: impl std::fmt::Display) -> SessionError {
        SessionError::BackendLost {
            server,
            reason: e.to_string(),
        }
    }

    /// The SQLSTATE sent with this error.
    pub fn sqlstate(&self) -> &str {
        match self {
            SessionError::Protocol(ProtocolError::TooLarge { .. }) => "54000",
            SessionError::Protocol(_) => "08P01",
            SessionError::BackendUnavailable { .. } => "08006",
            SessionError::PoolTimeout { .. } => "53300",
            SessionError::BackendLost { .. } => "08006",
            SessionError::DuplicateStatement(_) => "42P05",
            SessionError::InFailedTransaction => "25P02",
            SessionError::UnknownUser(_) => "28000",
            SessionError::BadPassword(_) => "28P01",
            SessionError::AuthFailed(_) => "28P01",
            SessionError::UnknownDatabase(_) => "3D000",
            SessionError::NoUser => "28000",
            SessionError::Replication => "0A000",
            SessionError::UnsupportedProtocol { .. } => "0A000",
            SessionError::TooManyClients => "53300",
            SessionError::InvalidShardgateValue { .. } => "22023",
            SessionError::UnknownShardgateSetting(_) => "42704",
            SessionError::ShardgateCommand(_) => "0A000",
            SessionError::ProxyProtocol(_) => "08P01",
            SessionError::Route(crate::router::shard::RouteError::BadKey(_)) => "22P02",
            SessionError::Route(_) => "0A000",
            SessionError::BadShardHint(_) => "22023",
            SessionError::CrossShard(_) => "0A000",
            SessionError::TwoPhase(_) => "40000",
            SessionError::NoPrimary { .. } => "57P03",
            SessionError::Shutdown => "57P01",
            SessionError::IdleTimeout => "57P05",
            SessionError::NotAdmin(_) => "42501",
            SessionError::AdminSyntax(_) => "42601",
            SessionError::ReloadRefused(_) => "F0000",
            SessionError::QueryTimeout(_) => "57014",
            SessionError::Merge(e) => {
                use crate::merge::rows::MergeError;
                use crate::merge::value::ValueError;
                match e {
                    MergeError::Value(ValueError::TooLarge) | MergeError::OutOfRange => "22003",
                    MergeError::Value(ValueError::DivisionByZero) => "22012",
                    MergeError::Value(ValueError::BadFormat { .. }) | MergeError::Malformed(_) => {
                        "08P01"
                    }
                    MergeError::Value(_) | MergeError::Unsupported(_) => "0A000",
                }
            }
            SessionError::StartupSettingRejected(e) | SessionError::Server(e) => {
                // Postgres's own code (22023 invalid_parameter_value, ...) is the right one here.
                match crate::protocol::backend::error_field(&e.body, b'C') {
                    Some(c) if c.len() == 5 && c.is_ascii() => {
                        std::str::from_utf8(c).unwrap_or("22023")
                    }
                    _ => "22023",
                }
            }
        }
    }

    /// What the user can do about it, shown by psql as HINT.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            SessionError::Protocol(ProtocolError::TooLarge { .. }) => {
                Some("send smaller messages, or raise proxy.max_message_size in the shard map")
            }
            SessionError::BackendUnavailable { .. } => Some(
                "check that the server is running and reachable, then retry; this connection stays open",
            ),
            SessionError::PoolTimeout { .. } => Some(
                "all pooled connections stayed busy; retry, raise proxy.pool_size, or shorten long transactions",
            ),
            SessionError::BackendLost { .. } => {
                Some("the transaction, if any, was rolled back; retry it")
            }
            SessionError::UnknownUser(_) => Some("add the user to [[users]] in the shard map"),
            SessionError::TooManyClients => Some(
                "shardgate's proxy.max_client_connections is reached; retry later, or raise it in the shard map",
            ),
            SessionError::NotAdmin(_) => Some(
                "connect as a user marked admin = true in [[users]] of the shard map, or to the database named by backend.database",
            ),
            SessionError::AdminSyntax(_) => Some("SHOW HELP lists the admin commands"),
            SessionError::ReloadRefused(_) => {
                Some("fix the shard map at the line and key named, then RELOAD again")
            }
            SessionError::QueryTimeout(_) => {
                Some("make the statement faster, or raise proxy.query_timeout in the shard map")
            }
            SessionError::NoPrimary { .. } => Some(
                "retry the transaction; reads still work. If it lasts, check the shard's servers (SHOW shardgate.servers)",
            ),
            SessionError::InvalidShardgateValue { allowed, .. } => Some(allowed),
            SessionError::UnknownShardgateSetting(_) => {
                Some("shardgate answers SET/SHOW/RESET of: shardgate.target")
            }
            SessionError::UnknownDatabase(_) => {
                Some("connect to the database named by backend.database in the shard map")
            }
            _ => None,
        }
    }

    /// Whether the session must end after this error (FATAL), as Postgres does for broken framing.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            SessionError::Protocol(_)
                | SessionError::UnknownUser(_)
                | SessionError::BadPassword(_)
                | SessionError::AuthFailed(_)
                | SessionError::UnknownDatabase(_)
                | SessionError::NoUser
                | SessionError::Replication
                | SessionError::UnsupportedProtocol { .. }
                | SessionError::TooManyClients
                | SessionError::StartupSettingRejected(_)
                | SessionError::ProxyProtocol(_)
                | SessionError::Shutdown
                | SessionError::IdleTimeout
                | SessionError::NotAdmin(_)
        )
    }

    /// Appends this error as an ErrorResponse.
    pub fn write_to(&self, out: &mut BytesMut) {
        self.write_with(out, self.is_fatal());
    }

    /// Appends this error as a FATAL ErrorResponse (during startup every error ends the
    /// connection, as Postgres reports it).
    pub fn write_fatal_to(&self, out: &mut BytesMut) {
        self.write_with(out, true);
    }

    fn write_with(&self, out: &mut BytesMut, fatal: bool) {
        CLIENT_ERRORS.count(self.sqlstate().as_bytes());
        let severity = if fatal {
            Severity::Fatal
        } else {
            Severity::Error
        };
        write_error(
            out,
            severity,
            self.sqlstate(),
            &self.to_string(),
            self.hint(),
        );
    }
}

/// Errors sent to clients, by SQLSTATE class (the first two characters): the proxy's own (counted
/// in [`SessionError::write_to`]) and the servers' (counted where they are passed on). One count
/// per process (every proxy of a test process adds to it).
#[derive(Debug)]
pub struct ErrorCounts {
    by_class: std::sync::Mutex<std::collections::BTreeMap<[u8; 2], u64>>,
}

impl ErrorCounts {
    /// Counts an error of `sqlstate` (errors are rare: a lock is fine here).
    pub fn count(&self, sqlstate: &[u8]) {
        let class = match sqlstate {
            [a, b, ..] => [*a, *b],
            _ => *b"XX",
        };
        *self
            .by_class
            .lock()
            .expect("error counts lock")
            .entry(class)
            .or_default() += 1;
    }

    /// Counts the error in an ErrorResponse body.
    pub fn count_body(&self, body: &[u8]) {
        let code = crate::protocol::backend::error_field(body, b'C').unwrap_or(b"XX000");
        self.count(code);
    }

    pub fn snapshot(&self) -> Vec<(String, u64)> {
        self.by_class
            .lock()
            .expect("error counts lock")
            .iter()
            .map(|(c, n)| (String::from_utf8_lossy(c).into_owned(), *n))
            .collect()
    }
}

/// The process's error counts (`shardgate_errors_total{class}`).
pub static CLIENT_ERRORS: ErrorCounts = ErrorCounts {
    by_class: std::sync::Mutex::new(std::collections::BTreeMap::new()),
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_conventions() {
        assert_eq!(
            SessionError::Protocol(ProtocolError::TooLarge {
                tag: b'Q',
                len: 10,
                max: 5
            })
            .sqlstate(),
            "54000"
        );
        assert_eq!(
            SessionError::Protocol(ProtocolError::UnknownFrontendTag { tag: b'x' }).sqlstate(),
            "08P01"
        );
        assert_eq!(SessionError::BadPassword("a".into()).sqlstate(), "28P01");
        assert_eq!(SessionError::UnknownUser("a".into()).sqlstate(), "28000");
        assert_eq!(
            SessionError::UnknownDatabase("a".into()).sqlstate(),
            "3D000"
        );
        assert_eq!(SessionError::TooManyClients.sqlstate(), "53300");
    }
}
