//! Failover (`[failover] mode`): a primary killed under a write load is replaced by its most
//! advanced replica, the other replica follows the new primary, the old one stays fenced when it
//! comes back; with synchronous replication no acknowledged write is lost. Follow mode moves
//! writes to a server promoted outside shardgate; split brain refuses writes.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use shardgate::localcluster::{ClusterSpec, LocalCluster};

use crate::harness::{
    Ctx, ProxyUnderTest, block_on, connect, proxy_setting, scrape_metrics, tests, wait_until,
};
use crate::sharded::rows;

tests![
    a_killed_primary_fails_over_without_losing_acknowledged_writes,
    a_failover_does_not_disturb_other_shards,
    asynchronous_replication_shows_what_a_failover_can_lose,
    follow_mode_moves_writes_to_a_server_promoted_outside,
    split_brain_refuses_writes_and_keeps_reads,
];

const WRITERS: i32 = 8;

/// A cluster of one shard (primary + `replicas`) and a proxy with failover in `mode`.
fn setup(
    ctx: &Ctx,
    replicas: usize,
    synchronous: bool,
    mode: &str,
) -> anyhow::Result<(LocalCluster, ProxyUnderTest, tempfile::TempDir, String)> {
    setup_shards(ctx, 1, replicas, synchronous, mode)
}

fn setup_shards(
    ctx: &Ctx,
    shards: usize,
    replicas: usize,
    synchronous: bool,
    mode: &str,
) -> anyhow::Result<(LocalCluster, ProxyUnderTest, tempfile::TempDir, String)> {
    let mut cluster = ctx.start_cluster(&ClusterSpec {
        shards,
        replicas_per_shard: replicas,
        synchronous,
    })?;
    // SHARDGATE_KEEP_CLUSTERS=1 keeps the servers' directories (and logs) for a look afterwards.
    if std::env::var_os("SHARDGATE_KEEP_CLUSTERS").is_some() {
        cluster.set_keep(true);
        eprintln!("cluster kept at {}", cluster.root().display());
    }
    let state = tempfile::tempdir()?;
    std::fs::set_permissions(
        state.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let map = proxy_setting(
        &proxy_setting(
            &cluster.shard_map_toml("127.0.0.1:0"),
            "state_dir",
            &format!("\"{}\"", state.path().display()),
        ),
        "metrics_listen",
        "\"127.0.0.1:0\"",
    ) + &format!(
        "\n[failover]\nmode = \"{mode}\"\nuser = \"postgres\"\npassword = \"postgres\"\n\n[[tables]]\nname = \"kv\"\nshard_key = \"id\"\n"
    );
    let proxy = ctx.start_proxy(&map)?;
    Ok((cluster, proxy, state, map))
}

/// What the writers saw.
#[derive(Default)]
struct Log {
    /// (writer, n) of every INSERT the proxy acknowledged, when, and the port of the server
    /// that committed it.
    acked: Vec<(i32, i32, Instant, i32)>,
    /// When each error came, and which writer, and its SQLSTATE.
    errors: Vec<(i32, Instant, String)>,
}

/// 8 writers through the proxy until `stop`; each INSERT that returns Ok is acknowledged.
fn start_writers(
    proxy: &ProxyUnderTest,
    log: Arc<Mutex<Log>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<()>>> {
    (0..WRITERS)
        .map(|w| {
            let url = proxy.url();
            let (log, stop) = (log.clone(), stop.clone());
            tokio::spawn(async move {
                let c = connect(&url).await?;
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let r = tokio::time::timeout(
                        Duration::from_secs(20),
                        c.query_one(
                            "INSERT INTO t (writer, n) VALUES ($1, $2) RETURNING inet_server_port()",
                            &[&w, &n],
                        ),
                    )
                    .await
                    .context("an INSERT hung for 20 s")?;
                    let now = Instant::now();
                    match r {
                        Ok(row) => log.lock().unwrap().acked.push((w, n, now, row.get(0))),
                        Err(e) => {
                            let code = e
                                .as_db_error()
                                .map(|d| d.code().code().to_string())
                                .unwrap_or_else(|| e.to_string());
                            log.lock().unwrap().errors.push((w, now, code));
                            anyhow::ensure!(!c.is_closed(), "the proxy closed writer {w}'s connection");
                        }
                    }
                }
                Ok(())
            })
        })
        .collect()
}

/// Figures of one kill under load.
struct Outcome {
    acked: usize,
    lost: usize,
    /// From the kill to the first acknowledged write after it, and to the last writer's first.
    outage_first: Duration,
    outage_all: Duration,
    errors: Vec<(i32, Instant, String)>,
    killed_at: Instant,
    new_primary: usize,
}

/// Kills the primary with `kill -9` in the middle of 8 writers and checks, on the new primary,
/// which acknowledged rows survived.
/// `detach`: the replica stops receiving WAL before the kill (as a network partition would),
/// while the primary goes on acknowledging. A transaction left open on the old primary gets a
/// class 08 error at its next statement, and its connection serves the next transaction.
async fn kill_under_load(
    cluster: &mut LocalCluster,
    proxy: &ProxyUnderTest,
    detach: bool,
) -> anyhow::Result<Outcome> {
    let c = proxy.client().await?;
    c.batch_execute("CREATE TABLE t (writer int, n int, PRIMARY KEY (writer, n))")
        .await?;
    let open = proxy.client().await?;
    open.batch_execute("BEGIN; INSERT INTO t VALUES (-9, 1)")
        .await?;
    let log = Arc::new(Mutex::new(Log::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = start_writers(proxy, log.clone(), stop.clone());
    wait_until(
        "every writer to commit 20 rows",
        Duration::from_secs(30),
        || async {
            let l = log.lock().unwrap();
            (0..WRITERS).all(|w| l.acked.iter().filter(|a| a.0 == w).count() >= 20)
        },
    )
    .await?;
    if detach {
        cluster.shards()[0].replicas[0].psql(
            "postgres",
            &[
                "ALTER SYSTEM SET primary_conninfo = ''",
                "SELECT pg_reload_conf()",
            ],
        )?;
        let before = log.lock().unwrap().acked.len();
        wait_until(
            "200 more acknowledged writes",
            Duration::from_secs(30),
            || async { log.lock().unwrap().acked.len() >= before + 200 },
        )
        .await?;
    }
    let old_port = i32::from(cluster.shards()[0].primary.port);
    let kill_started = Instant::now();
    cluster.shards_mut()[0].primary.kill9();
    let again = wait_until(
        "every writer to commit on the new primary",
        Duration::from_secs(60),
        || async {
            let l = log.lock().unwrap();
            (0..WRITERS).all(|w| l.acked.iter().any(|a| a.0 == w && a.3 != old_port))
        },
    )
    .await;
    if let Err(e) = again {
        for r in &cluster.shards()[0].replicas {
            let log = std::fs::read_to_string(r.log_path()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            eprintln!(
                "--- {} (port {}):\n{}",
                r.name,
                r.port,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        return Err(e);
    }
    let e = open
        .batch_execute("INSERT INTO t VALUES (-9, 2)")
        .await
        .expect_err("the open transaction's primary is gone");
    let code = e.as_db_error().map(|d| d.code().code().to_string());
    assert!(
        code.as_deref().is_some_and(|c| c.starts_with("08")),
        "a class 08 error for the transaction in flight: {e}"
    );
    open.batch_execute("ROLLBACK").await?;
    open.batch_execute("INSERT INTO t VALUES (-9, 3)").await?;
    let settled = Instant::now();
    wait_until(
        "a second of writes after the failover",
        Duration::from_secs(10),
        || async { Instant::now() > settled + Duration::from_secs(1) },
    )
    .await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await??;
    }
    let log = std::mem::take(&mut *log.lock().unwrap());
    let firsts: Vec<Instant> = (0..WRITERS)
        .filter_map(|w| {
            log.acked
                .iter()
                .filter(|a| a.0 == w && a.3 != old_port)
                .map(|a| a.2)
                .min()
        })
        .collect();
    let outage_first = firsts
        .iter()
        .min()
        .expect("acks")
        .duration_since(kill_started);
    let outage_all = firsts
        .iter()
        .max()
        .expect("acks")
        .duration_since(kill_started);
    // The new primary: the replica out of recovery.
    let shard = &cluster.shards()[0];
    let mut new_primary = None;
    for (i, r) in shard.replicas.iter().enumerate() {
        if !r.is_in_recovery()? {
            anyhow::ensure!(new_primary.is_none(), "two replicas were promoted");
            new_primary = Some(i);
        }
    }
    let new_primary = new_primary.context("no replica was promoted")?;
    let direct = connect(&shard.replicas[new_primary].app_conninfo()).await?;
    let present: BTreeSet<(i32, i32)> = direct
        .query("SELECT writer, n FROM t", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let lost = log
        .acked
        .iter()
        .filter(|(w, n, _, _)| !present.contains(&(*w, *n)))
        .count();
    Ok(Outcome {
        acked: log.acked.len(),
        lost,
        outage_first,
        outage_all,
        errors: log.errors,
        killed_at: kill_started,
        new_primary,
    })
}

/// Synchronous replication, default failover settings: kill -9 the primary under 8 writers; no
/// acknowledged row is lost, the outage stays short, each writer sees at most the error of the
/// statement in flight; the other replica follows the new primary; the old primary, restarted,
/// gets no traffic and is reported fenced.
fn a_killed_primary_fails_over_without_losing_acknowledged_writes(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let (mut cluster, proxy, _state, map) = setup(ctx, 2, true, "promote")?;
        let out = kill_under_load(&mut cluster, &proxy, false).await?;
        eprintln!(
            "failover (synchronous): {} writes acknowledged, {} lost; outage {:?} (first writer) to {:?} (last); errors: {:?}",
            out.acked,
            out.lost,
            out.outage_first,
            out.outage_all,
            out.errors
                .iter()
                .map(|(w, at, code)| (w, at.duration_since(out.killed_at), code))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            out.lost, 0,
            "acknowledged writes lost with synchronous replication"
        );
        assert!(
            out.outage_all < Duration::from_secs(10),
            "the write outage took {:?}",
            out.outage_all
        );
        for w in 0..WRITERS {
            let n = out.errors.iter().filter(|e| e.0 == w).count();
            assert!(n <= 1, "writer {w} saw {n} errors: {:?}", out.errors);
        }
        for (_, _, code) in &out.errors {
            assert!(
                code.starts_with("08") || code.starts_with("57P"),
                "errors are class 08 or 57P: {code}"
            );
        }
        // The other replica follows the new primary.
        let c = proxy.client().await?;
        c.batch_execute("INSERT INTO t VALUES (-1, -1)").await?;
        let other = &cluster.shards()[0].replicas[1 - out.new_primary];
        let follower = connect(&other.app_conninfo()).await?;
        wait_until(
            "the other replica to replay a row written after the failover",
            Duration::from_secs(30),
            || async {
                follower
                    .query_opt("SELECT 1 FROM t WHERE writer = -1", &[])
                    .await
                    .is_ok_and(|r| r.is_some())
            },
        )
        .await?;
        // The old primary comes back (writable, on its old timeline): fenced, no traffic.
        let old_port = cluster.shards()[0].primary.port;
        cluster.shards_mut()[0].primary.start()?;
        let old_line = |report: &str| {
            report
                .lines()
                .find(|l| l.contains(&format!(":{old_port} ")))
                .unwrap_or_default()
                .to_string()
        };
        wait_until(
            "shardgate to see the old primary up again",
            Duration::from_secs(20),
            || async {
                let r = rows(&c, "SHOW shardgate.servers").await.unwrap_or_default();
                let report = r.first().and_then(|r| r[0].clone()).unwrap_or_default();
                old_line(&report).contains(" up ")
            },
        )
        .await?;
        let report = rows(&c, "SHOW shardgate.servers").await?[0][0]
            .clone()
            .unwrap_or_default();
        assert!(old_line(&report).contains("fenced"), "{report}");
        // The metrics say it too.
        let metrics =
            scrape_metrics(proxy.handle().metrics_addr().context("metrics are on")?).await?;
        let old = cluster.shards()[0].primary.addr();
        for want in [
            "shardgate_failovers_total{shard=\"s0\"}".to_string(),
            format!("shardgate_server_fenced{{shard=\"s0\",server=\"{old}\"}}"),
            "shardgate_shard_writable{shard=\"s0\"}".to_string(),
        ] {
            assert_eq!(metrics.get(&want), Some(&1.0), "{want} in {metrics:?}");
        }
        for i in 0..20 {
            let r = rows(
                &c,
                &format!("INSERT INTO t VALUES (-2, {i}) RETURNING inet_server_port()"),
            )
            .await?;
            assert_ne!(r[0][0].as_deref(), Some(old_port.to_string().as_str()));
            let r = rows(&c, "SELECT inet_server_port()").await?;
            assert_ne!(r[0][0].as_deref(), Some(old_port.to_string().as_str()));
        }
        // A restarted shardgate, with the same map (naming the old primary): it reads the roles
        // and its fenced list, and writes go to the new primary.
        drop(c);
        proxy.stop();
        let proxy = ctx.start_proxy(&map)?;
        let c = proxy.client().await?;
        let new_port = cluster.shards()[0].replicas[out.new_primary]
            .port
            .to_string();
        wait_until(
            "the restarted shardgate to send writes to the new primary",
            Duration::from_secs(20),
            || async {
                rows(&c, "INSERT INTO t VALUES (-3, 1) ON CONFLICT DO NOTHING RETURNING inet_server_port()")
                    .await
                    .is_ok_and(|r| r.first().and_then(|r| r[0].as_deref()) == Some(new_port.as_str()))
            },
        )
        .await?;
        let report = rows(&c, "SHOW shardgate.servers").await?[0][0]
            .clone()
            .unwrap_or_default();
        assert!(old_line(&report).contains("fenced"), "{report}");
        Ok(())
    })
}

/// Two shards: while shard 0 fails over, a client writing keys of shard 1 sees no error and no
/// wait.
fn a_failover_does_not_disturb_other_shards(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let (mut cluster, proxy, _state, map) = setup_shards(ctx, 2, 1, false, "promote")?;
        let config = shardgate::config::load_str(&map, "test map")?;
        let on_shard_1: Vec<i64> = (1i64..)
            .filter(|k| {
                let key = shardgate::hash::ShardKey::from_text(
                    shardgate::hash::KeyType::Bigint,
                    &k.to_string(),
                )
                .expect("a key");
                config.shard_index_for_hash(key.hash()) == 1
            })
            .take(5000)
            .collect();
        let c = proxy.client().await?;
        c.batch_execute("CREATE TABLE kv (id bigint PRIMARY KEY, v int)")
            .await?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (url, stop) = (proxy.url(), stop.clone());
            tokio::spawn(async move {
                let c = connect(&url).await?;
                let mut slowest = Duration::ZERO;
                let mut n = 0;
                for k in on_shard_1 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let t = Instant::now();
                    c.execute("INSERT INTO kv (id, v) VALUES ($1, 1)", &[&k])
                        .await?;
                    slowest = slowest.max(t.elapsed());
                    n += 1;
                }
                anyhow::Ok((n, slowest))
            })
        };
        cluster.shards_mut()[0].primary.kill9();
        let killed = Instant::now();
        wait_until("shard 0 to fail over", Duration::from_secs(30), || async {
            rows(&c, "SHOW shardgate.servers")
                .await
                .is_ok_and(|r| r[0][0].as_deref().is_some_and(|t| t.contains("fenced")))
        })
        .await?;
        wait_until(
            "a second more of writes",
            Duration::from_secs(5),
            || async { killed.elapsed() > Duration::from_secs(3) },
        )
        .await?;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (n, slowest) = writer.await??;
        eprintln!("shard 1 during shard 0's failover: {n} writes, slowest {slowest:?}");
        assert!(n > 100, "shard 1 kept taking writes: {n}");
        assert!(
            slowest < Duration::from_millis(900),
            "a shard 1 write waited {slowest:?}"
        );
        Ok(())
    })
}

/// Asynchronous replication: the same kill loses what the replica had not received when the
/// primary died (reported: the trade users make). Then the failure synchronous replication
/// prevents, made certain: the replica stops receiving while the primary goes on acknowledging,
/// and the failover loses those writes.
fn asynchronous_replication_shows_what_a_failover_can_lose(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let (mut cluster, proxy, _state, _) = setup(ctx, 1, false, "promote")?;
        let out = kill_under_load(&mut cluster, &proxy, false).await?;
        eprintln!(
            "failover (asynchronous): {} writes acknowledged, {} lost; outage {:?} to {:?}",
            out.acked, out.lost, out.outage_first, out.outage_all
        );
        assert!(out.acked > 0);
        drop(proxy);
        drop(cluster);
        let (mut cluster, proxy, _state, _) = setup(ctx, 1, false, "promote")?;
        let out = kill_under_load(&mut cluster, &proxy, true).await?;
        eprintln!(
            "failover (asynchronous, replica cut off before the kill): {} writes acknowledged, {} lost",
            out.acked, out.lost
        );
        assert!(
            out.lost >= 200,
            "the writes the replica never received are lost: {}",
            out.lost
        );
        Ok(())
    })
}

/// Follow mode: the primary stops and a replica is promoted by hand (as Patroni would); writes
/// move to it within a probe interval or so, without shardgate promoting anything.
fn follow_mode_moves_writes_to_a_server_promoted_outside(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let (mut cluster, proxy, _state, _) = setup(ctx, 2, false, "follow")?;
        let c = proxy.client().await?;
        c.batch_execute("CREATE TABLE f (id int)").await?;
        cluster.shards_mut()[0].primary.stop_fast();
        let promoted_port = cluster.shards()[0].replicas[0].port;
        cluster.shards_mut()[0].replicas[0].promote()?;
        let promoted = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(15);
        let moved = loop {
            let r = rows(&c, "INSERT INTO f VALUES (1) RETURNING inet_server_port()").await;
            if let Ok(r) = r
                && r[0][0].as_deref() == Some(promoted_port.to_string().as_str())
            {
                break promoted.elapsed();
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "writes did not move to the promoted server"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        eprintln!("follow mode: writes moved {:?} after the promotion", moved);
        // One probe interval (1 s) and a tick; more under a loaded machine.
        assert!(
            moved < Duration::from_secs(3),
            "writes moved only after {moved:?}"
        );
        // shardgate promoted nothing: the other replica is still in recovery.
        assert!(cluster.shards()[0].replicas[1].is_in_recovery()?);
        Ok(())
    })
}

/// Promote mode, a replica promoted by hand while the primary runs: two writable servers and no
/// way to tell the legitimate one for sure, so writes are refused with 57P03; reads go on.
fn split_brain_refuses_writes_and_keeps_reads(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let (mut cluster, proxy, _state, _) = setup(ctx, 1, false, "promote")?;
        let c = proxy.client().await?;
        c.batch_execute("CREATE TABLE b (id int); INSERT INTO b VALUES (1)")
            .await?;
        cluster.shards_mut()[0].replicas[0].promote()?;
        let deadline = Instant::now() + Duration::from_secs(15);
        let (code, message) = loop {
            if let Err(e) = c.batch_execute("INSERT INTO b VALUES (2)").await {
                let d = e.as_db_error().context("an error from the proxy")?;
                break (d.code().code().to_string(), d.message().to_string());
            }
            anyhow::ensure!(Instant::now() < deadline, "writes were never refused");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(code, "57P03", "{message}");
        assert!(message.contains("split brain"), "{message}");
        let r = rows(&c, "SELECT count(*) >= 1 FROM b").await?;
        assert_eq!(r, vec![vec![Some("t".to_string())]], "reads go on");
        Ok(())
    })
}
