//! A multi-row INSERT whose rows belong to several shards, cut into one INSERT per shard.
//!
//! Text surgery on token boundaries: the VALUES rows are the parenthesized groups after the
//! top-level `VALUES` keyword, up to the first token after them that is not a comma (`ON
//! CONFLICT`, `RETURNING`, the end). Row i of the text is row i of the parsed statement, so the
//! row keys the planner found (in order) say where each row goes. Everything before and after the
//! rows is kept as written.

use std::collections::BTreeMap;

use crate::router::lex::{Kind, Lexer};

/// Byte ranges of the VALUES rows of an INSERT text (each `( ... )`, parentheses included), and
/// where the text after the last row starts. None when the text does not have that shape.
pub fn values_rows(sql: &str) -> Option<(Vec<(usize, usize)>, usize)> {
    let src = sql.as_bytes();
    let toks: Vec<_> = Lexer::new(src).filter(|t| !t.is_blank()).collect();
    let mut depth = 0i32;
    let mut i = 0;
    // The top-level VALUES keyword.
    loop {
        let t = toks.get(i)?;
        match (t.kind, t.text(src)) {
            (Kind::Punct, b"(") => depth += 1,
            (Kind::Punct, b")") => depth -= 1,
            (Kind::Ident, w) if depth == 0 && w.eq_ignore_ascii_case(b"values") => break,
            (Kind::Unterminated, _) => return None,
            _ => {}
        }
        i += 1;
    }
    i += 1;
    let mut rows = Vec::new();
    loop {
        let open = toks.get(i)?;
        if !(open.kind == Kind::Punct && open.text(src) == b"(") {
            return None;
        }
        let mut d = 0;
        let mut j = i;
        loop {
            let t = toks.get(j)?;
            if t.kind == Kind::Punct && t.text(src) == b"(" {
                d += 1;
            } else if t.kind == Kind::Punct && t.text(src) == b")" {
                d -= 1;
                if d == 0 {
                    break;
                }
            }
            j += 1;
        }
        rows.push((open.start, toks[j].end));
        match toks.get(j + 1) {
            Some(t) if t.kind == Kind::Punct && t.text(src) == b"," => i = j + 2,
            Some(t) => return Some((rows, t.start)),
            None => return Some((rows, sql.len())),
        }
    }
}

/// One INSERT text per shard: `shard_of_row[i]` is the shard of row i. None when the text's rows
/// cannot be found or do not match.
pub fn split_insert(sql: &str, shard_of_row: &[usize]) -> Option<BTreeMap<usize, String>> {
    let (rows, after) = values_rows(sql)?;
    if rows.len() != shard_of_row.len() || rows.is_empty() {
        return None;
    }
    let head = &sql[..rows[0].0];
    let tail = &sql[after..];
    let mut out: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for (i, &(s, e)) in rows.iter().enumerate() {
        out.entry(shard_of_row[i]).or_default().push(&sql[s..e]);
    }
    Some(
        out.into_iter()
            .map(|(shard, rows)| {
                let sep = if tail.is_empty() { "" } else { " " };
                (shard, format!("{head}{}{sep}{tail}", rows.join(", ")))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_found() {
        let sql = "INSERT INTO t (id, v) VALUES (1, 'a(b'), (2, f(3)) ON CONFLICT (id) DO NOTHING RETURNING id";
        let (rows, after) = values_rows(sql).unwrap();
        assert_eq!(&sql[rows[0].0..rows[0].1], "(1, 'a(b')");
        assert_eq!(&sql[rows[1].0..rows[1].1], "(2, f(3))");
        assert!(sql[after..].starts_with("ON CONFLICT"));
        let split = split_insert(sql, &[1, 0]).unwrap();
        assert_eq!(
            split[&0],
            "INSERT INTO t (id, v) VALUES (2, f(3)) ON CONFLICT (id) DO NOTHING RETURNING id"
        );
        assert_eq!(
            split[&1],
            "INSERT INTO t (id, v) VALUES (1, 'a(b') ON CONFLICT (id) DO NOTHING RETURNING id"
        );
        let plain = split_insert("insert into t values (1),(2),(3);", &[0, 1, 0]).unwrap();
        assert_eq!(plain[&0], "insert into t values (1), (3) ;");
        assert_eq!(plain[&1], "insert into t values (2) ;");
        assert!(split_insert("INSERT INTO t SELECT 1", &[0]).is_none());
        assert!(split_insert("INSERT INTO t VALUES (1)", &[0, 1]).is_none());
    }
}

/// A multi-row INSERT with `$n` parameters cut per shard: each shard's text has its parameters
/// renumbered `$1..$k` in order of appearance, with the original numbers they stand for.
pub fn split_insert_params(
    sql: &str,
    shard_of_row: &[usize],
) -> Option<BTreeMap<usize, (String, Vec<usize>)>> {
    let texts = split_insert(sql, shard_of_row)?;
    texts
        .into_iter()
        .map(|(shard, text)| {
            let (renumbered, old) = renumber_params(&text)?;
            Some((shard, (renumbered, old)))
        })
        .collect()
}

/// `$n` parameters renumbered from 1 in order of first appearance; the old numbers, in new order.
fn renumber_params(sql: &str) -> Option<(String, Vec<usize>)> {
    let mut out = String::with_capacity(sql.len());
    let mut old: Vec<usize> = Vec::new();
    let mut at = 0;
    for tok in Lexer::new(sql.as_bytes()) {
        if tok.kind == Kind::Param {
            let n: usize = sql[tok.start + 1..tok.end].parse().ok()?;
            let new = match old.iter().position(|&o| o == n) {
                Some(i) => i + 1,
                None => {
                    old.push(n);
                    old.len()
                }
            };
            out.push_str(&sql[at..tok.start]);
            out.push_str(&format!("${new}"));
            at = tok.end;
        }
    }
    out.push_str(&sql[at..]);
    Some((out, old))
}

#[cfg(test)]
mod param_tests {
    use super::*;

    #[test]
    fn rows_with_parameters_are_renumbered() {
        let sql = "INSERT INTO t (id, v) VALUES ($1, $2), ($3, $4), ($5, $6) ON CONFLICT (id) DO UPDATE SET v = $7";
        let split = split_insert_params(sql, &[0, 1, 0]).unwrap();
        assert_eq!(
            split[&0],
            (
                "INSERT INTO t (id, v) VALUES ($1, $2), ($3, $4) ON CONFLICT (id) DO UPDATE SET v = $5".to_string(),
                vec![1, 2, 5, 6, 7]
            )
        );
        assert_eq!(
            split[&1],
            (
                "INSERT INTO t (id, v) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET v = $3"
                    .to_string(),
                vec![3, 4, 7]
            )
        );
    }
}
