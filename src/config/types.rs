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
    pub shards: Vec<ShardConfig>,
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
        }
    }
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    pub name: String,
    /// `[start, end)` in the 32-bit hash space.
    pub range: [u64; 2],
    pub primary: String,
    #[serde(default)]
    pub replicas: Vec<String>,
}

/// A validated server address of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
