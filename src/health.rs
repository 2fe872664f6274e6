//! The health checker: probes every server every `health.interval`, bans the ones that fail
//! `health.ban_after` probes in a row, re-admits them when they pass again, and measures each
//! replica's replay lag.
//!
//! Owns: the control connections (tokio-postgres, one per server, reopened after a failure) and the
//! primaries' recent WAL positions. It runs on a thread of its own, so a slow or hanging server never
//! delays client traffic, and writes what it learns into `topology::ServerState` (atomics).
//!
//! Lag: a probe reads a replica's replayed WAL position; bytes of lag are the primary's last known
//! position minus that. Time of lag is how long ago the primary first reported a position the replica
//! has not replayed yet (from the primary's probe history), which stays right when writes are rare,
//! unlike `now() - pg_last_xact_replay_timestamp()`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::{BackendConfig, HealthConfig};
use crate::topology::{Role, ServerState, Topology};

/// The probe: role, then the replayed (replica) or current (primary) WAL position in bytes.
const PROBE_SQL: &str = "SELECT pg_is_in_recovery()::text, \
     (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END \
      - '0/0'::pg_lsn)::bigint::text";

/// What one probe read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub in_recovery: bool,
    pub lsn: u64,
}

/// A primary's WAL positions, with when each was first seen.
#[derive(Debug, Default)]
pub struct WalHistory {
    samples: Mutex<VecDeque<(u64, Instant)>>,
}

/// Samples kept per primary (ten minutes at the default interval).
const HISTORY: usize = 600;

impl WalHistory {
    pub fn record(&self, lsn: u64, at: Instant) {
        let mut s = self.samples.lock().expect("wal history lock");
        if s.back().is_none_or(|(last, _)| lsn > *last) {
            s.push_back((lsn, at));
            if s.len() > HISTORY {
                s.pop_front();
            }
        }
    }

    /// How long a replica at `replayed` has been behind: since the primary first reported a
    /// position past it. Zero when it has replayed everything the primary was known to have.
    pub fn lag(&self, replayed: u64, now: Instant) -> Duration {
        let s = self.samples.lock().expect("wal history lock");
        match s.iter().find(|(lsn, _)| *lsn > replayed) {
            Some((_, first_seen)) => now.saturating_duration_since(*first_seen),
            None => Duration::ZERO,
        }
    }

    pub fn latest(&self) -> u64 {
        let s = self.samples.lock().expect("wal history lock");
        s.back().map_or(0, |(lsn, _)| *lsn)
    }
}

/// A running health checker; dropping it stops it.
pub struct HealthChecker {
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts probing every server of `topology`.
pub fn start(
    topology: Arc<Topology>,
    backend: BackendConfig,
    health: HealthConfig,
    failover: crate::config::FailoverConfig,
    fenced: Arc<crate::failover::Fenced>,
    decisions: Option<Arc<crate::twophase::DecisionLog>>,
) -> std::io::Result<HealthChecker> {
    let (stop, stop_rx) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("shardgate-health".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            rt.block_on(async move {
                let mut tasks = Vec::new();
                if let Some(log) = &decisions {
                    for shard in &topology.shards {
                        tasks.push(tokio::spawn(resolve_in_doubt(
                            log.clone(),
                            shard.name.clone(),
                            shard
                                .primary()
                                .unwrap_or_else(|| shard.servers().next().expect("servers"))
                                .clone(),
                            backend.clone(),
                            health.interval,
                            stop_rx.clone(),
                        )));
                    }
                }
                for index in 0..topology.shards.len() {
                    let watch = crate::failover::ShardWatch {
                        topology: topology.clone(),
                        index,
                        backend: backend.clone(),
                        health: health.clone(),
                        failover: failover.clone(),
                        fenced: fenced.clone(),
                    };
                    tasks.push(tokio::spawn(watch.run(stop_rx.clone())));
                }
                for shard in &topology.shards {
                    let history = Arc::new(WalHistory::default());
                    for server in shard.servers() {
                        tasks.push(tokio::spawn(watch_server(
                            server.clone(),
                            history.clone(),
                            backend.clone(),
                            health.clone(),
                            stop_rx.clone(),
                        )));
                    }
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
        })?;
    Ok(HealthChecker {
        stop,
        thread: Some(thread),
    })
}

async fn watch_server(
    server: Arc<ServerState>,
    history: Arc<WalHistory>,
    backend: BackendConfig,
    health: HealthConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut client: Option<tokio_postgres::Client> = None;
    loop {
        let result = tokio::time::timeout(health.timeout, probe(&server, &backend, &mut client))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", health.timeout)));
        match result {
            Ok(p) => {
                let was_up = server.is_up();
                server.set_writable(!p.in_recovery);
                server.probe_passed(p.lsn);
                if !was_up {
                    info!(server = %server.addr, shard = %server.shard, "server passes its probes again; it takes traffic");
                }
                let now = Instant::now();
                match server.role() {
                    Role::Primary => history.record(p.lsn, now),
                    Role::Replica => {
                        let bytes = history.latest().saturating_sub(p.lsn);
                        let lag = history.lag(p.lsn, now);
                        let lagging =
                            bytes > health.max_replica_lag_bytes || lag > health.max_replica_lag;
                        match server.set_lag(bytes, lag.as_millis() as u64, lagging) {
                            Some(true) => {
                                warn!(server = %server.addr, lag_bytes = bytes, lag = ?lag, "replica lags: out of reads until it catches up")
                            }
                            Some(false) => {
                                info!(server = %server.addr, "replica caught up: it takes reads again")
                            }
                            None => {}
                        }
                    }
                }
            }
            Err(reason) => {
                client = None;
                if server.probe_failed(health.ban_after) {
                    warn!(server = %server.addr, shard = %server.shard, %reason, "server failed {} probes in a row: no new traffic until it passes", health.ban_after);
                } else {
                    debug!(server = %server.addr, %reason, "probe failed");
                }
            }
        }
        // A session's suspicion brings the next probe forward; after a failed probe the next
        // waits the whole interval, so `ban_after` and `failover_after` failures in a row span
        // that many intervals (a restart of a second or two does not look like a dead server).
        let failing = server.failures() > 0;
        tokio::select! {
            _ = tokio::time::sleep(health.interval) => {}
            _ = server.probe_now.notified(), if !failing => {}
            _ = stop.changed() => return,
        }
    }
}

/// Resolves the transactions this proxy's decision log left prepared on a shard's primary (see
/// `twophase`), retrying every `interval` until the primary answers once.
async fn resolve_in_doubt(
    log: Arc<crate::twophase::DecisionLog>,
    shard: String,
    primary: Arc<ServerState>,
    backend: BackendConfig,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let config = control_config(&primary, &backend, "shardgate 2pc recovery");
    loop {
        match crate::twophase::recover(&log, &shard, &config).await {
            Ok(done) => {
                if !done.committed.is_empty() || !done.rolled_back.is_empty() {
                    info!(%shard, committed = ?done.committed, rolled_back = ?done.rolled_back, "resolved in-doubt two-phase transactions");
                }
                return;
            }
            Err(e) => {
                warn!(%shard, error = %e, "cannot resolve in-doubt two-phase transactions yet; retrying")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn probe(
    server: &ServerState,
    backend: &BackendConfig,
    client: &mut Option<tokio_postgres::Client>,
) -> Result<Probe, String> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        *client = Some(connect(server, backend).await?);
    }
    let c = client.as_ref().expect("just connected");
    let rows = c.simple_query(PROBE_SQL).await.map_err(|e| e.to_string())?;
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .ok_or("the probe returned no row")?;
    Ok(Probe {
        in_recovery: row.get(0) == Some("true"),
        lsn: row.get(1).and_then(|v| v.parse().ok()).unwrap_or(0),
    })
}

/// How a control connection (probe, recovery) logs in to `server`: as `[backend]` says.
fn control_config(
    server: &ServerState,
    backend: &BackendConfig,
    application_name: &str,
) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host(server.addr.0.ip().to_string())
        .port(server.addr.0.port())
        .user(&backend.user)
        .dbname(&backend.database)
        .application_name(application_name);
    if !backend.password.is_empty() {
        config.password(&backend.password);
    }
    config
}

async fn connect(
    server: &ServerState,
    backend: &BackendConfig,
) -> Result<tokio_postgres::Client, String> {
    let (client, connection) = control_config(server, backend, "shardgate health check")
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_in_time_is_since_the_primary_passed_the_replica() {
        let h = WalHistory::default();
        let t0 = Instant::now();
        h.record(100, t0);
        h.record(100, t0 + Duration::from_secs(1));
        h.record(200, t0 + Duration::from_secs(2));
        h.record(300, t0 + Duration::from_secs(3));
        let now = t0 + Duration::from_secs(5);
        assert_eq!(h.lag(300, now), Duration::ZERO);
        assert_eq!(h.lag(250, now), Duration::from_secs(2));
        assert_eq!(h.lag(100, now), Duration::from_secs(3));
        assert_eq!(h.lag(50, now), Duration::from_secs(5));
        assert_eq!(h.latest(), 300);
    }
}
