//! Where rows land: every way a row can come in (literals, multi-row INSERT, prepared binary and
//! text parameters, COPY), on 2 and 3 shards, with bigint, text and uuid keys; each row on exactly
//! the shard its key hashes to.

use tokio_postgres::SimpleQueryMessage;

use shardgate::hash::KeyType;

use crate::harness::{Ctx, block_on, tests};
use crate::rawclient::{Frames, RawClient, tags};
use crate::sharded::{ids_by_shard, rows_landed, sharded, uuid_like};

tests![
    multi_row_inserts_with_parameters_are_split_per_shard,
    rows_land_on_the_shard_their_key_hashes_to,
    three_shards_with_text_and_uuid_keys,
];

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

/// A prepared multi-row INSERT (an ORM's batch) whose rows belong to both shards: cut into one
/// INSERT per shard with its own parameters, binary and text formats, ON CONFLICT on each row's
/// shard, RETURNING rows of both shards, the summed count.
fn multi_row_inserts_with_parameters_are_split_per_shard(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let s = sharded(ctx, 2).await?;
        let c = s.proxy.client().await?;
        c.batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text, n int DEFAULT 0)")
            .await?;
        let keys: Vec<i64> = s.keys_on(0).take(3).chain(s.keys_on(1).take(3)).collect();
        let sql = "INSERT INTO users (id, name) VALUES ($1, $2), ($3, $4), ($5, $6), ($7, $8), ($9, $10), ($11, $12) \
                   ON CONFLICT (id) DO UPDATE SET n = users.n + 1 RETURNING id";
        let names: Vec<String> = keys.iter().map(|k| format!("u{k}")).collect();
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
        for (k, n) in keys.iter().zip(&names) {
            params.push(k);
            params.push(n);
        }
        // Binary parameters (tokio-postgres); twice: the second time every row conflicts.
        for round in 0..2 {
            let rows = c.query(sql, &params).await?;
            let mut got: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
            got.sort();
            let mut want = keys.clone();
            want.sort();
            assert_eq!(got, want, "round {round}: RETURNING rows of both shards");
        }
        let found = ids_by_shard(&s, "SELECT id FROM users").await?;
        rows_landed(&s, KeyType::Bigint, &found, 6);
        for p in &s.primaries {
            let n: i64 = p.query_one("SELECT sum(n) FROM users", &[]).await?.get(0);
            assert_eq!(n, 3, "ON CONFLICT ran on each row's own shard");
        }
        // Text-format parameters and the summed count, over the raw protocol.
        let more: Vec<i64> = s
            .keys_on(0)
            .skip(3)
            .take(2)
            .chain(s.keys_on(1).skip(3).take(2))
            .collect();
        let texts: Vec<String> = more.iter().map(i64::to_string).collect();
        let mut raw = RawClient::connect(s.proxy.addr(), "app", "secret", "app", &[]).await?;
        let frames = Frames::new()
            .parse(
                "",
                "INSERT INTO users (id) VALUES ($1), ($2), ($3), ($4)",
                &[],
            )
            .bind(
                "",
                "",
                &[],
                &texts.iter().map(|t| Some(t.as_bytes())).collect::<Vec<_>>(),
                &[],
            )
            .execute("", 0)
            .sync();
        raw.send(&frames.finish()).await?;
        let answers = raw.read_until_ready().await?;
        assert_eq!(
            tags(&answers),
            "12CZ",
            "ParseComplete, BindComplete, CommandComplete"
        );
        let complete = &answers[2].1;
        assert_eq!(&complete[..], b"INSERT 0 4\0");
        let found = ids_by_shard(&s, "SELECT id FROM users").await?;
        rows_landed(&s, KeyType::Bigint, &found, 10);
        Ok(())
    })
}
