//! From a plan to shards (the hash contract applied to its keys), and the whole decision in
//! words for `shardgate route` and `SHOW shardgate.route`.

use std::collections::BTreeSet;

use super::{KeyValue, ShardPlan, ShardScope, plan};
use crate::config::Config;
use crate::hash::ShardKey;

/// The shards a plan touches, by index into `config.shards`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shards {
    /// These shards (one for a key lookup).
    Some(BTreeSet<usize>),
    /// Every shard.
    All,
    /// Any one shard will do (a read of unsharded tables).
    Any,
}

/// Resolves a plan's keys to shards; `param(n)` gives the n-th Bind parameter as a key, if bound.
pub fn resolve(
    plan: &ShardPlan,
    config: &Config,
    param: &dyn Fn(usize) -> Option<ShardKey>,
) -> Result<Shards, String> {
    match &plan.scope {
        ShardScope::Unsharded if !plan.write => Ok(Shards::Any),
        ShardScope::Unsharded | ShardScope::AllShards { .. } | ShardScope::Unparsed => {
            Ok(Shards::All)
        }
        ShardScope::Keys { table, keys } => {
            let t = config
                .table(table)
                .ok_or_else(|| format!("table \"{table}\" is not in [[tables]]"))?;
            let mut set = BTreeSet::new();
            for k in keys {
                let key = match k {
                    KeyValue::Literal { .. } => {
                        ShardKey::from_text(t.key_type, &k.describe()).map_err(|e| e.to_string())?
                    }
                    KeyValue::Param(n) => param(*n)
                        .ok_or_else(|| format!("the shard key is parameter ${n}, not bound"))?,
                };
                let h = key.hash();
                let i = config
                    .shards
                    .iter()
                    .position(|s| s.range[0] <= u64::from(h) && u64::from(h) < s.range[1])
                    .expect("validated: the ranges cover the hash space");
                set.insert(i);
            }
            Ok(Shards::Some(set))
        }
    }
}

/// The whole routing decision for one SQL text, in words: shards, server role and why. What
/// `shardgate route` prints.
pub fn explain(sql: &str, config: &Config) -> String {
    let opts = crate::router::ClassifyOptions {
        write_functions: config.routing.write_functions.clone(),
    };
    let rw = crate::router::classify(sql, &opts);
    let role = if rw.read && !rw.writes {
        "replica"
    } else {
        "primary"
    };
    let p = plan(sql, &config.tables);
    if p.moves_key {
        return "refused (0A000): the UPDATE assigns the shard key, which could move the row to another shard; delete and insert it instead".into();
    }
    if p.cross_shard_join {
        return "refused (0A000): sharded tables joined without equating their shard keys; join them on their shard keys".into();
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
    let shards = match resolve(&p, config, &|_| None) {
        Ok(Shards::Some(set)) => set.into_iter().map(name).collect::<Vec<_>>().join(","),
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
