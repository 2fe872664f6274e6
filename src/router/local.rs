//! `SET`, `RESET` and `SHOW` of `shardgate.*` settings: commands the proxy answers itself.
//!
//! A client steers its own routing with settings that look like server settings:
//!
//! ```text
//! SET shardgate.target = 'replica';      SET SESSION shardgate.target TO primary;
//! SET LOCAL shardgate.target = DEFAULT;  RESET shardgate.target;   SHOW shardgate.target;
//! ```
//!
//! These never reach a server. This module only recognises and takes apart the text; which names and
//! values exist (`target` = `primary|replica|auto`) is the caller's business. `SET LOCAL` is read as a
//! plain `SET`. Keywords and names are case-insensitive (names come back lowercased); a value comes
//! back as written, without its quotes and with `''` unescaped. A quoted part (`"shardgate"."target"`)
//! counts like an unquoted one, and so does `"shardgate.target"` as one quoted identifier.
//!
//! A `shardgate.*` command inside a multi-statement text cannot be honoured (the rest of the text goes
//! to a server that would not understand it), so it is an error, like a malformed command.

use super::lex::{Kind, Lexer, Tok, contains_ignore_case};

/// A parsed `shardgate.*` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalCommand {
    /// `SET shardgate.<name> = <value>`; `value` is None for `DEFAULT` and for `RESET`.
    Set { name: String, value: Option<String> },
    /// `SHOW shardgate.<name>`.
    Show { name: String },
}

/// The error for a `shardgate.*` command that shares its text with other statements.
pub const MULTI_STATEMENT: &str =
    "send SET shardgate.* as a statement of its own, not in a multi-statement query";

/// None when `sql` is not about a `shardgate.` setting; otherwise the command, or why it cannot be
/// honoured.
pub fn parse(sql: &str) -> Option<Result<LocalCommand, String>> {
    let src = sql.as_bytes();
    if !contains_ignore_case(src, b"shardgate") {
        return None;
    }
    let mut statements: Vec<Vec<Tok>> = vec![Vec::new()];
    for tok in Lexer::new(src) {
        if tok.kind == Kind::Semicolon {
            statements.push(Vec::new());
        } else if !tok.is_blank() {
            statements.last_mut().expect("never empty").push(tok);
        }
    }
    statements.retain(|s| !s.is_empty());
    if !statements.iter().any(|s| names_shardgate_setting(sql, s)) {
        return None;
    }
    if statements.len() > 1 {
        return Some(Err(MULTI_STATEMENT.to_string()));
    }
    Some(parse_command(sql, &statements[0]))
}

/// An identifier's value: unquoted as written, quoted without its quotes and with `""` unescaped.
fn ident_value(sql: &str, tok: &Tok) -> Option<String> {
    let text = &sql[tok.start..tok.end];
    match tok.kind {
        Kind::Ident => Some(text.to_string()),
        Kind::QuotedIdent => Some(text[1..text.len() - 1].replace("\"\"", "\"")),
        _ => None,
    }
}

fn is_word(sql: &str, tok: Option<&Tok>, word: &str) -> bool {
    tok.is_some_and(|t| t.kind == Kind::Ident && sql[t.start..t.end].eq_ignore_ascii_case(word))
}

fn is_punct(sql: &str, tok: Option<&Tok>, p: &str) -> bool {
    tok.is_some_and(|t| t.kind == Kind::Punct && &sql[t.start..t.end] == p)
}

/// Where the setting name starts in `SET [SESSION|LOCAL] name`, `RESET name`, `SHOW name`.
fn name_start(sql: &str, toks: &[Tok]) -> Option<usize> {
    let first = toks.first();
    if is_word(sql, first, "set") {
        let second = toks.get(1);
        if is_word(sql, second, "session") || is_word(sql, second, "local") {
            Some(2)
        } else {
            Some(1)
        }
    } else if is_word(sql, first, "reset") || is_word(sql, first, "show") {
        Some(1)
    } else {
        None
    }
}

/// How a shardgate setting name begins.
enum NameStart {
    /// `shardgate.`: the rest of the name starts at this token.
    Dotted(usize),
    /// `"shardgate.<first>"` as one quoted identifier: the first part of the rest, lowercased.
    Quoted(String),
}

/// Whether the name at token `i` is a shardgate one, and how it begins.
fn shardgate_prefix(sql: &str, toks: &[Tok], i: usize) -> Option<NameStart> {
    let tok = toks.get(i)?;
    let value = ident_value(sql, tok)?;
    if value.eq_ignore_ascii_case("shardgate") && is_punct(sql, toks.get(i + 1), ".") {
        return Some(NameStart::Dotted(i + 2));
    }
    let prefix = value.get(..10)?;
    (tok.kind == Kind::QuotedIdent && prefix.eq_ignore_ascii_case("shardgate."))
        .then(|| NameStart::Quoted(value[10..].to_lowercase()))
}

/// Whether the statement is `SET/RESET/SHOW shardgate.<...>`.
fn names_shardgate_setting(sql: &str, toks: &[Tok]) -> bool {
    name_start(sql, toks).is_some_and(|i| shardgate_prefix(sql, toks, i).is_some())
}

fn parse_command(sql: &str, toks: &[Tok]) -> Result<LocalCommand, String> {
    let verb = sql[toks[0].start..toks[0].end].to_ascii_uppercase();
    let malformed = |what: &str| format!("malformed {verb} shardgate.* command: {what}");
    let start = name_start(sql, toks).expect("checked by names_shardgate_setting");

    // The name: one or more identifiers separated by dots, after `shardgate.`.
    let mut parts = Vec::new();
    let mut i = match shardgate_prefix(sql, toks, start).expect("checked") {
        NameStart::Dotted(i) => i,
        NameStart::Quoted(first) => {
            parts.push(first);
            let i = start + 1;
            if !is_punct(sql, toks.get(i), ".") {
                return finish(sql, toks, &verb, parts, i);
            }
            i + 1
        }
    };
    loop {
        let Some(part) = toks.get(i).and_then(|t| ident_value(sql, t)) else {
            return Err(malformed("expected a setting name after \"shardgate.\""));
        };
        parts.push(part.to_lowercase());
        i += 1;
        if is_punct(sql, toks.get(i), ".") {
            i += 1;
        } else {
            break;
        }
    }
    finish(sql, toks, &verb, parts, i)
}

/// The rest of a command whose name parts end before token `i`.
fn finish(
    sql: &str,
    toks: &[Tok],
    verb: &str,
    parts: Vec<String>,
    mut i: usize,
) -> Result<LocalCommand, String> {
    let malformed = |what: &str| format!("malformed {verb} shardgate.* command: {what}");
    if parts.iter().any(String::is_empty) {
        return Err(malformed("expected a setting name after \"shardgate.\""));
    }
    let name = parts.join(".");

    let command = match verb {
        "SHOW" => LocalCommand::Show { name },
        "RESET" => LocalCommand::Set { name, value: None },
        _ => {
            if is_punct(sql, toks.get(i), "=") || is_word(sql, toks.get(i), "to") {
                i += 1;
            } else {
                return Err(malformed("expected = or TO after the setting name"));
            }
            let (value, used) = value(sql, &toks[i..])
                .ok_or_else(|| malformed("expected a value, DEFAULT, or a quoted string"))?;
            i += used;
            LocalCommand::Set { name, value }
        }
    };
    if i != toks.len() {
        return Err(malformed(&format!(
            "unexpected {:?}",
            &sql[toks[i].start..toks[toks.len() - 1].end]
        )));
    }
    Ok(command)
}

/// A SET value: `DEFAULT` (None), `'string'`, a word, a `"quoted word"` or a signed number; and how
/// many tokens it used.
fn value(sql: &str, toks: &[Tok]) -> Option<(Option<String>, usize)> {
    let first = toks.first()?;
    let text = &sql[first.start..first.end];
    match first.kind {
        Kind::Ident if text.eq_ignore_ascii_case("default") => Some((None, 1)),
        Kind::Ident | Kind::QuotedIdent => Some((ident_value(sql, first), 1)),
        Kind::Str {
            prefixed: false,
            escapes: false,
        } => Some((Some(text[1..text.len() - 1].replace("''", "'")), 1)),
        Kind::Number { .. } => Some((Some(text.to_string()), 1)),
        Kind::Punct if text == "-" || text == "+" => {
            let num = toks
                .get(1)
                .filter(|t| matches!(t.kind, Kind::Number { .. }) && t.start == first.end)?;
            Some((Some(sql[first.start..num.end].to_string()), 2))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, value: Option<&str>) -> Option<Result<LocalCommand, String>> {
        Some(Ok(LocalCommand::Set {
            name: name.into(),
            value: value.map(str::to_string),
        }))
    }

    fn show(name: &str) -> Option<Result<LocalCommand, String>> {
        Some(Ok(LocalCommand::Show { name: name.into() }))
    }

    fn is_err(r: Option<Result<LocalCommand, String>>) -> bool {
        matches!(r, Some(Err(_)))
    }

    #[test]
    fn set_forms() {
        let want = set("target", Some("replica"));
        assert_eq!(parse("SET shardgate.target = 'replica'"), want);
        assert_eq!(parse("SET shardgate.target TO 'replica'"), want);
        assert_eq!(parse("set shardgate.target to replica"), want);
        assert_eq!(parse("SET SESSION shardgate.target = replica"), want);
        assert_eq!(parse("SET LOCAL shardgate.target = 'replica'"), want);
        assert_eq!(parse("  SET Shardgate.TARGET='replica' ;  \n"), want);
        assert_eq!(parse("SET shardgate.target = 'replica';;"), want);
        assert_eq!(parse("SET \"shardgate\".\"target\" = 'replica'"), want);
        assert_eq!(parse("SET shardgate . target = 'replica'"), want);
        assert_eq!(parse("SET \"Shardgate.Target\" = 'replica'"), want);
        assert_eq!(
            parse("/* shardgate: primary */ SET shardgate.target = 'replica' -- why\n"),
            want
        );
        assert_eq!(
            parse("SET shardgate.target = 'Rep''lica'"),
            set("target", Some("Rep'lica"))
        );
        assert_eq!(
            parse("SET shardgate.target = Replica"),
            set("target", Some("Replica"))
        );
        assert_eq!(
            parse("SET shardgate.target = \"x\""),
            set("target", Some("x"))
        );
        assert_eq!(parse("SET shardgate.lag = 5"), set("lag", Some("5")));
        assert_eq!(parse("SET shardgate.lag = -1.5"), set("lag", Some("-1.5")));
        assert_eq!(parse("SET shardgate.a.b = on"), set("a.b", Some("on")));
    }

    #[test]
    fn default_and_reset() {
        assert_eq!(parse("SET shardgate.target = DEFAULT"), set("target", None));
        assert_eq!(
            parse("SET shardgate.target TO default;"),
            set("target", None)
        );
        assert_eq!(
            parse("SET shardgate.target = 'default'"),
            set("target", Some("default"))
        );
        assert_eq!(parse("RESET shardgate.target"), set("target", None));
        assert_eq!(parse("reset SHARDGATE.Target ;"), set("target", None));
    }

    #[test]
    fn show_forms() {
        assert_eq!(parse("SHOW shardgate.target"), show("target"));
        assert_eq!(parse("show SHARDGATE.TARGET;"), show("target"));
        assert_eq!(parse("SHOW \"shardgate.target\""), show("target"));
        assert_eq!(parse("SHOW \"shardgate.a\".b"), show("a.b"));
    }

    #[test]
    fn not_local() {
        assert_eq!(parse("SELECT 1"), None);
        assert_eq!(parse("SET search_path = a"), None);
        assert_eq!(parse("SHOW search_path"), None);
        assert_eq!(parse("RESET ALL"), None);
        assert_eq!(parse("/* shardgate: replica */ SELECT 1"), None);
        assert_eq!(parse("SELECT current_setting('shardgate.target')"), None);
        assert_eq!(parse("SELECT 'SET shardgate.target = 1'"), None);
        assert_eq!(parse("SELECT 1 -- SET shardgate.target = 1"), None);
        assert_eq!(parse("SET shardgate = 1"), None);
        assert_eq!(parse("SET shardgatex.target = 1"), None);
        assert_eq!(parse("SELECT $$; SET shardgate.target = 1$$"), None);
        assert_eq!(parse("SELECT E'\\'; SET shardgate.target = 1'"), None);
        assert_eq!(parse("ALTER ROLE a SET shardgate.target = 'replica'"), None);
    }

    #[test]
    fn multi_statement_is_an_error() {
        assert_eq!(
            parse("SET shardgate.target = 'replica'; SELECT 1"),
            Some(Err(MULTI_STATEMENT.to_string()))
        );
        assert_eq!(
            parse("SELECT 1; SHOW shardgate.target"),
            Some(Err(MULTI_STATEMENT.to_string()))
        );
        assert_eq!(
            parse("BEGIN; SET LOCAL shardgate.target = replica; COMMIT"),
            Some(Err(MULTI_STATEMENT.to_string()))
        );
    }

    #[test]
    fn malformed() {
        assert!(is_err(parse("SET shardgate.target")));
        assert!(is_err(parse("SET shardgate.target =")));
        assert!(is_err(parse("SET shardgate.target 'replica'")));
        assert!(is_err(parse("SET shardgate.target = 'a', 'b'")));
        assert!(is_err(parse("SET shardgate.target = a b")));
        assert!(is_err(parse("SET shardgate. = a")));
        assert!(is_err(parse("SET \"shardgate.\" = a")));
        assert!(is_err(parse("SET \"shardgate.\".x = a")));
        assert!(is_err(parse("SET shardgate.target FROM CURRENT")));
        assert!(is_err(parse("SET shardgate.target = 'replica")));
        assert!(is_err(parse("SET shardgate.target = E'replica'")));
        assert!(is_err(parse("SET shardgate.target = $$replica$$")));
        assert!(is_err(parse("RESET shardgate.target x")));
        assert!(is_err(parse("SHOW shardgate.target = 1")));
        let Some(Err(msg)) = parse("SET shardgate.target replica") else {
            panic!("expected an error");
        };
        assert!(msg.contains("= or TO"), "{msg}");
    }
}
