//! From plans to shards: the hash contract (`crate::hash`) applied to each key, and the statements
//! shardgate refuses rather than run on the wrong shards.

use thiserror::Error;

use super::{KeyValue, ShardPlan, ShardScope};
use crate::config::Config;
use crate::hash::{KeyType, ShardKey};

/// Most shards a map may have (a [`ShardSet`] is a bit set).
pub const MAX_SHARDS: usize = 64;

/// A set of shards, by index into `config.shards`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShardSet(pub u64);

impl ShardSet {
    pub fn one(i: usize) -> ShardSet {
        ShardSet(1 << i)
    }

    pub fn all(n: usize) -> ShardSet {
        ShardSet(if n >= 64 { u64::MAX } else { (1 << n) - 1 })
    }

    pub fn insert(&mut self, i: usize) {
        self.0 |= 1 << i;
    }

    pub fn contains(self, i: usize) -> bool {
        self.0 & (1 << i) != 0
    }

    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The only shard, when there is exactly one.
    pub fn single(self) -> Option<usize> {
        (self.len() == 1).then(|| self.0.trailing_zeros() as usize)
    }

    pub fn union(self, other: ShardSet) -> ShardSet {
        ShardSet(self.0 | other.0)
    }

    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..64).filter(move |i| self.0 & (1u64 << i) != 0)
    }
}

/// The shards a statement touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shards {
    /// These shards (one for a key lookup).
    Set(ShardSet),
    /// Every shard.
    All,
    /// Any one shard will do (a read of unsharded tables, a SET, a BEGIN).
    Any,
}

impl Shards {
    /// The union of two decisions (statements of one text or one pipeline).
    pub fn union(self, other: Shards) -> Shards {
        match (self, other) {
            (Shards::All, _) | (_, Shards::All) => Shards::All,
            (Shards::Any, x) | (x, Shards::Any) => x,
            (Shards::Set(a), Shards::Set(b)) => Shards::Set(a.union(b)),
        }
    }

    /// As a set over a map of `n` shards (Any: none in particular).
    pub fn set(self, n: usize) -> ShardSet {
        match self {
            Shards::Set(s) => s,
            Shards::All => ShardSet::all(n),
            Shards::Any => ShardSet::default(),
        }
    }
}

/// A statement shardgate will not run, because it cannot run it correctly on the shards.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RouteError {
    #[error(
        "the UPDATE assigns {table}.{key}, the shard key, which could move the row to another shard; delete the row and insert it with its new key instead"
    )]
    MovesKey { table: String, key: String },
    #[error(
        "sharded tables are joined without equating their shard keys, so matching rows may live on different shards; join them on their shard keys (co-located), or query each table separately"
    )]
    CrossShardJoin,
    #[error(
        "INSERT into sharded table {table} needs its shard key column {key} in the column list and one VALUES row per row, so each row's shard can be found (INSERT ... SELECT and DEFAULT keys are not placed); add the key, or route it with /* shardgate: shard=NAME */"
    )]
    KeylessInsert { table: String, key: String },
    #[error(
        "shardgate cannot parse this statement, and it names sharded table {0}, so its shard is unknown; name it with a leading /* shardgate: shard=NAME */ or /* shardgate: key=VALUE */ comment"
    )]
    Unparsed(String),
    #[error("{0}")]
    BadKey(String),
    #[error("the shard key is parameter ${0}, which the Bind did not supply")]
    Unbound(usize),
}

/// Whether any plan takes a key from a literal (the caller then supplies the text's literals).
pub fn needs_literals(plans: &[ShardPlan]) -> bool {
    plans.iter().any(|p| match &p.scope {
        ShardScope::Keys { keys, .. } => keys.iter().any(|k| matches!(k, KeyValue::Literal { .. })),
        _ => false,
    })
}

/// The shards of a text's statements. `literals`: the text's literal values in order (from
/// [`super::literals`]) when the plans were made for another text of the same shape; None to use
/// the values stored in the plans. `param(n, type)`: the n-th Bind parameter as a key.
pub fn shards_of(
    plans: &[ShardPlan],
    config: &Config,
    literals: Option<&[String]>,
    param: &dyn Fn(usize, KeyType) -> Result<ShardKey, RouteError>,
) -> Result<Shards, RouteError> {
    let mut out = Shards::Any;
    for p in plans {
        out = out.union(resolve_one(p, config, literals, param)?);
    }
    Ok(out)
}

fn resolve_one(
    plan: &ShardPlan,
    config: &Config,
    literals: Option<&[String]>,
    param: &dyn Fn(usize, KeyType) -> Result<ShardKey, RouteError>,
) -> Result<Shards, RouteError> {
    if plan.moves_key {
        let (table, key) = table_key(plan, config);
        return Err(RouteError::MovesKey { table, key });
    }
    if plan.cross_shard_join {
        return Err(RouteError::CrossShardJoin);
    }
    if let Some(table) = &plan.unparsed_table {
        return Err(RouteError::Unparsed(table.clone()));
    }
    if plan.keyless_insert {
        let (table, key) = table_key(plan, config);
        return Err(RouteError::KeylessInsert { table, key });
    }
    match &plan.scope {
        ShardScope::Unsharded if !plan.write => Ok(Shards::Any),
        ShardScope::Unsharded | ShardScope::AllShards { .. } | ShardScope::Unparsed => {
            Ok(Shards::All)
        }
        ShardScope::Keys { table, .. } => match config.table(table) {
            Some(_) => {
                let mut set = ShardSet::default();
                for shard in each_key_shard(plan, config, literals, param)? {
                    set.insert(shard);
                }
                Ok(Shards::Set(set))
            }
            None => Ok(Shards::All),
        },
    }
}

/// The shard of each key of a `Keys` plan, in order; `literals` and `param` as for [`shards_of`].
fn each_key_shard(
    plan: &ShardPlan,
    config: &Config,
    literals: Option<&[String]>,
    param: &dyn Fn(usize, KeyType) -> Result<ShardKey, RouteError>,
) -> Result<Vec<usize>, RouteError> {
    let ShardScope::Keys { table, keys } = &plan.scope else {
        return Ok(Vec::new());
    };
    let Some(t) = config.table(table) else {
        return Ok(Vec::new());
    };
    keys.iter()
        .map(|k| {
            let key = match k {
                KeyValue::Literal {
                    text,
                    index,
                    negative,
                } => {
                    let value = literals.and_then(|l| l.get(*index)).unwrap_or(text);
                    let value = if *negative {
                        format!("-{value}")
                    } else {
                        value.clone()
                    };
                    ShardKey::from_text(t.key_type, &value).map_err(|e| {
                        RouteError::BadKey(format!("{}.{}: {e}", t.name, t.shard_key))
                    })?
                }
                KeyValue::Param(n) => param(*n, t.key_type)?,
            };
            Ok(config.shard_index_for_hash(key.hash()))
        })
        .collect()
}

fn table_key(plan: &ShardPlan, config: &Config) -> (String, String) {
    let table = match &plan.scope {
        ShardScope::Keys { table, .. } | ShardScope::AllShards { table } => table.clone(),
        _ => String::new(),
    };
    let key = config
        .table(&table)
        .map(|t| t.shard_key.clone())
        .unwrap_or_default();
    (table, key)
}

/// The shard of each key of a `Keys` plan, in order (for an INSERT: of each VALUES row);
/// `literals` and `param` as for [`shards_of`]. None when a key cannot be read.
pub fn key_shards(
    plan: &ShardPlan,
    config: &Config,
    literals: Option<&[String]>,
    param: &dyn Fn(usize, KeyType) -> Result<ShardKey, RouteError>,
) -> Option<Vec<usize>> {
    if !matches!(plan.scope, ShardScope::Keys { .. }) {
        return None;
    }
    each_key_shard(plan, config, literals, param).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets() {
        let mut s = ShardSet::one(2);
        s.insert(0);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(s.single(), None);
        assert_eq!(ShardSet::one(5).single(), Some(5));
        assert_eq!(ShardSet::all(3).0, 0b111);
        assert_eq!(
            Shards::Any.union(Shards::Set(ShardSet::one(1))),
            Shards::Set(ShardSet::one(1))
        );
        assert_eq!(Shards::All.union(Shards::Any), Shards::All);
    }
}
