//! The route cache key: one key for texts that differ only in their literal values.
//!
//! `SELECT abalance FROM pgbench_accounts WHERE aid = 123` and `... = 456` must share a cached plan,
//! or the cache would hold one entry per row. The key is the text with:
//!
//! - each numeric literal's digit runs replaced by one `0`, keeping its `.` and exponent, so `123` and
//!   `456` become `0`, `1.5` becomes `0.0`, `2e10` becomes `0e0`;
//! - each `'...'` string literal emptied to `''`;
//! - everything else verbatim: identifiers (so `t1` and `t2` stay apart), `"quoted identifiers"`,
//!   `$1` parameters, comments (hints live there), whitespace.
//!
//! The key must never join two texts that classify differently, so it only rewrites what it lexes
//! exactly, and falls back to the exact text for anything else: a backslash, a dollar-quoted string or
//! anything that could start one, an `E'..'`/`U&'..'`/`B'..'`/`X'..'`/`N'..'` string, a number that is
//! not plain decimal (`0x1F`, `1_000`, `1e-5`) or has a digit run longer than 18 (it may not fit the
//! `u64` sqlparser parses some numbers into), a nested block comment, an unterminated quote or comment,
//! any mention of `shardgate` outside a comment (local commands carry their values in literals), and
//! a text that is not UTF-8.
//!
//! Why this is safe: the classifier never looks at a literal's value (an `EXPLAIN (ANALYZE ...)`
//! option counts as ANALYZE whatever its argument), and for the number shapes kept here sqlparser's
//! tokenizer and parser behave the same whatever the digits (a digit-only run of at most 18 digits
//! always fits `u64`/`i64`; a run with `.` or `e` never does). String contents never change how
//! sqlparser parses PostgreSQL. The tests at the bottom check tricky pairs.

use std::borrow::Cow;

use super::lex::{Kind, Lexer, contains_ignore_case};

/// Longest digit run rewritten; longer ones keep the exact text.
const MAX_DIGITS: usize = 18;

/// The cache key of `sql`: normalized, or the text itself when it is already normal or has something
/// this module does not rewrite precisely.
pub fn cache_key(sql: &[u8]) -> Cow<'_, [u8]> {
    let mut out = Vec::with_capacity(sql.len());
    if normalize_into(sql, &mut out) && out != sql {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(sql)
    }
}

/// Appends the normalized form of `sql` to `out` and returns true; or returns false (with `out`
/// holding junk past its old length) when the exact text must be the key.
pub fn normalize_into(sql: &[u8], out: &mut Vec<u8>) -> bool {
    // Not UTF-8: the classifier refuses it, so emptying a string must not make it look like a text
    // it accepts.
    if memchr::memchr(b'\\', sql).is_some() || std::str::from_utf8(sql).is_err() {
        return false;
    }
    for tok in Lexer::new(sql) {
        let text = tok.text(sql);
        match tok.kind {
            Kind::Space
            | Kind::LineComment
            | Kind::Semicolon
            | Kind::Param
            | Kind::Number { free: false } => out.extend_from_slice(text),
            Kind::BlockComment { nested } => {
                if nested {
                    return false;
                }
                out.extend_from_slice(text);
            }
            Kind::Punct => {
                // A `$` that starts no parameter: `$tag` without its closing `$`.
                if text == b"$"
                    && sql.get(tok.end).is_some_and(|&b| {
                        b.is_ascii_alphabetic() || b == b'_' || b == b'$' || b >= 0x80
                    })
                {
                    return false;
                }
                out.extend_from_slice(text);
            }
            Kind::Ident | Kind::QuotedIdent => {
                if contains_ignore_case(text, b"shardgate") {
                    return false;
                }
                out.extend_from_slice(text);
            }
            Kind::Str { prefixed, escapes } => {
                if prefixed || escapes || contains_ignore_case(text, b"shardgate") {
                    return false;
                }
                out.extend_from_slice(b"''");
            }
            Kind::Number { free: true } => {
                if !number_into(text, out) {
                    return false;
                }
            }
            Kind::DollarStr | Kind::Unterminated => return false,
        }
    }
    true
}

/// `D+ ( . D* )? ( [eE] D+ )?` with each digit run D+ written as `0`; false for any other shape.
fn number_into(text: &[u8], out: &mut Vec<u8>) -> bool {
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while text.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    let n = digits(&mut i);
    if n == 0 || n > MAX_DIGITS {
        return false;
    }
    out.push(b'0');
    if text.get(i) == Some(&b'.') {
        i += 1;
        out.push(b'.');
        let n = digits(&mut i);
        if n > MAX_DIGITS {
            return false;
        }
        if n > 0 {
            out.push(b'0');
        }
    }
    if let Some(&e @ (b'e' | b'E')) = text.get(i) {
        i += 1;
        let n = digits(&mut i);
        if n == 0 || n > MAX_DIGITS {
            return false;
        }
        out.push(e);
        out.push(b'0');
    }
    i == text.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::classify::{ClassifyOptions, classify};

    fn key(sql: &str) -> String {
        String::from_utf8(cache_key(sql.as_bytes()).into_owned()).unwrap()
    }

    fn is_exact(sql: &str) -> bool {
        matches!(cache_key(sql.as_bytes()), Cow::Borrowed(_))
    }

    #[test]
    fn literals_share_a_key() {
        assert_eq!(
            key("SELECT abalance FROM pgbench_accounts WHERE aid = 123"),
            "SELECT abalance FROM pgbench_accounts WHERE aid = 0"
        );
        assert_eq!(
            key("SELECT abalance FROM pgbench_accounts WHERE aid = 123"),
            key("SELECT abalance FROM pgbench_accounts WHERE aid = 456")
        );
        assert_eq!(
            key("UPDATE t SET a = a + -5, b = 'it''s', c = 1.25 WHERE d IN (1,22,333)"),
            "UPDATE t SET a = a + -0, b = '', c = 0.0 WHERE d IN (0,0,0)"
        );
        assert_eq!(
            key("SELECT 1e10, 2.5E3, 3., .5"),
            "SELECT 0e0, 0.0E0, 0., .0"
        );
        assert_eq!(key("SELECT 'a' || 'b'"), "SELECT '' || ''");
        assert_eq!(key("SELECT '' , ''''"), "SELECT '' , ''");
    }

    #[test]
    fn kept_verbatim() {
        assert_eq!(
            key("SELECT t1.c2, \"col 3\", $1, $22, a$4 FROM t1 WHERE x = $3 -- 42 '\n"),
            "SELECT t1.c2, \"col 3\", $1, $22, a$4 FROM t1 WHERE x = $3 -- 42 '\n"
        );
        assert_eq!(
            key("/* shardgate: replica */ SELECT 1 /* 7 */"),
            "/* shardgate: replica */ SELECT 0 /* 7 */"
        );
        assert_eq!(
            key("SELECT \"a\"1, x::int, a[1:2]"),
            "SELECT \"a\"1, x::int, a[0:2]"
        );
        assert_eq!(key("SELECT é1, é'x'"), "SELECT é1, é'x'");
    }

    #[test]
    fn exact_text_fallbacks() {
        for sql in [
            "SELECT E'a\\nb'",
            "SELECT 'a\\b'",
            "SELECT e'1'",
            "SELECT U&'d\\0061t'",
            "SELECT U&'x'",
            "SELECT B'0101'",
            "SELECT X'1F'",
            "SELECT N'x'",
            "SELECT $$1$$",
            "SELECT $tag$1$tag$",
            "SELECT $a",
            "SELECT $_",
            "SELECT 0x1F",
            "SELECT 1_000",
            "SELECT 1e-5",
            "SELECT 1.2.3",
            "SELECT 12345678901234567890",
            "SELECT 1 /* a /* b */ c */",
            "SELECT 'abc",
            "SELECT \"abc",
            "SELECT 1 /* abc",
            "SET shardgate.target = 'replica'",
            "SET SHARDGATE.target = 1",
            "SELECT set_config('shardgate.target', 'x', false)",
            "SET \"shardgate\".target = 1",
        ] {
            assert!(is_exact(sql), "{sql} should keep its exact text");
        }
        // A hint comment alone does not force the exact text.
        assert!(!is_exact("/* shardgate: replica */ SELECT 1"));
        // Nothing to rewrite: the text is its own key.
        assert!(is_exact("SELECT a FROM t"));
    }

    /// Pairs of texts that share a key classify the same; pairs that classify differently do not
    /// share a key.
    #[test]
    fn same_key_same_plan() {
        let opts = ClassifyOptions {
            write_functions: vec!["f1".into()],
            ..Default::default()
        };
        let same = [
            (
                "SELECT * FROM t WHERE a = 1",
                "SELECT * FROM t WHERE a = 99999",
            ),
            ("SELECT 'nextval(' FROM t", "SELECT 'x' FROM t"),
            ("SELECT 'FOR KEY SHARE' FROM t", "SELECT '' FROM t"),
            (
                "EXPLAIN (ANALYZE 0) SELECT 1",
                "EXPLAIN (ANALYZE 1) SELECT 1",
            ),
            (
                "EXPLAIN (ANALYZE 'off') SELECT 1",
                "EXPLAIN (ANALYZE 'on') SELECT 1",
            ),
            ("SELECT x::varchar(10)", "SELECT x::varchar(3)"),
            ("SELECT x::int[10]", "SELECT x::int[3]"),
            ("SELECT x::int[1.5]", "SELECT x::int[2.5]"),
            ("FETCH 10 FROM c", "FETCH 999999999999999999 FROM c"),
            ("SELECT 1 LIMIT 5", "SELECT 1 LIMIT 6"),
            ("SELECT 1.5e3", "SELECT 9.9e9"),
        ];
        for (a, b) in same {
            assert_eq!(key(a), key(b), "{a} / {b}");
            assert_eq!(classify(a, &opts), classify(b, &opts), "{a} / {b}");
        }
        let different = [
            ("SELECT f1(1)", "SELECT f2(1)"),
            ("SELECT * FROM t1", "SELECT * FROM t2"),
            ("SELECT \"f1\"(1)", "SELECT \"f2\"(1)"),
            ("SELECT nextval('s')", "SELECT 'nextval(s)'"),
            ("SELECT lo_1(1)", "SELECT lx_1(1)"),
            ("SELECT x::varchar(10)", "SELECT x::varchar(1.5)"),
            (
                "SELECT x::varchar(10)",
                "SELECT x::varchar(99999999999999999999)",
            ),
            ("SELECT x::int[10]", "SELECT x::int[1.5]"),
            ("SELECT 1from t", "SELECT 1fromx t"),
        ];
        for (a, b) in different {
            assert_ne!(key(a), key(b), "{a} / {b}");
        }
        // The premise of the second list: those pairs can classify differently (sqlparser parses
        // some numbers into u64, and `1from` lexes as `1 from`).
        for (a, b) in [
            ("SELECT f1(1)", "SELECT f2(1)"),
            ("SELECT x::varchar(10)", "SELECT x::varchar(1.5)"),
            (
                "SELECT x::varchar(10)",
                "SELECT x::varchar(99999999999999999999)",
            ),
            ("SELECT x::int[10]", "SELECT x::int[1.5]"),
            ("SELECT 1from t", "SELECT 1fromx t"),
        ] {
            assert_ne!(classify(a, &opts), classify(b, &opts), "{a} / {b}");
        }
    }

    #[test]
    fn keys_are_stable() {
        // Normalizing a key gives the key back, so an exact-text key (whose own normalization bails)
        // can never equal another text's normalized key.
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 123",
            "UPDATE t SET a = 'x''y', b = 1.5e3 WHERE c = $1 -- 5",
            "SELECT .5, 3., 'a' 'b'",
        ] {
            let k = key(sql);
            assert_eq!(key(&k), k);
        }
    }
}
