//! The shard map's sections as serde structs, with defaults from `shared/conventions.md`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub users: Vec<UserConfig>,
    pub backend: BackendConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub failover: FailoverConfig,
    #[serde(default)]
    pub shards: Vec<ShardConfig>,
    /// Sharded tables (after loading; `replicated = true` entries move to `replicated`); tables
    /// not listed here are not sharded.
    #[serde(default)]
    pub tables: Vec<TableConfig>,
    /// Tables every shard holds whole (`[[tables]] replicated = true`), lowercase: writes go to
    /// every shard atomically, reads to any one.
    #[serde(skip)]
    pub replicated: Vec<String>,
}

/// A sharded table: its rows are spread over the shards by the hash of `shard_key`. (Or, with
/// `replicated = true` and no key, a table every shard holds whole.)
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    pub name: String,
    #[serde(default)]
    pub shard_key: String,
    #[serde(default)]
    pub key_type: crate::hash::KeyType,
    #[serde(default)]
    pub replicated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A backend connection is held from the first statement to the end of the transaction.
    Transaction,
    /// A backend connection is held for the client's whole session.
    Session,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AuthMethod {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub listen: String,
    pub pool_mode: PoolMode,
    /// Backend connections per server, over all workers.
    pub pool_size: usize,
    /// How clients prove who they are: `scram-sha-256` (default) or `md5`.
    pub auth_method: AuthMethod,
    /// Event-loop threads; 0 = one per CPU core.
    pub workers: usize,
    /// Largest message a client may send, in bytes.
    pub max_message_size: usize,
    #[serde(deserialize_with = "duration")]
    pub pool_wait_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    pub max_client_connections: usize,
    /// Server connections per worker that pipeline short statements of many clients (see
    /// `frontend::multiplex`); 0 turns multiplexing off. Taken from `pool_size`.
    pub multiplex_connections: usize,
    /// Every connection must start with a PROXY protocol v1/v2 header (from a TCP load balancer).
    pub proxy_protocol: bool,
    /// Peers allowed to send that header (IP addresses); empty = any peer.
    pub proxy_protocol_from: Vec<String>,
    /// Where shardgate keeps what must survive a restart (the two-phase commit decision log);
    /// empty = nowhere (no cross-shard transactions can be committed atomically).
    pub state_dir: String,
    /// Where Prometheus scrapes `/metrics` (`host:port`); empty = off.
    pub metrics_listen: String,
    /// A client idle this long (no transaction open, nothing running) is closed with 57P05;
    /// 0 = never.
    #[serde(deserialize_with = "duration")]
    pub idle_client_timeout: Duration,
    /// Log level (`error`, `warn`, `info`, `debug`, `trace`, or a tracing filter such as
    /// `shardgate=debug`); `SHARDGATE_LOG` wins when set. Read at start.
    pub log_level: String,
    /// `text` (default) or `json` (one JSON object per line); `SHARDGATE_LOG_FORMAT` wins when set.
    /// Read at start.
    pub log_format: LogFormat,
    /// A statement running longer than this is cancelled (57014); 0 = never.
    #[serde(deserialize_with = "duration")]
    pub query_timeout: Duration,
    /// On SIGTERM/SIGINT, how long open transactions may take to finish before every client is
    /// closed.
    #[serde(deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: "127.0.0.1:6432".into(),
            pool_mode: PoolMode::Transaction,
            pool_size: 20,
            auth_method: AuthMethod::ScramSha256,
            workers: 0,
            max_message_size: 64 * 1024 * 1024,
            pool_wait_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_client_connections: 10_000,
            multiplex_connections: 2,
            proxy_protocol: false,
            proxy_protocol_from: Vec::new(),
            state_dir: String::new(),
            metrics_listen: String::new(),
            shutdown_timeout: Duration::from_secs(30),
            idle_client_timeout: Duration::ZERO,
            query_timeout: Duration::ZERO,
            log_level: "info".into(),
            log_format: LogFormat::Text,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// A cleartext password, or a SCRAM-SHA-256 verifier as Postgres stores it
    /// (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`).
    pub password: String,
    #[serde(default)]
    pub admin: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub user: String,
    #[serde(default)]
    pub password: String,
    pub database: String,
}

/// How reads are spread over a shard's servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadBalance {
    /// Rotate over the healthy servers (in proportion to their weights).
    RoundRobin,
    /// The healthy server with the fewest statements running on it through shardgate.
    LeastConnections,
    /// A hash of the client's IP address: a client keeps its server while that server is healthy.
    Source,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    pub read_balance: ReadBalance,
    /// The primary takes reads too, not only the replicas.
    pub read_from_primary: bool,
    /// After a client's write commits, its reads go only to replicas that have replayed it.
    pub read_your_writes: bool,
    /// Functions that write, besides the built-in list (nextval, setval, advisory locks, lo_*, ...):
    /// a SELECT that calls one goes to the primary.
    pub write_functions: Vec<String>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            read_balance: ReadBalance::RoundRobin,
            read_from_primary: false,
            read_your_writes: true,
            write_functions: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// How often every server is probed.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// How long a probe may take before it counts as failed.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Consecutive failed probes before a server gets no new traffic.
    pub ban_after: u32,
    /// Replay lag above this many bytes takes a replica out of reads until it catches up.
    pub max_replica_lag_bytes: u64,
    /// The same, in time.
    #[serde(deserialize_with = "duration")]
    pub max_replica_lag: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            ban_after: 2,
            max_replica_lag_bytes: 16 * 1024 * 1024,
            max_replica_lag: Duration::from_secs(10),
        }
    }
}

/// What shardgate does when a shard's primary dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailoverMode {
    /// Promote the most advanced healthy replica, repoint the others, fence the old primary.
    Promote,
    /// Never promote: writes go to whichever server reports `pg_is_in_recovery() = false`
    /// (Patroni, repmgr or a cloud service promotes).
    Follow,
    /// Writes stay on the map's primary.
    Off,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    pub mode: FailoverMode,
    /// Consecutive failed probes of a primary before it is declared down.
    pub failover_after: u32,
    /// How long new transactions of a shard wait for its new primary.
    #[serde(deserialize_with = "duration")]
    pub failover_timeout: Duration,
    /// The role that promotes and repoints servers (superuser, or granted `pg_promote` and
    /// `ALTER SYSTEM` on `primary_conninfo`); empty: `backend.user`.
    pub user: String,
    pub password: String,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            mode: FailoverMode::Promote,
            failover_after: 3,
            failover_timeout: Duration::from_secs(30),
            user: String::new(),
            password: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    pub name: String,
    /// `[start, end)` in the 32-bit hash space.
    pub range: [u64; 2],
    pub primary: ServerSpec,
    #[serde(default)]
    pub replicas: Vec<ServerSpec>,
}

/// A server of a shard: `"host:port"`, or `{ addr = "host:port", weight = 2 }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ServerSpec {
    Addr(String),
    Weighted {
        addr: String,
        #[serde(default = "one")]
        weight: u32,
    },
}

fn one() -> u32 {
    1
}

impl ServerSpec {
    pub fn addr(&self) -> &str {
        match self {
            ServerSpec::Addr(a) | ServerSpec::Weighted { addr: a, .. } => a,
        }
    }

    /// Its share of reads relative to the shard's other servers (default 1; 0 = no reads).
    pub fn weight(&self) -> u32 {
        match self {
            ServerSpec::Addr(_) => 1,
            ServerSpec::Weighted { weight, .. } => *weight,
        }
    }
}

impl From<&str> for ServerSpec {
    fn from(a: &str) -> Self {
        ServerSpec::Addr(a.to_string())
    }
}

/// A validated server address of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerAddr(pub SocketAddr);

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(text.trim()).map_err(|e| {
        serde::de::Error::custom(format!(
            "\"{text}\" is not a duration ({e}); write it with a unit, like \"250ms\", \"10s\" or \"2m\""
        ))
    })
}
