//! Which shards a statement touches (a per-shard audit trigger, `inet_server_port()`), explicit
//! routing and its explanation, and the statements shardgate refuses.

use std::collections::BTreeMap;

use shardgate::hash::KeyType;

use crate::harness::{Ctx, block_on, tests};
use crate::sharded::{ids_by_shard, rows, sharded};

tests![
    a_cancel_reaches_every_shard_of_a_fanout,
    statements_touch_only_the_shards_of_their_keys,
    explicit_routing_and_explain,
    unroutable_statements_are_refused_with_0a000,
];

/// A statement-level audit trigger on every shard records which shards ran an UPDATE or DELETE;
/// reads report `inet_server_port()`.
fn statements_touch_only_the_shards_of_their_keys(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let s = sharded(ctx, 2).await?;
        let c = s.proxy.client().await?;
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
        let (k0, k1) = (s.key_on(0), s.key_on(1));
        let k0b = s.keys_on(0).nth(1).expect("another key on s0");
        assert!(
            k0b <= 40 && k1 <= 40,
            "the keys are among the rows inserted"
        );

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
            &[&k0],
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
                    &[&k],
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

        let key = s.key_on(0);
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
        // A keyless multi-row INSERT is refused as a whole: nothing lands anywhere.
        let e = c
            .batch_execute("INSERT INTO users (name) VALUES ('a'), ('b')")
            .await
            .expect_err("no key");
        assert_eq!(e.code().map(|c| c.code()), Some("0A000"));
        let by_shard: BTreeMap<usize, usize> = ids_by_shard(&s, "SELECT id FROM users")
            .await?
            .iter()
            .enumerate()
            .map(|(i, ids)| (i, ids.len()))
            .collect();
        assert_eq!(by_shard, BTreeMap::from([(0, 0), (1, 0)]));
        Ok(())
    })
}

/// A query running on every shard is cancelled on every shard by one CancelRequest.
fn a_cancel_reaches_every_shard_of_a_fanout(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let s = sharded(ctx, 2).await?;
        let c = s.proxy.client().await?;
        c.batch_execute("CREATE TABLE users (id bigint PRIMARY KEY)")
            .await?;
        // On the primaries, where the test watches pg_stat_activity.
        c.batch_execute("SET shardgate.target = 'primary'").await?;
        let token = c.cancel_token();
        let sleeper = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = c
                .query("SELECT pg_sleep(30), count(*) FROM users", &[])
                .await;
            (r.map(|_| ()), started.elapsed())
        });
        for p in &s.primaries {
            crate::harness::wait_until(
                "the query to run on every shard",
                std::time::Duration::from_secs(10),
                || async {
                    p.query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%' AND state = 'active'",
                        &[],
                    )
                    .await
                    .is_ok_and(|r| r.get::<_, i64>(0) == 1)
                },
            )
            .await?;
        }
        token.cancel_query(tokio_postgres::NoTls).await?;
        let (result, took) = sleeper.await?;
        let e = result.expect_err("cancelled");
        assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e:?}");
        assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
        for p in &s.primaries {
            crate::harness::wait_until(
                "the query to stop on every shard",
                std::time::Duration::from_secs(5),
                || async {
                    p.query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%' AND state = 'active'",
                        &[],
                    )
                    .await
                    .is_ok_and(|r| r.get::<_, i64>(0) == 0)
                },
            )
            .await?;
        }
        Ok(())
    })
}
