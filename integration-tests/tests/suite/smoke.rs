//! The harness itself works: a proxy in front of the shared cluster answers, psql gets through, and
//! the replica follows the primary.

use std::time::Duration;

use anyhow::Context;

use shardgate::localcluster::ClusterSpec;

use crate::harness::{Ctx, block_on, connect, tests, wait_until};

tests![
    select_through_proxy,
    psql_through_proxy,
    replica_follows_primary,
    server_restarts_after_kill9,
];

/// A query through the proxy comes back from the shard's primary.
fn select_through_proxy(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let proxy = ctx.start_proxy(&ctx.default_map()?)?;
        let client = proxy.client().await?;
        let one: i32 = client.query_one("SELECT 1::int4", &[]).await?.get(0);
        assert_eq!(one, 1);
        let port: i32 = client
            .query_one("SELECT inet_server_port()", &[])
            .await?
            .get(0);
        assert_eq!(
            port,
            i32::from(ctx.primary()?.port),
            "answered by the primary"
        );
        Ok(())
    })
}

/// psql (libpq) logs in through the proxy and runs a script from stdin.
fn psql_through_proxy(ctx: &Ctx) -> anyhow::Result<()> {
    let proxy = ctx.start_proxy(&ctx.default_map()?)?;
    let out = ctx.run_psql(
        &proxy.url(),
        &["-A", "-t", "-v", "ON_ERROR_STOP=1"],
        Some("SELECT 40 + 2;\nSELECT current_user;\n"),
    )?;
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\napp\n");
    proxy.stop();
    Ok(())
}

/// A row written on the primary shows up on the replica.
fn replica_follows_primary(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let table = ctx.unique("smoke_replicated");
        let primary = ctx.direct_client().await?;
        primary
            .batch_execute(&format!(
                "CREATE TABLE {table} (id int PRIMARY KEY); INSERT INTO {table} VALUES (7);"
            ))
            .await?;
        let replica = connect(&ctx.replica()?.app_conninfo()).await?;
        let in_recovery: bool = replica
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await?
            .get(0);
        assert!(in_recovery, "the replica is a standby");
        let sql = format!("SELECT count(*) FROM {table} WHERE id = 7");
        wait_until(
            "the row to reach the replica",
            Duration::from_secs(10),
            || async {
                // Until replay reaches the CREATE TABLE, the table does not exist there.
                replica
                    .query_one(sql.as_str(), &[])
                    .await
                    .is_ok_and(|row| row.get::<_, i64>(0) == 1)
            },
        )
        .await?;
        // The superuser can drop what app made.
        let admin = ctx.superuser_client().await?;
        admin
            .batch_execute(&format!("DROP TABLE {table}"))
            .await
            .context("dropping the table")?;
        Ok(())
    })
}

/// A private cluster's primary comes back after a crash (kill -9), on the same port, with its data.
fn server_restarts_after_kill9(ctx: &Ctx) -> anyhow::Result<()> {
    let spec = ClusterSpec {
        shards: 1,
        replicas_per_shard: 0,
        synchronous: false,
    };
    let mut cluster = ctx.start_cluster(&spec)?;
    let primary = &mut cluster.shards_mut()[0].primary;
    primary.psql(
        "app",
        &["CREATE TABLE kept (v int)", "INSERT INTO kept VALUES (5)"],
    )?;
    let pid = primary.pid().context("the primary runs")?;
    primary.kill9();
    assert_eq!(primary.pid(), None, "postmaster {pid} is gone");
    primary.start()?;
    assert_ne!(primary.pid(), Some(pid));
    assert_eq!(primary.psql("app", &["SELECT v FROM kept"])?, "5");
    block_on(async {
        let client = connect(&cluster.shards()[0].primary.app_conninfo()).await?;
        let port: i32 = client
            .query_one("SELECT inet_server_port()", &[])
            .await?
            .get(0);
        assert_eq!(port, i32::from(cluster.shards()[0].primary.port));
        Ok(())
    })
}
