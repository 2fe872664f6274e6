//! Transaction pooling: prepared statements, session settings and pinned state follow a client across
//! pooled server connections; a client that leaves mid-transaction leaves nothing open; cancel works.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::harness::{Ctx, block_on, connect, proxy_setting, tests, wait_until};

tests![
    prepared_statements_reused_across_100_transactions,
    session_settings_follow_the_client,
    set_semantics_match_postgres,
    startup_options_apply_on_every_connection,
    disconnect_mid_transaction_leaves_nothing_open,
    disconnect_mid_query_cancels_it,
    temp_table_pins_the_connection_then_is_cleaned_up,
    session_mode_keeps_one_connection,
    cancel_pg_sleep_returns_within_a_second,
    connections_are_pooled,
    idle_clients_are_closed_after_idle_client_timeout,
];

/// A map whose proxy has one worker and `pool_size` server connections, so tests know which
/// connections clients share.
fn small_pool(ctx: &Ctx, pool_size: usize) -> anyhow::Result<String> {
    let map = proxy_setting(&ctx.default_map()?, "workers", "1");
    Ok(proxy_setting(&map, "pool_size", &pool_size.to_string()))
}

async fn backend_pid(client: &tokio_postgres::Client) -> anyhow::Result<i32> {
    Ok(client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0))
}

/// A named statement prepared once is re-prepared on whichever server connection serves the next
/// execution: 100 transactions, several connections, every result right.
fn prepared_statements_reused_across_100_transactions(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let proxy = ctx.start_proxy(&small_pool(ctx, 3)?)?;
        let client = proxy.client().await?;
        let other = proxy.client().await?;
        let stmt = client
            .prepare("SELECT $1::int8 * 2, pg_backend_pid()")
            .await?;
        let mut pids = HashSet::new();
        for i in 0..100i64 {
            // Every 10 transactions another client holds the connection this one used last, so the
            // next execution must run on a connection that has not seen the statement yet.
            if i % 10 == 5 {
                other.batch_execute("BEGIN; SELECT 1").await?;
            }
            if i % 10 == 9 {
                other.batch_execute("COMMIT").await?;
            }
            let row = client.query_one(&stmt, &[&i]).await?;
            assert_eq!(row.get::<_, i64>(0), i * 2, "transaction {i}");
            pids.insert(row.get::<_, i32>(1));
        }
        assert!(
            pids.len() >= 2,
            "the statement ran on {} server connection(s); the test needs at least 2",
            pids.len()
        );
        // Closing the statement and preparing the same name again works like on Postgres.
        drop(stmt);
        let again = client.prepare("SELECT $1::text || 'x'").await?;
        let row = client.query_one(&again, &[&"a"]).await?;
        assert_eq!(row.get::<_, String>(0), "ax");
        Ok(())
    })
}

/// Two clients with different settings share one server connection; each sees its own.
fn session_settings_follow_the_client(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let proxy = ctx.start_proxy(&small_pool(ctx, 1)?)?;
        let a = connect(&format!("{}?application_name=client_a", proxy.url())).await?;
        let b = connect(&format!("{}?application_name=client_b", proxy.url())).await?;
        a.batch_execute("SET search_path = a_schema, public; SET TIME ZONE 'Asia/Tokyo'")
            .await?;
        b.batch_execute("SET search_path = b_schema; SET statement_timeout = '7s'")
            .await?;
        let server_timezone: String = ctx
            .direct_client()
            .await?
            .query_one("SHOW TimeZone", &[])
            .await?
            .get(0);
        for _ in 0..5 {
            let row = a
                .query_one(
                    "SELECT current_setting('search_path'), current_setting('TimeZone'), \
                     current_setting('application_name'), current_setting('statement_timeout'), pg_backend_pid()",
                    &[],
                )
                .await?;
            assert_eq!(row.get::<_, String>(0), "a_schema, public");
            assert_eq!(row.get::<_, String>(1), "Asia/Tokyo");
            assert_eq!(row.get::<_, String>(2), "client_a");
            assert_eq!(row.get::<_, String>(3), "0");
            let pid_a: i32 = row.get(4);
            let row = b
                .query_one(
                    "SELECT current_setting('search_path'), current_setting('TimeZone'), \
                     current_setting('application_name'), current_setting('statement_timeout'), pg_backend_pid()",
                    &[],
                )
                .await?;
            assert_eq!(row.get::<_, String>(0), "b_schema");
            assert_eq!(
                row.get::<_, String>(1),
                server_timezone,
                "the server default"
            );
            assert_eq!(row.get::<_, String>(2), "client_b");
            assert_eq!(row.get::<_, String>(3), "7s");
            assert_eq!(
                row.get::<_, i32>(4),
                pid_a,
                "both clients share the one server connection"
            );
        }
        Ok(())
    })
}

/// SET in a rolled-back transaction, SET LOCAL and RESET end as on Postgres itself.
fn set_semantics_match_postgres(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let proxy = ctx.start_proxy(&small_pool(ctx, 1)?)?;
        // The same script directly against Postgres checks the expectations themselves.
        let direct = connect(&format!(
            "{} application_name=startup_name",
            ctx.primary()?.app_conninfo()
        ))
        .await?;
        let via = connect(&format!("{}?application_name=startup_name", proxy.url())).await?;
        let other = proxy.client().await?;
        let script = [
            (
                "BEGIN; SET search_path = rolled_back; ROLLBACK",
                "SHOW search_path",
                "\"$user\", public",
            ),
            (
                "BEGIN; SET LOCAL search_path = local_only; COMMIT",
                "SHOW search_path",
                "\"$user\", public",
            ),
            ("SET search_path = kept", "SHOW search_path", "kept"),
            (
                "SET application_name = changed",
                "SHOW application_name",
                "changed",
            ),
            (
                "RESET application_name",
                "SHOW application_name",
                "startup_name",
            ),
            ("RESET ALL", "SHOW search_path", "\"$user\", public"),
            (
                "SET statement_timeout = 1234",
                "SHOW statement_timeout",
                "1234ms",
            ),
            (
                "SELECT set_config('work_mem', '3MB', false)",
                "SHOW work_mem",
                "3MB",
            ),
        ];
        for (change, show, want) in script {
            via.batch_execute(change)
                .await
                .with_context(|| change.to_string())?;
            // Another client runs on the same connection in between.
            other.batch_execute("SELECT 1").await?;
            let got: String = via.query_one(show, &[]).await?.get(0);
            assert_eq!(got, want, "after {change:?}");
            direct.batch_execute(change).await?;
            let got: String = direct.query_one(show, &[]).await?.get(0);
            assert_eq!(got, want, "direct Postgres after {change:?}");
        }
        // The other client never saw any of it.
        let sp: String = other.query_one("SHOW search_path", &[]).await?.get(0);
        assert_eq!(sp, "\"$user\", public");
        let wm: String = other.query_one("SHOW work_mem", &[]).await?.get(0);
        assert_eq!(wm, "4MB");
        Ok(())
    })
}

/// `-c` options in the startup packet hold on every connection that serves the client.
fn startup_options_apply_on_every_connection(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let proxy = ctx.start_proxy(&small_pool(ctx, 2)?)?;
        let url = format!(
            "{}?options=-c%20search_path%3Dopt_schema%20-c%20DateStyle%3DSQL%2CDMY",
            proxy.url()
        );
        let client = connect(&url).await?;
        let other = proxy.client().await?;
        for i in 0..6 {
            if i == 3 {
                other.batch_execute("BEGIN; SELECT 1").await?;
            }
            let row = client
                .query_one(
                    "SELECT current_setting('search_path'), current_setting('DateStyle')",
                    &[],
                )
                .await?;
            assert_eq!(row.get::<_, String>(0), "opt_schema");
            assert_eq!(row.get::<_, String>(1), "SQL, DMY");
        }
        other.batch_execute("COMMIT").await?;
        Ok(())
    })
}

/// A client that disconnects inside a transaction leaves no open transaction, lock or row behind.
fn disconnect_mid_transaction_leaves_nothing_open(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let table = ctx.unique("pool_abandon");
        let direct = ctx.direct_client().await?;
        direct
            .batch_execute(&format!("CREATE TABLE {table} (id int)"))
            .await?;
        let proxy = ctx.start_proxy(&small_pool(ctx, 2)?)?;
        let client = connect(&format!("{}?application_name=abandoner", proxy.url())).await?;
        client
            .batch_execute(&format!(
                "BEGIN; INSERT INTO {table} VALUES (1); LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"
            ))
            .await?;
        let pid = backend_pid(&client).await?;
        drop(client);
        let admin = ctx.superuser_client().await?;
        wait_until(
            "the abandoned transaction to end",
            Duration::from_secs(10),
            || async {
                admin
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state <> 'idle'",
                        &[&pid],
                    )
                    .await
                    .is_ok_and(|r| r.get::<_, i64>(0) == 0)
            },
        )
        .await?;
        // The lock is gone and the row was never committed.
        direct
            .batch_execute(&format!(
                "SET lock_timeout = '2s'; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"
            ))
            .await?;
        let n: i64 = direct
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await?
            .get(0);
        assert_eq!(n, 0);
        // The proxy's connections are healthy for the next client.
        let next = proxy.client().await?;
        let one: i32 = next.query_one("SELECT 1", &[]).await?.get(0);
        assert_eq!(one, 1);
        Ok(())
    })
}

/// A client that disconnects while its query runs (psql killed) gets the query cancelled, not left
/// running on the server.
fn disconnect_mid_query_cancels_it(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let proxy = ctx.start_proxy(&small_pool(ctx, 2)?)?;
        let marker = ctx.unique("sleeper");
        let sql = format!("SELECT pg_sleep(30), '{marker}'");
        let mut psql = std::process::Command::new(ctx.cluster()?.bin().tool("psql"))
            .args(["-X", &proxy.url(), "-c", &sql])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let admin = ctx.superuser_client().await?;
        let like = format!("%{marker}%");
        let running = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE $1 AND state = 'active' AND pid <> pg_backend_pid()";
        wait_until("the query to start", Duration::from_secs(10), || async {
            admin
                .query_one(running, &[&like])
                .await
                .is_ok_and(|r| r.get::<_, i64>(0) == 1)
        })
        .await?;
        psql.kill()?;
        psql.wait()?;
        let started = Instant::now();
        wait_until(
            "the abandoned query to stop",
            Duration::from_secs(5),
            || async {
                admin
                    .query_one(running, &[&like])
                    .await
                    .is_ok_and(|r| r.get::<_, i64>(0) == 0)
            },
        )
        .await?;
        assert!(started.elapsed() < Duration::from_secs(5));
        Ok(())
    })
}

/// A temp table pins the client to its server connection (it stays usable across transactions
/// while other clients work), and is gone for the next client once the first disconnects.
fn temp_table_pins_the_connection_then_is_cleaned_up(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let proxy = ctx.start_proxy(&small_pool(ctx, 2)?)?;
        let owner = proxy.client().await?;
        owner
            .batch_execute("CREATE TEMP TABLE scratch (v int); INSERT INTO scratch VALUES (42)")
            .await?;
        let pinned_pid = backend_pid(&owner).await?;
        let others = [proxy.client().await?, proxy.client().await?];
        for i in 0..10 {
            for o in &others {
                let pid = backend_pid(o).await?;
                assert_ne!(
                    pid, pinned_pid,
                    "round {i}: another client got the pinned connection"
                );
            }
            let v: i32 = owner.query_one("SELECT v FROM scratch", &[]).await?.get(0);
            assert_eq!(v, 42);
            assert_eq!(backend_pid(&owner).await?, pinned_pid);
        }
        drop(owner);
        // Once the owner is gone its connection serves others again, without the temp table: two
        // clients in open transactions hold both pooled connections, so one of them is that one.
        wait_until("the pinned connection to serve another client", Duration::from_secs(10), || async {
            let (Ok(x), Ok(y)) = (proxy.client().await, proxy.client().await) else {
                return false;
            };
            let mut found_clean = false;
            for c in [&x, &y] {
                if c.batch_execute("BEGIN").await.is_err() {
                    return false;
                }
                if backend_pid(c).await.ok() == Some(pinned_pid) {
                    let temp: i64 = c
                        .query_one("SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()", &[])
                        .await
                        .map(|r| r.get(0))
                        .unwrap_or(-1);
                    found_clean = temp == 0;
                }
            }
            found_clean
        })
        .await?;
        Ok(())
    })
}

/// In session mode a client keeps one server connection, and its SET state needs no replay.
fn session_mode_keeps_one_connection(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let map = proxy_setting(&small_pool(ctx, 2)?, "pool_mode", "\"session\"");
        let proxy = ctx.start_proxy(&map)?;
        let a = proxy.client().await?;
        a.batch_execute("SET search_path = sess").await?;
        let pid = backend_pid(&a).await?;
        let b = proxy.client().await?;
        for _ in 0..5 {
            assert_eq!(backend_pid(&a).await?, pid);
            assert_ne!(backend_pid(&b).await?, pid);
            let sp: String = a.query_one("SHOW search_path", &[]).await?.get(0);
            assert_eq!(sp, "sess");
        }
        drop(a);
        drop(b);
        // The next session gets clean connections (DISCARD ALL after the SET).
        wait_until("both sessions to end", Duration::from_secs(5), || async {
            proxy.handle().client_count() == 0
        })
        .await?;
        let c = proxy.client().await?;
        let d = proxy.client().await?;
        for x in [&c, &d] {
            let sp: String = x.query_one("SHOW search_path", &[]).await?.get(0);
            assert_eq!(sp, "\"$user\", public");
        }
        Ok(())
    })
}

/// A cancel request (tokio-postgres's cancel token, libpq's PQcancel) stops the client's query.
fn cancel_pg_sleep_returns_within_a_second(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let proxy = ctx.start_proxy(&ctx.default_map()?)?;
        let client = proxy.client().await?;
        let token = client.cancel_token();
        let started = Instant::now();
        let query = tokio::spawn(async move {
            let r = client.query("SELECT pg_sleep(30)", &[]).await;
            (r, client)
        });
        // Cancel once the query runs on the server.
        let admin = ctx.superuser_client().await?;
        wait_until("pg_sleep to start", Duration::from_secs(10), || async {
            admin
                .query_one("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'", &[])
                .await
                .is_ok_and(|r| r.get::<_, i64>(0) >= 1)
        })
        .await?;
        let cancel_sent = Instant::now();
        token.cancel_query(tokio_postgres::NoTls).await?;
        let (result, client) = query.await?;
        let err = result.expect_err("the query was cancelled");
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
            "{err}"
        );
        assert!(
            cancel_sent.elapsed() < Duration::from_secs(1),
            "took {:?}",
            cancel_sent.elapsed()
        );
        assert!(started.elapsed() < Duration::from_secs(15));
        // The session goes on.
        let one: i32 = client.query_one("SELECT 1", &[]).await?.get(0);
        assert_eq!(one, 1);
        Ok(())
    })
}

/// 40 clients one after the other are served by at most the pool's connections.
fn connections_are_pooled(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let proxy = ctx.start_proxy(&small_pool(ctx, 2)?)?;
        let mut pids = HashSet::new();
        for _ in 0..40 {
            let c = proxy.client().await?;
            pids.insert(backend_pid(&c).await?);
        }
        assert!(
            pids.len() <= 2,
            "40 clients used {} server connections",
            pids.len()
        );
        Ok(())
    })
}

/// `proxy.idle_client_timeout`: a client idle that long gets FATAL 57P05 and is closed; a client
/// with a transaction open is not idle and keeps its transaction.
fn idle_clients_are_closed_after_idle_client_timeout(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let map = proxy_setting(&ctx.default_map()?, "idle_client_timeout", "\"300ms\"");
        let proxy = ctx.start_proxy(&map)?;
        let idle = proxy.client().await?;
        idle.simple_query("SELECT 1").await?;
        let busy = proxy.client().await?;
        busy.batch_execute("BEGIN; SELECT 1").await?;
        crate::harness::wait_until(
            "the idle client to be closed",
            std::time::Duration::from_secs(10),
            || async { idle.is_closed() },
        )
        .await?;
        // Longer than the timeout has passed for both; the transaction is still open and ends.
        assert!(!busy.is_closed());
        busy.batch_execute("SELECT 2; COMMIT").await?;
        let e = idle.simple_query("SELECT 1").await.expect_err("closed");
        assert!(e.is_closed(), "{e}");
        // What an idle client receives: FATAL 57P05.
        use shardgate::localcluster::{APP_DATABASE, APP_PASSWORD, APP_USER};
        let mut raw = crate::rawclient::RawClient::connect(
            proxy.addr(),
            APP_USER,
            APP_PASSWORD,
            APP_DATABASE,
            &[],
        )
        .await?;
        let (tag, body) = raw.read_message().await?;
        assert_eq!(tag, b'E');
        assert_eq!(
            crate::rawclient::error_field(&body, b'C').as_deref(),
            Some("57P05"),
            "{}",
            crate::rawclient::describe_error(&body)
        );
        Ok(())
    })
}
