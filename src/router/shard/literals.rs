//! Literal keys by position: which of a text's literals a key is, and taking the values of a
//! text of the same shape, so a cached plan serves every text of its shape.

use super::{KeyValue, ShardPlan, ShardScope};

/// The numbers and strings of a SQL text, in order, as values (strings without quotes, `''`
/// unescaped). None when the text has a literal this does not read exactly (an `E'..'` string,
/// a dollar-quoted string, an unterminated quote).
pub fn literals(sql: &str) -> Option<Vec<String>> {
    use crate::router::lex::{Kind, Lexer};
    let src = sql.as_bytes();
    let mut out = Vec::new();
    for tok in Lexer::new(src) {
        match tok.kind {
            Kind::Number { .. } => out.push(sql[tok.start..tok.end].to_string()),
            Kind::Str {
                prefixed: false, ..
            } => out.push(sql[tok.start + 1..tok.end - 1].replace("''", "'")),
            Kind::Str { .. } | Kind::DollarStr | Kind::Unterminated => return None,
            _ => {}
        }
    }
    Some(out)
}

/// The plan of a text of the same shape as the one `plan` was made for (the same text but for
/// its literal values), with the literal keys taken from `sql`. None when `sql` has fewer literals.
pub fn rebind(plan: &ShardPlan, sql: &str) -> Option<ShardPlan> {
    let ShardScope::Keys { table, keys } = &plan.scope else {
        return Some(plan.clone());
    };
    let values = literals(sql)?;
    let keys = keys
        .iter()
        .map(|k| match k {
            KeyValue::Literal {
                index, negative, ..
            } => values.get(*index).map(|v| KeyValue::Literal {
                text: v.clone(),
                index: *index,
                negative: *negative,
            }),
            KeyValue::Param(n) => Some(KeyValue::Param(*n)),
        })
        .collect::<Option<Vec<_>>>()?;
    Some(ShardPlan {
        scope: ShardScope::Keys {
            table: table.clone(),
            keys,
        },
        ..plan.clone()
    })
}

/// Byte offset of a parser location (1-based line and column, columns in characters).
pub(super) fn offset_of(sql: &str, line: u64, column: u64) -> Option<usize> {
    let start = if line <= 1 {
        0
    } else {
        let mut seen = 1;
        let mut at = None;
        for (i, b) in sql.bytes().enumerate() {
            if b == b'\n' {
                seen += 1;
                if seen == line {
                    at = Some(i + 1);
                    break;
                }
            }
        }
        at?
    };
    let col = usize::try_from(column.checked_sub(1)?).ok()?;
    sql[start..]
        .char_indices()
        .nth(col)
        .map(|(i, _)| start + i)
        .or_else(|| (sql[start..].chars().count() == col).then_some(sql.len()))
}

/// Which literal of the text starts at byte `offset`.
pub(super) fn literal_index(sql: &str, offset: usize) -> Option<usize> {
    use crate::router::lex::{Kind, Lexer};
    Lexer::new(sql.as_bytes())
        .filter(|t| matches!(t.kind, Kind::Number { .. } | Kind::Str { .. }))
        .position(|t| t.start == offset)
}
