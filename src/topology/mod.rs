//! The servers of each shard and what shardgate knows of them right now.
//!
//! Owns: one [`ServerState`] per server (shared by every worker and the health checker, lock-free:
//! atomics only), and the choice of the server a read goes to ([`balance`]). The health checker
//! (`health`) writes the state; sessions read it when they route a statement and count the statements
//! they run on each server (for `least_connections`). Nothing here opens a socket.

pub mod balance;
pub mod stats;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;

use crate::config::{Config, ServerAddr, ServerSpec, resolve};

/// A server's role in its shard: as the shard map says at first, then as failover and the
/// probes establish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
}

const PRIMARY: u8 = 0;
const REPLICA: u8 = 1;

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
    /// [`Role`], changed by failover.
    role: AtomicU8,
    /// A former primary replaced by failover: it gets no client traffic (only probes) until the
    /// shard map changes, and needs to be rebuilt as a replica.
    fenced: AtomicBool,
    /// Its last passed probe found it out of recovery (it takes writes).
    writable: AtomicBool,
    /// It has been probed at least once (passed or failed).
    probed: AtomicBool,
    /// Share of reads relative to the shard's other servers; 0 = never reads (changed by a reload).
    weight: AtomicU32,
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
    /// What went through it (kept across reloads with the server).
    pub stats: stats::ServerStats,
}

impl ServerState {
    pub fn new(addr: ServerAddr, shard: &str, role: Role, weight: u32) -> ServerState {
        ServerState {
            addr,
            shard: shard.to_string(),
            role: AtomicU8::new(match role {
                Role::Primary => PRIMARY,
                Role::Replica => REPLICA,
            }),
            fenced: AtomicBool::new(false),
            writable: AtomicBool::new(false),
            probed: AtomicBool::new(false),
            weight: AtomicU32::new(weight),
            up: AtomicBool::new(true),
            lagging: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            lsn: AtomicU64::new(0),
            lag_bytes: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            probe_now: Notify::new(),
            stats: stats::ServerStats::default(),
        }
    }

    pub fn role(&self) -> Role {
        match self.role.load(Ordering::Relaxed) {
            PRIMARY => Role::Primary,
            _ => Role::Replica,
        }
    }

    pub fn set_role(&self, role: Role) {
        let v = match role {
            Role::Primary => PRIMARY,
            Role::Replica => REPLICA,
        };
        self.role.store(v, Ordering::Relaxed);
    }

    /// Its share of reads relative to the shard's other servers; 0 = never reads.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Ordering::Relaxed);
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Relaxed)
    }

    /// Replaced by failover: no more client traffic.
    pub fn fence(&self) {
        self.fenced.store(true, Ordering::Relaxed);
    }

    /// The shard map changed around it (it was rebuilt and listed again): traffic again.
    fn unfence(&self) {
        self.fenced.store(false, Ordering::Relaxed);
    }

    pub fn is_writable(&self) -> bool {
        self.writable.load(Ordering::Relaxed)
    }

    pub fn set_writable(&self, writable: bool) {
        self.writable.store(writable, Ordering::Relaxed);
    }

    pub fn probed(&self) -> bool {
        self.probed.load(Ordering::Relaxed)
    }

    /// Not banned by failed probes.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn is_lagging(&self) -> bool {
        self.lagging.load(Ordering::Relaxed)
    }

    /// May take reads now: up, not lagging, with a weight, not fenced.
    pub fn takes_reads(&self) -> bool {
        self.weight() > 0 && self.is_up() && !self.is_lagging() && !self.is_fenced()
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
        self.probed.store(true, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        self.up.store(true, Ordering::Relaxed);
        self.lsn.fetch_max(lsn, Ordering::Relaxed);
    }

    /// A probe failed; after `ban_after` in a row the server gets no new traffic. Returns whether
    /// this failure banned it.
    pub fn probe_failed(&self, ban_after: u32) -> bool {
        self.probed.store(true, Ordering::Relaxed);
        self.writable.store(false, Ordering::Relaxed);
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

/// `Shard::primary` when no server takes writes now.
const NO_PRIMARY: usize = usize::MAX;

/// One shard's servers.
#[derive(Debug)]
pub struct Shard {
    pub name: String,
    /// Every server of the shard, as the map lists them (its `primary` first).
    servers: Vec<Arc<ServerState>>,
    /// Which of `servers` takes writes now; [`NO_PRIMARY`] while a failover runs or when the
    /// writable one cannot be told (split brain).
    primary: AtomicUsize,
    /// Two writable servers and no way to tell the legitimate one: writes are refused.
    split_brain: AtomicBool,
    /// The server last made primary (kept while a failover runs or a split brain lasts): the one
    /// shardgate knows to be legitimate.
    legit: AtomicUsize,
    /// A failover of this shard is running now (promotion, repointing).
    failing_over: AtomicBool,
    /// Wakes sessions waiting for a primary when one is set.
    pub primary_changed: Notify,
    /// Failovers done.
    failovers: AtomicU64,
    /// Rotation counter for `round_robin` (and for breaking ties in `least_connections`).
    pub rotation: AtomicUsize,
}

impl Shard {
    /// A shard of `servers` whose first takes writes.
    pub fn new(name: &str, servers: Vec<Arc<ServerState>>) -> Shard {
        Shard {
            name: name.to_string(),
            servers,
            primary: AtomicUsize::new(0),
            split_brain: AtomicBool::new(false),
            legit: AtomicUsize::new(0),
            failing_over: AtomicBool::new(false),
            primary_changed: Notify::new(),
            failovers: AtomicU64::new(0),
            rotation: AtomicUsize::new(0),
        }
    }

    /// Every server: the map's primary first, then its replicas.
    pub fn servers(&self) -> impl Iterator<Item = &Arc<ServerState>> {
        self.servers.iter()
    }

    /// The server that takes writes now, if any (never a fenced one).
    pub fn primary(&self) -> Option<&Arc<ServerState>> {
        self.servers
            .get(self.primary.load(Ordering::Acquire))
            .filter(|s| !s.is_fenced())
    }

    /// The servers that follow the primary now (fenced ones excluded).
    pub fn replicas(&self) -> impl Iterator<Item = &Arc<ServerState>> {
        let primary = self.primary.load(Ordering::Acquire);
        self.servers
            .iter()
            .enumerate()
            .filter(move |(i, s)| *i != primary && !s.is_fenced())
            .map(|(_, s)| s)
    }

    pub fn has_replicas(&self) -> bool {
        self.replicas().next().is_some()
    }

    /// Makes `server` the shard's primary (and every other server a replica), and wakes the
    /// sessions waiting for one.
    pub fn set_primary(&self, server: &Arc<ServerState>) {
        for (i, s) in self.servers.iter().enumerate() {
            if Arc::ptr_eq(s, server) {
                s.set_role(Role::Primary);
                self.primary.store(i, Ordering::Release);
                self.legit.store(i, Ordering::Release);
            } else {
                s.set_role(Role::Replica);
            }
        }
        self.split_brain.store(false, Ordering::Release);
        self.primary_changed.notify_waiters();
    }

    /// No server takes writes now (a failover runs); `split_brain`: because two claim to.
    pub fn clear_primary(&self, split_brain: bool) {
        self.primary.store(NO_PRIMARY, Ordering::Release);
        self.split_brain.store(split_brain, Ordering::Release);
    }

    /// Takes over the runtime state of the same shard under the previous map (same primary
    /// named): the primary failover gave it and the legitimate one (by address, when still in the
    /// shard), and a split brain. A runtime primary the map no longer lists leaves the map's.
    fn carry_over(&self, old: &Shard) {
        let find = |index: usize| {
            old.servers
                .get(index)
                .and_then(|p| self.servers.iter().position(|s| s.addr == p.addr))
        };
        let Some(legit) = find(old.legit.load(Ordering::Acquire)) else {
            return;
        };
        self.legit.store(legit, Ordering::Release);
        let primary = old.primary.load(Ordering::Acquire);
        let index = if primary == NO_PRIMARY {
            NO_PRIMARY
        } else {
            find(primary).unwrap_or(legit)
        };
        self.primary.store(index, Ordering::Release);
        self.split_brain
            .store(old.split_brain.load(Ordering::Acquire), Ordering::Release);
        for (i, s) in self.servers.iter().enumerate() {
            s.set_role(if i == legit {
                Role::Primary
            } else {
                Role::Replica
            });
        }
    }

    /// The server shardgate knows to be the legitimate primary (also while a failover runs or a
    /// split brain lasts), unless it was fenced.
    pub fn legitimate(&self) -> Option<&Arc<ServerState>> {
        self.servers
            .get(self.legit.load(Ordering::Acquire))
            .filter(|s| !s.is_fenced())
    }

    /// A failover of the shard is running now.
    pub fn failing_over(&self) -> bool {
        self.failing_over.load(Ordering::Acquire)
    }

    /// Marks a failover running (true) or over (false).
    pub fn set_failing_over(&self, running: bool) {
        self.failing_over.store(running, Ordering::Release);
    }

    pub fn count_failover(&self) {
        self.failovers.fetch_add(1, Ordering::Relaxed);
    }

    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    pub fn is_split_brain(&self) -> bool {
        self.split_brain.load(Ordering::Acquire)
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
        Topology::rebuild(config, None)
    }

    /// The topology of a reloaded shard map. Servers it shares with `old` (same address, same shard)
    /// keep what is known of them: health, lag, busy counts, statistics, fencing; shards keep
    /// their failover counts. A shard whose map entry names the same primary as before (replicas
    /// added, removed or weighted) keeps the primary failover gave it, the legitimate primary and
    /// its split-brain state; a shard whose map names another primary takes it, and its fenced
    /// servers are let back in (rebuilding them and naming the new primary in the map is how an
    /// operator says so).
    pub fn rebuild(config: &Config, old: Option<(&Topology, &Config)>) -> Topology {
        let mut by_addr = HashMap::new();
        let addr_of =
            |spec: &ServerSpec| ServerAddr(resolve(spec.addr()).expect("validated at load"));
        let shards = config
            .shards
            .iter()
            .map(|s| {
                let members: Vec<(ServerAddr, u32, Role)> =
                    std::iter::once((addr_of(&s.primary), s.primary.weight(), Role::Primary))
                        .chain(
                            s.replicas
                                .iter()
                                .map(|r| (addr_of(r), r.weight(), Role::Replica)),
                        )
                        .collect();
                let before = old.and_then(|(topology, config)| {
                    let shard = topology.shards.iter().find(|o| o.name == s.name)?;
                    let spec = config.shards.iter().find(|o| o.name == s.name)?;
                    let same_primary = addr_of(&spec.primary) == members[0].0;
                    Some((topology, shard, same_primary))
                });
                let servers: Vec<Arc<ServerState>> = members
                    .iter()
                    .map(|&(addr, weight, role)| {
                        let kept = before.and_then(|(topology, _, _)| {
                            topology.server(addr).filter(|k| k.shard == s.name)
                        });
                        let server = match kept {
                            Some(k) => {
                                k.set_weight(weight);
                                if !before.is_some_and(|(_, _, same_primary)| same_primary) {
                                    // The map names another primary: the operator decided
                                    // (rebuilt servers come back).
                                    k.unfence();
                                    k.set_role(role);
                                }
                                k.clone()
                            }
                            None => Arc::new(ServerState::new(addr, &s.name, role, weight)),
                        };
                        by_addr.entry(addr).or_insert_with(|| server.clone());
                        server
                    })
                    .collect();
                let shard = Shard::new(&s.name, servers);
                if let Some((_, old_shard, same_primary)) = before {
                    shard
                        .failovers
                        .store(old_shard.failovers(), Ordering::Relaxed);
                    if same_primary {
                        shard.carry_over(old_shard);
                    }
                }
                shard
            })
            .collect();
        Topology { shards, by_addr }
    }

    pub fn server(&self, addr: ServerAddr) -> Option<&Arc<ServerState>> {
        self.by_addr.get(&addr)
    }

    /// One line per server: shard, address, role and state (`SHOW shardgate.servers`).
    pub fn report(&self) -> String {
        let mut lines = Vec::new();
        for shard in &self.shards {
            for s in shard.servers() {
                let role = if s.is_fenced() {
                    "fenced (replaced by failover: rebuild it as a replica, then change the shard map)"
                } else if shard.primary().is_some_and(|p| Arc::ptr_eq(p, s)) {
                    "primary"
                } else if shard.is_split_brain() && s.is_writable() {
                    "writable (split brain: writes refused)"
                } else {
                    "replica"
                };
                let health = if s.is_up() { "up" } else { "down" };
                lines.push(format!(
                    "{} {} {role} {health} lag_bytes={} failovers={}",
                    shard.name,
                    s.addr,
                    s.lag_bytes(),
                    shard.failovers()
                ));
            }
        }
        lines.join("\n")
    }

    /// Every server once.
    pub fn servers(&self) -> impl Iterator<Item = &Arc<ServerState>> {
        self.shards.iter().flat_map(Shard::servers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(replicas: &str) -> Config {
        crate::config::load_str(
            &format!(
                "[[users]]\nname = \"a\"\npassword = \"b\"\n[backend]\nuser = \"a\"\ndatabase = \"a\"\n\
                 [[shards]]\nname = \"s0\"\nrange = [0, 4294967296]\nprimary = \"127.0.0.1:5001\"\n\
                 replicas = [{replicas}]\n"
            ),
            "test",
        )
        .unwrap()
    }

    fn port(s: &Arc<ServerState>) -> u16 {
        s.addr.0.port()
    }

    /// A reload keeps what is known of the servers it shares with the old map and the shards'
    /// failover counts; a shard whose map names the same primary keeps the primary failover
    /// chose, its fences and split brain; one whose map names another primary takes it and lets
    /// its fenced servers back in; weights follow the map.
    #[test]
    fn rebuild_keeps_server_state_and_failover_until_the_entry_changes() {
        let old_map = map("\"127.0.0.1:5002\"");
        let old = Topology::new(&old_map);
        let (a, b) = {
            let mut s = old.shards[0].servers();
            (s.next().unwrap().clone(), s.next().unwrap().clone())
        };
        // A failover: 5002 promoted, 5001 fenced; 5002 has a lag and a failed probe on record.
        a.fence();
        old.shards[0].set_primary(&b);
        old.shards[0].count_failover();
        b.set_lag(7, 1, false);

        // The same entry, a weight changed: failover's primary kept, state kept, weight new.
        let same_map = map("{ addr = \"127.0.0.1:5002\", weight = 3 }");
        let same = Topology::rebuild(&same_map, Some((&old, &old_map)));
        let shard = &same.shards[0];
        assert_eq!(shard.primary().map(port), Some(5002));
        assert_eq!(shard.failovers(), 1);
        let b2 = same.server(b.addr).unwrap();
        assert!(Arc::ptr_eq(b2, &b), "the server's state is the same object");
        assert_eq!(b2.lag_bytes(), 7);
        assert_eq!(b2.weight(), 3);
        assert!(same.server(a.addr).unwrap().is_fenced());
        assert_eq!(
            shard.replicas().count(),
            0,
            "the fenced server is no replica"
        );

        // A replica added, the same primary named: failover's primary and the fence stay (the
        // old primary must not take writes again), the new server is fresh.
        let added_map = map("\"127.0.0.1:5002\", \"127.0.0.1:5003\"");
        let added = Topology::rebuild(&added_map, Some((&same, &same_map)));
        let shard = &added.shards[0];
        assert_eq!(shard.primary().map(port), Some(5002));
        assert!(a.is_fenced());
        let replicas: Vec<u16> = shard.replicas().map(port).collect();
        assert_eq!(replicas, vec![5003]);

        // A split brain lasts through a reload with the same primary named, and the legitimate
        // primary is still known (a failover must not pick by WAL position then).
        shard.clear_primary(true);
        let again = Topology::rebuild(&added_map, Some((&added, &added_map)));
        assert!(again.shards[0].is_split_brain());
        assert!(again.shards[0].primary().is_none());
        assert_eq!(again.shards[0].legitimate().map(port), Some(5002));

        // The map names the new primary (the old one rebuilt as its replica): the map's
        // primary, nothing fenced.
        let named_map = crate::config::load_str(
            "[[users]]\nname = \"a\"\npassword = \"b\"\n[backend]\nuser = \"a\"\ndatabase = \"a\"\n\
             [[shards]]\nname = \"s0\"\nrange = [0, 4294967296]\nprimary = \"127.0.0.1:5002\"\n\
             replicas = [\"127.0.0.1:5001\", \"127.0.0.1:5003\"]\n",
            "test",
        )
        .unwrap();
        let named = Topology::rebuild(&named_map, Some((&again, &added_map)));
        let shard = &named.shards[0];
        assert_eq!(shard.primary().map(port), Some(5002));
        assert!(!shard.is_split_brain());
        assert!(!a.is_fenced());
        let replicas: Vec<u16> = shard.replicas().map(port).collect();
        assert_eq!(replicas, vec![5001, 5003]);
        assert_eq!(a.role(), Role::Replica);
        assert_eq!(
            shard.failovers(),
            1,
            "the count goes on (a counter in /metrics)"
        );

        // A server removed from the map is gone from the topology.
        let fewer = Topology::rebuild(&same_map, Some((&named, &named_map)));
        assert!(
            fewer
                .server(ServerAddr(resolve("127.0.0.1:5003").unwrap()))
                .is_none()
        );
        assert_eq!(fewer.servers().count(), 2);
    }
}
