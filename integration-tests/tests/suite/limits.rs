//! The proxy's limits give their documented errors and lose nothing: `proxy.max_client_connections`
//! refuses the client past it with FATAL 53300 and lets the next one in once a slot frees up;
//! `proxy.pool_wait_timeout` ends a wait for an exhausted pool with ERROR 53300 naming the shard, the
//! server and the wait, and the session goes on; `proxy.query_timeout` cancels a statement that
//! runs longer with ERROR 57014 and the session goes on.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_postgres::Client;
use tokio_postgres::error::{DbError, SqlState};

use crate::harness::{Ctx, block_on, proxy_setting, tests, wait_until};

tests![
    max_client_connections_refuses_the_next_client_with_53300,
    an_exhausted_pool_gives_53300_after_pool_wait_timeout,
    query_timeout_cancels_the_statement_with_57014,
    query_timeout_cancels_a_request_over_several_shards,
];

/// The ErrorResponse behind a tokio-postgres error (the test fails on any other kind of error).
fn db_error(e: &tokio_postgres::Error) -> anyhow::Result<&DbError> {
    e.as_db_error()
        .with_context(|| format!("expected an ErrorResponse, got: {e}"))
}

/// `SELECT 1` on `client` answers 1.
async fn select_1(client: &Client, who: &str) -> anyhow::Result<()> {
    let one: i32 = client
        .query_one("SELECT 1", &[])
        .await
        .with_context(|| format!("SELECT 1 on {who}"))?
        .get(0);
    assert_eq!(one, 1, "SELECT 1 on {who}");
    Ok(())
}

/// Connecting through `proxy` fails with FATAL 53300 "sorry, too many clients already" and a hint
/// naming the setting.
async fn assert_refused(proxy: &crate::harness::ProxyUnderTest, when: &str) -> anyhow::Result<()> {
    let Err(e) = proxy.client().await else {
        anyhow::bail!("{when}: a client past max_client_connections was let in");
    };
    let e = e
        .downcast_ref::<tokio_postgres::Error>()
        .with_context(|| format!("{when}: not a Postgres error: {e:#}"))?;
    let db = db_error(e)?;
    assert_eq!(db.code(), &SqlState::TOO_MANY_CONNECTIONS, "{when}: {db}");
    assert_eq!(db.severity(), "FATAL", "{when}: {db}");
    // Postgres's own text for this refusal, and a hint naming the setting.
    assert_eq!(db.message(), "sorry, too many clients already", "{when}");
    assert_eq!(
        db.hint(),
        Some(
            "shardgate's proxy.max_client_connections is reached; retry later, or raise it in the shard map"
        ),
        "{when}"
    );
    Ok(())
}

/// `proxy.max_client_connections = 3`: three clients work, the fourth is refused with FATAL 53300
/// (again and again, without leaking a slot), and once one of the three leaves a new client gets in,
/// while the limit still holds for the one after it.
fn max_client_connections_refuses_the_next_client_with_53300(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let map = proxy_setting(&ctx.default_map()?, "max_client_connections", "3");
        let proxy = ctx.start_proxy(&map)?;
        let mut kept = Vec::new();
        for i in 0..3 {
            let c = proxy
                .client()
                .await
                .with_context(|| format!("client {i} of 3"))?;
            select_1(&c, &format!("client {i}")).await?;
            kept.push(c);
        }
        assert_refused(&proxy, "the 4th client").await?;
        // A refused client does not keep a slot: the count goes back to the three, and the next
        // attempt is refused the same way.
        wait_until(
            "the refused client to leave the count",
            Duration::from_secs(5),
            || async { proxy.handle().client_count() == 3 },
        )
        .await?;
        assert_refused(&proxy, "the 4th client, second attempt").await?;
        for (i, c) in kept.iter().enumerate() {
            select_1(c, &format!("client {i} after the refusals")).await?;
        }

        drop(kept.pop());
        // Until the proxy has seen the client go, attempts are refused with 53300 and nothing else.
        let newcomer: RefCell<Option<Client>> = RefCell::new(None);
        let other_errors: RefCell<Vec<String>> = RefCell::new(Vec::new());
        wait_until(
            "a client to get the freed slot",
            Duration::from_secs(10),
            || async {
                match proxy.client().await {
                    Ok(c) => {
                        *newcomer.borrow_mut() = Some(c);
                        true
                    }
                    Err(e) => {
                        let code = e
                            .downcast_ref::<tokio_postgres::Error>()
                            .and_then(|e| e.code().cloned());
                        if code != Some(SqlState::TOO_MANY_CONNECTIONS) {
                            other_errors.borrow_mut().push(format!("{e:#}"));
                        }
                        false
                    }
                }
            },
        )
        .await?;
        assert!(
            other_errors.borrow().is_empty(),
            "errors other than 53300 while waiting: {:?}",
            other_errors.borrow()
        );
        let newcomer = newcomer.into_inner().expect("set when the wait ended");
        select_1(&newcomer, "the client in the freed slot").await?;
        for (i, c) in kept.iter().enumerate() {
            select_1(c, &format!("client {i} after the newcomer")).await?;
        }
        // Three are connected again: the limit still holds.
        assert_refused(&proxy, "a client past the newcomer").await?;
        select_1(&newcomer, "the client in the freed slot, at the end").await?;
        Ok(())
    })
}

/// One pooled server connection (`workers = 1`, `pool_size = 1`, no multiplexing) and
/// `pool_wait_timeout = 300ms`: while client A holds it in a transaction, client B's `SELECT 1`
/// (simple and extended protocol) waits about 300 ms and gets ERROR 53300 naming the server, the
/// shard and the wait. A's transaction is untouched and commits; B's connection goes on, on the same
/// server connection, and a third client works.
fn an_exhausted_pool_gives_53300_after_pool_wait_timeout(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let table = ctx.unique("limits_pool");
        let direct = ctx.direct_client().await?;
        direct
            .batch_execute(&format!("CREATE TABLE {table} (id int)"))
            .await?;
        let map = proxy_setting(&ctx.default_map()?, "workers", "1");
        let map = proxy_setting(&map, "pool_size", "1");
        let map = proxy_setting(&map, "multiplex_connections", "0");
        let map = proxy_setting(&map, "pool_wait_timeout", "\"300ms\"");
        let proxy = ctx.start_proxy(&map)?;
        let server = ctx.primary()?.addr();
        let shard = ctx.cluster()?.shards()[0].name.clone();
        let expected_message = format!(
            "timed out after 300ms waiting for a free connection to server {server} of shard {shard}"
        );

        let a = proxy.client().await?;
        let b = proxy.client().await?;
        select_1(&a, "A before its transaction").await?;
        select_1(&b, "B before A's transaction").await?;
        a.batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES (1)"))
            .await?;
        let pid_a: i32 = a.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);

        // B waits the pool_wait_timeout, once with the simple protocol, once with the extended one.
        for (protocol, simple) in [("simple", true), ("extended", false)] {
            let started = Instant::now();
            let result = if simple {
                b.simple_query("SELECT 1").await.map(|_| ())
            } else {
                b.query_one("SELECT 1", &[]).await.map(|_| ())
            };
            let waited = started.elapsed();
            let Err(e) = result else {
                anyhow::bail!(
                    "{protocol}: B's SELECT 1 got a server connection from an exhausted pool"
                );
            };
            let db = db_error(&e)?;
            assert_eq!(
                db.code(),
                &SqlState::TOO_MANY_CONNECTIONS,
                "{protocol}: {db}"
            );
            assert_eq!(db.severity(), "ERROR", "{protocol}: {db}");
            assert_eq!(db.message(), expected_message, "{protocol}");
            assert_eq!(
                db.hint(),
                Some(
                    "all pooled connections stayed busy; retry, raise proxy.pool_size, or shorten long transactions"
                ),
                "{protocol}"
            );
            eprintln!("limits: B ({protocol} protocol) got 53300 after {waited:?}");
            assert!(
                waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
                "{protocol}: B waited {waited:?} for a 300ms pool_wait_timeout"
            );
            assert!(!b.is_closed(), "{protocol}: B's connection was closed");
        }

        // A's transaction did not notice: same server connection, its row still there.
        let row = a
            .query_one(
                &format!("SELECT count(*), pg_backend_pid() FROM {table}"),
                &[],
            )
            .await?;
        assert_eq!(row.get::<_, i64>(0), 1, "A's uncommitted row");
        assert_eq!(row.get::<_, i32>(1), pid_a, "A kept its server connection");
        a.batch_execute("COMMIT").await?;

        // B goes on, on the one pooled connection A gave back, and sees A's row.
        select_1(&b, "B after A's commit").await?;
        let row = b
            .query_one(
                &format!("SELECT count(*), pg_backend_pid() FROM {table}"),
                &[],
            )
            .await?;
        assert_eq!(row.get::<_, i64>(0), 1, "A's committed row, seen by B");
        assert_eq!(
            row.get::<_, i32>(1),
            pid_a,
            "the pool's one server connection was replaced"
        );
        let c = proxy.client().await?;
        select_1(&c, "a third client after A's commit").await?;
        select_1(&a, "A after its commit").await?;
        let n: i64 = direct
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await?
            .get(0);
        assert_eq!(n, 1, "A's row, read directly from the server");
        direct.batch_execute(&format!("DROP TABLE {table}")).await?;
        Ok(())
    })
}

/// `proxy.query_timeout = "300ms"`: `pg_sleep(5)` is cancelled on the server after about 300 ms
/// with ERROR 57014 naming the setting, in the simple and the extended protocol; the session goes
/// on; in a transaction the transaction is aborted (25P02 until ROLLBACK), as a
/// `statement_timeout` would; quick statements are untouched; the server runs no sleep afterwards.
fn query_timeout_cancels_the_statement_with_57014(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let map = proxy_setting(&ctx.default_map()?, "query_timeout", "\"300ms\"");
        let proxy = ctx.start_proxy(&map)?;
        let client = proxy.client().await?;
        let tag = ctx.unique("qt");
        let check = |e: tokio_postgres::Error, what: &str, took: Duration| -> anyhow::Result<()> {
            let db = db_error(&e)?;
            assert_eq!(db.code(), &SqlState::QUERY_CANCELED, "{what}: {db}");
            assert_eq!(db.severity(), "ERROR", "{what}");
            assert!(
                db.message().contains("query_timeout"),
                "{what}: {}",
                db.message()
            );
            assert!(
                took >= Duration::from_millis(250) && took < Duration::from_secs(3),
                "{what}: answered after {took:?}"
            );
            Ok(())
        };
        let started = Instant::now();
        let e = client
            .simple_query(&format!("SELECT pg_sleep(5) /* {tag} */"))
            .await
            .err()
            .context("the sleep was not cancelled (simple)")?;
        check(e, "simple", started.elapsed())?;
        select_1(&client, "the client after the timeout").await?;

        let started = Instant::now();
        let e = client
            .query(&format!("SELECT pg_sleep(5) /* {tag} */"), &[])
            .await
            .err()
            .context("the sleep was not cancelled (extended)")?;
        check(e, "extended", started.elapsed())?;
        select_1(&client, "the client after the second timeout").await?;

        client.batch_execute("BEGIN").await?;
        let started = Instant::now();
        let e = client
            .batch_execute(&format!("SELECT pg_sleep(5) /* {tag} */"))
            .await
            .err()
            .context("the sleep in a transaction was not cancelled")?;
        check(e, "in a transaction", started.elapsed())?;
        let e = client
            .batch_execute("SELECT 1")
            .await
            .err()
            .context("the aborted transaction ran a statement")?;
        assert_eq!(db_error(&e)?.code(), &SqlState::IN_FAILED_SQL_TRANSACTION);
        client.batch_execute("ROLLBACK").await?;
        select_1(&client, "the client after ROLLBACK").await?;

        // Short statements never hit it.
        for _ in 0..50 {
            select_1(&client, "a quick statement").await?;
        }
        // Nothing of the sleeps runs on the server.
        let direct = ctx.superuser_client().await?;
        wait_until("no sleep left on the server", Duration::from_secs(5), || async {
            direct
                .query_one(
                    &format!(
                        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%{tag}%' AND state = 'active' AND pid <> pg_backend_pid()"
                    ),
                    &[],
                )
                .await
                .map(|r| r.get::<_, i64>(0) == 0)
                .unwrap_or(false)
        })
        .await?;
        Ok(())
    })
}

/// `proxy.query_timeout` also holds for a request over several shards: every shard's part is
/// cancelled (57014), the client goes on, and the next request over the shards is answered.
fn query_timeout_cancels_a_request_over_several_shards(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let s = crate::sharded::sharded(ctx, 2).await?;
        let map = proxy_setting(
            &format!(
                "{}\n{}",
                s.cluster.shard_map_toml("127.0.0.1:0"),
                crate::sharded::TABLES
            ),
            "query_timeout",
            "\"300ms\"",
        );
        let proxy = ctx.start_proxy(&map)?;
        let client = proxy.client().await?;
        // DDL without a key goes to every shard; one row on each.
        client
            .batch_execute("CREATE TABLE users (id bigint PRIMARY KEY)")
            .await?;
        for shard in 0..2 {
            let id = s.key_on(shard);
            client
                .execute("INSERT INTO users (id) VALUES ($1)", &[&id])
                .await?;
        }
        let started = Instant::now();
        let e = client
            .simple_query("SELECT count(*), max(pg_sleep(5)::text) FROM users")
            .await
            .err()
            .context("the sleep over the shards was not cancelled")?;
        let took = started.elapsed();
        let db = db_error(&e)?;
        assert_eq!(db.code(), &SqlState::QUERY_CANCELED, "{db}");
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(3),
            "answered after {took:?}"
        );
        let rows = client.simple_query("SELECT count(*) FROM users").await?;
        assert!(
            rows.iter()
                .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))),
            "the next request over the shards is answered"
        );
        Ok(())
    })
}
