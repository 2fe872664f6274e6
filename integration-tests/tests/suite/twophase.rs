//! Two-phase commit recovery on two real shards: prepared transactions left by a "crashed"
//! coordinator are committed on every shard when the decision log says commit, rolled back on every
//! shard otherwise, and another coordinator's transactions are left alone.

use anyhow::Context;
use tokio_postgres::Client;

use shardgate::localcluster::ClusterSpec;
use shardgate::twophase::{DecisionLog, recover};

use crate::harness::{Ctx, block_on, connect, tests};

tests![in_doubt_transactions_are_resolved_from_the_decision_log];

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
        let cluster = ctx.start_cluster(&ClusterSpec {
            shards: 2,
            replicas_per_shard: 0,
            synchronous: false,
        })?;
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

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("shardgate-2pc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("creating a temp dir for the decision log")?;
    Ok(dir)
}
