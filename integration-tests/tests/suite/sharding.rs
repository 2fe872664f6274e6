//! Sharding by key on real clusters of 2 and 3 shards, each shard a primary and a streaming
//! replica: where rows land (checked on each shard's primary, against the hash contract), which
//! shards a statement touches (checked with a per-shard audit trigger and `inet_server_port()`),
//! atomic writes over several shards, explicit routing and the statements shardgate refuses.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::{Client, SimpleQueryMessage};

use shardgate::config::Config;
use shardgate::hash::{KeyType, ShardKey};
use shardgate::localcluster::{ClusterSpec, LocalCluster};

use crate::harness::{Ctx, ProxyUnderTest, block_on, connect, proxy_setting, tests};
use crate::rawclient::{Frames, RawClient, tags};

tests![
    rows_land_on_the_shard_their_key_hashes_to,
    statements_touch_only_the_shards_of_their_keys,
    transactions_over_two_shards_commit_on_both_or_neither,
    writes_without_a_key_and_ddl_reach_every_shard_atomically,
    explicit_routing_and_explain,
    unroutable_statements_are_refused_with_0a000,
    three_shards_with_text_and_uuid_keys,
];

const TABLES: &str = r#"
[[tables]]
name = "users"
shard_key = "id"
key_type = "bigint"

[[tables]]
name = "orders"
shard_key = "user_id"

[[tables]]
name = "accounts"
shard_key = "email"
key_type = "text"

[[tables]]
name = "devices"
shard_key = "id"
key_type = "uuid"
"#;

/// A private cluster of `shards` shards (primary + one replica each), and a proxy over it with
/// the sharded tables above and a decision log.
pub(crate) struct Sharded {
    pub cluster: LocalCluster,
    pub proxy: ProxyUnderTest,
    pub config: Config,
    pub primaries: Vec<Client>,
    _state: tempfile::TempDir,
}

pub(crate) async fn sharded(ctx: &Ctx, shards: usize) -> anyhow::Result<Sharded> {
    let cluster = ctx.start_cluster(&ClusterSpec {
        shards,
        replicas_per_shard: 1,
        synchronous: false,
    })?;
    let state = tempfile::tempdir()?;
    let map = proxy_setting(
        &format!("{}\n{TABLES}", cluster.shard_map_toml("127.0.0.1:0")),
        "state_dir",
        &format!("\"{}\"", state.path().display()),
    );
    let config = shardgate::config::load_str(&map, "test map")?;
    let proxy = ctx.start_proxy(&map)?;
    let mut primaries = Vec::new();
    for s in cluster.shards() {
        primaries.push(connect(&s.primary.app_conninfo()).await?);
    }
    Ok(Sharded {
        cluster,
        proxy,
        config,
        primaries,
        _state: state,
    })
}

impl Sharded {
    /// The shard a bigint key of `users` belongs to, by the hash contract.
    fn shard_of(&self, key_type: KeyType, key: &str) -> usize {
        let k = ShardKey::from_text(key_type, key).expect("a valid key");
        self.config.shard_index_for_hash(k.hash())
    }

    fn primary_port(&self, shard: usize) -> u16 {
        self.cluster.shards()[shard].primary.port
    }

    fn ports_of(&self, shard: usize) -> BTreeSet<u16> {
        let s = &self.cluster.shards()[shard];
        std::iter::once(s.primary.port)
            .chain(s.replicas.iter().map(|r| r.port))
            .collect()
    }

    /// Waits until every replica has replayed what its primary wrote so far.
    async fn replicas_caught_up(&self) -> anyhow::Result<()> {
        for s in self.cluster.shards() {
            let p = connect(&s.primary.app_conninfo()).await?;
            let lsn: String = p
                .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
                .await?
                .get(0);
            for r in &s.replicas {
                let c = connect(&r.app_conninfo()).await?;
                crate::harness::wait_until(
                    "a replica to catch up",
                    std::time::Duration::from_secs(20),
                    || async {
                        c.query_one(
                            "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                            &[&lsn],
                        )
                        .await
                        .is_ok_and(|row| row.get::<_, bool>(0))
                    },
                )
                .await?;
            }
        }
        Ok(())
    }
}

/// Rows of a simple query as text.
async fn rows(c: &Client, sql: &str) -> anyhow::Result<Vec<Vec<Option<String>>>> {
    let mut out = Vec::new();
    for m in c.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(r) = m {
            out.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
        }
    }
    Ok(out)
}

/// The ids of `table` on each shard's primary.
async fn ids_by_shard(s: &Sharded, sql: &str) -> anyhow::Result<Vec<BTreeSet<String>>> {
    let mut out = Vec::new();
    for p in &s.primaries {
        out.push(
            rows(p, sql)
                .await?
                .into_iter()
                .map(|r| r[0].clone().unwrap_or_default())
                .collect(),
        );
    }
    Ok(out)
}

fn rows_landed(s: &Sharded, key_type: KeyType, found: &[BTreeSet<String>], expected: usize) {
    let mut total = 0;
    for (shard, ids) in found.iter().enumerate() {
        for id in ids {
            assert_eq!(
                s.shard_of(key_type, id),
                shard,
                "key {id} is on shard {shard}, the hash names another"
            );
        }
        total += ids.len();
    }
    assert_eq!(total, expected, "every row exactly once");
}

/// 10,000 rows through every way in: single-row and multi-row simple queries, prepared statements
/// with binary parameters (int8 and int4) and with text parameters, and COPY. Each row is found on
/// exactly the shard the hash contract names (what `shardgate hash` prints), and nowhere else.
fn rows_land_on_the_shard_their_key_hashes_to(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let s = sharded(ctx, 2).await?;
        let c = s.proxy.client().await?;
        c.batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text, n int DEFAULT 0)")
            .await?;
        // 1..=1000: one row per statement, literal keys.
        for id in 1..=1000 {
            c.simple_query(&format!(
                "INSERT INTO users (id, name) VALUES ({id}, 'u{id}')"
            ))
            .await?;
        }
        // 1001..=5000: 500 rows per statement, split per shard; RETURNING comes back whole.
        for chunk in 0..8 {
            let start = 1001 + chunk * 500;
            let values: Vec<String> = (start..start + 500)
                .map(|id| format!("({id}, 'm{id}')"))
                .collect();
            let msgs = c
                .simple_query(&format!(
                    "INSERT INTO users (id, name) VALUES {} RETURNING id",
                    values.join(", ")
                ))
                .await?;
            let returned = msgs
                .iter()
                .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
                .count();
            assert_eq!(returned, 500, "RETURNING rows of every shard");
            let count = msgs.iter().find_map(|m| match m {
                SimpleQueryMessage::CommandComplete(n) => Some(*n),
                _ => None,
            });
            assert_eq!(count, Some(500), "the summed INSERT count");
        }
        // 5001..=7000: prepared, binary int8 key; 7001..=8000: binary int4 key.
        let ins8 = c
            .prepare("INSERT INTO users (id, name) VALUES ($1, $2)")
            .await?;
        for id in 5001i64..=7000 {
            c.execute(&ins8, &[&id, &format!("p{id}")]).await?;
        }
        let ins4 = c
            .prepare_typed(
                "INSERT INTO users (id, name) VALUES ($1, $2)",
                &[
                    tokio_postgres::types::Type::INT4,
                    tokio_postgres::types::Type::TEXT,
                ],
            )
            .await?;
        for id in 7001i32..=8000 {
            c.execute(&ins4, &[&id, &format!("q{id}")]).await?;
        }
        // 8001..=9000: text-format parameters, over the raw protocol.
        let mut raw = RawClient::connect(s.proxy.addr(), "app", "secret", "app", &[]).await?;
        let mut frames =
            Frames::new().parse("ins", "INSERT INTO users (id, name) VALUES ($1, $2)", &[]);
        for id in 8001..=9000 {
            let key = id.to_string();
            let name = format!("t{id}");
            frames = frames
                .bind(
                    "",
                    "ins",
                    &[0],
                    &[Some(key.as_bytes()), Some(name.as_bytes())],
                    &[],
                )
                .execute("", 0)
                .sync();
        }
        raw.send(&frames.finish()).await?;
        let answers = raw.read_until_ready_n(1000).await?;
        assert!(
            !tags(&answers).contains('E'),
            "text-format inserts failed: {}",
            tags(&answers)
        );
        // 9001..=10000: COPY FROM STDIN, split by key.
        let sink = c.copy_in("COPY users (id, name) FROM STDIN").await?;
        let mut data = String::new();
        for id in 9001..=10000 {
            data.push_str(&format!("{id}\tc{id}\n"));
        }
        use futures::SinkExt;
        let mut sink = std::pin::pin!(sink);
        sink.send(bytes::Bytes::from(data)).await?;
        let copied = sink.finish().await?;
        assert_eq!(copied, 1000, "COPY's count is the total over the shards");

        let found = ids_by_shard(&s, "SELECT id FROM users").await?;
        rows_landed(&s, KeyType::Bigint, &found, 10_000);
        assert!(
            found.iter().all(|ids| ids.len() > 4000),
            "both shards hold rows"
        );
        // Reads by key come back through the proxy from the right shard.
        let row = c
            .query_one("SELECT name FROM users WHERE id = $1", &[&9500i64])
            .await?;
        assert_eq!(row.get::<_, String>(0), "c9500");
        let all: i64 = c
            .query("SELECT id FROM users", &[])
            .await?
            .len()
            .try_into()?;
        assert_eq!(all, 10_000, "a keyless read returns every shard's rows");
        Ok(())
    })
}

/// A statement-level audit trigger on every shard records which shards ran an UPDATE or DELETE;
/// reads report `inet_server_port()`.
fn statements_touch_only_the_shards_of_their_keys(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let s = sharded(ctx, 2).await?;
        let c = s.proxy.client().await?;
        // Which shard answers is the point here, not replica lag: primaries answer every read
        // (a loaded CI run once read a replica that had not replayed the CREATE TABLE yet).
        c.batch_execute("SET shardgate.target = 'primary'").await?;
        c.batch_execute(
            "CREATE TABLE users (id bigint PRIMARY KEY, name text, n int DEFAULT 0);
             CREATE TABLE audit (op text, at timestamptz DEFAULT now());",
        )
        .await?;
        c.batch_execute(
            "CREATE FUNCTION audit_users() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO audit (op) VALUES (TG_OP); RETURN NULL; END $$",
        )
        .await?;
        c.batch_execute(
            "CREATE TRIGGER users_audit AFTER UPDATE OR DELETE ON users
             FOR EACH STATEMENT EXECUTE FUNCTION audit_users()",
        )
        .await?;
        for p in &s.primaries {
            let n: i64 = p
                .query_one(
                    "SELECT count(*) FROM pg_trigger WHERE tgname = 'users_audit'",
                    &[],
                )
                .await?
                .get(0);
            assert_eq!(n, 1, "the DDL reached every shard");
        }
        let values: Vec<String> = (1..=40).map(|id| format!("({id}, 'u{id}')")).collect();
        c.simple_query(&format!(
            "INSERT INTO users (id, name) VALUES {}",
            values.join(",")
        ))
        .await?;
        // Keys on shard 0 and shard 1.
        let k0 = (1..=40)
            .find(|k| s.shard_of(KeyType::Bigint, &k.to_string()) == 0)
            .expect("a key on s0");
        let k1 = (1..=40)
            .find(|k| s.shard_of(KeyType::Bigint, &k.to_string()) == 1)
            .expect("a key on s1");
        let k0b = (k0 + 1..=40)
            .find(|k| s.shard_of(KeyType::Bigint, &k.to_string()) == 0)
            .expect("another key on s0");

        let audit = |op: &'static str| {
            let s = &s;
            async move {
                let mut out = Vec::new();
                for p in &s.primaries {
                    let n: i64 = p
                        .query_one("SELECT count(*) FROM audit WHERE op = $1", &[&op])
                        .await?
                        .get(0);
                    out.push(n);
                }
                anyhow::Ok(out)
            }
        };
        // An UPDATE by key (simple, then prepared with a binary key) runs on its shard only.
        c.simple_query(&format!("UPDATE users SET n = n + 1 WHERE id = {k1}"))
            .await?;
        assert_eq!(audit("UPDATE").await?, vec![0, 1]);
        c.execute(
            "UPDATE users SET n = n + 1 WHERE id = $1 AND name IS NOT NULL",
            &[&(k0 as i64)],
        )
        .await?;
        assert_eq!(audit("UPDATE").await?, vec![1, 1]);
        // DELETE with an IN list of one shard's keys: that shard only.
        let n = c
            .execute(&format!("DELETE FROM users WHERE id IN ({k0}, {k0b})"), &[])
            .await?;
        assert_eq!(n, 2);
        assert_eq!(audit("DELETE").await?, vec![1, 0]);
        // An UPDATE without a key: every shard, once.
        let n = c.execute("UPDATE users SET n = n + 1", &[]).await?;
        assert_eq!(n, 38, "the summed count");
        assert_eq!(audit("UPDATE").await?, vec![2, 2]);

        // Reads: a key lookup runs on a server of its shard (a replica, by default).
        s.replicas_caught_up().await?;
        for k in [k0b + 1, k1] {
            let r = c
                .query_one(
                    "SELECT inet_server_port()::int, name FROM users WHERE id = $1",
                    &[&(k as i64)],
                )
                .await?;
            let shard = s.shard_of(KeyType::Bigint, &k.to_string());
            let port = r.get::<_, i32>(0) as u16;
            assert!(
                s.ports_of(shard).contains(&port),
                "key {k} read on port {port}"
            );
            assert_eq!(r.get::<_, String>(1), format!("u{k}"));
        }
        // An IN list over both shards: each row from a server of its own shard.
        let r = c
            .query(
                &format!(
                    "SELECT id, inet_server_port()::int FROM users WHERE id IN ({k1}, {})",
                    k0b + 1
                ),
                &[],
            )
            .await?;
        for row in &r {
            let id: i64 = row.get(0);
            let port = row.get::<_, i32>(1) as u16;
            assert!(
                s.ports_of(s.shard_of(KeyType::Bigint, &id.to_string()))
                    .contains(&port)
            );
        }
        // Co-located join on the shard keys, with the key: one shard.
        c.batch_execute("CREATE TABLE orders (id bigint, user_id bigint, total int)")
            .await?;
        c.simple_query(&format!(
            "INSERT INTO orders (id, user_id, total) VALUES (1, {k1}, 5), (2, {k1}, 7)"
        ))
        .await?;
        s.replicas_caught_up().await?;
        let r = rows(
            &c,
            &format!("SELECT sum(o.total), min(inet_server_port()) FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id = {k1}"),
        )
        .await?;
        assert_eq!(r.len(), 1, "one shard answered");
        assert_eq!(r[0][0].as_deref(), Some("12"));
        let port: u16 = r[0][1].as_deref().unwrap_or("0").parse()?;
        assert!(s.ports_of(1).contains(&port));
        Ok(())
    })
}

/// BEGIN; writes on two shards; COMMIT → on both (two-phase commit, nothing left prepared). A
/// failure on one shard (an error in the transaction, or at PREPARE) leaves nothing on either.
fn transactions_over_two_shards_commit_on_both_or_neither(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let s = sharded(ctx, 2).await?;
        let c = s.proxy.client().await?;
        c.batch_execute(
            "CREATE TABLE users (id bigint PRIMARY KEY, name text CHECK (name <> 'bad'),
                                 code int UNIQUE DEFERRABLE INITIALLY DEFERRED)",
        )
        .await?;
        let sref = &s;
        let on = |shard: usize| {
            (100..200)
                .filter(move |k: &i64| sref.shard_of(KeyType::Bigint, &k.to_string()) == shard)
        };
        let (a, b): (Vec<i64>, Vec<i64>) = (on(0).take(4).collect(), on(1).take(4).collect());

        // Commit on both.
        c.batch_execute("BEGIN").await?;
        c.execute("INSERT INTO users (id, name) VALUES ($1, 'x')", &[&a[0]])
            .await?;
        c.execute("INSERT INTO users (id, name) VALUES ($1, 'y')", &[&b[0]])
            .await?;
        c.batch_execute("COMMIT").await?;
        let found = ids_by_shard(&s, "SELECT id FROM users").await?;
        assert!(found[0].contains(&a[0].to_string()) && found[1].contains(&b[0].to_string()));

        // An error on the second shard: COMMIT answers ROLLBACK, nothing on the first.
        c.batch_execute("BEGIN").await?;
        c.execute("INSERT INTO users (id, name) VALUES ($1, 'x')", &[&a[1]])
            .await?;
        let e = c
            .execute("INSERT INTO users (id, name) VALUES ($1, 'bad')", &[&b[1]])
            .await
            .expect_err("the CHECK fails");
        assert_eq!(e.code().map(|c| c.code()), Some("23514"));
        let e = c
            .execute("SELECT 1", &[])
            .await
            .expect_err("the transaction is aborted");
        assert_eq!(e.code().map(|c| c.code()), Some("25P02"));
        let r = c.simple_query("COMMIT").await?;
        assert!(matches!(
            r.last(),
            Some(SimpleQueryMessage::CommandComplete(_))
        ));
        let found = ids_by_shard(&s, "SELECT id FROM users").await?;
        assert!(
            !found[0].contains(&a[1].to_string()),
            "the first shard's write was rolled back"
        );

        // A deferred constraint fails at PREPARE on one shard: the COMMIT fails, nothing stays.
        c.execute("UPDATE users SET code = 1 WHERE id = $1", &[&b[0]])
            .await?;
        c.batch_execute("BEGIN").await?;
        c.execute(
            "INSERT INTO users (id, name, code) VALUES ($1, 'x', 7)",
            &[&a[2]],
        )
        .await?;
        c.execute(
            "INSERT INTO users (id, name, code) VALUES ($1, 'y', 1)",
            &[&b[2]],
        )
        .await?;
        let e = c
            .batch_execute("COMMIT")
            .await
            .expect_err("the deferred UNIQUE fails at PREPARE");
        assert!(
            e.as_db_error()
                .is_some_and(|d| d.message().contains("rolled back on every shard")),
            "{e:?}"
        );
        let found = ids_by_shard(&s, "SELECT id FROM users").await?;
        assert!(!found[0].contains(&a[2].to_string()) && !found[1].contains(&b[2].to_string()));
        for p in &s.primaries {
            let n: i64 = p
                .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
                .await?
                .get(0);
            assert_eq!(n, 0, "nothing left prepared");
        }
        // The client's connection goes on working, on one shard or two.
        c.batch_execute("BEGIN").await?;
        c.execute("INSERT INTO users (id, name) VALUES ($1, 'x')", &[&a[3]])
            .await?;
        c.execute("INSERT INTO users (id, name) VALUES ($1, 'y')", &[&b[3]])
            .await?;
        c.batch_execute("ROLLBACK").await?;
        let found = ids_by_shard(&s, "SELECT id FROM users").await?;
        assert_eq!(found.iter().map(BTreeSet::len).sum::<usize>(), 2);
        Ok(())
    })
}

/// DDL and writes to tables not in [[tables]] go to every shard's primary atomically; a keyless
/// UPDATE that fails on one shard changes nothing anywhere.
fn writes_without_a_key_and_ddl_reach_every_shard_atomically(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let s = sharded(ctx, 2).await?;
        let c = s.proxy.client().await?;
        c.batch_execute("CREATE TABLE settings (k text PRIMARY KEY, v int)")
            .await?;
        c.batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, d int)")
            .await?;
        let n = c
            .execute("INSERT INTO settings VALUES ('a', 1), ('b', 2)", &[])
            .await?;
        assert_eq!(n, 2, "an unsharded table's count is counted once");
        for p in &s.primaries {
            assert_eq!(rows(p, "SELECT k FROM settings ORDER BY k").await?.len(), 2);
        }
        // A read of an unsharded table comes from one shard.
        assert_eq!(c.query("SELECT * FROM settings", &[]).await?.len(), 2);
        // Atomic: one shard fails (division by zero on its row), the other's change is undone.
        let k0 = (1..100i64)
            .find(|k| s.shard_of(KeyType::Bigint, &k.to_string()) == 0)
            .expect("s0 key");
        let k1 = (1..100i64)
            .find(|k| s.shard_of(KeyType::Bigint, &k.to_string()) == 1)
            .expect("s1 key");
        c.execute("INSERT INTO users (id, d) VALUES ($1, 1)", &[&k0])
            .await?;
        c.execute("INSERT INTO users (id, d) VALUES ($1, 0)", &[&k1])
            .await?;
        let e = c
            .execute("UPDATE users SET d = 10 / d", &[])
            .await
            .expect_err("division by zero on s1");
        assert_eq!(e.code().map(|c| c.code()), Some("22012"));
        let d: i32 = s.primaries[0]
            .query_one("SELECT d FROM users WHERE id = $1", &[&k0])
            .await?
            .get(0);
        assert_eq!(d, 1, "the shard that succeeded was rolled back");
        // The same with atomicity off shows the failure it prevents: each shard on its own.
        c.batch_execute("/* shardgate: shard=s0 */ UPDATE users SET d = 10 / d")
            .await?;
        let d: i32 = s.primaries[0]
            .query_one("SELECT d FROM users WHERE id = $1", &[&k0])
            .await?
            .get(0);
        assert_eq!(d, 10);
        // DDL in a transaction block (a migration) commits on every shard together.
        c.batch_execute("BEGIN").await?;
        c.batch_execute("CREATE TABLE schema_version (v int)")
            .await?;
        c.batch_execute("INSERT INTO schema_version VALUES (1)")
            .await?;
        c.batch_execute("ALTER TABLE users ADD COLUMN note text")
            .await?;
        c.batch_execute("COMMIT").await?;
        for p in &s.primaries {
            assert_eq!(rows(p, "SELECT v FROM schema_version").await?.len(), 1);
            assert_eq!(rows(p, "SELECT note FROM users").await?.len(), 1);
        }
        // CREATE INDEX CONCURRENTLY cannot run in a transaction block: sent to each shard as is.
        c.batch_execute("CREATE INDEX CONCURRENTLY users_d ON users (d)")
            .await?;
        for p in &s.primaries {
            assert_eq!(
                rows(p, "SELECT 1 FROM pg_indexes WHERE indexname = 'users_d'")
                    .await?
                    .len(),
                1
            );
        }
        Ok(())
    })
}

/// SET shardgate.shard / shardgate.sharding_key, the shard=/key= comments, and the explanation.
fn explicit_routing_and_explain(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let s = sharded(ctx, 2).await?;
        let c = s.proxy.client().await?;
        let port = |r: Vec<Vec<Option<String>>>| -> u16 {
            r[0][0].as_deref().unwrap_or("0").parse().unwrap_or(0)
        };
        c.batch_execute("SET shardgate.shard = 's1'").await?;
        assert_eq!(
            rows(&c, "SHOW shardgate.shard").await?[0][0].as_deref(),
            Some("s1")
        );
        assert!(
            s.ports_of(1)
                .contains(&port(rows(&c, "SELECT inet_server_port()").await?))
        );
        c.batch_execute("CREATE TABLE only_s1 (x int)").await?;
        c.batch_execute("RESET shardgate.shard").await?;
        let n: i64 = s.primaries[1]
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE tablename = 'only_s1'",
                &[],
            )
            .await?
            .get(0);
        assert_eq!(n, 1);
        let n: i64 = s.primaries[0]
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE tablename = 'only_s1'",
                &[],
            )
            .await?
            .get(0);
        assert_eq!(n, 0, "a pinned session's DDL goes to its shard only");
        let e = c
            .batch_execute("SET shardgate.shard = 'nope'")
            .await
            .expect_err("no such shard");
        assert_eq!(e.code().map(|c| c.code()), Some("22023"));

        let key = (1..100)
            .find(|k| s.shard_of(KeyType::Bigint, &k.to_string()) == 0)
            .expect("s0 key");
        c.batch_execute(&format!("SET shardgate.sharding_key = '{key}'"))
            .await?;
        assert!(
            s.ports_of(0)
                .contains(&port(rows(&c, "SELECT inet_server_port()").await?))
        );
        c.batch_execute("RESET shardgate.sharding_key").await?;
        assert!(s.ports_of(1).contains(&port(
            rows(&c, "/* shardgate: shard=s1 */ SELECT inet_server_port()").await?
        )));
        assert_eq!(
            port(
                rows(
                    &c,
                    "/* shardgate: shard=s1, primary */ SELECT inet_server_port()"
                )
                .await?
            ),
            s.primary_port(1)
        );
        assert!(
            s.ports_of(0).contains(&port(
                rows(
                    &c,
                    &format!("/* shardgate: key={key} */ SELECT inet_server_port()")
                )
                .await?
            ))
        );
        let e = c
            .batch_execute("/* shardgate: shard=s9 */ SELECT 1")
            .await
            .expect_err("unknown shard");
        assert_eq!(e.code().map(|c| c.code()), Some("22023"));

        let r = rows(
            &c,
            &format!("SHOW shardgate.route FOR SELECT * FROM users WHERE id = {key}"),
        )
        .await?;
        let text = r[0][0].clone().unwrap_or_default();
        assert!(text.starts_with("shards=s0 role=replica"), "{text}");
        let r = rows(&c, "SHOW shardgate.route FOR UPDATE users SET name = 'x'").await?;
        assert!(
            r[0][0]
                .as_deref()
                .unwrap_or("")
                .starts_with("shards=s0,s1 role=primary")
        );
        Ok(())
    })
}

/// What cannot be routed correctly is refused with 0A000 and a message that says what to do; the
/// connection goes on.
fn unroutable_statements_are_refused_with_0a000(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let s = sharded(ctx, 2).await?;
        let c = s.proxy.client().await?;
        c.batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text)")
            .await?;
        c.batch_execute("CREATE TABLE orders (id bigint, user_id bigint)")
            .await?;
        for (sql, says) in [
            (
                "UPDATE users SET id = 5 WHERE id = 4",
                "delete the row and insert it",
            ),
            (
                "INSERT INTO users SELECT 1, 'x'",
                "needs its shard key column id",
            ),
            (
                "INSERT INTO users (name) VALUES ('x')",
                "needs its shard key column id",
            ),
            (
                "SELECT * FROM users u JOIN orders o ON o.id = u.id",
                "join them on their shard keys",
            ),
        ] {
            let e = c.batch_execute(sql).await.expect_err(sql);
            let db = e.as_db_error().expect("a server-style error");
            assert_eq!(db.code().code(), "0A000", "{sql}");
            assert!(db.message().contains(says), "{sql}: {}", db.message());
        }
        let e = c
            .execute("SELECT * FROM users WHERE id = $1", &[&"x"])
            .await;
        assert!(e.is_err(), "a key of the wrong type");
        // A multi-row INSERT over two shards with parameter keys cannot be split.
        let (a, b) = (
            (1..100i64)
                .find(|k| s.shard_of(KeyType::Bigint, &k.to_string()) == 0)
                .expect("s0"),
            (1..100i64)
                .find(|k| s.shard_of(KeyType::Bigint, &k.to_string()) == 1)
                .expect("s1"),
        );
        let e = c
            .execute(
                "INSERT INTO users (id, name) VALUES ($1, 'a'), ($2, 'b')",
                &[&a, &b],
            )
            .await
            .expect_err("cannot split");
        assert_eq!(e.code().map(|c| c.code()), Some("0A000"));
        // ... while one shard's rows are fine.
        let a2 = (a + 1..200)
            .find(|k| s.shard_of(KeyType::Bigint, &k.to_string()) == 0)
            .expect("s0");
        c.execute(
            "INSERT INTO users (id, name) VALUES ($1, 'a'), ($2, 'b')",
            &[&a, &a2],
        )
        .await?;
        assert_eq!(c.query("SELECT 1 FROM users", &[]).await?.len(), 2);
        let by_shard: BTreeMap<usize, usize> = ids_by_shard(&s, "SELECT id FROM users")
            .await?
            .iter()
            .enumerate()
            .map(|(i, ids)| (i, ids.len()))
            .collect();
        assert_eq!(by_shard, BTreeMap::from([(0, 2), (1, 0)]));
        Ok(())
    })
}

/// Three shards: text and uuid keys, prepared lookups, placement checked on each primary.
fn three_shards_with_text_and_uuid_keys(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let s = sharded(ctx, 3).await?;
        let c = s.proxy.client().await?;
        c.batch_execute(
            "CREATE TABLE accounts (email text PRIMARY KEY, n int);
             CREATE TABLE devices (id uuid PRIMARY KEY, label text);",
        )
        .await?;
        let ins = c
            .prepare("INSERT INTO accounts (email, n) VALUES ($1, $2)")
            .await?;
        for i in 0..300 {
            c.execute(&ins, &[&format!("user{i}@example.com"), &i])
                .await?;
        }
        let values: Vec<String> = (300..600)
            .map(|i| format!("('user{i}@example.com', {i})"))
            .collect();
        c.simple_query(&format!(
            "INSERT INTO accounts (email, n) VALUES {}",
            values.join(",")
        ))
        .await?;
        let found = ids_by_shard(&s, "SELECT email FROM accounts").await?;
        rows_landed(&s, KeyType::Text, &found, 600);
        assert!(
            found.iter().all(|f| !f.is_empty()),
            "all three shards hold rows"
        );
        let get = c.prepare("SELECT n FROM accounts WHERE email = $1").await?;
        for i in [0, 299, 300, 599] {
            let r = c
                .query_one(&get, &[&format!("user{i}@example.com")])
                .await?;
            assert_eq!(r.get::<_, i32>(0), i);
        }
        for i in 0..200u32 {
            let id = format!(
                "{:08x}-0000-4000-8000-{:012x}",
                i.wrapping_mul(2_654_435_761),
                i
            );
            if i % 2 == 0 {
                c.simple_query(&format!(
                    "INSERT INTO devices (id, label) VALUES ('{id}', 'd{i}')"
                ))
                .await?;
            } else {
                let uuid: uuid_like::Uuid = id.parse()?;
                c.execute(
                    "INSERT INTO devices (id, label) VALUES ($1, $2)",
                    &[&uuid, &format!("d{i}")],
                )
                .await?;
            }
        }
        let found = ids_by_shard(&s, "SELECT id FROM devices").await?;
        rows_landed(&s, KeyType::Uuid, &found, 200);
        Ok(())
    })
}

/// A uuid parameter sent in binary (16 bytes), without a uuid crate.
mod uuid_like {
    use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

    #[derive(Debug)]
    pub struct Uuid([u8; 16]);

    impl std::str::FromStr for Uuid {
        type Err = anyhow::Error;
        fn from_str(s: &str) -> anyhow::Result<Uuid> {
            let hex: String = s.chars().filter(|c| *c != '-').collect();
            let mut out = [0u8; 16];
            for (i, b) in out.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
            }
            Ok(Uuid(out))
        }
    }

    impl ToSql for Uuid {
        fn to_sql(
            &self,
            _: &Type,
            out: &mut bytes::BytesMut,
        ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
            out.extend_from_slice(&self.0);
            Ok(IsNull::No)
        }
        fn accepts(ty: &Type) -> bool {
            *ty == Type::UUID
        }
        to_sql_checked!();
    }
}
