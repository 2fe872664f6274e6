//! The token-level fallback for what sqlparser 0.64 cannot parse but must still be classified
//! (transaction statements with `DEFERRABLE`, `TABLE t`), and the token checks made before parsing
//! (row-lock words, chain depth).

use sqlparser::tokenizer::Token;

use super::{Plan, TxControl};
use crate::router::hint::Hint;

/// Tokens that can add a level to a left-deep chain: everything but whitespace, literals, commas,
/// parentheses (their nesting is bounded by the parser) and semicolons.
pub(super) fn counts_for_depth(token: &Token) -> bool {
    !matches!(
        token,
        Token::Whitespace(_)
            | Token::Comma
            | Token::LParen
            | Token::RParen
            | Token::SemiColon
            | Token::Number(..)
            | Token::Placeholder(_)
            | Token::SingleQuotedString(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::DollarQuotedString(_)
    )
}

/// The value of an unquoted word token, for keyword checks.
fn word<'t>(token: Option<&&'t Token>) -> Option<&'t str> {
    match token {
        Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.value.as_str()),
        _ => None,
    }
}

fn is_word(token: Option<&&Token>, kw: &str) -> bool {
    word(token).is_some_and(|w| w.eq_ignore_ascii_case(kw))
}

/// `FOR NO KEY UPDATE` or `FOR KEY SHARE` as consecutive words (comments between them allowed).
pub(super) fn has_row_lock_words(sig: &[&Token]) -> bool {
    (0..sig.len()).any(|i| {
        let at = |j: usize, kw: &str| is_word(sig.get(i + j), kw);
        at(0, "for")
            && ((at(1, "no") && at(2, "key") && at(3, "update"))
                || (at(1, "key") && at(2, "share")))
    })
}

/// What can still be said about a text sqlparser could not parse: the transaction statements and
/// `TABLE t` it does not know, `PREPARE TRANSACTION` ending the transaction; else unparsed.
pub(super) fn fallback(sig: &[&Token], hint: Option<Hint>) -> Plan {
    let mut end = sig.len();
    while end > 0 && matches!(sig[end - 1], Token::SemiColon) {
        end -= 1;
    }
    let stmt = &sig[..end];
    if stmt.iter().any(|t| matches!(t, Token::SemiColon)) {
        return Plan::unparsed(hint);
    }
    let known = |read: bool, tx: TxControl| Plan {
        read,
        writes: false,
        unparsed: false,
        tx,
        ..Plan::unparsed(hint)
    };
    if let Some(tx) = transaction_statement(stmt) {
        return known(false, tx);
    }
    if is_table_statement(stmt) {
        return known(true, TxControl::None);
    }
    let mut plan = Plan::unparsed(hint);
    if is_word(stmt.first(), "prepare")
        && is_word(stmt.get(1), "transaction")
        && matches!(stmt.get(2), Some(Token::SingleQuotedString(_)))
        && stmt.len() == 3
    {
        plan.tx = TxControl::End;
    }
    plan
}

/// `BEGIN [WORK|TRANSACTION] [modes]`, `START TRANSACTION [modes]`, `SET TRANSACTION modes`,
/// `SET SESSION CHARACTERISTICS AS TRANSACTION modes`, where a mode may be `[NOT] DEFERRABLE`.
fn transaction_statement(stmt: &[&Token]) -> Option<TxControl> {
    let kw = |i: usize, k: &str| is_word(stmt.get(i), k);
    let (modes_at, make): (usize, fn(Option<bool>) -> TxControl) = if kw(0, "begin") {
        let at = if kw(1, "work") || kw(1, "transaction") {
            2
        } else {
            1
        };
        (at, |read_only| TxControl::Begin { read_only })
    } else if kw(0, "start") && kw(1, "transaction") {
        (2, |read_only| TxControl::Begin { read_only })
    } else if kw(0, "set") && kw(1, "transaction") {
        (2, |read_only| TxControl::SetTransaction { read_only })
    } else if kw(0, "set")
        && kw(1, "session")
        && kw(2, "characteristics")
        && kw(3, "as")
        && kw(4, "transaction")
    {
        (5, |_| TxControl::None)
    } else {
        return None;
    };
    let read_only = transaction_modes(&stmt[modes_at.min(stmt.len())..])?;
    Some(make(read_only))
}

/// `mode [[,] mode]...` to its access mode; None if anything else is there.
fn transaction_modes(toks: &[&Token]) -> Option<Option<bool>> {
    let kw = |i: usize, k: &str| is_word(toks.get(i), k);
    let mut read_only = None;
    let mut i = 0;
    while i < toks.len() {
        if i > 0 && matches!(toks[i], Token::Comma) {
            i += 1;
        }
        if kw(i, "read") && kw(i + 1, "only") {
            read_only = Some(true);
            i += 2;
        } else if kw(i, "read") && kw(i + 1, "write") {
            read_only = Some(false);
            i += 2;
        } else if kw(i, "deferrable") {
            i += 1;
        } else if kw(i, "not") && kw(i + 1, "deferrable") {
            i += 2;
        } else if kw(i, "isolation") && kw(i + 1, "level") {
            i += 2;
            let level = if kw(i, "serializable") {
                1
            } else if (kw(i, "repeatable") && kw(i + 1, "read"))
                || (kw(i, "read") && (kw(i + 1, "committed") || kw(i + 1, "uncommitted")))
            {
                2
            } else {
                return None;
            };
            i += level;
        } else {
            return None;
        }
    }
    Some(read_only)
}

/// `TABLE [ONLY] name[.name...] [*]`.
fn is_table_statement(stmt: &[&Token]) -> bool {
    if !is_word(stmt.first(), "table") {
        return false;
    }
    let mut i = 1;
    if is_word(stmt.get(i), "only") && matches!(stmt.get(i + 1), Some(Token::Word(_))) {
        i += 1;
    }
    loop {
        if !matches!(stmt.get(i), Some(Token::Word(_))) {
            return false;
        }
        i += 1;
        if matches!(stmt.get(i), Some(Token::Period)) {
            i += 1;
        } else {
            break;
        }
    }
    if matches!(stmt.get(i), Some(Token::Mul)) {
        i += 1;
    }
    i == stmt.len()
}
