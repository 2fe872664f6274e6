//! Writes over several shards are atomic: transactions with two-phase commit, keyless writes,
//! DDL and writes to unlisted tables on every shard or none.

use std::collections::BTreeSet;

use tokio_postgres::SimpleQueryMessage;

use crate::harness::{Ctx, block_on, tests};
use crate::sharded::{ids_by_shard, rows, sharded};

tests![
    transactions_over_two_shards_commit_on_both_or_neither,
    writes_without_a_key_and_ddl_reach_every_shard_atomically,
];

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
        let (a, b): (Vec<i64>, Vec<i64>) = (
            s.keys_on(0).take(4).collect(),
            s.keys_on(1).take(4).collect(),
        );

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
        // A statement shardgate refuses aborts the transaction, as a server's error would.
        let k = s.keys_on(0).nth(10).expect("a key on s0");
        c.batch_execute("BEGIN").await?;
        c.execute("INSERT INTO users (id, name) VALUES ($1, 'x')", &[&k])
            .await?;
        let e = c
            .batch_execute("UPDATE users SET id = 1 WHERE id = 2")
            .await
            .expect_err("refused");
        assert_eq!(e.code().map(|c| c.code()), Some("0A000"));
        let e = c
            .execute("SELECT 1", &[])
            .await
            .expect_err("the transaction is aborted");
        assert_eq!(e.code().map(|c| c.code()), Some("25P02"));
        c.batch_execute("COMMIT").await?;
        let found = ids_by_shard(&s, "SELECT id FROM users").await?;
        assert!(!found[0].contains(&k.to_string()), "rolled back");
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
        let (k0, k1) = (s.key_on(0), s.key_on(1));
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
