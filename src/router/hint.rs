//! Routing hints a client writes as the leading comment of a query.
//!
//! `/* shardgate: primary */ SELECT ...` sends a query to the primary, `/* shardgate: replica */` to a
//! replica, whatever the classifier thinks of it. Only a `/* ... */` comment that is the very first
//! token of the text counts (whitespace before it is fine); a hint anywhere else, or in a `--` comment,
//! is an ordinary comment. The words are case-insensitive and spaces around the colon are allowed
//! (`shardgate:replica`, `ShardGate : Primary`).
//!
//! The same comment can name the shard: `/* shardgate: shard=s1 */` (by name) or
//! `/* shardgate: key=42 */` (a shard key value, hashed like the statement's table's key; without
//! a sharded table, as a bigint when it reads as one, else as text), alone or with a role
//! (`/* shardgate: shard=s1, replica */`).
//!
//! The cache key keeps comments verbatim, so two texts that share a key also share their hint.

use super::lex::{Kind, Lexer};

/// Where a hint asks a query to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    Primary,
    Replica,
}

/// Which shard a hint (or `SET shardgate.shard` / `shardgate.sharding_key`) names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardHint {
    /// A shard by name.
    Shard(String),
    /// A shard key value.
    Key(String),
}

impl ShardHint {
    /// The shard's index in the map, or why there is none.
    pub fn shard_index(
        &self,
        config: &crate::config::Config,
        key_type: Option<crate::hash::KeyType>,
    ) -> Result<usize, String> {
        match self {
            ShardHint::Shard(name) => config
                .shards
                .iter()
                .position(|s| s.name == *name)
                .ok_or_else(|| {
                    let names: Vec<&str> = config.shards.iter().map(|s| s.name.as_str()).collect();
                    format!(
                        "there is no shard \"{name}\"; the shards are {}",
                        names.join(", ")
                    )
                }),
            ShardHint::Key(value) => {
                use crate::hash::{KeyType, ShardKey};
                let key = match key_type {
                    Some(t) => ShardKey::from_text(t, value).map_err(|e| e.to_string())?,
                    None => ShardKey::from_text(KeyType::Bigint, value)
                        .unwrap_or_else(|_| ShardKey::Text(value.clone())),
                };
                Ok(config.shard_index_for_hash(key.hash()))
            }
        }
    }

    /// The shard's name, for `shardgate route`.
    pub fn describe(&self, config: &crate::config::Config) -> String {
        match self.shard_index(config, None) {
            Ok(i) => config.shards[i].name.clone(),
            Err(e) => format!("none ({e})"),
        }
    }
}

impl std::fmt::Display for ShardHint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardHint::Shard(s) => write!(f, "shard={s}"),
            ShardHint::Key(k) => write!(f, "key={k}"),
        }
    }
}

/// The hint in the leading comment of `sql`, if any.
pub fn leading(sql: &str) -> Option<Hint> {
    leading_all(sql).and_then(|(role, _)| role)
}

/// The shard named by the leading comment of `sql`, if any.
pub fn shard_hint(sql: &str) -> Option<ShardHint> {
    leading_all(sql).and_then(|(_, shard)| shard)
}

/// The role and shard the leading comment of `sql` asks for.
pub fn leading_all(sql: &str) -> Option<(Option<Hint>, Option<ShardHint>)> {
    let src = sql.as_bytes();
    let tok = Lexer::new(src).find(|t| t.kind != Kind::Space)?;
    if !matches!(tok.kind, Kind::BlockComment { .. }) {
        return None;
    }
    // `/*` and `*/` are ASCII, so these are char boundaries.
    parse_body(&sql[tok.start + 2..tok.end - 2])
}

/// `shardgate : item[, item]` where an item is `primary`, `replica`, `shard=NAME` or `key=VALUE`;
/// trimmed, words case-insensitive. Anything else: no hint at all.
fn parse_body(body: &str) -> Option<(Option<Hint>, Option<ShardHint>)> {
    let (word, items) = body.split_once(':')?;
    if !word.trim().eq_ignore_ascii_case("shardgate") {
        return None;
    }
    let mut role = None;
    let mut shard = None;
    for item in items.split(',') {
        let item = item.trim();
        if item.eq_ignore_ascii_case("primary") && role.is_none() {
            role = Some(Hint::Primary);
        } else if item.eq_ignore_ascii_case("replica") && role.is_none() {
            role = Some(Hint::Replica);
        } else if let Some((k, v)) = item.split_once('=') {
            let v = v.trim().trim_matches('\'').to_string();
            if v.is_empty() || shard.is_some() {
                return None;
            }
            match k.trim().to_ascii_lowercase().as_str() {
                "shard" => shard = Some(ShardHint::Shard(v)),
                "key" => shard = Some(ShardHint::Key(v)),
                _ => return None,
            }
        } else {
            return None;
        }
    }
    (role.is_some() || shard.is_some()).then_some((role, shard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_comment_hints() {
        assert_eq!(
            leading("/* shardgate: primary */ SELECT 1"),
            Some(Hint::Primary)
        );
        assert_eq!(
            leading("  \n\t/*shardgate:replica*/SELECT 1"),
            Some(Hint::Replica)
        );
        assert_eq!(
            leading("/*  ShardGate :  REPLICA  */ SELECT 1"),
            Some(Hint::Replica)
        );
        assert_eq!(leading("/* shardgate: primary */"), Some(Hint::Primary));
    }

    #[test]
    fn shard_hints() {
        assert_eq!(
            shard_hint("/* shardgate: shard=s1 */ SELECT 1"),
            Some(ShardHint::Shard("s1".into()))
        );
        assert_eq!(
            leading_all("/* shardgate: key=42, replica */ SELECT 1"),
            Some((Some(Hint::Replica), Some(ShardHint::Key("42".into()))))
        );
        assert_eq!(
            shard_hint("/* shardgate: key='a b' */ SELECT 1"),
            Some(ShardHint::Key("a b".into()))
        );
        assert_eq!(shard_hint("/* shardgate: shard= */ SELECT 1"), None);
        assert_eq!(shard_hint("/* shardgate: colour=red */ SELECT 1"), None);
        assert_eq!(leading("/* shardgate: shard=s1 */ SELECT 1"), None);
    }

    #[test]
    fn not_hints() {
        // Not the first token.
        assert_eq!(leading("SELECT /* shardgate: replica */ 1"), None);
        assert_eq!(
            leading("/* other */ /* shardgate: replica */ SELECT 1"),
            None
        );
        // Line comments, other words, extra words, unterminated.
        assert_eq!(leading("-- shardgate: replica\nSELECT 1"), None);
        assert_eq!(leading("/* shardgate: standby */ SELECT 1"), None);
        assert_eq!(leading("/* shardgate: replica please */ SELECT 1"), None);
        assert_eq!(leading("/* shardgate replica */ SELECT 1"), None);
        assert_eq!(leading("/* x shardgate: replica */ SELECT 1"), None);
        assert_eq!(leading("/* shardgate: replica SELECT 1"), None);
        assert_eq!(leading("/* /* shardgate: replica */ */ SELECT 1"), None);
        assert_eq!(leading(""), None);
        assert_eq!(leading("SELECT 1"), None);
    }
}
