//! The client side: accepting connections, startup and authentication, and the session loop that
//! forwards a client's messages to a pooled server connection and the answers back.
//!
//! Owns: client sockets and everything a client's session remembers (its prepared statement names, its
//! settings, its transaction state). It never opens server connections itself; it asks `pool`.

pub mod auth;
pub mod listener;
pub mod multiplex;
mod pending;
pub mod proxy_protocol;
pub mod session;
pub mod startup;
pub mod statements;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::backend::ServerParams;
use crate::cancel::CancelRegistry;
use crate::config::Config;
use crate::session_state::Settings;
use statements::StatementRegistry;

/// State shared by every worker of one proxy.
pub struct Shared {
    pub config: Arc<Config>,
    pub auth: Arc<auth::Credentials>,
    pub statements: StatementRegistry,
    pub cancels: CancelRegistry,
    /// ParameterStatus values a server reported for a given set of startup settings, so that a client
    /// connecting with the same settings gets them without a server round trip.
    pub startup_params: Mutex<HashMap<Settings, Arc<ServerParams>>>,
    /// Clients connected now.
    pub clients: std::sync::atomic::AtomicUsize,
    /// Every shard's servers and their health.
    pub topology: Arc<crate::topology::Topology>,
    /// What the router needs to classify statements.
    pub classify: Arc<crate::router::ClassifyOptions>,
    /// The two-phase commit decision log (`proxy.state_dir`).
    pub decisions: Option<Arc<crate::twophase::DecisionLog>>,
    /// Statement texts the router could not parse (sent to the primary).
    pub unparsed: std::sync::atomic::AtomicU64,
    /// Whether each server's database sorts text in the "C" collation (asked once, when a merge
    /// first compares text).
    pub collation_c: Mutex<HashMap<crate::config::ServerAddr, bool>>,
    /// Set when shardgate shuts down gracefully: no new clients; each session ends once it has
    /// no transaction open.
    pub drain: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    pub fn new(config: Config, decisions: Option<Arc<crate::twophase::DecisionLog>>) -> Shared {
        Shared {
            decisions,
            auth: Arc::new(auth::Credentials::new(&config)),
            statements: StatementRegistry::default(),
            cancels: CancelRegistry::default(),
            startup_params: Mutex::new(HashMap::new()),
            clients: std::sync::atomic::AtomicUsize::new(0),
            topology: Arc::new(crate::topology::Topology::new(&config)),
            unparsed: std::sync::atomic::AtomicU64::new(0),
            collation_c: Mutex::new(HashMap::new()),
            drain: tokio::sync::watch::Sender::new(false),
            classify: Arc::new(crate::router::ClassifyOptions::from_config(&config)),
            config: Arc::new(config),
        }
    }
}
