//! Routing hints a client writes as the leading comment of a query.
//!
//! `/* shardgate: primary */ SELECT ...` sends a query to the primary, `/* shardgate: replica */` to a
//! replica, whatever the classifier thinks of it. Only a `/* ... */` comment that is the very first
//! token of the text counts (whitespace before it is fine); a hint anywhere else, or in a `--` comment,
//! is an ordinary comment. The words are case-insensitive and spaces around the colon are allowed
//! (`shardgate:replica`, `ShardGate : Primary`).
//!
//! The cache key keeps comments verbatim, so two texts that share a key also share their hint.

use super::lex::{Kind, Lexer};

/// Where a hint asks a query to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    Primary,
    Replica,
}

/// The hint in the leading comment of `sql`, if any.
pub fn leading(sql: &str) -> Option<Hint> {
    let src = sql.as_bytes();
    let tok = Lexer::new(src).find(|t| t.kind != Kind::Space)?;
    if !matches!(tok.kind, Kind::BlockComment { .. }) {
        return None;
    }
    // `/*` and `*/` are ASCII, so these are char boundaries.
    parse_body(&sql[tok.start + 2..tok.end - 2])
}

/// `shardgate : primary|replica`, trimmed, case-insensitive.
fn parse_body(body: &str) -> Option<Hint> {
    let (word, target) = body.split_once(':')?;
    if !word.trim().eq_ignore_ascii_case("shardgate") {
        return None;
    }
    let target = target.trim();
    if target.eq_ignore_ascii_case("primary") {
        Some(Hint::Primary)
    } else if target.eq_ignore_ascii_case("replica") {
        Some(Hint::Replica)
    } else {
        None
    }
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
