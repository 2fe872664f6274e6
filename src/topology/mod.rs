//! The servers of each shard and what shardgate knows of them right now.
//!
//! Owns: one [`ServerState`] per server (shared by every worker and the health checker, lock-free:
//! atomics only), and the choice of the server a read goes to ([`balance`]). The health checker
//! (`health`) writes the state; sessions read it when they route a statement and count the statements
//! they run on each server (for `least_connections`). Nothing here opens a socket.

pub mod balance;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;

use crate::config::{Config, ServerAddr, ServerSpec, resolve};

/// A server's role in its shard, as the shard map says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

/// One server, as the health checker last saw it.
#[derive(Debug)]
pub struct ServerState {
    pub addr: ServerAddr,
    pub shard: String,
    pub role: Role,
    /// Share of reads relative to the shard's other servers; 0 = never reads.
    pub weight: u32,
    /// Passed its last probes (or has not failed `ban_after` in a row yet).
    up: AtomicBool,
    /// Replay lag over `health.max_replica_lag[_bytes]`.
    lagging: AtomicBool,
    /// Failed probes in a row.
    failures: AtomicU32,
    /// For a replica, the WAL position it has replayed; for a primary, its current WAL position.
    lsn: AtomicU64,
    /// Replay lag of a replica behind its primary, in bytes and in milliseconds.
    lag_bytes: AtomicU64,
    lag_ms: AtomicU64,
    /// Statements (or transactions) running on it through shardgate now.
    busy: AtomicUsize,
    /// Wakes the health checker for an early probe (a session saw the server fail).
    pub probe_now: Notify,
}

impl ServerState {
    pub fn new(addr: ServerAddr, shard: &str, role: Role, weight: u32) -> ServerState {
        ServerState {
            addr,
            shard: shard.to_string(),
            role,
            weight,
            up: AtomicBool::new(true),
            lagging: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            lsn: AtomicU64::new(0),
            lag_bytes: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            probe_now: Notify::new(),
        }
    }

    /// Not banned by failed probes.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn is_lagging(&self) -> bool {
        self.lagging.load(Ordering::Relaxed)
    }

    /// May take reads now: up, not lagging, with a weight.
    pub fn takes_reads(&self) -> bool {
        self.weight > 0 && self.is_up() && !self.is_lagging()
    }

    /// Replayed (replica) or written (primary) WAL position, as of the last probe.
    pub fn lsn(&self) -> u64 {
        self.lsn.load(Ordering::Relaxed)
    }

    pub fn lag_bytes(&self) -> u64 {
        self.lag_bytes.load(Ordering::Relaxed)
    }

    pub fn lag_ms(&self) -> u64 {
        self.lag_ms.load(Ordering::Relaxed)
    }

    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Counts one statement or transaction running on the server until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> BusyGuard {
        self.busy.fetch_add(1, Ordering::Relaxed);
        BusyGuard(self.clone())
    }

    /// A probe passed: the server is admitted again.
    pub fn probe_passed(&self, lsn: u64) {
        self.failures.store(0, Ordering::Relaxed);
        self.up.store(true, Ordering::Relaxed);
        self.lsn.fetch_max(lsn, Ordering::Relaxed);
    }

    /// A probe failed; after `ban_after` in a row the server gets no new traffic. Returns whether
    /// this failure banned it.
    pub fn probe_failed(&self, ban_after: u32) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        n >= ban_after && self.up.swap(false, Ordering::Relaxed)
    }

    /// Records a replica's replay lag; returns `Some(now_lagging)` when that changed.
    pub fn set_lag(&self, bytes: u64, ms: u64, lagging: bool) -> Option<bool> {
        self.lag_bytes.store(bytes, Ordering::Relaxed);
        self.lag_ms.store(ms, Ordering::Relaxed);
        let was = self.lagging.swap(lagging, Ordering::Relaxed);
        (was != lagging).then_some(lagging)
    }

    /// A session could not use the server: probe it now rather than at the next interval.
    pub fn suspect(&self) {
        self.probe_now.notify_one();
    }
}

/// Counts a statement or transaction on a server while it lives.
#[derive(Debug)]
pub struct BusyGuard(Arc<ServerState>);

impl BusyGuard {
    pub fn server(&self) -> &Arc<ServerState> {
        &self.0
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One shard's servers.
#[derive(Debug)]
pub struct Shard {
    pub name: String,
    pub primary: Arc<ServerState>,
    pub replicas: Vec<Arc<ServerState>>,
    /// Rotation counter for `round_robin` (and for breaking ties in `least_connections`).
    pub rotation: AtomicUsize,
}

impl Shard {
    /// The primary, then the replicas.
    pub fn servers(&self) -> impl Iterator<Item = &Arc<ServerState>> {
        std::iter::once(&self.primary).chain(self.replicas.iter())
    }
}

/// Every shard's servers.
#[derive(Debug)]
pub struct Topology {
    pub shards: Vec<Shard>,
    by_addr: HashMap<ServerAddr, Arc<ServerState>>,
}

impl Topology {
    pub fn new(config: &Config) -> Topology {
        let mut by_addr = HashMap::new();
        let mut server = |spec: &ServerSpec, shard: &str, role: Role| {
            let addr = ServerAddr(resolve(spec.addr()).expect("validated at load"));
            by_addr
                .entry(addr)
                .or_insert_with(|| Arc::new(ServerState::new(addr, shard, role, spec.weight())))
                .clone()
        };
        let shards = config
            .shards
            .iter()
            .map(|s| Shard {
                name: s.name.clone(),
                primary: server(&s.primary, &s.name, Role::Primary),
                replicas: s
                    .replicas
                    .iter()
                    .map(|r| server(r, &s.name, Role::Replica))
                    .collect(),
                rotation: AtomicUsize::new(0),
            })
            .collect();
        Topology { shards, by_addr }
    }

    pub fn server(&self, addr: ServerAddr) -> Option<&Arc<ServerState>> {
        self.by_addr.get(&addr)
    }

    /// Every server once.
    pub fn servers(&self) -> impl Iterator<Item = &Arc<ServerState>> {
        self.shards.iter().flat_map(Shard::servers)
    }
}
