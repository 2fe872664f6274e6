//! SELECTs over several shards give what one database holding all the rows gives: a differential
//! test against a plain reference Postgres with the same random data (orderings, limits,
//! offsets, aggregates, GROUP BY, HAVING, DISTINCT, NULLs, ties, empty shards), in text (simple
//! protocol) and binary (extended protocol); and the shapes shardgate refuses.

use anyhow::Context;
use tokio_postgres::Client;
use tokio_postgres::types::{FromSql, Type};

use shardgate::localcluster::ClusterSpec;

use crate::harness::{Ctx, block_on, connect, tests};
use crate::rawclient::{Frames, Message, RawClient, ensure_same};
use crate::sharded::{rows, sharded};

tests![
    merged_reads_match_one_database,
    extended_protocol_answers_match_one_database,
    merges_that_cannot_be_exact_are_refused,
];

/// splitmix64: a small seeded generator, so a failing seed can be run again.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// `k` distinct items, in random order.
    fn some<T: Clone>(&mut self, items: &[T], k: usize) -> Vec<T> {
        let mut idx: Vec<usize> = (0..items.len()).collect();
        for i in (1..idx.len()).rev() {
            idx.swap(i, self.below(i as u64 + 1) as usize);
        }
        idx.into_iter().take(k).map(|i| items[i].clone()).collect()
    }
}

const SCHEMA: &str = "CREATE TABLE users (id bigint PRIMARY KEY, name text, country text, \
     age int, score numeric(8,2), ratio float8, born date, seen timestamp, flag bool)";

/// A row of `users` as SQL values.
fn random_row(rng: &mut Rng, id: u64) -> String {
    let null = |rng: &mut Rng, v: String| if rng.chance(12) { "NULL".into() } else { v };
    let name = format!(
        "'{}'",
        rng.pick(&["ann", "bob", "cy", "dee", "ed", "flo", "gus", "Hal"])
    );
    let country = format!("'{}'", rng.pick(&["de", "fr", "us", "jp", "br"]));
    let age = rng.below(90).to_string();
    let score = format!("{}.{:02}", rng.below(2000) as i64 - 1000, rng.below(100));
    let ratio = format!("{}", (rng.below(64) as f64 - 20.0) / 8.0);
    let born = format!("DATE '1950-01-01' + {}", rng.below(20_000));
    let seen = format!(
        "TIMESTAMP '2020-01-01' + interval '{} seconds'",
        rng.below(50_000_000)
    );
    let flag = rng.pick(&["true", "false"]).to_string();
    format!(
        "({id}, {}, {}, {}, {}, {}, {}, {}, {})",
        null(rng, name),
        null(rng, country),
        null(rng, age),
        null(rng, score),
        null(rng, ratio),
        null(rng, born),
        null(rng, seen),
        null(rng, flag),
    )
}

const COLUMNS: &[&str] = &[
    "id", "name", "country", "age", "score", "ratio", "born", "seen", "flag",
];

/// One generated query and whether its ORDER BY fixes the order of its rows.
struct Query {
    sql: String,
    ordered: bool,
}

fn filter(rng: &mut Rng, ids: &[u64]) -> String {
    match rng.below(9) {
        0 => "WHERE age > 30".into(),
        1 => "WHERE country = 'de'".into(),
        2 => "WHERE score < 0".into(),
        // Nothing anywhere: every shard empty.
        3 => "WHERE age > 1000".into(),
        // Keys of some shards only.
        4 => {
            let keys: Vec<String> = rng.some(ids, 12).iter().map(u64::to_string).collect();
            format!("WHERE id IN ({})", keys.join(", "))
        }
        5 => "WHERE name IS NULL OR flag".into(),
        _ => String::new(),
    }
}

fn direction(rng: &mut Rng) -> &'static str {
    const DIRECTIONS: [&str; 5] = [
        "",
        " DESC",
        " ASC NULLS FIRST",
        " DESC NULLS LAST",
        " NULLS FIRST",
    ];
    DIRECTIONS[rng.below(5) as usize]
}

fn limit(rng: &mut Rng) -> String {
    let mut s = String::new();
    if rng.chance(60) {
        s += &format!(" LIMIT {}", rng.below(25));
    }
    if rng.chance(40) {
        s += &format!(" OFFSET {}", rng.below(15));
    }
    s
}

fn generate(rng: &mut Rng, ids: &[u64]) -> Query {
    let wher = filter(rng, ids);
    match rng.below(6) {
        // Rows ordered by a few keys (some outside the select list), id last: a total order.
        0 | 1 => {
            let k = 1 + rng.below(4) as usize;
            let cols = if rng.chance(15) {
                vec!["*".to_string()]
            } else {
                rng.some(COLUMNS, k)
                    .into_iter()
                    .map(str::to_string)
                    .collect()
            };
            let nkeys = 1 + rng.below(3) as usize;
            let mut keys: Vec<String> = rng
                .some(&COLUMNS[1..], nkeys)
                .into_iter()
                .map(|c| format!("{c}{}", direction(rng)))
                .collect();
            keys.push(format!("id{}", direction(rng)));
            Query {
                sql: format!(
                    "SELECT {} FROM users {wher} ORDER BY {}{}",
                    cols.join(", "),
                    keys.join(", "),
                    limit(rng)
                ),
                ordered: true,
            }
        }
        // Aggregates, grouped or not, HAVING, ordered by the group keys (unique per group).
        2 | 3 => {
            let ngroups = rng.below(3) as usize;
            let groups: Vec<String> = rng
                .some(&["country", "flag", "(age / 10)", "born"], ngroups)
                .into_iter()
                .map(str::to_string)
                .collect();
            let naggs = 1 + rng.below(4) as usize;
            let aggs = rng.some(
                &[
                    "count(*)",
                    "count(age)",
                    "sum(age)",
                    "sum(score)",
                    "sum(id)",
                    "avg(age)",
                    "avg(score)",
                    "avg(id)",
                    "min(name)",
                    "max(name)",
                    "min(born)",
                    "max(seen)",
                    "min(score)",
                    "max(ratio)",
                    "count(DISTINCT id)",
                ],
                naggs,
            );
            let mut items: Vec<String> = groups.clone();
            items.extend(aggs.iter().map(|a| a.to_string()));
            let mut sql = format!("SELECT {} FROM users {wher}", items.join(", "));
            if !groups.is_empty() {
                sql += &format!(" GROUP BY {}", groups.join(", "));
                if rng.chance(40) {
                    sql += &format!(
                        " HAVING {}",
                        rng.pick(&[
                            "count(*) > 2",
                            "sum(age) >= 300",
                            "max(age) < 80 OR count(*) = 1",
                            "min(name) <> 'bob'",
                            "avg(score) > 0",
                            "NOT (count(age) <= 3) AND max(score) IS NOT NULL",
                        ])
                    );
                }
            }
            let ordered = !groups.is_empty() && rng.chance(80);
            if ordered {
                let mut keys: Vec<String> = Vec::new();
                if rng.chance(30) {
                    keys.push(format!("count(*){}", direction(rng)));
                }
                keys.extend(groups.iter().map(|g| format!("{g}{}", direction(rng))));
                sql += &format!(" ORDER BY {}{}", keys.join(", "), limit(rng));
            }
            Query {
                sql,
                ordered: ordered || groups.is_empty(),
            }
        }
        // DISTINCT, ordered by every column (a total order) or not at all.
        4 => {
            let ncols = 1 + rng.below(2) as usize;
            let cols = rng.some(&["country", "flag", "age", "name"], ncols);
            let ordered = rng.chance(70);
            let mut sql = format!("SELECT DISTINCT {} FROM users {wher}", cols.join(", "));
            if ordered {
                let keys: Vec<String> = cols
                    .iter()
                    .map(|c| format!("{c}{}", direction(rng)))
                    .collect();
                sql += &format!(" ORDER BY {}{}", keys.join(", "), limit(rng));
            }
            Query { sql, ordered }
        }
        // Plain rows, UNION: compared as sets of rows.
        _ => {
            if rng.chance(50) {
                Query {
                    sql: "SELECT country, flag FROM users WHERE age < 30 UNION SELECT country, flag FROM users WHERE age > 60".into(),
                    ordered: false,
                }
            } else {
                Query {
                    sql: format!("SELECT id, name, score FROM users {wher}"),
                    ordered: false,
                }
            }
        }
    }
}

/// One plain Postgres (no shards, no replica) to compare shardgate's answers with, and a client.
async fn reference_database(
    ctx: &Ctx,
) -> anyhow::Result<(shardgate::localcluster::LocalCluster, Client)> {
    let cluster = ctx.start_cluster(&ClusterSpec {
        shards: 1,
        replicas_per_shard: 0,
        synchronous: false,
    })?;
    let client = connect(&cluster.shards()[0].primary.app_conninfo()).await?;
    Ok((cluster, client))
}

/// A column value as the server sent it in binary.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Raw, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

async fn binary_rows(c: &Client, sql: &str) -> anyhow::Result<(Vec<Type>, Vec<Vec<Option<Raw>>>)> {
    let stmt = c.prepare(sql).await?;
    let types = stmt.columns().iter().map(|c| c.type_().clone()).collect();
    let rows = c
        .query(&stmt, &[])
        .await?
        .iter()
        .map(|r| (0..r.len()).map(|i| r.get::<_, Option<Raw>>(i)).collect())
        .collect();
    Ok((types, rows))
}

fn same<T: Ord + std::fmt::Debug + Clone>(
    mut got: Vec<T>,
    mut want: Vec<T>,
    ordered: bool,
    what: &str,
) -> anyhow::Result<()> {
    if !ordered {
        got.sort();
        want.sort();
    }
    anyhow::ensure!(
        got == want,
        "{what}: shardgate gave {} rows, the reference {}\nshardgate: {:?}\nreference: {:?}",
        got.len(),
        want.len(),
        &got[..got.len().min(12)],
        &want[..want.len().min(12)]
    );
    Ok(())
}

/// Random data in 3 shards and the same in one reference database; generated queries run
/// through shardgate and directly against the reference must give the same rows (in the same
/// order where the ORDER BY fixes it), in text and in binary.
fn merged_reads_match_one_database(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let seed = match std::env::var("SHARDGATE_MERGE_SEED") {
            Ok(s) => s.parse().context("SHARDGATE_MERGE_SEED is a number")?,
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos() as u64,
        };
        let result = differential(ctx, seed).await;
        result.with_context(|| format!("rerun with SHARDGATE_MERGE_SEED={seed}"))
    })
}

async fn differential(ctx: &Ctx, seed: u64) -> anyhow::Result<()> {
    let mut rng = Rng(seed);
    let s = sharded(ctx, 3).await?;
    let (_reference_cluster, reference) = reference_database(ctx).await?;
    let proxy = s.proxy.client().await?;
    proxy.batch_execute(SCHEMA).await?;
    reference.batch_execute(SCHEMA).await?;
    let n = 150 + rng.below(250);
    let mut ids: Vec<u64> = Vec::new();
    while (ids.len() as u64) < n {
        let id = 1 + rng.below(100_000);
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    for chunk in ids.chunks(50) {
        let values: Vec<String> = chunk.iter().map(|&id| random_row(&mut rng, id)).collect();
        let insert = format!(
            "INSERT INTO users (id, name, country, age, score, ratio, born, seen, flag) VALUES {}",
            values.join(", ")
        );
        proxy.batch_execute(&insert).await?;
        reference.batch_execute(&insert).await?;
    }
    s.replicas_caught_up().await?;
    let per_shard: Vec<i64> = {
        let mut v = Vec::new();
        for p in &s.primaries {
            v.push(p.query_one("SELECT count(*) FROM users", &[]).await?.get(0));
        }
        v
    };
    assert_eq!(per_shard.iter().sum::<i64>(), n as i64);
    assert!(
        per_shard.iter().all(|&c| c > 0),
        "rows on every shard: {per_shard:?}"
    );
    let mut checked = 0;
    for _ in 0..150 {
        let q = generate(&mut rng, &ids);
        let what = format!("query {:?} (text)", q.sql);
        let got = rows(&proxy, &q.sql).await.with_context(|| what.clone())?;
        let want = rows(&reference, &q.sql)
            .await
            .with_context(|| format!("the reference ran {:?}", q.sql))?;
        same(got, want, q.ordered, &what)?;
        let what = format!("query {:?} (binary)", q.sql);
        let (got_types, got) = binary_rows(&proxy, &q.sql)
            .await
            .with_context(|| what.clone())?;
        let (want_types, want) = binary_rows(&reference, &q.sql).await?;
        assert_eq!(got_types, want_types, "{what}: column types");
        same(got, want, q.ordered, &what)?;
        checked += 1;
    }
    assert_eq!(checked, 150);
    Ok(())
}

/// Shapes the merge cannot answer exactly are refused with 0A000 and the construct named; the
/// same shapes on one shard's keys run; a refusal inside a transaction aborts it.
fn merges_that_cannot_be_exact_are_refused(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let s = sharded(ctx, 2).await?;
        let c = s.proxy.client().await?;
        c.batch_execute(SCHEMA).await?;
        let values: Vec<String> = (1..=20)
            .map(|id| format!("({id}, 'u{id}', 'de', {id})"))
            .collect();
        c.batch_execute(&format!(
            "INSERT INTO users (id, name, country, age) VALUES {}",
            values.join(", ")
        ))
        .await?;
        for (sql, names) in [
            ("SELECT string_agg(name, ',') FROM users", "string_agg"),
            ("SELECT count(DISTINCT name) FROM users", "count(DISTINCT"),
            ("SELECT stddev(age) FROM users", "stddev"),
            (
                "SELECT id, rank() OVER (ORDER BY age) FROM users",
                "window function rank",
            ),
            (
                "SELECT DISTINCT ON (country) name FROM users",
                "DISTINCT ON",
            ),
            (
                "SELECT count(*) + 1 FROM users",
                "expression over an aggregate",
            ),
            (
                "SELECT * FROM (SELECT age FROM users ORDER BY age LIMIT 3) t",
                "subquery over a sharded table",
            ),
            (
                "SELECT age FROM users INTERSECT SELECT age FROM users",
                "INTERSECT",
            ),
            (
                "SELECT name FROM users ORDER BY name COLLATE \"en_US\"",
                "COLLATE",
            ),
        ] {
            let e = c.simple_query(sql).await.expect_err(sql);
            let db = e.as_db_error().with_context(|| format!("{sql}: {e}"))?;
            assert_eq!(db.code().code(), "0A000", "{sql}: {}", db.message());
            assert!(db.message().contains(names), "{sql}: {}", db.message());
            assert!(
                db.message().contains("shard key"),
                "{sql}: {}",
                db.message()
            );
        }
        // LIMIT given as a parameter (extended protocol).
        let e = c
            .query("SELECT id FROM users ORDER BY id LIMIT $1", &[&3i64])
            .await
            .expect_err("LIMIT $1");
        assert!(
            e.as_db_error()
                .is_some_and(|d| d.message().contains("parameter $1")),
            "{e}"
        );
        // On one shard the same shapes run as they are.
        let k = s.key_on(1);
        let r = rows(
            &c,
            &format!("SELECT string_agg(name, ',') FROM users WHERE id = {k}"),
        )
        .await?;
        assert_eq!(r, vec![vec![Some(format!("u{k}"))]]);
        // Inside a transaction a refusal aborts it, as a server error would.
        c.batch_execute("BEGIN").await?;
        assert!(
            c.simple_query("SELECT stddev(age) FROM users")
                .await
                .is_err()
        );
        let e = c.simple_query("SELECT 1").await.expect_err("aborted");
        assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("25P02"));
        c.batch_execute("ROLLBACK").await?;
        // And the merged answers work inside one.
        c.batch_execute("BEGIN").await?;
        let r = rows(&c, "SELECT id FROM users ORDER BY age DESC LIMIT 3").await?;
        assert_eq!(
            r,
            vec![
                vec![Some("20".to_string())],
                vec![Some("19".to_string())],
                vec![Some("18".to_string())]
            ]
        );
        let r = rows(&c, "SELECT count(*), sum(age), avg(age) FROM users").await?;
        assert_eq!(
            r,
            vec![vec![
                Some("20".to_string()),
                Some("210".to_string()),
                Some("10.5000000000000000".to_string())
            ]]
        );
        c.batch_execute("COMMIT").await?;
        Ok(())
    })
}

/// The messages of an answer with the table OIDs of RowDescriptions zeroed (each database has
/// its own OIDs; everything else must match byte for byte).
fn masked(msgs: Vec<Message>) -> Vec<Message> {
    msgs.into_iter()
        .map(|(tag, body)| {
            if tag != b'T' {
                return (tag, body);
            }
            let mut b = body.to_vec();
            let n = u16::from_be_bytes([b[0], b[1]]) as usize;
            let mut off = 2;
            for _ in 0..n {
                off += b[off..].iter().position(|&c| c == 0).expect("a name") + 1;
                b[off..off + 4].fill(0);
                off += 18;
            }
            (tag, bytes::Bytes::from(b))
        })
        .collect()
}

/// Parse/Bind/Describe portal/Execute with mixed result formats, a named statement described
/// then bound, and a parameter: shardgate's messages over two shards are the reference's, byte
/// for byte (descriptions with hidden columns dropped and avg typed numeric; aggregates encoded
/// in binary where asked).
fn extended_protocol_answers_match_one_database(ctx: &Ctx) -> anyhow::Result<()> {
    use shardgate::localcluster::{APP_DATABASE, APP_PASSWORD, APP_USER};
    block_on(async {
        let s = sharded(ctx, 2).await?;
        let (reference_cluster, reference) = reference_database(ctx).await?;
        let proxy = s.proxy.client().await?;
        let values: Vec<String> = (1..=40i64)
            .map(|id| {
                format!(
                    "({id}, 'n{}', '{}', {}, {}.{:02})",
                    id % 7,
                    ["de", "fr", "us"][(id % 3) as usize],
                    id * 3 % 50,
                    id * 37 % 200 - 100,
                    id * 13 % 100
                )
            })
            .collect();
        let insert = format!(
            "INSERT INTO users (id, name, country, age, score) VALUES {}",
            values.join(", ")
        );
        for c in [&proxy, &reference] {
            c.batch_execute(SCHEMA).await?;
            c.batch_execute(&insert).await?;
        }
        s.replicas_caught_up().await?;
        let port = reference_cluster.shards()[0].primary.port;
        let mut direct = RawClient::connect(
            ("127.0.0.1", port),
            APP_USER,
            APP_PASSWORD,
            APP_DATABASE,
            &[],
        )
        .await?;
        let mut through =
            RawClient::connect(s.proxy.addr(), APP_USER, APP_PASSWORD, APP_DATABASE, &[]).await?;
        let requests = [
            (
                "aggregates in mixed formats",
                Frames::new()
                    .parse(
                        "",
                        "SELECT country, count(*), avg(age), sum(score), max(name) FROM users GROUP BY country ORDER BY country",
                        &[],
                    )
                    .bind("", "", &[], &[], &[0, 1, 1, 0, 1])
                    .describe(b'P', "")
                    .execute("", 0)
                    .sync()
                    .finish(),
            ),
            (
                "a named statement described, then bound with a hidden sort key",
                Frames::new()
                    .parse("top", "SELECT id, name FROM users ORDER BY age DESC, id LIMIT 5 OFFSET 2", &[])
                    .describe(b'S', "top")
                    .sync()
                    .finish(),
            ),
            (
                "the named statement bound in binary",
                Frames::new()
                    .bind("", "top", &[], &[], &[1])
                    .describe(b'P', "")
                    .execute("", 0)
                    .sync()
                    .finish(),
            ),
            (
                "a parameter, no Describe",
                Frames::new()
                    .parse(
                        "",
                        "SELECT id, score FROM users WHERE age > $1 ORDER BY score DESC NULLS LAST, id LIMIT 4",
                        &[23],
                    )
                    .bind("", "", &[0], &[Some(b"20")], &[1, 0])
                    .execute("", 0)
                    .sync()
                    .finish(),
            ),
            (
                "DISTINCT in binary, with a Describe",
                Frames::new()
                    .parse("", "SELECT DISTINCT country FROM users ORDER BY 1 DESC", &[])
                    .bind("", "", &[], &[], &[1])
                    .describe(b'P', "")
                    .execute("", 0)
                    .sync()
                    .finish(),
            ),
        ];
        for (what, frames) in requests {
            direct.send(&frames).await?;
            let want = masked(direct.read_until_ready().await?);
            through.send(&frames).await?;
            let got = masked(through.read_until_ready().await?);
            ensure_same(what, &want, &got)?;
            let executes = !what.contains("described,");
            assert_eq!(
                got.iter().any(|(t, _)| *t == b'D'),
                executes,
                "{what}: rows came"
            );
        }
        Ok(())
    })
}
