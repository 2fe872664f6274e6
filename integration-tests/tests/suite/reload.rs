//! Live reload of the shard map: under load with no client error, replicas added, removed and
//! drained, a moved primary, a new user, refused maps that leave the old one serving.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use shardgate::localcluster::ClusterSpec;
use tokio_postgres::SimpleQueryMessage;

use crate::harness::{Ctx, block_on, connect, routed, tests, wait_until};

tests![
    reload_under_load_applies_twenty_maps_without_a_client_error,
    reload_drains_a_removed_replica_moves_the_primary_and_adds_a_user,
];

/// Adds an admin user `ops` (password `opspw`) to a map written by the local cluster.
pub fn with_admin(map: &str) -> String {
    map.replacen(
        "[backend]",
        "[[users]]\nname = \"ops\"\npassword = \"opspw\"\nadmin = true\n\n[backend]",
        1,
    )
}

/// A client on the admin console of the proxy at `addr`.
pub async fn admin(addr: std::net::SocketAddr) -> anyhow::Result<tokio_postgres::Client> {
    connect(&format!(
        "host=127.0.0.1 port={} user=ops password=opspw dbname=shardgate",
        addr.port()
    ))
    .await
}

/// The rows of an admin command, as (column → value) lists.
pub async fn admin_rows(
    client: &tokio_postgres::Client,
    command: &str,
) -> anyhow::Result<Vec<Vec<(String, Option<String>)>>> {
    let mut rows = Vec::new();
    for m in client.simple_query(command).await? {
        if let SimpleQueryMessage::Row(r) = m {
            rows.push(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_string(), r.get(i).map(str::to_string)))
                    .collect(),
            );
        }
    }
    Ok(rows)
}

/// The value of `key` in `SHOW CONFIG`.
pub async fn config_value(
    client: &tokio_postgres::Client,
    key: &str,
) -> anyhow::Result<Option<String>> {
    for row in admin_rows(client, "SHOW CONFIG").await? {
        if row[0].1.as_deref() == Some(key) {
            return Ok(row[1].1.clone());
        }
    }
    Err(anyhow!("SHOW CONFIG has no {key}"))
}

/// `map` with its replicas line replaced by `replicas` (TOML array items).
fn with_replicas(map: &str, replicas: &str) -> String {
    map.lines()
        .map(|l| {
            if l.trim_start().starts_with("replicas") {
                format!("replicas = [{replicas}]")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The rows of table `moved` on `server`, read directly: (id, port of the server that wrote it).
async fn moved_rows(server: &shardgate::localcluster::Instance) -> anyhow::Result<Vec<(i32, i32)>> {
    Ok(connect(&server.app_conninfo())
        .await?
        .query("SELECT id, at FROM moved ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Polls `server` (as its superuser) until no connection of the `app` role is left on it.
async fn no_app_connections(
    server: &shardgate::localcluster::Instance,
    what: &str,
) -> anyhow::Result<()> {
    let su = connect(&server.superuser_conninfo("postgres")).await?;
    wait_until(
        &format!("{what}'s connections to close"),
        Duration::from_secs(10),
        || async {
            su.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND backend_type = 'client backend'",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0) == 0)
            .unwrap_or(false)
        },
    )
    .await
}

async fn port_of(client: &tokio_postgres::Client) -> anyhow::Result<u16> {
    for m in client.simple_query("SELECT inet_server_port()").await? {
        if let SimpleQueryMessage::Row(r) = m {
            return Ok(r.get(0).context("a port")?.parse()?);
        }
    }
    Err(anyhow!("no row"))
}

/// Polls reads of `client` until 30 in a row land on `allowed` and, together, on every server of
/// `must_see`; returns how long until a read sent then was answered by the last server of
/// `must_see` to answer one.
async fn reads_settle(
    client: &tokio_postgres::Client,
    allowed: &BTreeSet<u16>,
    must_see: &BTreeSet<u16>,
    what: &str,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(10);
    let mut streak = 0;
    let mut seen = BTreeSet::new();
    let mut ever = BTreeSet::new();
    let mut all_seen = None;
    while streak < 30 || !must_see.is_subset(&seen) {
        ensure!(
            Instant::now() < deadline,
            "{what}: reads did not settle on {allowed:?} (seen {seen:?}, must see {must_see:?})"
        );
        // When the read was sent: a read sent then went to the server (opening a connection to a
        // server just added may take longer under load, and is not routing).
        let sent = started.elapsed();
        let port = port_of(client).await?;
        ever.insert(port);
        if all_seen.is_none() && must_see.is_subset(&ever) {
            all_seen = Some(sent);
        }
        if allowed.contains(&port) {
            streak += 1;
            seen.insert(port);
        } else {
            streak = 0;
            seen.clear();
        }
    }
    Ok(all_seen.unwrap_or_default())
}

/// 16 clients run transactions (and reads) while the map changes 20 times: replicas added and
/// removed, weights, balancing modes, write functions, and three broken maps. No client sees an
/// error; each change shows in where reads go or in `SHOW CONFIG`; each broken map is refused
/// with its line and key and the previous map keeps serving. Reloads come from the file watcher,
/// `ProxyHandle::reload` and the admin console's RELOAD in turn.
fn reload_under_load_applies_twenty_maps_without_a_client_error(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let cluster = ctx.cluster()?;
        let shard = &cluster.shards()[0];
        let (p, r1, r2) = (
            shard.primary.port,
            shard.replicas[0].port,
            shard.replicas[1].port,
        );
        let (ra, rb) = (shard.replicas[0].addr(), shard.replicas[1].addr());
        let base = with_admin(&cluster.shard_map_toml("127.0.0.1:0"));
        let map =
            |replicas: &str, routing: &str| routed(&with_replicas(&base, replicas), routing, "");
        let both = format!("\"{ra}\", \"{rb}\"");
        let (proxy, file) = ctx.start_proxy_from_file(&map(&both, ""))?;
        let table = ctx.unique("reload_load");
        let direct = ctx.direct_client().await?;
        direct
            .batch_execute(&format!(
                "CREATE TABLE {table} (c int, n int, PRIMARY KEY (c, n))"
            ))
            .await?;
        // Every replica has the table before reads of it can go there.
        wait_until(
            "the table on both replicas",
            Duration::from_secs(10),
            || async {
                let mut ok = true;
                for r in &shard.replicas {
                    ok &= match connect(&r.app_conninfo()).await {
                        Ok(c) => c
                            .simple_query(&format!("SELECT 1 FROM {table} LIMIT 1"))
                            .await
                            .is_ok(),
                        Err(_) => false,
                    };
                }
                ok
            },
        )
        .await?;

        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(Vec::<String>::new()));
        let done = Arc::new(AtomicU64::new(0));
        let mut workers = Vec::new();
        for c in 0..16i32 {
            let mut client = proxy.client().await?;
            let (stop, errors, done, table) =
                (stop.clone(), errors.clone(), done.clone(), table.clone());
            workers.push(tokio::spawn(async move {
                let mut n = 0i32;
                while !stop.load(Ordering::Relaxed) {
                    let result: anyhow::Result<()> = async {
                        if c % 2 == 0 {
                            // Simple protocol.
                            client
                                .batch_execute(&format!(
                                    "BEGIN; INSERT INTO {table} VALUES ({c}, {n}); COMMIT"
                                ))
                                .await?;
                        } else {
                            // Extended protocol, a prepared statement kept across reloads.
                            let tx = client.transaction().await?;
                            tx.execute(&format!("INSERT INTO {table} VALUES ($1, $2)"), &[&c, &n])
                                .await?;
                            let count: i64 = tx
                                .query_one(
                                    &format!("SELECT count(*) FROM {table} WHERE c = $1"),
                                    &[&c],
                                )
                                .await?
                                .get(0);
                            ensure!(
                                count == i64::from(n) + 1,
                                "client {c} counted {count} rows after {n}"
                            );
                            tx.commit().await?;
                        }
                        // A read outside a transaction: a replica (or the primary) answers.
                        client.simple_query("SELECT inet_server_port()").await?;
                        Ok(())
                    }
                    .await;
                    if let Err(e) = result {
                        errors.lock().unwrap().push(format!("client {c}: {e:#}"));
                    }
                    n += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                n
            }));
        }

        let checker = proxy.client().await?;
        let console = admin(proxy.addr()).await?;
        let set = |ports: &[u16]| ports.iter().copied().collect::<BTreeSet<u16>>();
        let none = BTreeSet::new();
        let w0 = |a: &str, b: &str| format!("{{ addr = \"{a}\", weight = 0 }}, \"{b}\"");
        // (replicas, routing, reads allowed, reads that must be seen, config check, broken)
        type Step = (
            String,
            String,
            BTreeSet<u16>,
            BTreeSet<u16>,
            Option<(&'static str, &'static str)>,
        );
        // A step where reads land on `ports` only, and on each of them.
        let only = |replicas: String, ports: &[u16]| -> Option<Step> {
            Some((replicas, String::new(), set(ports), set(ports), None))
        };
        let (one_a, one_b) = (format!("\"{ra}\""), format!("\"{rb}\""));
        let steps: Vec<Option<Step>> = vec![
            only(one_a.clone(), &[r1]),
            only(both.clone(), &[r1, r2]),
            only(String::new(), &[p]),
            None,
            only(one_b.clone(), &[r2]),
            only(w0(&ra, &rb), &[r2]),
            only(w0(&rb, &ra), &[r1]),
            Some((
                both.clone(),
                "read_balance = \"least_connections\"".into(),
                set(&[r1, r2]),
                none.clone(),
                Some(("routing.read_balance", "LeastConnections")),
            )),
            Some((
                both.clone(),
                "read_balance = \"source\"".into(),
                set(&[r1, r2]),
                none.clone(),
                Some(("routing.read_balance", "Source")),
            )),
            None,
            Some((
                both.clone(),
                "write_functions = [\"my_counter\"]\nread_from_primary = true".into(),
                set(&[p, r1, r2]),
                set(&[p]),
                Some(("routing.read_from_primary", "true")),
            )),
            only(one_a.clone(), &[r1]),
            only(String::new(), &[p]),
            only(one_b.clone(), &[r2]),
            only(both.clone(), &[r1, r2]),
            None,
            only(w0(&ra, &rb), &[r2]),
            Some((
                one_a.clone(),
                "read_balance = \"least_connections\"".into(),
                set(&[r1]),
                set(&[r1]),
                Some(("routing.read_balance", "LeastConnections")),
            )),
            only(both.clone(), &[r1, r2]),
            only(one_b.clone(), &[r2]),
        ];
        assert_eq!(steps.len(), 20);
        let broken = [
            // A TOML syntax error.
            (
                map(&both, "").replacen("replicas = [", "replicas = [[", 1),
                "line",
            ),
            // A validation error: the key and its line.
            (
                map(&both, "").replacen("pool_size = 20", "pool_size = 0", 1),
                "proxy.pool_size",
            ),
            // A server address that does not parse.
            (map("\"not-an-address\"", ""), "replicas"),
        ];
        let shared = proxy.handle().shared().clone();
        let mut broken_seen = 0;
        let mut slowest = Duration::ZERO;
        for (i, step) in steps.into_iter().enumerate() {
            let generation = shared.generation();
            let refused = shared.reload_status.refused.load(Ordering::Relaxed);
            let done_before = done.load(Ordering::Relaxed);
            let text = match &step {
                Some((replicas, routing, ..)) => map(replicas, routing),
                None => broken[broken_seen].0.clone(),
            };
            file.write(&text)?;
            // Who applies it: the file watcher, the handle, the admin console, in turn.
            let outcome = match i % 3 {
                0 => {
                    wait_until(
                        &format!("step {i} seen by the file watcher"),
                        Duration::from_secs(10),
                        || async {
                            shared.generation() != generation
                                || shared.reload_status.refused.load(Ordering::Relaxed) != refused
                        },
                    )
                    .await?;
                    if shared.generation() != generation {
                        Ok(())
                    } else {
                        Err(shared.reload_status.last_error().unwrap_or_default())
                    }
                }
                1 => proxy.handle().reload().await.map(|_| ()),
                _ => match console.simple_query("RELOAD").await {
                    Ok(_) => Ok(()),
                    Err(e) => Err(e
                        .as_db_error()
                        .map(|d| format!("{} {}", d.code().code(), d.message()))
                        .unwrap_or_else(|| e.to_string())),
                },
            };
            match step {
                None => {
                    let why = outcome
                        .err()
                        .with_context(|| format!("step {i}: the broken map was applied"))?;
                    ensure!(
                        why.contains(broken[broken_seen].1),
                        "step {i}: the refusal \"{why}\" does not name {}",
                        broken[broken_seen].1
                    );
                    if i % 3 == 2 {
                        ensure!(why.contains("F0000"), "step {i}: RELOAD refused with {why}");
                    }
                    ensure!(
                        shared.generation() == generation,
                        "step {i}: generation moved"
                    );
                    let shown = config_value(&console, "last_reload_error").await?;
                    ensure!(
                        shown
                            .as_deref()
                            .is_some_and(|s| s.contains(broken[broken_seen].1)),
                        "step {i}: SHOW CONFIG last_reload_error is {shown:?}"
                    );
                    broken_seen += 1;
                }
                Some((_, _, allowed, must_see, check)) => {
                    outcome.map_err(|e| anyhow!("step {i}: reload refused: {e}"))?;
                    ensure!(
                        shared.generation() == generation + 1,
                        "step {i}: generation"
                    );
                    let took =
                        reads_settle(&checker, &allowed, &must_see, &format!("step {i}")).await?;
                    // A server the map adds takes reads at once (before its first probe): well
                    // within one default health interval (1 s) of the reload, even on a loaded
                    // machine (a few ms measured).
                    ensure!(
                        took < Duration::from_secs(1),
                        "step {i}: the new servers took {took:?} to answer a read"
                    );
                    slowest = slowest.max(took);
                    if let Some((key, value)) = check {
                        let v = config_value(&console, key).await?;
                        ensure!(v.as_deref() == Some(value), "step {i}: {key} is {v:?}");
                    }
                    ensure!(
                        config_value(&console, "last_reload_error").await?.is_none(),
                        "step {i}: an applied map leaves no reload error"
                    );
                }
            }
            // The clients kept going through the change.
            wait_until(
                &format!("transactions after step {i}"),
                Duration::from_secs(10),
                || async { done.load(Ordering::Relaxed) >= done_before + 32 },
            )
            .await?;
        }
        stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for w in workers {
            total += w.await?;
        }
        let errors = errors.lock().unwrap().clone();
        ensure!(
            errors.is_empty(),
            "{} client errors, first: {:?}",
            errors.len(),
            errors.first()
        );
        let rows: i64 = direct
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await?
            .get(0);
        ensure!(
            rows == i64::from(total),
            "{rows} rows for {total} committed transactions"
        );
        eprintln!(
            "reload under load: 20 maps (17 applied, 3 refused), {total} transactions, 0 errors; \
             added servers took reads sent {slowest:?} after their reload"
        );
        let status = &shared.reload_status;
        ensure!(status.applied.load(Ordering::Relaxed) == 17);
        // A broken map the watcher saw first is refused again by the explicit reload.
        ensure!(status.refused.load(Ordering::Relaxed) >= 3);
        direct.batch_execute(&format!("DROP TABLE {table}")).await?;
        Ok(())
    })
}

/// On a private cluster (2 shards, shard 0 with a replica): a transaction open on the replica
/// when it is removed from the map finishes there, then its server connections close (seen from
/// the replica); moving the primary to another server sends writes there while a transaction
/// begun before the reload commits on the old one; a user added to `[[users]]` logs in at once
/// (and could not before).
fn reload_drains_a_removed_replica_moves_the_primary_and_adds_a_user(
    ctx: &Ctx,
) -> anyhow::Result<()> {
    block_on(async {
        let cluster = ctx.start_cluster(&ClusterSpec {
            shards: 2,
            replicas_per_shard: 1,
            synchronous: false,
        })?;
        let s0 = &cluster.shards()[0];
        let other = &cluster.shards()[1].primary;
        let (p0, r0, p1) = (s0.primary.port, s0.replicas[0].port, other.port);
        // One shard (s0) in the map; shard 1's primary is a spare writable server.
        let full = cluster.shard_map_toml("127.0.0.1:0");
        let cut = full
            .find("\n[[shards]]\nname = \"s1\"")
            .or_else(|| full.rfind("\n[[shards]]"))
            .context("a second shard in the map")?;
        let one = with_admin(&full[..cut]).replacen(
            "range = [0, 2147483648]",
            "range = [0, 4294967296]",
            1,
        );
        let base = routed(&one, "", "");
        let (proxy, file) = ctx.start_proxy_from_file(&base)?;
        for inst in [&s0.primary, other] {
            connect(&inst.app_conninfo())
                .await?
                .batch_execute("CREATE TABLE IF NOT EXISTS moved (id int, at int)")
                .await?;
        }

        // A read transaction held on the replica across its removal.
        let reader = proxy.client().await?;
        reader.batch_execute("BEGIN READ ONLY").await?;
        let held = port_of(&reader).await?;
        ensure!(
            held == r0,
            "the read-only transaction runs on the replica ({held})"
        );
        // A write transaction held on the primary across the primary's move.
        let writer = proxy.client().await?;
        writer
            .batch_execute("BEGIN; INSERT INTO moved VALUES (1, inet_server_port())")
            .await?;

        // A user the map does not list yet cannot log in.
        let late = format!(
            "host=127.0.0.1 port={} user=late password=latepw dbname=app",
            proxy.addr().port()
        );
        let refused = connect(&late)
            .await
            .err()
            .context("an unknown user logged in")?;
        let code = refused
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(|e| e.code())
            .map(|c| c.code().to_string());
        ensure!(
            code.as_deref() == Some("28000"),
            "unknown user: {refused:#}"
        );

        let moved = with_replicas(&base, "")
            .replacen(&s0.primary.addr(), &other.addr(), 1)
            .replacen(
                "[backend]",
                "[[users]]\nname = \"late\"\npassword = \"latepw\"\n\n[backend]",
                1,
            );
        file.write(&moved)?;
        let summary = proxy
            .handle()
            .reload()
            .await
            .map_err(|e| anyhow!("reload refused: {e}"))?;
        // The file watcher may have applied it first.
        ensure!(
            summary.contains("servers removed") || summary == "no change",
            "summary: {summary}"
        );
        ensure!(
            proxy.handle().shared().generation() == 2,
            "the new map is in force"
        );

        // Both transactions finish where they began.
        ensure!(port_of(&reader).await? == r0, "the open read moved");
        reader.batch_execute("COMMIT").await?;
        writer
            .batch_execute("INSERT INTO moved VALUES (2, inet_server_port()); COMMIT")
            .await?;
        // New writes go to the new primary; new reads too (no replica left).
        let client = proxy.client().await?;
        client
            .batch_execute("INSERT INTO moved VALUES (3, inet_server_port())")
            .await?;
        let on_old = moved_rows(&s0.primary).await?;
        ensure!(
            on_old == vec![(1, i32::from(p0)), (2, i32::from(p0))],
            "old primary holds {on_old:?}"
        );
        let on_new = moved_rows(other).await?;
        ensure!(
            on_new == vec![(3, i32::from(p1))],
            "new primary holds {on_new:?}"
        );
        ensure!(port_of(&client).await? == p1, "reads go to the new primary");

        // The removed replica's connections close once idle (seen from the replica), and the old
        // primary's once its last transaction ended.
        no_app_connections(&s0.replicas[0], "the removed replica").await?;
        no_app_connections(&s0.primary, "the old primary").await?;

        // The new user logs in and works.
        let late_client = connect(&late).await?;
        ensure!(port_of(&late_client).await? == p1);
        let console = admin(proxy.addr()).await?;
        let users = config_value(&console, "users").await?.unwrap_or_default();
        ensure!(users.contains("late"), "SHOW CONFIG users: {users}");
        Ok(())
    })
}
