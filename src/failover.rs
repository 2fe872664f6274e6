//! Failover: which server of a shard takes writes, when its primary dies (`[failover] mode`).
//!
//! Owns the decision; the health checker (`health`) probes every server and records what it saw
//! (up, writable) in `topology::ServerState`; this module reads that once per probe interval per
//! shard and acts:
//!
//! - `promote`: a primary that failed `failover_after` probes in a row is declared down. It is
//!   fenced at once (no client traffic ever again, only probes; reported as needing a rebuild) and
//!   the shard has no primary (new transactions wait, up to `failover_timeout`). The healthy
//!   replica with the highest received WAL position is promoted (`pg_promote`), the others are
//!   repointed to it (`ALTER SYSTEM SET primary_conninfo` + `pg_reload_conf()`), and writes go
//!   there. A writable server shardgate did not promote (a promotion outside shardgate) is a split
//!   brain: writes are refused (57P03) until only the legitimate primary is writable again.
//! - `follow`: never promotes; writes go to the one server that reports
//!   `pg_is_in_recovery() = false`; none: writes wait; two or more: split brain, writes refused.
//! - `off`: writes stay on the map's primary.
//!
//! At start, in `promote` and `follow` mode, the servers' roles are read rather than trusted from
//! the map: the one writable server takes writes, even when the map names another (a failover
//! shardgate did before a restart, or one done outside it). Fenced servers are remembered in
//! `proxy.state_dir` (`fenced`), so an old primary restarted by hand stays out after a restart
//! of shardgate too, until the shard map changes.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::{BackendConfig, FailoverConfig, FailoverMode, HealthConfig, ServerAddr};
use crate::topology::{ServerState, Shard, Topology};

/// Servers fenced by failover, remembered across restarts in `<state_dir>/fenced` (one
/// `shard addr` per line).
#[derive(Debug, Default)]
pub struct Fenced {
    path: Option<PathBuf>,
    entries: Mutex<BTreeSet<(String, ServerAddr)>>,
}

impl Fenced {
    /// Reads the list (absent file: none) and fences those servers of `topology` (entries for
    /// servers no longer in the map are dropped: the map changed).
    pub fn load(state_dir: Option<&std::path::Path>, topology: &Topology) -> Fenced {
        let path = state_dir.map(|d| d.join("fenced"));
        let mut entries = BTreeSet::new();
        if let Some(p) = &path
            && let Ok(text) = std::fs::read_to_string(p)
        {
            for line in text.lines() {
                let mut words = line.split_whitespace();
                let (Some(shard), Some(addr)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(addr) = addr.parse() else { continue };
                let addr = ServerAddr(addr);
                if let Some(s) = topology.server(addr)
                    && s.shard == shard
                {
                    s.fence();
                    warn!(server = %addr, shard, "fenced by an earlier failover: no traffic until it is rebuilt and the shard map changes");
                    entries.insert((shard.to_string(), addr));
                }
            }
        }
        Fenced {
            path,
            entries: Mutex::new(entries),
        }
    }

    /// After a reload: forgets the servers that are no longer fenced in `topology` (gone from the
    /// map, or let back in by a changed shard entry).
    pub fn keep_only(&self, topology: &Topology) {
        let mut e = self.entries.lock().expect("fenced lock");
        let before = e.len();
        e.retain(|(shard, addr)| {
            topology
                .server(*addr)
                .is_some_and(|s| s.shard == *shard && s.is_fenced())
        });
        if e.len() != before {
            self.write(&e);
        }
    }

    fn add(&self, shard: &str, addr: ServerAddr) {
        let mut e = self.entries.lock().expect("fenced lock");
        e.insert((shard.to_string(), addr));
        self.write(&e);
    }

    fn write(&self, e: &BTreeSet<(String, ServerAddr)>) {
        if let Some(p) = &self.path {
            let text: String = e.iter().map(|(s, a)| format!("{s} {a}\n")).collect();
            let tmp = p.with_extension("tmp");
            let written = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, p));
            if let Err(err) = written {
                error!(path = %p.display(), error = %err, "could not record the fenced server");
            }
        }
    }
}

/// How often a shard's probe results are looked at (at most the probe interval).
const TICK: Duration = Duration::from_millis(100);

/// What the failover of one shard needs.
pub struct ShardWatch {
    pub topology: Arc<Topology>,
    pub index: usize,
    pub backend: BackendConfig,
    pub health: HealthConfig,
    pub failover: FailoverConfig,
    pub fenced: Arc<Fenced>,
}

impl ShardWatch {
    fn shard(&self) -> &Shard {
        &self.topology.shards[self.index]
    }

    /// Runs until `stop`: once per probe interval, looks at the shard's servers and acts.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        if self.failover.mode == FailoverMode::Off {
            return;
        }
        // The server shardgate knows to be the legitimate primary (promote mode); after a
        // reload, the one the previous watch knew (also during a split brain).
        let mut legit: Option<Arc<ServerState>> = self.shard().legitimate().cloned();
        let mut discovered = false;
        // The probes run every interval; looking at their results is cheap (atomics), so it is
        // done more often: a change is acted on at most TICK after the probe that saw it.
        let tick = self.health.interval.min(TICK);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = stop.changed() => return,
            }
            if !discovered {
                // Wait for every server's first probe before trusting roles.
                if self.shard().servers().any(|s| !s.probed()) {
                    continue;
                }
                discovered = true;
                legit = self.discover(legit);
                continue;
            }
            match self.failover.mode {
                FailoverMode::Follow => self.follow(),
                FailoverMode::Promote => {
                    legit = self.promote_mode(legit).await;
                    if legit.is_none() {
                        // No promotion was possible: try again after a probe interval, not at
                        // every tick.
                        tokio::select! {
                            _ = tokio::time::sleep(self.health.interval) => {}
                            _ = stop.changed() => return,
                        }
                    }
                }
                FailoverMode::Off => return,
            }
        }
    }

    /// Servers that are up, not fenced and report being writable.
    fn writable(&self) -> Vec<&Arc<ServerState>> {
        self.shard()
            .servers()
            .filter(|s| s.is_up() && !s.is_fenced() && s.is_writable())
            .collect()
    }

    /// At start: the one writable server takes writes, whatever the map says.
    fn discover(&self, legit: Option<Arc<ServerState>>) -> Option<Arc<ServerState>> {
        let shard = self.shard();
        let writable = self.writable();
        match writable[..] {
            [one] => {
                if legit.as_ref().is_none_or(|l| !Arc::ptr_eq(l, one)) {
                    warn!(shard = %shard.name, server = %one.addr, "the shard map names another primary, but this server is the writable one: writes go here");
                    shard.set_primary(one);
                }
                Some(one.clone())
            }
            [] => legit,
            _ => {
                let addrs: Vec<String> = writable.iter().map(|s| s.addr.to_string()).collect();
                error!(shard = %shard.name, servers = ?addrs, "split brain: several servers accept writes; writes to this shard are refused until only one does");
                shard.clear_primary(true);
                legit
            }
        }
    }

    fn follow(&self) {
        let shard = self.shard();
        let writable = self.writable();
        match writable[..] {
            [one] => {
                if shard.primary().is_none_or(|p| !Arc::ptr_eq(p, one)) {
                    info!(shard = %shard.name, server = %one.addr, "follow: this server reports it takes writes; writes go here");
                    shard.set_primary(one);
                }
            }
            [] => {
                if shard.primary().is_some_and(|p| !p.is_up()) {
                    warn!(shard = %shard.name, "follow: no server of the shard takes writes; new transactions wait for one");
                    shard.clear_primary(false);
                }
            }
            _ => {
                if !shard.is_split_brain() {
                    let addrs: Vec<String> = writable.iter().map(|s| s.addr.to_string()).collect();
                    error!(shard = %shard.name, servers = ?addrs, "split brain: several servers accept writes; writes to this shard are refused until only one does");
                    shard.clear_primary(true);
                }
            }
        }
    }

    async fn promote_mode(&self, legit: Option<Arc<ServerState>>) -> Option<Arc<ServerState>> {
        let shard = self.shard();
        let Some(current) = legit else {
            // No legitimate primary known (every earlier promotion failed): try again.
            return self.fail_over(None).await;
        };
        let others: Vec<&Arc<ServerState>> = self
            .writable()
            .into_iter()
            .filter(|s| !Arc::ptr_eq(s, &current))
            .collect();
        if !others.is_empty() {
            if !shard.is_split_brain() {
                let addrs: Vec<String> = others.iter().map(|s| s.addr.to_string()).collect();
                error!(shard = %shard.name, primary = %current.addr, others = ?addrs, "split brain: a server shardgate did not promote accepts writes; writes to this shard are refused until it is demoted or the shard map names the primary");
                shard.clear_primary(true);
            }
            return Some(current);
        }
        if shard.is_split_brain() {
            info!(shard = %shard.name, primary = %current.addr, "split brain over: only the primary accepts writes");
            shard.set_primary(&current);
        }
        if current.failures() >= self.failover.failover_after {
            return self.fail_over(Some(current)).await;
        }
        Some(current)
    }

    /// Declares `old` down, promotes the most advanced healthy replica and repoints the others.
    /// Returns the legitimate primary afterwards (None: no promotion was possible this time).
    async fn fail_over(&self, old: Option<Arc<ServerState>>) -> Option<Arc<ServerState>> {
        // A reload waits while this runs (it would stop it half way).
        self.shard().set_failing_over(true);
        let legit = self.fail_over_steps(old).await;
        self.shard().set_failing_over(false);
        legit
    }

    async fn fail_over_steps(&self, old: Option<Arc<ServerState>>) -> Option<Arc<ServerState>> {
        let shard = self.shard();
        let started = Instant::now();
        if let Some(old) = &old {
            error!(shard = %shard.name, server = %old.addr, failures = old.failures(), "primary down: failing over; it is fenced (no more traffic; rebuild it as a replica)");
            shard.clear_primary(false);
            old.fence();
            self.fenced.add(&shard.name, old.addr);
        }
        let candidates: Vec<Arc<ServerState>> = shard
            .servers()
            .filter(|s| !s.is_fenced() && s.is_up())
            .cloned()
            .collect();
        let mut best: Option<(u64, Arc<ServerState>)> = None;
        for c in &candidates {
            match self.received_lsn(c).await {
                Ok(lsn) => {
                    if best.as_ref().is_none_or(|(b, _)| lsn > *b) {
                        best = Some((lsn, c.clone()));
                    }
                }
                Err(e) => warn!(server = %c.addr, error = %e, "failover: candidate unreachable"),
            }
        }
        let Some((lsn, chosen)) = best else {
            error!(shard = %shard.name, "failover: no healthy replica to promote; writes wait (and fail after failover_timeout) until one is up");
            return None;
        };
        if let Err(e) = self.promote(&chosen).await {
            error!(shard = %shard.name, server = %chosen.addr, error = %e, "failover: promotion failed; trying again at the next probe");
            return None;
        }
        for other in candidates.iter().filter(|c| !Arc::ptr_eq(c, &chosen)) {
            if let Err(e) = self.repoint(other, chosen.addr).await {
                warn!(server = %other.addr, error = %e, "failover: could not repoint this replica to the new primary; repoint it by hand");
            }
        }
        shard.set_primary(&chosen);
        shard.count_failover();
        info!(shard = %shard.name, server = %chosen.addr, received_lsn = lsn, took = ?started.elapsed(), "failover done: the new primary takes writes");
        Some(chosen)
    }

    async fn control(&self, server: &ServerState) -> Result<tokio_postgres::Client, String> {
        let (user, password) = if self.failover.user.is_empty() {
            (&self.backend.user, &self.backend.password)
        } else {
            (&self.failover.user, &self.failover.password)
        };
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(server.addr.0.ip().to_string())
            .port(server.addr.0.port())
            .user(user)
            .password(password.as_str())
            .dbname(&self.backend.database)
            .application_name("shardgate-failover")
            .connect_timeout(self.health.timeout.max(Duration::from_secs(1)));
        let (client, conn) = cfg
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// The WAL position a server has received (a replica) or written (a primary).
    async fn received_lsn(&self, server: &ServerState) -> Result<u64, String> {
        let c = self.control(server).await?;
        let row = c
            .query_one(
                "SELECT (CASE WHEN pg_is_in_recovery() THEN coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) ELSE pg_current_wal_lsn() END - '0/0'::pg_lsn)::bigint",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        let lsn: Option<i64> = row.get(0);
        Ok(lsn.unwrap_or(0).max(0) as u64)
    }

    async fn promote(&self, server: &ServerState) -> Result<(), String> {
        let c = self.control(server).await?;
        let in_recovery: bool = c
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        if in_recovery {
            let done: bool = c
                .query_one("SELECT pg_promote(true, 60)", &[])
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            if !done {
                return Err("pg_promote did not finish within 60 s".into());
            }
        }
        // Accepts writes: out of recovery, and a transaction can write.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let writable = c
                .query_one(
                    "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'",
                    &[],
                )
                .await
                .map_err(|e| e.to_string())?
                .get::<_, bool>(0);
            if writable {
                server.set_writable(true);
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("still read-only 60 s after its promotion".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Points a replica at `primary`: its `primary_conninfo` with host and port replaced.
    async fn repoint(&self, server: &ServerState, primary: ServerAddr) -> Result<(), String> {
        let c = self.control(server).await?;
        let current: String = c
            .query_one("SELECT current_setting('primary_conninfo')", &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        let conninfo = with_host_port(&current, primary);
        c.batch_execute(&format!(
            "ALTER SYSTEM SET primary_conninfo = '{}'",
            conninfo.replace('\'', "''")
        ))
        .await
        .map_err(|e| e.to_string())?;
        c.batch_execute("SELECT pg_reload_conf()")
            .await
            .map_err(|e| e.to_string())?;
        info!(server = %server.addr, primary = %primary, "replica repointed to the new primary");
        Ok(())
    }
}

/// A libpq conninfo string (`key=value` pairs, values possibly quoted) pointed at `addr`: `port`
/// set to its port; `host` set to its IP address, unless the host is a unix socket directory (a
/// path), which is kept (servers on one machine replicate over their sockets), `hostaddr` dropped.
pub fn with_host_port(conninfo: &str, addr: ServerAddr) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut socket_dir: Option<String> = None;
    let mut rest = conninfo.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim().to_string();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(r) = rest.strip_prefix('\'') {
            // Quoted: backslash escapes, ends at an unescaped quote.
            let mut v = String::new();
            let mut chars = r.char_indices();
            let mut end = r.len();
            while let Some((i, ch)) = chars.next() {
                match ch {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            v.push(n);
                        }
                    }
                    '\'' => {
                        end = i + 1;
                        break;
                    }
                    c => v.push(c),
                }
            }
            value = v;
            rest = r[end.min(r.len())..].trim_start();
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            value = rest[..end].to_string();
            rest = rest[end..].trim_start();
        }
        if key == "host" && value.starts_with('/') {
            socket_dir = Some(value);
            continue;
        }
        if matches!(key.as_str(), "host" | "port" | "hostaddr") {
            continue;
        }
        out.push(format!(
            "{key}='{}'",
            value.replace('\\', "\\\\").replace('\'', "\\'")
        ));
    }
    match socket_dir {
        Some(dir) => out.push(format!("host='{dir}'")),
        None => out.push(format!("host='{}'", addr.0.ip())),
    }
    out.push(format!("port='{}'", addr.0.port()));
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_gets_the_new_host_and_port() {
        let addr = ServerAddr("127.0.0.1:6000".parse().unwrap());
        let c = with_host_port(
            "user=postgres passfile='/var/lib/x y/.pgpass' channel_binding=prefer host=127.0.0.1 port=5433 sslmode=prefer",
            addr,
        );
        assert!(c.contains("user='postgres'"), "{c}");
        assert!(c.contains("passfile='/var/lib/x y/.pgpass'"), "{c}");
        assert!(c.ends_with("host='127.0.0.1' port='6000'"), "{c}");
        assert!(!c.contains("5433"), "{c}");
        // Over a unix socket directory: the directory stays, the port changes.
        let c = with_host_port("user=postgres host=/tmp/x/sockets port=5433", addr);
        assert_eq!(c, "user='postgres' host='/tmp/x/sockets' port='6000'");
    }
}
