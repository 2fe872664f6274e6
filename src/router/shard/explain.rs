//! The whole routing decision in words, for `shardgate route` and `SHOW shardgate.route FOR`.

use super::resolve::{RouteError, Shards, shards_of};
use super::{KeyValue, ShardScope, plan};
use crate::config::Config;
use crate::hash::ShardKey;

/// The whole routing decision for one SQL text, in words: shards, server role and why. What
/// `shardgate route` prints.
pub fn explain(sql: &str, config: &Config) -> String {
    let opts = crate::router::ClassifyOptions::from_config(config);
    let rw = crate::router::classify(sql, &opts);
    let role = if rw.read && !rw.writes {
        "replica"
    } else {
        "primary"
    };
    let p = plan(sql, &config.tables);
    if let Some(h) = crate::router::hint::shard_hint(sql) {
        return format!(
            "shards={} role={role} why: a /* shardgate: {h} */ comment",
            h.describe(config)
        );
    }
    let unbound = |n, _| Err(RouteError::Unbound(n));
    let shards = shards_of(std::slice::from_ref(&p), config, None, &unbound);
    // A parameter key or a bad literal is explained below; anything else is a refusal.
    if let Err(e) = &shards
        && !matches!(e, RouteError::Unbound(_) | RouteError::BadKey(_))
    {
        return format!("refused (0A000): {e}");
    }
    let name = |i: usize| config.shards[i].name.clone();
    let all = config
        .shards
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let why = match &p.scope {
        ShardScope::Unparsed => "the statement could not be parsed: every shard's primary".into(),
        ShardScope::Unsharded if p.write => {
            "no sharded table: DDL and writes go to every shard".to_string()
        }
        ShardScope::Unsharded => "no sharded table: one shard".into(),
        ShardScope::AllShards { table } => {
            format!("no usable condition on the shard key of {table}: every shard")
        }
        ShardScope::Keys { table, keys } => {
            let t = config.table(table).expect("planned from the map");
            let parts: Vec<String> = keys
                .iter()
                .map(|k| match k {
                    KeyValue::Param(n) => format!("${n} (known at Bind)"),
                    KeyValue::Literal { .. } => {
                        match ShardKey::from_text(t.key_type, &k.describe()) {
                            Ok(key) => {
                                let h = key.hash();
                                format!(
                                    "{} (hash {h}) -> {}",
                                    k.describe(),
                                    config.shard_for_hash(h).name
                                )
                            }
                            Err(e) => format!("{e}"),
                        }
                    }
                })
                .collect();
            format!("{}.{} = {}", t.name, t.shard_key, parts.join(", "))
        }
    };
    let shards = match shards {
        Ok(Shards::Set(set)) => set.iter().map(name).collect::<Vec<_>>().join(","),
        Ok(Shards::All) => all,
        Ok(Shards::Any) => "any one".into(),
        Err(e) => format!("unknown ({e})"),
    };
    let role = if p.write || matches!(p.scope, ShardScope::Unparsed) {
        "primary"
    } else {
        role
    };
    format!("shards={shards} role={role} why: {why}")
}
