//! Reads to replicas, everything else to the primary: each routing rule checked from the server
//! side (`pg_is_in_recovery()` in the statement itself, or the statement's text in the server's
//! `pg_stat_activity`), in the simple and the extended protocol.

use anyhow::Context;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::harness::{Ctx, block_on, connect, tests};

tests![
    reads_go_to_replicas_writes_to_the_primary,
    transactions_follow_their_access_mode,
    hints_and_session_target,
    explain_follows_its_statement,
    pipelined_write_waits_for_the_reads_before_it,
];

/// The first column of the last row of a simple query, as text.
pub(crate) async fn simple_value(c: &Client, sql: &str) -> anyhow::Result<String> {
    let mut last = None;
    for m in c.simple_query(sql).await.with_context(|| sql.to_string())? {
        if let SimpleQueryMessage::Row(r) = m {
            last = r.get(0).map(str::to_string);
        }
    }
    last.with_context(|| format!("{sql}: no row"))
}

/// Whether `sql` (whose first column is `pg_is_in_recovery()`) ran on a replica, in the simple
/// and in the extended protocol; both must agree with `replica`.
async fn check(c: &Client, sql: &str, replica: bool) -> anyhow::Result<()> {
    let simple = simple_value(c, sql).await? == "t";
    anyhow::ensure!(
        simple == replica,
        "simple protocol: {sql} ran on a {}",
        if simple { "replica" } else { "primary" }
    );
    let row = c
        .query_one(sql, &[])
        .await
        .with_context(|| sql.to_string())?;
    let extended: bool = row.get(0);
    anyhow::ensure!(
        extended == replica,
        "extended protocol: {sql} ran on a {}",
        if extended { "replica" } else { "primary" }
    );
    Ok(())
}

/// Tables, a sequence and functions the routing tests use, created on the primary and waited for
/// on both replicas.
async fn fixtures(ctx: &Ctx) -> anyhow::Result<(String, String, String, String)> {
    let t = ctx.unique("route_t");
    let seq = ctx.unique("route_seq");
    let writer = ctx.unique("route_writer");
    let reader = ctx.unique("route_reader");
    let direct = ctx.direct_client().await?;
    direct
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int primary key); INSERT INTO {t} VALUES (1);
             CREATE SEQUENCE {seq};
             CREATE FUNCTION {writer}() RETURNS int LANGUAGE sql AS 'SELECT 1';
             CREATE FUNCTION {reader}() RETURNS int LANGUAGE sql AS 'SELECT 2';"
        ))
        .await?;
    for replica in &ctx.cluster()?.shards()[0].replicas {
        let r = connect(&replica.app_conninfo()).await?;
        crate::harness::wait_until(
            "the fixtures on the replica",
            std::time::Duration::from_secs(20),
            || async {
                r.query_opt(&format!("SELECT 1 FROM {t} WHERE id = 1"), &[])
                    .await
                    .ok()
                    .flatten()
                    .is_some()
            },
        )
        .await?;
    }
    Ok((t, seq, writer, reader))
}

/// Rule 1: reads go to replicas; locking reads, writing CTEs, writing functions (built in and
/// `routing.write_functions`), unparseable statements and writes go to the primary.
fn reads_go_to_replicas_writes_to_the_primary(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let (t, seq, writer, reader) = fixtures(ctx).await?;
        let map = ctx.routed_map(&format!(
            "read_your_writes = false\nwrite_functions = [\"{writer}\"]"
        ))?;
        let proxy = ctx.start_proxy(&map)?;
        let c = proxy.client().await?;
        let cases: Vec<(String, bool)> = vec![
            ("SELECT pg_is_in_recovery()".into(), true),
            (format!("SELECT pg_is_in_recovery(), {reader}()"), true),
            (
                format!("SELECT pg_is_in_recovery() FROM {t} WHERE id = 1 FOR UPDATE"),
                false,
            ),
            (
                format!("SELECT pg_is_in_recovery() FROM {t} WHERE id = 1 FOR SHARE"),
                false,
            ),
            (
                format!("SELECT pg_is_in_recovery() FROM {t} WHERE id = 1 FOR NO KEY UPDATE"),
                false,
            ),
            (
                format!("SELECT pg_is_in_recovery() FROM {t} WHERE id = 1 FOR KEY SHARE"),
                false,
            ),
            (
                format!(
                    "SELECT pg_is_in_recovery() FROM (SELECT id FROM {t} WHERE id = 1 FOR UPDATE) s"
                ),
                false,
            ),
            (
                format!(
                    "WITH w AS (UPDATE {t} SET id = id WHERE id = 1 RETURNING id) \
                     SELECT pg_is_in_recovery() FROM w"
                ),
                false,
            ),
            (
                format!("SELECT pg_is_in_recovery(), nextval('{seq}')"),
                false,
            ),
            (
                format!("SELECT x.r FROM (SELECT pg_is_in_recovery() AS r, nextval('{seq}')) x"),
                false,
            ),
            ("SELECT pg_is_in_recovery(), txid_current()".into(), false),
            (
                "SELECT pg_is_in_recovery(), pg_try_advisory_xact_lock(42)".into(),
                false,
            ),
            (format!("SELECT pg_is_in_recovery(), {writer}()"), false),
            (
                format!("SELECT pg_is_in_recovery(), public.{writer}()"),
                false,
            ),
            (
                format!("UPDATE {t} SET id = id WHERE id = 1 RETURNING pg_is_in_recovery()"),
                false,
            ),
        ];
        for (sql, replica) in &cases {
            check(&c, sql, *replica).await?;
        }
        // SHOW is a read: a replica says its transactions are read-only.
        assert_eq!(simple_value(&c, "SHOW transaction_read_only").await?, "on");
        let row = c.query_one("SHOW transaction_read_only", &[]).await?;
        assert_eq!(row.get::<_, String>(0), "on");
        // Inserts (simple and extended) land on the primary.
        let on_replica = simple_value(
            &c,
            &format!("INSERT INTO {t} VALUES (2) RETURNING pg_is_in_recovery()"),
        )
        .await?;
        assert_eq!(on_replica, "f");
        let row = c
            .query_one(
                &format!("INSERT INTO {t} VALUES ($1) RETURNING pg_is_in_recovery()"),
                &[&3i32],
            )
            .await?;
        assert!(!row.get::<_, bool>(0));
        // The FOR NO KEY UPDATE texts were beyond the parser: counted, and sent to the primary.
        let unparsed = proxy
            .handle()
            .shared()
            .unparsed
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(unparsed >= 2, "unparsed statements counted: {unparsed}");
        Ok(())
    })
}

/// Inside a transaction everything goes to the primary, unless the transaction is read-only:
/// BEGIN READ ONLY, SET TRANSACTION READ ONLY, default_transaction_read_only.
fn transactions_follow_their_access_mode(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let map = ctx.routed_map("read_your_writes = false")?;
        let proxy = ctx.start_proxy(&map)?;
        let c = proxy.client().await?;
        let scripts: [(&[&str], bool); 6] = [
            (&["BEGIN"], false),
            (&["BEGIN READ ONLY"], true),
            (
                &["START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"],
                true,
            ),
            (&["BEGIN", "SET TRANSACTION READ ONLY"], true),
            (&["BEGIN READ WRITE"], false),
            (&["SET default_transaction_read_only = on", "BEGIN"], true),
        ];
        for (setup, replica) in scripts {
            for sql in setup {
                c.simple_query(sql).await.with_context(|| sql.to_string())?;
            }
            let in_tx = simple_value(&c, "SELECT pg_is_in_recovery()").await? == "t";
            let again = simple_value(&c, "SELECT pg_is_in_recovery()").await? == "t";
            c.simple_query("COMMIT").await?;
            c.simple_query("RESET default_transaction_read_only")
                .await?;
            assert_eq!(
                (in_tx, again),
                (replica, replica),
                "{setup:?}: the transaction ran on the wrong server"
            );
        }
        // The same through the extended protocol.
        for (begin, replica) in [("BEGIN", false), ("BEGIN READ ONLY", true)] {
            c.execute(begin, &[]).await?;
            let row = c.query_one("SELECT pg_is_in_recovery()", &[]).await?;
            c.execute("COMMIT", &[]).await?;
            assert_eq!(row.get::<_, bool>(0), replica, "{begin} (extended)");
        }
        // A write in a read-only transaction fails as Postgres says, not somewhere else.
        c.simple_query("BEGIN READ ONLY").await?;
        let err = c
            .simple_query("CREATE TEMP TABLE nope (a int)")
            .await
            .expect_err("a write in a read-only transaction fails");
        assert_eq!(err.code().map(|s| s.code()), Some("25006"));
        c.simple_query("ROLLBACK").await?;
        // A plain BEGIN whose server the next statement picks: its writes reach the primary.
        let t = ctx.unique("route_tx");
        c.simple_query(&format!("CREATE TABLE {t} (id int)"))
            .await?;
        c.simple_query("BEGIN").await?;
        c.simple_query(&format!("INSERT INTO {t} VALUES (1)"))
            .await?;
        c.simple_query("COMMIT").await?;
        let direct = ctx.direct_client().await?;
        let n: i64 = direct
            .query_one(&format!("SELECT count(*) FROM {t}"), &[])
            .await?
            .get(0);
        assert_eq!(n, 1);
        // BEGIN then ROLLBACK or COMMIT with nothing between: the same answers as Postgres gives.
        {
            use crate::rawclient::{RawClient, command_tag, tags, with_tag};
            use shardgate::localcluster::{APP_DATABASE, APP_PASSWORD, APP_USER};
            let mut raw =
                RawClient::connect(proxy.addr(), APP_USER, APP_PASSWORD, APP_DATABASE, &[]).await?;
            for (end, tag) in [
                ("ROLLBACK", "ROLLBACK"),
                ("/* app */ abort", "ROLLBACK"),
                ("COMMIT", "COMMIT"),
                ("END", "COMMIT"),
            ] {
                let begin = raw.simple_query("BEGIN").await?;
                assert_eq!(tags(&begin), "CZ");
                assert_eq!(with_tag(&begin, b'Z')[0][..], b"T"[..]);
                let msgs = raw.simple_query(end).await?;
                assert_eq!(tags(&msgs), "CZ", "{end}");
                assert_eq!(command_tag(&with_tag(&msgs, b'C')[0]), tag, "{end}");
                assert_eq!(with_tag(&msgs, b'Z')[0][..], b"I"[..], "{end}");
            }
        }
        assert_eq!(simple_value(&c, "SELECT 7").await?, "7");
        Ok(())
    })
}

/// Rule 2: a leading comment picks the server of one statement; `SET shardgate.target` the
/// session's, answered by the proxy in both protocols and never sent to a server.
fn hints_and_session_target(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let map = ctx.routed_map("read_your_writes = false")?;
        let proxy = ctx.start_proxy(&map)?;
        let c = proxy.client().await?;
        check(
            &c,
            "/* shardgate: primary */ SELECT pg_is_in_recovery()",
            false,
        )
        .await?;
        check(
            &c,
            "/* shardgate:replica */ SELECT pg_is_in_recovery()",
            true,
        )
        .await?;
        // Only a leading comment counts.
        check(
            &c,
            "SELECT pg_is_in_recovery() /* shardgate: primary */",
            true,
        )
        .await?;

        c.simple_query("SET shardgate.target = 'primary'").await?;
        assert_eq!(simple_value(&c, "SHOW shardgate.target").await?, "primary");
        check(&c, "SELECT pg_is_in_recovery()", false).await?;
        check(
            &c,
            "/* shardgate: replica */ SELECT pg_is_in_recovery()",
            true,
        )
        .await?;
        // Not forwarded: no server knows the setting.
        let seen = simple_value(
            &c,
            "SELECT coalesce(current_setting('shardgate.target', true), '')",
        )
        .await
        .unwrap_or_default();
        assert_eq!(seen, "");
        c.simple_query("RESET shardgate.target").await?;
        assert_eq!(simple_value(&c, "SHOW shardgate.target").await?, "auto");
        check(&c, "SELECT pg_is_in_recovery()", true).await?;

        // Extended protocol (tokio-postgres prepares every statement).
        c.execute("SET shardgate.target TO primary", &[]).await?;
        let row = c.query_one("SHOW shardgate.target", &[]).await?;
        assert_eq!(row.get::<_, String>(0), "primary");
        check(&c, "SELECT pg_is_in_recovery()", false).await?;
        c.execute("SET shardgate.target = DEFAULT", &[]).await?;
        check(&c, "SELECT pg_is_in_recovery()", true).await?;
        let stmt = c.prepare("SET shardgate.target = 'replica'").await?;
        c.execute(&stmt, &[]).await?;
        let err = c
            .simple_query("CREATE TEMP TABLE target_replica (a int)")
            .await
            .expect_err("target = replica sends even writes to a replica, which refuses them");
        assert_eq!(err.code().map(|s| s.code()), Some("25006"));

        // Bad values: 22023, unknown names: 42704; the session goes on.
        let err = c
            .simple_query("SET shardgate.target = 'sideways'")
            .await
            .expect_err("an invalid target is refused");
        assert_eq!(err.code().map(|s| s.code()), Some("22023"));
        let err = c
            .execute("SET shardgate.target = 'sideways'", &[])
            .await
            .expect_err("an invalid target is refused (extended)");
        assert_eq!(err.code().map(|s| s.code()), Some("22023"));
        let err = c
            .simple_query("SHOW shardgate.nope")
            .await
            .expect_err("an unknown shardgate setting");
        assert_eq!(err.code().map(|s| s.code()), Some("42704"));
        let err = c
            .simple_query("SET shardgate.target = 'primary'; SELECT 1")
            .await
            .expect_err("shardgate settings in a multi-statement query");
        assert_eq!(err.code().map(|s| s.code()), Some("0A000"));
        assert_eq!(simple_value(&c, "SHOW shardgate.target").await?, "replica");

        // SHOW shardgate.route FOR <sql> explains a route, in both protocols.
        let why = simple_value(&c, "SHOW shardgate.route FOR SELECT 1;").await?;
        assert_eq!(
            why,
            "shards=any one role=replica why: no sharded table: one shard"
        );
        let row = c
            .query_one("SHOW shardgate.route FOR INSERT INTO t VALUES (1)", &[])
            .await?;
        assert_eq!(
            row.get::<_, String>(0),
            "shards=s0 role=primary why: no sharded table: DDL and writes go to every shard"
        );
        Ok(())
    })
}

/// EXPLAIN of a read is a read; EXPLAIN ANALYZE runs the statement, so it goes to the primary.
/// Checked in the servers' own `pg_stat_activity`, where an idle connection shows its last query.
fn explain_follows_its_statement(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let map = ctx.routed_map("read_your_writes = false")?;
        let proxy = ctx.start_proxy(&map)?;
        let c = proxy.client().await?;
        let cluster = ctx.cluster()?;
        let shard = &cluster.shards()[0];
        for (sql, replica) in [
            ("EXPLAIN SELECT 1 AS {m}", true),
            ("EXPLAIN ANALYZE SELECT 1 AS {m}", false),
        ] {
            let marker = ctx.unique("explain_marker");
            let sql = sql.replace("{m}", &marker);
            c.simple_query(&sql).await?;
            let mut seen_on = Vec::new();
            for server in shard.instances() {
                let s = connect(&server.superuser_conninfo("app")).await?;
                let n: i64 = s
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity \
                         WHERE query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
                        &[&marker],
                    )
                    .await?
                    .get(0);
                if n > 0 {
                    seen_on.push(server.port);
                }
            }
            assert_eq!(seen_on.len(), 1, "{sql} seen on {seen_on:?}");
            let on_primary = seen_on[0] == shard.primary.port;
            assert_eq!(!on_primary, replica, "{sql} ran on port {}", seen_on[0]);
        }
        Ok(())
    })
}

/// A client that pipelines reads and writes without waiting (simple queries in one write, and
/// extended-protocol segments in one write): the reads run on a replica, the write waits for the
/// replica connection's answers and then runs on the primary, and a read behind it stays on the
/// primary connection it is queued on (it sees the write); answers come back in order.
fn pipelined_write_waits_for_the_reads_before_it(ctx: &Ctx) -> anyhow::Result<()> {
    use crate::rawclient::{Frames, RawClient, text_row, with_tag};
    use shardgate::localcluster::{APP_DATABASE, APP_PASSWORD, APP_USER};
    block_on(async {
        let t = ctx.unique("route_pipe");
        ctx.direct_client()
            .await?
            .batch_execute(&format!("CREATE TABLE {t} (id int)"))
            .await?;
        let proxy = ctx.start_proxy(&ctx.routed_map("read_your_writes = false")?)?;
        let mut c =
            RawClient::connect(proxy.addr(), APP_USER, APP_PASSWORD, APP_DATABASE, &[]).await?;
        let read = "SELECT pg_is_in_recovery()::text";
        let write = format!("INSERT INTO {t} VALUES (1) RETURNING pg_is_in_recovery()::text");
        let simple = Frames::new()
            .query(read)
            .query(read)
            .query(&write)
            .query(read)
            .finish();
        c.send(&simple).await?;
        let msgs = c.read_until_ready_n(4).await?;
        let got: Vec<String> = with_tag(&msgs, b'D')
            .iter()
            .map(|b| text_row(b).map(|r| r[0].clone().unwrap_or_default()))
            .collect::<anyhow::Result<_>>()?;
        assert_eq!(got, ["true", "true", "false", "false"], "simple pipeline");

        let extended = Frames::new()
            .parse("", read, &[])
            .bind("", "", &[], &[], &[])
            .execute("", 0)
            .sync()
            .parse("", &write, &[])
            .bind("", "", &[], &[], &[])
            .execute("", 0)
            .sync()
            .parse("", read, &[])
            .bind("", "", &[], &[], &[])
            .execute("", 0)
            .sync()
            .finish();
        c.send(&extended).await?;
        let msgs = c.read_until_ready_n(3).await?;
        let got: Vec<String> = with_tag(&msgs, b'D')
            .iter()
            .map(|b| text_row(b).map(|r| r[0].clone().unwrap_or_default()))
            .collect::<anyhow::Result<_>>()?;
        assert_eq!(got, ["true", "false", "false"], "extended pipeline");
        let n: i64 = ctx
            .direct_client()
            .await?
            .query_one(&format!("SELECT count(*) FROM {t}"), &[])
            .await?
            .get(0);
        assert_eq!(n, 2);
        Ok(())
    })
}
