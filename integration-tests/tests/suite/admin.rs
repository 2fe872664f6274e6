//! The admin console (database `shardgate`), its permissions, PAUSE/RESUME, and `/metrics`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, anyhow, ensure};

use crate::harness::{
    Ctx, block_on, connect, proxy_setting, routed, scrape_metrics, tests, wait_until,
};
use crate::reload::{admin, admin_rows, config_value, with_admin};

tests![
    admin_console_shows_the_proxy_and_refuses_other_users,
    pause_holds_new_transactions_until_resume,
    pause_holds_a_transaction_over_several_shards,
    metrics_parse_and_their_counters_move,
];

/// The value of `column` in `row`.
fn col<'a>(row: &'a [(String, Option<String>)], column: &str) -> Option<&'a str> {
    row.iter()
        .find(|(c, _)| c == column)
        .and_then(|(_, v)| v.as_deref())
}

/// Polls `SHOW CLIENTS` on `console` until a client is `waiting` (held by PAUSE).
async fn until_a_client_waits(console: &tokio_postgres::Client, what: &str) -> anyhow::Result<()> {
    wait_until(what, Duration::from_secs(10), || async {
        admin_rows(console, "SHOW CLIENTS")
            .await
            .map(|rows| rows.iter().any(|r| col(r, "state") == Some("waiting")))
            .unwrap_or(false)
    })
    .await
}

/// `SHOW SHARDS`, `SERVERS`, `POOLS`, `CLIENTS`, `STATS`, `CONFIG`, `HELP` answer with the
/// columns and rows the cluster and the traffic call for; an unknown command gets 42601; a user
/// not marked admin gets FATAL 42501 on the console and still uses the proxy; the admin user can
/// use the proxy too.
fn admin_console_shows_the_proxy_and_refuses_other_users(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let cluster = ctx.cluster()?;
        let shard = &cluster.shards()[0];
        let map = routed(&with_admin(&cluster.shard_map_toml("127.0.0.1:0")), "", "");
        let proxy = ctx.start_proxy(&map)?;
        let console = admin(proxy.addr()).await?;

        let shards = admin_rows(&console, "SHOW SHARDS").await?;
        ensure!(shards.len() == 1, "{shards:?}");
        ensure!(col(&shards[0], "shard") == Some("s0"), "{shards:?}");
        ensure!(col(&shards[0], "primary") == Some(shard.primary.addr().as_str()));
        ensure!(col(&shards[0], "writable") == Some("true"));
        ensure!(col(&shards[0], "state") == Some("running"));
        ensure!(col(&shards[0], "hash_end") == Some("4294967296"));

        // Traffic through the proxy: writes on the primary, reads on the replicas.
        let client = proxy.client().await?;
        let table = ctx.unique("admin_stats");
        client
            .batch_execute(&format!("CREATE TABLE {table} (id int)"))
            .await?;
        for i in 0..10 {
            client
                .execute(&format!("INSERT INTO {table} VALUES ($1)"), &[&i])
                .await?;
        }
        client.batch_execute("SELECT 1").await?;
        // A write the server refuses: on the primary.
        let err = client
            .batch_execute("INSERT INTO no_such_table_at_all VALUES (1)")
            .await
            .err()
            .context("an insert into a missing table passed")?;
        ensure!(err.code().map(|c| c.code()) == Some("42P01"));

        let servers = admin_rows(&console, "SHOW SERVERS").await?;
        ensure!(servers.len() == 3, "{servers:?}");
        let by_server: HashMap<&str, &Vec<(String, Option<String>)>> = servers
            .iter()
            .map(|r| (col(r, "server").unwrap_or(""), r))
            .collect();
        let primary = by_server
            .get(shard.primary.addr().as_str())
            .context("the primary in SHOW SERVERS")?;
        ensure!(col(primary, "role") == Some("primary"));
        ensure!(col(primary, "health") == Some("up"));
        ensure!(col(primary, "state") == Some("ok"));
        for r in &shard.replicas {
            let row = by_server
                .get(r.addr().as_str())
                .context("a replica in SHOW SERVERS")?;
            ensure!(col(row, "role") == Some("replica"), "{row:?}");
            ensure!(col(row, "lag_bytes").is_some());
        }

        let stats = admin_rows(&console, "SHOW STATS").await?;
        let primary_stats = stats
            .iter()
            .find(|r| col(r, "server") == Some(shard.primary.addr().as_str()))
            .context("the primary in SHOW STATS")?;
        let queries: u64 = col(primary_stats, "queries").unwrap_or("0").parse()?;
        ensure!(
            queries >= 12,
            "the primary answered {queries} queries (>= 12 sent)"
        );
        let errors: u64 = col(primary_stats, "errors").unwrap_or("0").parse()?;
        ensure!(errors >= 1, "the primary's errors: {errors}");
        let sent: u64 = col(primary_stats, "bytes_sent").unwrap_or("0").parse()?;
        let received: u64 = col(primary_stats, "bytes_received")
            .unwrap_or("0")
            .parse()?;
        ensure!(sent > 0 && received > 0, "bytes {sent} / {received}");
        let avg: u64 = col(primary_stats, "avg_query_us").unwrap_or("0").parse()?;
        ensure!(avg > 0, "average latency {avg}");

        // This client, in a transaction: active on s0. The console itself: admin.
        client.batch_execute("BEGIN; SELECT 1").await?;
        let clients = admin_rows(&console, "SHOW CLIENTS").await?;
        ensure!(clients.len() == 2, "{clients:?}");
        let app = clients
            .iter()
            .find(|r| col(r, "user") == Some("app"))
            .context("the app client in SHOW CLIENTS")?;
        ensure!(col(app, "state") == Some("active"), "{app:?}");
        ensure!(col(app, "shard") == Some("s0"), "{app:?}");
        ensure!(col(app, "addr") == Some("127.0.0.1"));
        let ops = clients
            .iter()
            .find(|r| col(r, "user") == Some("ops"))
            .context("the console in SHOW CLIENTS")?;
        ensure!(col(ops, "state") == Some("admin") && col(ops, "database") == Some("shardgate"));
        let pools = admin_rows(&console, "SHOW POOLS").await?;
        let pool = pools
            .iter()
            .find(|r| col(r, "server") == Some(shard.primary.addr().as_str()))
            .context("the primary in SHOW POOLS")?;
        ensure!(col(pool, "cl_active") == Some("1"), "{pool:?}");
        let active: u64 = col(pool, "sv_active").unwrap_or("0").parse()?;
        ensure!(active >= 1, "{pool:?}");
        ensure!(col(pool, "pool_mode") == Some("transaction"));
        client.batch_execute("COMMIT").await?;
        let clients = admin_rows(&console, "SHOW CLIENTS").await?;
        let app = clients
            .iter()
            .find(|r| col(r, "user") == Some("app"))
            .context("the app client")?;
        ensure!(col(app, "state") == Some("idle"), "{app:?}");

        ensure!(config_value(&console, "map_generation").await?.as_deref() == Some("1"));
        ensure!(config_value(&console, "proxy.pool_size").await?.as_deref() == Some("20"));
        ensure!(config_value(&console, "users").await?.as_deref() == Some("app,ops (admin)"));
        ensure!(admin_rows(&console, "SHOW HELP").await?.len() >= 10);
        // Several commands in one query.
        let two = console.simple_query("SHOW SHARDS; SHOW HELP").await?;
        ensure!(two.len() > 3);

        let bad = console
            .simple_query("SHOW NONSENSE")
            .await
            .err()
            .context("an unknown SHOW was answered")?;
        ensure!(bad.code().map(|c| c.code()) == Some("42601"), "{bad:?}");
        let bad = console
            .simple_query("DROP TABLE x")
            .await
            .err()
            .context("an unknown command was answered")?;
        ensure!(bad.code().map(|c| c.code()) == Some("42601"));
        let bad = console
            .simple_query("PAUSE nosuchshard")
            .await
            .err()
            .context("PAUSE of an unknown shard")?;
        ensure!(bad.code().map(|c| c.code()) == Some("22023"));
        // The console goes on after errors.
        ensure!(admin_rows(&console, "SHOW SHARDS").await?.len() == 1);
        // RELOAD without a map file: refused with F0000, nothing changes.
        let bad = console
            .simple_query("RELOAD")
            .await
            .err()
            .context("RELOAD without a map file")?;
        ensure!(bad.code().map(|c| c.code()) == Some("F0000"), "{bad:?}");

        // A user who is not an admin: FATAL 42501 at login, with a hint.
        let denied = connect(&format!(
            "host=127.0.0.1 port={} user=app password=secret dbname=shardgate",
            proxy.addr().port()
        ))
        .await
        .err()
        .context("a non-admin user reached the console")?;
        let db = denied
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(|e| e.as_db_error())
            .context("a server error")?;
        ensure!(db.code().code() == "42501", "{db:?}");
        ensure!(db.severity() == "FATAL", "{db:?}");
        ensure!(db.message().contains("admin console"), "{db:?}");
        ensure!(
            db.hint().is_some_and(|h| h.contains("admin = true")),
            "{db:?}"
        );
        // The admin user is an ordinary user of the proxy too.
        let as_ops = connect(&format!(
            "host=127.0.0.1 port={} user=ops password=opspw dbname=app",
            proxy.addr().port()
        ))
        .await?;
        let one: i32 = as_ops.query_one("SELECT 1", &[]).await?.get(0);
        ensure!(one == 1);
        client.batch_execute(&format!("DROP TABLE {table}")).await?;
        Ok(())
    })
}

/// PAUSE waits for the running transaction to end and holds new ones (their clients show as
/// waiting) until RESUME; PAUSE of one shard holds only that shard's transactions.
fn pause_holds_new_transactions_until_resume(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let map = with_admin(&ctx.default_map()?);
        let proxy = ctx.start_proxy(&map)?;
        let console = admin(proxy.addr()).await?;
        let watcher = admin(proxy.addr()).await?;
        let running = proxy.client().await?;
        running.batch_execute("BEGIN; SELECT 1").await?;

        let pause = tokio::spawn(async move {
            console.simple_query("PAUSE").await?;
            Ok::<_, tokio_postgres::Error>(console)
        });
        wait_until(
            "SHOW SHARDS to say paused",
            Duration::from_secs(10),
            || async {
                admin_rows(&watcher, "SHOW SHARDS")
                    .await
                    .map(|r| col(&r[0], "state") == Some("paused"))
                    .unwrap_or(false)
            },
        )
        .await?;
        // The running transaction goes on while paused, and PAUSE waits for its end.
        let two: i32 = running.query_one("SELECT 2", &[]).await?.get(0);
        ensure!(two == 2);
        ensure!(
            !pause.is_finished(),
            "PAUSE returned while a transaction was open"
        );
        running.batch_execute("COMMIT").await?;
        let console = tokio::time::timeout(Duration::from_secs(10), pause)
            .await
            .map_err(|_| anyhow!("PAUSE did not return after the transaction ended"))???;

        // A new transaction waits.
        let held = proxy.client().await?;
        let query = tokio::spawn(async move {
            let v: i32 = held.query_one("SELECT 3", &[]).await?.get(0);
            Ok::<_, tokio_postgres::Error>(v)
        });
        until_a_client_waits(&watcher, "a client waiting in SHOW CLIENTS").await?;
        ensure!(!query.is_finished(), "a transaction ran while paused");
        console.simple_query("RESUME").await?;
        let v = tokio::time::timeout(Duration::from_secs(10), query)
            .await
            .map_err(|_| anyhow!("the held transaction did not run after RESUME"))???;
        ensure!(v == 3);
        let shards = admin_rows(&watcher, "SHOW SHARDS").await?;
        ensure!(col(&shards[0], "state") == Some("running"));

        // PAUSE of the shard by name, then RESUME of it.
        console.simple_query("PAUSE s0").await?;
        let held = proxy.client().await?;
        let query = tokio::spawn(async move {
            let v: i32 = held.query_one("SELECT 4", &[]).await?.get(0);
            Ok::<_, tokio_postgres::Error>(v)
        });
        until_a_client_waits(&watcher, "a client waiting on s0").await?;
        console.simple_query("RESUME s0").await?;
        let v = tokio::time::timeout(Duration::from_secs(10), query)
            .await
            .map_err(|_| anyhow!("the held transaction did not run after RESUME s0"))???;
        ensure!(v == 4);
        Ok(())
    })
}

/// The sum of every sample of `name` whose labels contain all of `labels`.
fn sum(m: &HashMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    m.iter()
        .filter(|(k, _)| k.split('{').next() == Some(name) && labels.iter().all(|l| k.contains(l)))
        .map(|(_, v)| v)
        .sum()
}

/// `/metrics` parses (one TYPE per family, every sample a number) and its counters move with
/// the traffic: queries by route, errors by class, pool waits, latency histograms, transactions,
/// bytes, reloads (a refused one too), clients.
fn metrics_parse_and_their_counters_move(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let map = proxy_setting(
            &with_admin(&ctx.default_map()?),
            "metrics_listen",
            "\"127.0.0.1:0\"",
        );
        let (proxy, file) = ctx.start_proxy_from_file(&map)?;
        let metrics = proxy
            .handle()
            .metrics_addr()
            .context("metrics_listen is set")?;
        let primary = ctx.primary()?.addr();
        let before = scrape_metrics(metrics).await?;
        let client = proxy.client().await?;
        for i in 0..20 {
            let v: i32 = client.query_one("SELECT $1::int4", &[&i]).await?.get(0);
            ensure!(v == i);
        }
        client
            .batch_execute("SELECT * FROM no_such_table_here")
            .await
            .err()
            .context("a missing table")?;
        // A refused and an applied reload.
        file.write("[proxy]\npool_size = \"many\"\n")?;
        ensure!(proxy.handle().reload().await.is_err());
        file.write(&proxy_setting(&map, "pool_size", "19"))?;
        proxy
            .handle()
            .reload()
            .await
            .map_err(|e| anyhow!("reload refused: {e}"))?;
        let after = scrape_metrics(metrics).await?;
        let server = format!("server=\"{primary}\"");
        let q = |m: &HashMap<String, f64>| {
            sum(
                m,
                "shardgate_queries_total",
                &[&server, "route=\"single\"", "role=\"primary\""],
            )
        };
        ensure!(
            q(&after) - q(&before) >= 20.0,
            "queries {} -> {}",
            q(&before),
            q(&after)
        );
        let d =
            |name: &str, labels: &[&str]| sum(&after, name, labels) - sum(&before, name, labels);
        ensure!(
            d("shardgate_errors_total", &["class=\"42\""]) >= 1.0,
            "errors by class"
        );
        ensure!(
            d("shardgate_pool_wait_seconds_count", &[]) >= 1.0,
            "pool waits"
        );
        ensure!(
            d("shardgate_query_duration_seconds_count", &[&server]) >= 20.0,
            "latency count"
        );
        ensure!(
            d("shardgate_query_duration_seconds_sum", &[&server]) > 0.0,
            "latency sum"
        );
        ensure!(
            d(
                "shardgate_query_duration_seconds_bucket",
                &[&server, "le=\"+Inf\""]
            ) >= 20.0,
            "latency buckets"
        );
        ensure!(
            d("shardgate_transactions_total", &[&server]) >= 20.0,
            "transactions"
        );
        ensure!(
            d(
                "shardgate_server_bytes_total",
                &[&server, "direction=\"sent\""]
            ) > 0.0,
            "bytes sent"
        );
        ensure!(
            d("shardgate_reloads_total", &["result=\"applied\""]) == 1.0,
            "applied reloads"
        );
        ensure!(
            d("shardgate_reloads_total", &["result=\"refused\""]) == 1.0,
            "refused reloads"
        );
        ensure!(sum(&after, "shardgate_map_generation", &[]) == 2.0);
        ensure!(sum(&after, "shardgate_clients", &[]) >= 1.0);
        ensure!(
            sum(
                &after,
                "shardgate_server_up",
                &[&server, "role=\"primary\""]
            ) == 1.0,
            "server up"
        );
        let pool = sum(&after, "shardgate_pool_connections", &[&server]);
        ensure!(pool >= 1.0, "pooled connections {pool}");
        Ok(())
    })
}

/// PAUSE also holds a transaction over several shards (a BEGIN sent before the PAUSE, then a
/// statement on every shard), which the session counts as open before it takes any connection.
fn pause_holds_a_transaction_over_several_shards(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let s = crate::sharded::sharded(ctx, 2).await?;
        let map = with_admin(&format!(
            "{}\n{}",
            s.cluster.shard_map_toml("127.0.0.1:0"),
            crate::sharded::TABLES
        ));
        let proxy = ctx.start_proxy(&map)?;
        let client = proxy.client().await?;
        client
            .batch_execute("CREATE TABLE users (id bigint PRIMARY KEY)")
            .await?;
        let console = admin(proxy.addr()).await?;
        // BEGIN alone reaches no server yet (the next statement decides where it goes).
        client.batch_execute("BEGIN").await?;
        console.simple_query("PAUSE").await?;
        let query = tokio::spawn(async move {
            let rows = client.simple_query("SELECT count(*) FROM users").await?;
            client.batch_execute("COMMIT").await?;
            Ok::<_, tokio_postgres::Error>(rows.len())
        });
        until_a_client_waits(&console, "the transaction over the shards to wait").await?;
        ensure!(
            !query.is_finished(),
            "a transaction over the shards ran while paused"
        );
        console.simple_query("RESUME").await?;
        tokio::time::timeout(Duration::from_secs(10), query)
            .await
            .map_err(|_| anyhow!("the held transaction did not run after RESUME"))???;
        Ok(())
    })
}
