//! The sharded test cluster: a private cluster of 2 or 3 shards (each a primary and a streaming
//! replica) behind a proxy with sharded tables and a decision log, and helpers to check where
//! rows are (each shard's primary, read directly) against the hash contract.

use std::collections::BTreeSet;

use tokio_postgres::{Client, SimpleQueryMessage};

use shardgate::config::Config;
use shardgate::hash::{KeyType, ShardKey};
use shardgate::localcluster::{ClusterSpec, LocalCluster};

use crate::harness::{Ctx, ProxyUnderTest, connect, proxy_setting};

pub const TABLES: &str = r#"
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

[[tables]]
name = "countries"
replicated = true
"#;

/// A private cluster of `shards` shards (primary + one replica each), and a proxy over it with
/// the sharded tables above and a decision log.
pub struct Sharded {
    pub cluster: LocalCluster,
    pub proxy: ProxyUnderTest,
    pub config: Config,
    pub primaries: Vec<Client>,
    _state: tempfile::TempDir,
}

pub async fn sharded(ctx: &Ctx, shards: usize) -> anyhow::Result<Sharded> {
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
    pub fn shard_of(&self, key_type: KeyType, key: &str) -> usize {
        let k = ShardKey::from_text(key_type, key).expect("a valid key");
        self.config.shard_index_for_hash(k.hash())
    }

    /// Bigint keys that belong to `shard`, in increasing order from 1.
    pub fn keys_on(&self, shard: usize) -> impl Iterator<Item = i64> + '_ {
        (1i64..).filter(move |k| self.shard_of(KeyType::Bigint, &k.to_string()) == shard)
    }

    /// The first bigint key of `shard`.
    pub fn key_on(&self, shard: usize) -> i64 {
        self.keys_on(shard).next().expect("every shard has keys")
    }

    pub fn primary_port(&self, shard: usize) -> u16 {
        self.cluster.shards()[shard].primary.port
    }

    pub fn ports_of(&self, shard: usize) -> BTreeSet<u16> {
        let s = &self.cluster.shards()[shard];
        std::iter::once(s.primary.port)
            .chain(s.replicas.iter().map(|r| r.port))
            .collect()
    }

    /// Waits until every replica has replayed what its primary wrote so far.
    pub async fn replicas_caught_up(&self) -> anyhow::Result<()> {
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
pub async fn rows(c: &Client, sql: &str) -> anyhow::Result<Vec<Vec<Option<String>>>> {
    let mut out = Vec::new();
    for m in c.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(r) = m {
            out.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
        }
    }
    Ok(out)
}

/// The ids of `table` on each shard's primary.
pub async fn ids_by_shard(s: &Sharded, sql: &str) -> anyhow::Result<Vec<BTreeSet<String>>> {
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

pub fn rows_landed(s: &Sharded, key_type: KeyType, found: &[BTreeSet<String>], expected: usize) {
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

/// A uuid parameter sent in binary (16 bytes), without a uuid crate.
pub mod uuid_like {
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
