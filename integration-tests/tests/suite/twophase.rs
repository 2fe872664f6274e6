//! Two-phase commit recovery on two real shards: prepared transactions left by a "crashed"
//! coordinator are committed on every shard when the decision log says commit, rolled back on every
//! shard otherwise, and another coordinator's transactions are left alone.

use anyhow::Context;
use tokio_postgres::Client;

use shardgate::localcluster::ClusterSpec;
use shardgate::twophase::{DecisionLog, recover};

use crate::harness::{Ctx, block_on, connect, tests};

tests![
    in_doubt_transactions_are_resolved_from_the_decision_log,
    a_restarted_proxy_resolves_its_in_doubt_transactions,
    recovery_leaves_the_running_proxys_transactions_alone,
];

async fn count(c: &Client, table: &str, id: i32) -> anyhow::Result<i64> {
    Ok(c.query_one(
        &format!("SELECT count(*) FROM {table} WHERE id = $1"),
        &[&id],
    )
    .await?
    .get(0))
}

fn in_doubt_transactions_are_resolved_from_the_decision_log(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let cluster = two_shards(ctx)?;
        let dir = tempfile_dir()?;
        let path = dir.join("decisions.log");
        let shards: Vec<_> = cluster.shards().iter().map(|s| &s.primary).collect();
        let mut clients = Vec::new();
        for s in &shards {
            let c = connect(&s.app_conninfo()).await?;
            c.batch_execute("CREATE TABLE tp (id int primary key)")
                .await?;
            clients.push(c);
        }
        let log = DecisionLog::open(&path)?;
        // 1: prepared on both, commit recorded, the coordinator dies before COMMIT PREPARED.
        let committed = log.new_gid();
        // 2: prepared on both, no decision recorded.
        let undecided = log.new_gid();
        // 3: prepared on one shard only (died between the two PREPAREs).
        let half = log.new_gid();
        for (gid, id, shards_prepared) in [(&committed, 1, 2), (&undecided, 2, 2), (&half, 3, 1)] {
            for (i, c) in clients.iter().enumerate() {
                c.batch_execute(&format!("BEGIN; INSERT INTO tp VALUES ({id})"))
                    .await?;
                if i < shards_prepared {
                    c.batch_execute(&format!("PREPARE TRANSACTION '{gid}'"))
                        .await?;
                } else {
                    c.batch_execute("ROLLBACK").await?;
                }
            }
        }
        log.record_commit(&committed)?;
        // Another coordinator's transaction in flight: not ours to touch.
        let foreign = "shardgate_0123456789abcdef_1";
        clients[0]
            .batch_execute(&format!(
                "BEGIN; INSERT INTO tp VALUES (4); PREPARE TRANSACTION '{foreign}'"
            ))
            .await?;
        drop(log);

        // The proxy starts again: the log is read back and each shard resolved.
        let log = DecisionLog::open(&path)?;
        for (i, s) in shards.iter().enumerate() {
            let config: tokio_postgres::Config = s.app_conninfo().parse()?;
            let done = recover(&log, &format!("s{i}"), &config).await?;
            assert_eq!(done.committed, vec![committed.clone()], "shard s{i}");
            let mut expect_rolled_back = vec![undecided.clone()];
            if i == 0 {
                expect_rolled_back.push(half.clone());
            }
            let mut got = done.rolled_back.clone();
            got.sort();
            expect_rolled_back.sort();
            assert_eq!(got, expect_rolled_back, "shard s{i}");
        }
        for (i, c) in clients.iter().enumerate() {
            assert_eq!(count(c, "tp", 1).await?, 1, "committed on s{i}");
            assert_eq!(count(c, "tp", 2).await?, 0, "undecided rolled back on s{i}");
            assert_eq!(
                count(c, "tp", 3).await?,
                0,
                "half-prepared rolled back on s{i}"
            );
        }
        let left: i64 = clients[0]
            .query_one(
                "SELECT count(*) FROM pg_prepared_xacts WHERE gid = $1",
                &[&foreign],
            )
            .await?
            .get(0);
        assert_eq!(left, 1, "another coordinator's transaction was touched");
        clients[0]
            .batch_execute(&format!("ROLLBACK PREPARED '{foreign}'"))
            .await?;
        // Nothing of ours is left prepared.
        for c in &clients {
            let n: i64 = c
                .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
                .await?
                .get(0);
            assert_eq!(n, 0);
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    })
}

/// A proxy whose `proxy.state_dir` holds a decision log with in-doubt transactions (its previous
/// run died between PREPARE and COMMIT PREPARED) resolves them on both shards as it starts.
fn a_restarted_proxy_resolves_its_in_doubt_transactions(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let cluster = two_shards(ctx)?;
        let dir = tempfile_dir()?.join("state");
        std::fs::create_dir_all(&dir)?;
        let log = DecisionLog::open(&dir.join("decisions.log"))?;
        let (commit, abort) = (log.new_gid(), log.new_gid());
        let mut clients = Vec::new();
        for s in cluster.shards() {
            let c = connect(&s.primary.app_conninfo()).await?;
            c.batch_execute("CREATE TABLE tr (id int)").await?;
            for (gid, id) in [(&commit, 1), (&abort, 2)] {
                c.batch_execute(&format!(
                    "BEGIN; INSERT INTO tr VALUES ({id}); PREPARE TRANSACTION '{gid}'"
                ))
                .await?;
            }
            clients.push(c);
        }
        log.record_commit(&commit)?;
        drop(log);

        let map = crate::harness::proxy_setting(
            &cluster.shard_map_toml("127.0.0.1:0"),
            "state_dir",
            &format!("\"{}\"", dir.display()),
        );
        let _proxy = ctx.start_proxy(&map)?;
        for c in &clients {
            crate::harness::wait_until(
                "the in-doubt transactions to be resolved",
                std::time::Duration::from_secs(20),
                || async {
                    c.query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
                        .await
                        .is_ok_and(|r| r.get::<_, i64>(0) == 0)
                },
            )
            .await?;
            assert_eq!(
                count(c, "tr", 1).await?,
                1,
                "the recorded commit is applied"
            );
            assert_eq!(
                count(c, "tr", 2).await?,
                0,
                "the undecided one is rolled back"
            );
        }
        let _ = std::fs::remove_dir_all(dir.parent().unwrap_or(&dir));
        Ok(())
    })
}

/// Recovery runs while the proxy already serves clients: it must not roll back a transaction of
/// the current run that sits between its PREPARE and its decision (a loaded CI run caught exactly
/// that: COMMIT PREPARED then found the transaction gone on one shard, and a DDL that the client
/// saw committed was missing there). Only what an earlier run left is resolved.
fn recovery_leaves_the_running_proxys_transactions_alone(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let cluster = two_shards(ctx)?;
        let dir = tempfile_dir()?;
        let path = dir.join("decisions.log");
        let log = DecisionLog::open(&path)?;
        let live = log.new_gid();
        let mut clients = Vec::new();
        for s in cluster.shards() {
            let c = connect(&s.primary.app_conninfo()).await?;
            c.batch_execute(&format!(
                "CREATE TABLE rl (id int); BEGIN; INSERT INTO rl VALUES (1); PREPARE TRANSACTION '{live}'"
            ))
            .await?;
            clients.push(c);
        }
        // The same run recovers (as at its start): its in-flight transaction stays prepared.
        for (i, s) in cluster.shards().iter().enumerate() {
            let config: tokio_postgres::Config = s.primary.app_conninfo().parse()?;
            let done = recover(&log, &format!("s{i}"), &config).await?;
            assert!(
                done.committed.is_empty() && done.rolled_back.is_empty(),
                "{done:?}"
            );
        }
        for c in &clients {
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_prepared_xacts WHERE gid = $1",
                    &[&live],
                )
                .await?
                .get(0);
            assert_eq!(n, 1, "the live transaction is still prepared");
        }
        // Its decision, then a later run finds it committed-but-unfinished and finishes it.
        log.record_commit(&live)?;
        drop(log);
        let next_run = DecisionLog::open(&path)?;
        for (i, s) in cluster.shards().iter().enumerate() {
            let config: tokio_postgres::Config = s.primary.app_conninfo().parse()?;
            let done = recover(&next_run, &format!("s{i}"), &config).await?;
            assert_eq!(done.committed, vec![live.clone()], "shard s{i}");
        }
        for c in &clients {
            assert_eq!(count(c, "rl", 1).await?, 1);
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    })
}

/// A private cluster of two shards, primaries only.
fn two_shards(ctx: &Ctx) -> anyhow::Result<shardgate::localcluster::LocalCluster> {
    ctx.start_cluster(&ClusterSpec {
        shards: 2,
        replicas_per_shard: 0,
        synchronous: false,
    })
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "shardgate-2pc-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).context("creating a temp dir for the decision log")?;
    Ok(dir)
}
