//! The client side: accepting connections, startup and authentication, and the session loop that
//! forwards a client's messages to a pooled server connection and the answers back.
//!
//! Owns: client sockets and everything a client's session remembers (its prepared statement names, its
//! settings, its transaction state). It never opens server connections itself; it asks `pool`.

pub mod auth;
pub mod clients;
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
use crate::reload::Live;
use crate::session_state::Settings;
use statements::StatementRegistry;

/// State shared by every worker of one proxy.
pub struct Shared {
    /// The shard map in force and what was built from it; replaced by a reload (see `reload`).
    live: std::sync::RwLock<Arc<Live>>,
    /// `live`'s generation, read without the lock to see whether a session's copy is current.
    generation: std::sync::atomic::AtomicU64,
    /// Changes when a new map is installed (workers bring their pools in line).
    pub reloaded: tokio::sync::watch::Sender<u64>,
    /// Reloads applied and refused, and the last refusal.
    pub reload_status: crate::reload::ReloadStatus,
    /// Where reload requests go, while the reload thread runs.
    pub reload_tx: Mutex<Option<crate::reload::ReloadSender>>,
    pub statements: StatementRegistry,
    pub cancels: CancelRegistry,
    /// ParameterStatus values a server reported for a given set of startup settings, so that a client
    /// connecting with the same settings gets them without a server round trip.
    pub startup_params: Mutex<HashMap<Settings, Arc<ServerParams>>>,
    /// Clients connected now.
    pub clients: std::sync::atomic::AtomicUsize,
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
    /// `PAUSE`d shards (admin console): their new transactions wait.
    pub pause: tokio::sync::watch::Sender<crate::admin::pause::Paused>,
    /// Set while anything is paused (read on the hot path instead of `pause`).
    pub paused_any: std::sync::atomic::AtomicBool,
    /// The clients connected now (`SHOW CLIENTS`).
    pub client_list: clients::ClientRegistry,
    /// Every worker's pools, by (worker, server), for `SHOW POOLS` and `/metrics`; a worker
    /// replaces its entries when it takes a new map.
    pub pools: Mutex<HashMap<(usize, crate::config::ServerAddr), crate::pool::Pool>>,
    /// How long sessions waited for a pooled connection.
    pub pool_wait: crate::topology::stats::WorkerHistograms,
}

/// One server's pooled connections over every worker.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolCounts {
    /// Checked out (held by a session, or multiplexing).
    pub active: usize,
    pub idle: usize,
    /// Sessions waiting for one.
    pub waiting: usize,
    /// The most the pools may hold.
    pub max: usize,
}

impl Shared {
    pub fn new(config: Config, decisions: Option<Arc<crate::twophase::DecisionLog>>) -> Shared {
        Shared {
            live: std::sync::RwLock::new(Arc::new(Live::first(config))),
            generation: std::sync::atomic::AtomicU64::new(1),
            reloaded: tokio::sync::watch::Sender::new(1),
            reload_status: Default::default(),
            reload_tx: Mutex::new(None),
            decisions,
            statements: StatementRegistry::default(),
            cancels: CancelRegistry::default(),
            startup_params: Mutex::new(HashMap::new()),
            clients: std::sync::atomic::AtomicUsize::new(0),
            unparsed: std::sync::atomic::AtomicU64::new(0),
            collation_c: Mutex::new(HashMap::new()),
            drain: tokio::sync::watch::Sender::new(false),
            pause: tokio::sync::watch::Sender::new(Default::default()),
            paused_any: std::sync::atomic::AtomicBool::new(false),
            client_list: Default::default(),
            pools: Mutex::new(HashMap::new()),
            pool_wait: Default::default(),
        }
    }

    /// Pooled connections per server, summed over the workers.
    pub fn pool_status(&self) -> HashMap<crate::config::ServerAddr, PoolCounts> {
        let mut out: HashMap<crate::config::ServerAddr, PoolCounts> = HashMap::new();
        for ((_, addr), pool) in self.pools.lock().expect("pool registry lock").iter() {
            let s = pool.status();
            let c = out.entry(*addr).or_default();
            c.active += s.size.saturating_sub(s.available);
            c.idle += s.available;
            c.waiting += s.waiting;
            c.max += s.max_size;
        }
        out
    }

    /// Changes what is paused (the admin console's PAUSE/RESUME).
    pub fn set_paused(&self, change: impl FnOnce(&mut crate::admin::pause::Paused)) {
        // The flag is set under the watch's lock, so two consoles cannot leave it stale.
        self.pause.send_modify(|p| {
            change(p);
            self.paused_any
                .store(p.any(), std::sync::atomic::Ordering::Release);
        });
    }

    /// The shard map in force now.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().expect("live map lock").clone()
    }

    /// The generation of the map in force now.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Puts a new map in force: new transactions use it.
    pub fn install(&self, live: Arc<Live>) {
        let generation = live.generation;
        *self.live.write().expect("live map lock") = live;
        self.generation
            .store(generation, std::sync::atomic::Ordering::Release);
        self.reloaded.send_replace(generation);
    }

    /// Asks the reload thread to reload the map file; None when it does not run.
    pub fn request_reload(
        &self,
        trigger: crate::reload::Trigger,
    ) -> Option<tokio::sync::oneshot::Receiver<crate::reload::ReloadResult>> {
        let tx = self.reload_tx.lock().expect("reload sender lock").clone();
        tx.map(|t| t.request(trigger))
    }
}
