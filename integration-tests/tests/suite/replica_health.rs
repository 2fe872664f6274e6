//! No statement reaches a dead or lagging replica, and a client reads its own writes: health
//! checks, bans, lag, read-your-writes, on private clusters (these tests stop and pause servers).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use shardgate::config::ServerAddr;
use shardgate::localcluster::{ClusterSpec, LocalCluster};

use crate::harness::{Ctx, ProxyUnderTest, block_on, connect, routed, tests, wait_until};
use crate::routing::simple_value;

tests![
    read_moves_when_its_replica_fails_before_answering,
    dead_replica_is_banned_and_readmitted,
    lagging_replica_leaves_reads_until_it_catches_up,
    reads_see_own_writes_from_a_delayed_replica,
];

/// A private cluster of one shard with `replicas` streaming replicas, and its shard map.
fn private_cluster(ctx: &Ctx, replicas: usize) -> anyhow::Result<(LocalCluster, String)> {
    let cluster = ctx.start_cluster(&ClusterSpec {
        shards: 1,
        replicas_per_shard: replicas,
        synchronous: false,
    })?;
    let map = cluster.shard_map_toml("127.0.0.1:0");
    Ok((cluster, map))
}

fn server_addr(port: u16) -> ServerAddr {
    ServerAddr(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
}

fn is_up(proxy: &ProxyUnderTest, port: u16) -> bool {
    proxy
        .handle()
        .shared()
        .live()
        .topology
        .server(server_addr(port))
        .is_some_and(|s| s.is_up())
}

fn is_lagging(proxy: &ProxyUnderTest, port: u16) -> bool {
    proxy
        .handle()
        .shared()
        .live()
        .topology
        .server(server_addr(port))
        .is_some_and(|s| s.is_lagging())
}

/// One read of the load: when it was sent, and the port that answered or the error.
type Reads = Arc<Mutex<Vec<(Instant, Result<u16, String>)>>>;

/// `clients` tasks reading `SELECT inet_server_port()` through the proxy until `stop` is set.
async fn read_load(
    url: String,
    clients: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<(Reads, Vec<tokio::task::JoinHandle<()>>)> {
    let reads: Reads = Arc::default();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let c = connect(&url).await?;
        let reads = reads.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sent = Instant::now();
                let r = if i % 2 == 0 {
                    c.query_one("SELECT inet_server_port()", &[])
                        .await
                        .map(|r| r.get::<_, i32>(0) as u16)
                        .map_err(|e| format!("{e:?}"))
                } else {
                    simple_value(&c, "SELECT inet_server_port()")
                        .await
                        .map_err(|e| format!("{e:#}"))
                        .and_then(|p| p.parse::<u16>().map_err(|e| e.to_string()))
                };
                reads.lock().unwrap().push((sent, r));
            }
        }));
    }
    Ok((reads, tasks))
}

/// Reads sent after `since`: (answered by port, errors).
fn reads_since(reads: &Reads, since: Instant) -> (Vec<u16>, Vec<String>) {
    let reads = reads.lock().unwrap();
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for (at, r) in reads.iter().filter(|(at, _)| *at > since) {
        let _ = at;
        match r {
            Ok(p) => ok.push(*p),
            Err(e) => failed.push(e.clone()),
        }
    }
    (ok, failed)
}

/// A read whose replica connection dies before the first row (its backend terminated mid-query)
/// is sent once more to the other replica: the client gets the answer, not an error. Simple and
/// extended protocol.
fn read_moves_when_its_replica_fails_before_answering(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let proxy = ctx.start_proxy(&ctx.routed_map("read_your_writes = false")?)?;
        let c = Arc::new(proxy.client().await?);
        let shard = &ctx.cluster()?.shards()[0];
        for extended in [false, true] {
            let marker = ctx.unique("doomed_read");
            let sql = format!("SELECT inet_server_port(), pg_sleep(1) AS {marker}");
            let client = c.clone();
            let read = tokio::spawn(async move {
                if extended {
                    client
                        .query_one(&sql, &[])
                        .await
                        .map(|r| r.get::<_, i32>(0) as u16)
                        .map_err(|e| format!("{e:?}"))
                } else {
                    simple_value(&client, &sql)
                        .await
                        .map_err(|e| format!("{e:#}"))
                        .map(|v| v.parse().unwrap_or(0))
                }
            });
            // Terminate the backend running it, from the server's side.
            let killed = Arc::new(Mutex::new(None));
            wait_until(
                "the read to start on a replica",
                Duration::from_secs(10),
                || {
                    let killed = killed.clone();
                    let marker = marker.clone();
                    async move {
                        for r in &shard.replicas {
                            let Ok(s) = connect(&r.superuser_conninfo("app")).await else {
                                continue;
                            };
                            let hit = s
                                .query_opt(
                                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                                 WHERE state = 'active' AND query LIKE '%' || $1 || '%' \
                                 AND pid <> pg_backend_pid()",
                                    &[&marker],
                                )
                                .await
                                .ok()
                                .flatten()
                                .is_some();
                            if hit {
                                *killed.lock().unwrap() = Some(r.port);
                                return true;
                            }
                        }
                        false
                    }
                },
            )
            .await?;
            let killed = killed.lock().unwrap().context("no replica ran it")?;
            let answered = read.await?.map_err(|e| {
                anyhow::anyhow!("extended={extended}: the read failed instead of moving: {e}")
            })?;
            let other: Vec<u16> = shard
                .replicas
                .iter()
                .map(|r| r.port)
                .filter(|p| *p != killed)
                .collect();
            assert_eq!(
                vec![answered],
                other,
                "extended={extended}: answered by {answered}, its first replica was {killed}"
            );
        }
        Ok(())
    })
}

/// `pg_ctl stop -m immediate` on a replica under a read load: once banned it gets no reads and no
/// read fails; it takes reads again once restarted; with every replica down the primary reads.
fn dead_replica_is_banned_and_readmitted(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let (mut cluster, map) = private_cluster(ctx, 2)?;
        let proxy = ctx.start_proxy(&routed(&map, "read_your_writes = false", ""))?;
        let primary = cluster.shards()[0].primary.port;
        let r1 = cluster.shards()[0].replicas[0].port;
        let r2 = cluster.shards()[0].replicas[1].port;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (reads, tasks) = read_load(proxy.url(), 4, stop.clone()).await?;
        wait_until(
            "reads on both replicas",
            Duration::from_secs(10),
            || async {
                let (ok, _) = reads_since(&reads, Instant::now() - Duration::from_secs(60));
                ok.contains(&r1) && ok.contains(&r2)
            },
        )
        .await?;

        let stopped = Instant::now();
        cluster.shards_mut()[0].replicas[0].stop();
        wait_until(
            "the dead replica to be banned",
            Duration::from_secs(10),
            || async { !is_up(&proxy, r1) },
        )
        .await?;
        let banned = Instant::now();
        wait_until("reads after the ban", Duration::from_secs(10), || async {
            reads_since(&reads, banned).0.len() >= 200
        })
        .await?;
        let (before_ok, before_failed) = reads_since(&reads, stopped);
        eprintln!(
            "dead replica: banned {:?} after the stop; {} reads, {} failed before the ban",
            banned - stopped,
            before_ok.len(),
            before_failed.len()
        );
        let (after, failed) = reads_since(&reads, banned);
        assert!(failed.is_empty(), "reads failed after the ban: {failed:?}");
        assert!(!after.contains(&r1), "a read reached the banned replica");
        assert!(
            after.iter().all(|p| *p == r2),
            "reads after the ban: {after:?}"
        );

        // Back: admitted again, it takes reads.
        cluster.shards_mut()[0].replicas[0].start()?;
        let back = Instant::now();
        wait_until(
            "reads on the restarted replica",
            Duration::from_secs(20),
            || async { reads_since(&reads, back).0.contains(&r1) },
        )
        .await?;
        assert!(is_up(&proxy, r1));

        // Every replica down: reads go to the primary, none fails once both are banned.
        cluster.shards_mut()[0].replicas[0].stop();
        cluster.shards_mut()[0].replicas[1].stop();
        wait_until("both replicas banned", Duration::from_secs(10), || async {
            !is_up(&proxy, r1) && !is_up(&proxy, r2)
        })
        .await?;
        let both = Instant::now();
        wait_until(
            "reads from the primary",
            Duration::from_secs(10),
            || async { reads_since(&reads, both).0.len() >= 100 },
        )
        .await?;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            t.await?;
        }
        let (after, failed) = reads_since(&reads, both);
        assert!(
            failed.is_empty(),
            "reads failed with every replica banned: {failed:?}"
        );
        assert!(after.iter().all(|p| *p == primary), "{after:?}");
        Ok(())
    })
}

/// A replica whose replay is paused falls behind by more than `max_replica_lag_bytes`: it is
/// taken out of reads, and put back once it has caught up.
fn lagging_replica_leaves_reads_until_it_catches_up(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let (cluster, map) = private_cluster(ctx, 1)?;
        let proxy = ctx.start_proxy(&routed(
            &map,
            "read_your_writes = false",
            "max_replica_lag_bytes = 262144\nmax_replica_lag = \"1h\"",
        ))?;
        let shard = &cluster.shards()[0];
        let (primary, replica) = (shard.primary.port, shard.replicas[0].port);
        let c = proxy.client().await?;
        assert_eq!(server_port(&c).await, Some(replica));

        let r = connect(&shard.replicas[0].superuser_conninfo("postgres")).await?;
        r.simple_query("SELECT pg_wal_replay_pause()").await?;
        let direct = connect(&shard.primary.app_conninfo()).await?;
        let t = ctx.unique("lag_fill");
        direct
            .batch_execute(&format!(
                "CREATE TABLE {t} AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g"
            ))
            .await?;
        wait_until(
            "the replica to be marked lagging",
            Duration::from_secs(10),
            || async { is_lagging(&proxy, replica) },
        )
        .await?;
        for _ in 0..10 {
            assert_eq!(
                server_port(&c).await,
                Some(primary),
                "a read reached the lagging replica"
            );
        }
        r.simple_query("SELECT pg_wal_replay_resume()").await?;
        wait_until(
            "the replica to catch up",
            Duration::from_secs(20),
            || async { !is_lagging(&proxy, replica) },
        )
        .await?;
        wait_until(
            "reads on the replica again",
            Duration::from_secs(5),
            || async { server_port(&c).await == Some(replica) },
        )
        .await?;
        Ok(())
    })
}

/// The port of the server that answers a read, or None on an error.
async fn server_port(c: &tokio_postgres::Client) -> Option<u16> {
    simple_value(c, "SELECT inet_server_port()")
        .await
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
}

/// Write, then read through the proxy, 1,000 times, against a replica that applies WAL 300 ms
/// late: with read-your-writes no read is stale; without it reads are.
fn reads_see_own_writes_from_a_delayed_replica(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let (cluster, base) = private_cluster(ctx, 1)?;
        let shard = &cluster.shards()[0];
        shard.replicas[0].set_conf("recovery_min_apply_delay = '300ms'")?;
        let direct = connect(&shard.primary.app_conninfo()).await?;
        let replica = connect(&shard.replicas[0].app_conninfo()).await?;
        direct
            .batch_execute("CREATE TABLE ryw (id int primary key, k text)")
            .await?;
        wait_until(
            "the table on the replica",
            Duration::from_secs(10),
            || async { replica.simple_query("SELECT 1 FROM ryw").await.is_ok() },
        )
        .await?;

        // Read-your-writes on (the default).
        let proxy = ctx.start_proxy(&routed(&base, "", ""))?;
        let c = proxy.client().await?;
        let (stale, from_replica) = write_then_read(&c, "on", 1000).await?;
        eprintln!("read-your-writes on: {stale} stale of 1000, {from_replica} read on the replica");
        assert_eq!(stale, 0, "stale reads with read-your-writes on");
        // Reads still go to the replica once it has replayed the client's writes.
        wait_until(
            "reads back on the replica",
            Duration::from_secs(10),
            || async {
                simple_value(&c, "SELECT pg_is_in_recovery()")
                    .await
                    .ok()
                    .as_deref()
                    == Some("t")
            },
        )
        .await?;
        let seen: i64 = c
            .query_one("SELECT count(*) FROM ryw WHERE k = 'on'", &[])
            .await?
            .get(0);
        assert_eq!(seen, 1000);
        drop(proxy);

        // Off: the same loop reads stale rows from the replica.
        let proxy = ctx.start_proxy(&routed(&base, "read_your_writes = false", ""))?;
        let c = proxy.client().await?;
        let (stale, from_replica) = write_then_read(&c, "off", 1000).await?;
        eprintln!(
            "read-your-writes off: {stale} stale of 1000, {from_replica} read on the replica"
        );
        assert!(
            stale > 0,
            "with read-your-writes off the delayed replica should give stale reads"
        );
        Ok(())
    })
}

/// `n` times: insert a row (autocommit, or every tenth in an explicit transaction; simple and
/// extended protocol by turns), then read it back. Returns (stale reads, reads on the replica).
async fn write_then_read(
    c: &tokio_postgres::Client,
    tag: &str,
    n: i32,
) -> anyhow::Result<(usize, usize)> {
    let base = if tag == "on" { 0 } else { 100_000 };
    let mut stale = 0;
    let mut from_replica = 0;
    for i in base..base + n {
        if i % 10 == 0 {
            c.simple_query("BEGIN").await?;
            c.execute("INSERT INTO ryw VALUES ($1, $2)", &[&i, &tag])
                .await?;
            c.simple_query("COMMIT").await?;
        } else if i % 2 == 0 {
            c.simple_query(&format!("INSERT INTO ryw VALUES ({i}, '{tag}')"))
                .await?;
        } else {
            c.execute("INSERT INTO ryw VALUES ($1, $2)", &[&i, &tag])
                .await?;
        }
        let (found, replica) = if i % 3 == 0 {
            let v = simple_value(
                c,
                &format!(
                    "SELECT count(*)::text || pg_is_in_recovery()::text FROM ryw WHERE id = {i}"
                ),
            )
            .await?;
            (v.starts_with('1'), v.ends_with("true"))
        } else {
            let row = c
                .query_one(
                    "SELECT count(*), pg_is_in_recovery() FROM ryw WHERE id = $1",
                    &[&i],
                )
                .await
                .context("read back")?;
            (row.get::<_, i64>(0) == 1, row.get::<_, bool>(1))
        };
        if !found {
            stale += 1;
        }
        if replica {
            from_replica += 1;
        }
    }
    Ok((stale, from_replica))
}
