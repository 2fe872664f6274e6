//! Replicated tables (`[[tables]] replicated = true`): every shard holds all of the table; writes
//! (INSERT, UPDATE, COPY) go to every shard atomically, reads to any one shard (spread over them),
//! and joins of a sharded table with a replicated one run on each shard.

use std::collections::BTreeSet;

use futures::SinkExt;

use crate::harness::{Ctx, block_on, tests};
use crate::sharded::{rows, sharded};

tests![replicated_tables_are_written_everywhere_and_read_anywhere];

fn replicated_tables_are_written_everywhere_and_read_anywhere(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let s = sharded(ctx, 3).await?;
        let c = s.proxy.client().await?;
        c.batch_execute(
            "CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL);
             CREATE TABLE users (id bigint PRIMARY KEY, name text, country text)",
        )
        .await?;
        let n = c
            .execute(
                "INSERT INTO countries VALUES ('de', 'Germany'), ('fr', 'France')",
                &[],
            )
            .await?;
        assert_eq!(n, 2, "the count of one copy, not of every shard's");
        let sink = c.copy_in("COPY countries (code, name) FROM STDIN").await?;
        let mut sink = Box::pin(sink);
        sink.send(bytes::Bytes::from_static(b"jp\tJapan\nus\tUnited States\n"))
            .await?;
        assert_eq!(sink.as_mut().finish().await?, 2);
        let n = c
            .execute(
                "UPDATE countries SET name = 'Deutschland' WHERE code = 'de'",
                &[],
            )
            .await?;
        assert_eq!(n, 1);
        let all = vec![
            vec![Some("de".to_string()), Some("Deutschland".to_string())],
            vec![Some("fr".to_string()), Some("France".to_string())],
            vec![Some("jp".to_string()), Some("Japan".to_string())],
            vec![Some("us".to_string()), Some("United States".to_string())],
        ];
        for (i, p) in s.primaries.iter().enumerate() {
            assert_eq!(
                rows(p, "SELECT code, name FROM countries ORDER BY code").await?,
                all,
                "shard {i} holds the whole table"
            );
        }
        // Atomic: a write that fails on one shard (a row only shard 2 has) changes none.
        s.primaries[2]
            .execute("INSERT INTO countries VALUES ('br', 'Brasil')", &[])
            .await?;
        let e = c
            .execute("INSERT INTO countries VALUES ('br', 'Brazil')", &[])
            .await
            .expect_err("a duplicate on shard 2");
        assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("23505"));
        for p in &s.primaries[..2] {
            assert!(
                rows(p, "SELECT 1 FROM countries WHERE code = 'br'")
                    .await?
                    .is_empty()
            );
        }
        s.primaries[2]
            .execute("DELETE FROM countries WHERE code = 'br'", &[])
            .await?;
        // Reads go to one shard at a time, spread over all of them, each with the whole table.
        s.replicas_caught_up().await?;
        let mut shards_seen = BTreeSet::new();
        for _ in 0..30 {
            let r = rows(&c, "SELECT inet_server_port(), count(*) FROM countries").await?;
            assert_eq!(r.len(), 1, "one shard answers");
            assert_eq!(r[0][1].as_deref(), Some("4"));
            let port: u16 = r[0][0].as_deref().unwrap_or_default().parse()?;
            let shard = (0..3)
                .find(|&i| s.ports_of(i).contains(&port))
                .expect("a server of the cluster");
            shards_seen.insert(shard);
        }
        assert_eq!(shards_seen.len(), 3, "reads spread over every shard");
        // Joins with a sharded table run on each shard; merged as one database would answer.
        let values: Vec<String> = (1..=30)
            .map(|id| {
                format!(
                    "({id}, 'u{id}', '{}')",
                    ["de", "fr", "jp", "us", "xx"][id % 5]
                )
            })
            .collect();
        c.batch_execute(&format!(
            "INSERT INTO users (id, name, country) VALUES {}",
            values.join(", ")
        ))
        .await?;
        s.replicas_caught_up().await?;
        let r = rows(
            &c,
            "SELECT u.id, c.name FROM users u JOIN countries c ON c.code = u.country ORDER BY u.id DESC LIMIT 3",
        )
        .await?;
        let expect = |id: usize| {
            let name = ["Deutschland", "France", "Japan", "United States"][id % 5];
            vec![Some(id.to_string()), Some(name.to_string())]
        };
        // 29 is in no country of the table (xx): no join row.
        assert_eq!(r, vec![expect(30), expect(28), expect(27)]);
        let r = rows(
            &c,
            "SELECT c.name, count(*) FROM users u JOIN countries c ON c.code = u.country GROUP BY c.name ORDER BY c.name",
        )
        .await?;
        let counts: Vec<(String, String)> = r
            .into_iter()
            .map(|r| {
                (
                    r[0].clone().unwrap_or_default(),
                    r[1].clone().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            counts,
            [
                ("Deutschland", "6"),
                ("France", "6"),
                ("Japan", "6"),
                ("United States", "6")
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        let r = rows(
            &c,
            "SELECT c.name FROM users u JOIN countries c ON c.code = u.country WHERE u.id = 7",
        )
        .await?;
        assert_eq!(r, vec![vec![Some("Japan".to_string())]]);
        Ok(())
    })
}
