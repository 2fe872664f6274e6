//! Session settings that must follow a client from one pooled server connection to the next.
//!
//! A client's settings start as its startup parameters (`application_name`, `client_encoding`,
//! `DateStyle`, `-c` options, ...). After any transaction that may have changed session state (a `SET`,
//! `RESET`, `DISCARD`, `LISTEN`, a temp table, an advisory lock, `set_config(...)`), the proxy reads the
//! server's own view of it (`CAPTURE_SQL`): the settings whose source is `session`, and whether anything
//! that cannot be moved between connections (temp tables, WITH HOLD cursors, SQL-level prepared
//! statements, LISTEN, advisory locks) now exists, which pins the client to that server connection.
//! Before a connection serves a client whose settings differ from what the connection has, the
//! difference is replayed with `set_config(...)` and `RESET`.
//!
//! Reading the server's view, rather than parsing SET statements, gets rollbacks, savepoints, `SET LOCAL`
//! and `set_config()` right for free, at the cost of one small query after the (rare) transactions that
//! touch session state.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

/// Session settings, as `(lowercase name, value)` sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Settings(pub Vec<(String, String)>);

impl Settings {
    /// The shared empty set (server defaults).
    pub fn empty() -> Arc<Settings> {
        static EMPTY: OnceLock<Arc<Settings>> = OnceLock::new();
        EMPTY.get_or_init(|| Arc::new(Settings::default())).clone()
    }

    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Settings {
        let map: BTreeMap<String, String> = pairs
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        Settings(map.into_iter().collect())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }
}

/// Startup parameters that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// The settings a client asked for in its startup packet, including `-c name=value` / `--name=value`
/// in `options`. Protocol options (`_pq_.*`) are not settings.
pub fn from_startup(params: &BTreeMap<String, String>) -> Settings {
    let mut pairs: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| !NOT_SETTINGS.contains(&k.as_str()) && !k.starts_with("_pq_."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(options) = params.get("options") {
        pairs.extend(parse_options(options));
    }
    Settings::from_pairs(pairs)
}

/// Splits libpq's `options` string (`-c a=1 -c b=x\ y --c=2`) into settings, as Postgres's
/// `pg_split_opts` does: whitespace separates words, a backslash escapes the next character.
fn parse_options(options: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    let mut in_word = false;
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                word.push(n);
                in_word = true;
            }
        } else if c.is_whitespace() {
            if in_word {
                words.push(std::mem::take(&mut word));
                in_word = false;
            }
        } else {
            word.push(c);
            in_word = true;
        }
    }
    if in_word {
        words.push(word);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let assignment = if w == "-c" {
            it.next()
        } else if let Some(rest) = w.strip_prefix("-c") {
            Some(rest.to_string())
        } else {
            w.strip_prefix("--").map(str::to_string)
        };
        if let Some((k, v)) = assignment.as_deref().and_then(|a| a.split_once('=')) {
            out.push((k.replace('-', "_"), v.to_string()));
        }
    }
    out
}

/// A string literal that means the same whatever `standard_conforming_strings` is.
fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    out.push_str("E'");
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// SQL that changes a server session from settings `from` to settings `to`, or `None` when they match.
pub fn replay_sql(from: &Settings, to: &Settings) -> Option<String> {
    let sets: Vec<String> =
        to.0.iter()
            .filter(|(k, v)| from.get(k) != Some(v.as_str()))
            .map(|(k, v)| {
                format!(
                    "pg_catalog.set_config({}, {}, false)",
                    literal(k),
                    literal(v)
                )
            })
            .collect();
    let resets: Vec<String> = from
        .0
        .iter()
        .filter(|(k, _)| to.get(k).is_none())
        .map(|(k, _)| format!("RESET {}", quote_ident(k)))
        .collect();
    if sets.is_empty() && resets.is_empty() {
        return None;
    }
    let mut sql = String::new();
    if !sets.is_empty() {
        sql.push_str("SELECT ");
        sql.push_str(&sets.join(", "));
    }
    for r in resets {
        if !sql.is_empty() {
            sql.push_str("; ");
        }
        sql.push_str(&r);
    }
    Some(sql)
}

fn quote_ident(name: &str) -> String {
    // GUC names may hold a dot (custom.option): quote each part.
    name.split('.')
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// Reads the server's session settings and counts what pins a session to its server connection.
pub const CAPTURE_SQL: &str = "SELECT 's', name, setting FROM pg_catalog.pg_settings WHERE source = 'session' \
UNION ALL SELECT 'p', 'pins', ((SELECT count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql) \
+ (SELECT count(*) FROM pg_catalog.pg_cursors) \
+ (SELECT count(*) FROM pg_catalog.pg_listening_channels()) \
+ (SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()) \
+ (SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()))::text";

/// What `CAPTURE_SQL` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    pub settings: Settings,
    /// Temp tables, cursors, SQL prepared statements, LISTEN channels and advisory locks held.
    pub pins: i64,
}

pub fn parse_capture(rows: &[Vec<Option<String>>]) -> Captured {
    let mut pairs = Vec::new();
    let mut pins = 0;
    for row in rows {
        match row.as_slice() {
            [Some(kind), Some(name), Some(value)] if kind == "s" => {
                pairs.push((name.clone(), value.clone()))
            }
            [Some(kind), _, Some(value)] if kind == "p" => pins = value.parse().unwrap_or(1),
            _ => {}
        }
    }
    Captured {
        settings: Settings::from_pairs(pairs),
        pins,
    }
}

/// After a capture, the startup settings a `RESET` removed are put back: in Postgres, `RESET` returns
/// a setting to the value the client gave at connection time, not to the server default.
pub fn with_startup_defaults(captured: &Settings, startup: &Settings) -> Settings {
    let mut pairs = captured.0.clone();
    for (k, v) in &startup.0 {
        if captured.get(k).is_none() {
            pairs.push((k.clone(), v.clone()));
        }
    }
    Settings::from_pairs(pairs)
}

/// Command tags after which the session's state may differ (checked on CommandComplete).
pub fn tag_may_change_session(tag: &[u8]) -> bool {
    let Some(&first) = tag.first() else {
        return false;
    };
    match first {
        b'S' => tag == b"SET",
        b'R' => tag == b"RESET",
        b'D' => {
            tag.starts_with(b"DISCARD")
                || tag.starts_with(b"DEALLOCATE")
                || tag == b"DECLARE CURSOR"
                || tag == b"DO"
        }
        b'L' => tag == b"LISTEN" || tag == b"LOAD",
        b'U' => tag == b"UNLISTEN",
        b'P' => tag == b"PREPARE",
        b'C' => tag.starts_with(b"CLOSE CURSOR") || tag == b"CREATE TABLE" || tag == b"CALL",
        _ => false,
    }
}

/// Whether a command tag dropped every prepared statement of the session.
pub fn tag_drops_prepared(tag: &[u8]) -> bool {
    tag == b"DISCARD ALL" || tag == b"DEALLOCATE ALL"
}

/// Whether SQL text may change session state in a way no command tag shows: temp tables made by
/// `CREATE TEMP TABLE ... AS` / `SELECT ... INTO TEMP`, advisory locks, `set_config(...)`.
/// A false positive costs one capture query; a false negative could leak state, so it errs wide.
pub fn text_may_change_session(sql: &[u8]) -> bool {
    const NEEDLES: [&[u8]; 3] = [b"temp", b"advisory", b"set_config"];
    let n = sql.len();
    for i in 0..n {
        let c = sql[i] | 0x20;
        if c != b't' && c != b'a' && c != b's' {
            continue;
        }
        for needle in NEEDLES {
            if needle[0] == c
                && i + needle.len() <= n
                && sql[i..i + needle.len()].eq_ignore_ascii_case(needle)
            {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(pairs: &[(&str, &str)]) -> Settings {
        Settings::from_pairs(pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())))
    }

    #[test]
    fn startup_options_are_split_like_postgres() {
        let mut p = BTreeMap::new();
        p.insert("user".into(), "app".into());
        p.insert("application_name".into(), "psql".into());
        p.insert(
            "options".into(),
            r"-c search_path=a,b -csearch_path=x --statement-timeout=5s -c x.y=with\ space".into(),
        );
        p.insert("_pq_.foo".into(), "1".into());
        let got = from_startup(&p);
        assert_eq!(got.get("application_name"), Some("psql"));
        assert_eq!(got.get("search_path"), Some("x"));
        assert_eq!(got.get("statement_timeout"), Some("5s"));
        assert_eq!(got.get("x.y"), Some("with space"));
        assert_eq!(got.get("user"), None);
        assert_eq!(got.get("_pq_.foo"), None);
    }

    #[test]
    fn replay_sets_changed_and_resets_missing() {
        let from = s(&[("application_name", "a"), ("search_path", "x")]);
        let to = s(&[("application_name", "b"), ("timezone", "UTC")]);
        assert_eq!(
            replay_sql(&from, &to).unwrap(),
            "SELECT pg_catalog.set_config(E'application_name', E'b', false), \
             pg_catalog.set_config(E'timezone', E'UTC', false); RESET \"search_path\""
        );
        assert_eq!(replay_sql(&to, &to), None);
    }

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(literal(r"it's a \ test"), r"E'it''s a \\ test'");
    }

    #[test]
    fn capture_rows() {
        let rows = vec![
            vec![
                Some("s".into()),
                Some("search_path".into()),
                Some("x".into()),
            ],
            vec![Some("p".into()), Some("pins".into()), Some("2".into())],
        ];
        let c = parse_capture(&rows);
        assert_eq!(c.settings, s(&[("search_path", "x")]));
        assert_eq!(c.pins, 2);
    }

    #[test]
    fn tags() {
        assert!(tag_may_change_session(b"SET"));
        assert!(!tag_may_change_session(b"SELECT 1"));
        assert!(tag_may_change_session(b"DISCARD ALL"));
        assert!(tag_drops_prepared(b"DEALLOCATE ALL"));
        assert!(!tag_may_change_session(b"INSERT 0 1"));
    }

    #[test]
    fn text_flags() {
        assert!(text_may_change_session(b"create TEMP table t as select 1"));
        assert!(text_may_change_session(b"select pg_advisory_lock(1)"));
        assert!(text_may_change_session(b"SELECT SET_CONFIG('a','b',false)"));
        assert!(!text_may_change_session(
            b"SELECT abalance FROM pgbench_accounts WHERE aid = $1"
        ));
    }
}
