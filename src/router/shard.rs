//! Which shards a statement touches: the shard key values it names, found on the parse tree.
//!
//! Pure: SQL text and the `[[tables]]` list in, a [`ShardPlan`] out; [`resolve`] turns its key
//! values (literals, or `$n` parameters supplied at Bind) into shards through the hash contract
//! (`crate::hash`). What is found:
//!
//! - `key = literal | $n` (either side, casts on the value allowed), `key IN (...)`, anywhere in a
//!   chain of ANDs in WHERE (an OR narrows only when both sides do), for SELECT, UPDATE, DELETE;
//! - INSERT with the key column in its column list: one key per VALUES row, in order;
//! - joins of sharded tables: routed by the key found for any of them; the join must equate their
//!   shard keys (co-located), otherwise the plan says so (`cross_shard_join`);
//! - an UPDATE that assigns the shard key (`moves_key`), which the proxy refuses;
//! - statements on tables not in `[[tables]]` only (`Unsharded`): reads go to one shard, writes and
//!   DDL to every shard.
//!
//! Plans never depend on literal values except through [`KeyValue::Literal`]'s `index`, so a plan
//! can be cached under the route cache's literal-blind key and [`rebind`] to each text of that
//! shape (one lexer pass) instead of parsing it again.
//!
//! Not yet wired into the session loop (issue 4 continues); `shardgate route` prints plans.

use std::collections::BTreeSet;

use sqlparser::ast::{
    Assignment, AssignmentTarget, BinaryOperator, Expr, FromTable, InTarget, JoinConstraint,
    JoinOperator, ObjectName, Query, SetExpr, Statement, TableFactor, TableObject, TableWithJoins,
    UnaryOperator, Value, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::config::{Config, TableConfig};
use crate::hash::ShardKey;

/// Where a shard key value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyValue {
    /// A literal in the text (`42`, `'alice'`, `-3`): its value, and which literal of the text it
    /// is (`index`, counting numbers and strings from the start), so a plan cached for one text
    /// can take the value from another text of the same shape ([`rebind`]).
    Literal {
        text: String,
        index: usize,
        negative: bool,
    },
    /// The n-th Bind parameter (1-based).
    Param(usize),
}

impl KeyValue {
    /// The value as text (a literal) or `$n`.
    pub fn describe(&self) -> String {
        match self {
            KeyValue::Literal { text, negative, .. } => {
                format!("{}{text}", if *negative { "-" } else { "" })
            }
            KeyValue::Param(n) => format!("${n}"),
        }
    }
}

/// The numbers and strings of a SQL text, in order, as values (strings without quotes, `''`
/// unescaped). None when the text has a literal this does not read exactly (an `E'..'` string,
/// a dollar-quoted string, an unterminated quote).
pub fn literals(sql: &str) -> Option<Vec<String>> {
    use super::lex::{Kind, Lexer};
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
fn offset_of(sql: &str, line: u64, column: u64) -> Option<usize> {
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
fn literal_index(sql: &str, offset: usize) -> Option<usize> {
    use super::lex::{Kind, Lexer};
    Lexer::new(sql.as_bytes())
        .filter(|t| matches!(t.kind, Kind::Number { .. } | Kind::Str { .. }))
        .position(|t| t.start == offset)
}

/// The rows a statement touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardScope {
    /// Rows of the sharded table `table` with these keys (for an INSERT, one key per row).
    Keys { table: String, keys: Vec<KeyValue> },
    /// A sharded table without a usable key: every shard.
    AllShards { table: String },
    /// Only tables not in `[[tables]]` (or none): a read goes to one shard, anything else to all.
    Unsharded,
    /// The text could not be parsed.
    Unparsed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlan {
    pub scope: ShardScope,
    /// INSERT, UPDATE, DELETE, DDL or anything else that is not a plain query.
    pub write: bool,
    /// An UPDATE assigns the shard key: the row could have to move to another shard.
    pub moves_key: bool,
    /// Two sharded tables are joined without equating their shard keys.
    pub cross_shard_join: bool,
}

/// The plan of one SQL text.
pub fn plan(sql: &str, tables: &[TableConfig]) -> ShardPlan {
    let unparsed = ShardPlan {
        scope: ShardScope::Unparsed,
        write: true,
        moves_key: false,
        cross_shard_join: false,
    };
    let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return unparsed;
    };
    let [statement] = &statements[..] else {
        // Several statements: the shards of each are not combined here.
        return ShardPlan {
            scope: if statements.is_empty() {
                ShardScope::Unsharded
            } else {
                ShardScope::Unparsed
            },
            ..unparsed
        };
    };
    let ctx = Ctx { tables, sql };
    match statement {
        Statement::Query(q) => ctx.query(q),
        Statement::Insert(insert) => ctx.insert(insert),
        Statement::Update(update) => {
            let mut p = ctx.filtered(
                std::slice::from_ref(&update.table),
                update.selection.as_ref(),
                true,
            );
            if let ShardScope::Keys { table, .. } | ShardScope::AllShards { table } = &p.scope
                && let Some(t) = ctx.table(table)
            {
                p.moves_key = update.assignments.iter().any(|a| assigns(a, &t.shard_key));
            }
            p
        }
        Statement::Delete(delete) => {
            let from = match &delete.from {
                FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => f,
            };
            ctx.filtered(from, delete.selection.as_ref(), true)
        }
        other => {
            // DDL and everything else: a sharded table named anywhere means every shard.
            let mut p = ShardPlan {
                scope: ShardScope::Unsharded,
                write: true,
                moves_key: false,
                cross_shard_join: false,
            };
            if let Some(t) = ctx.sharded_relation(other) {
                p.scope = ShardScope::AllShards { table: t };
            }
            p
        }
    }
}

fn assigns(a: &Assignment, key: &str) -> bool {
    let names: Vec<&ObjectName> = match &a.target {
        AssignmentTarget::ColumnName(n) => vec![n],
        AssignmentTarget::Tuple(ns) => ns.iter().collect(),
    };
    names.iter().any(|n| last(n).eq_ignore_ascii_case(key))
}

/// The last part of a name, unquoted.
fn last(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(|i| i.value.clone())
        .unwrap_or_default()
}

struct Ctx<'a> {
    tables: &'a [TableConfig],
    sql: &'a str,
}

/// A sharded table in a FROM clause, by the name it is referred to.
struct Bound<'a> {
    table: &'a TableConfig,
    /// Its alias, or its name.
    refer: String,
}

impl<'a> Ctx<'a> {
    fn table(&self, name: &str) -> Option<&'a TableConfig> {
        self.tables
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
    }

    /// The first sharded table named anywhere in the statement.
    fn sharded_relation<V: Visit>(&self, node: &V) -> Option<String> {
        struct Find<'b, 'c> {
            ctx: &'b Ctx<'c>,
            found: Option<String>,
        }
        impl Visitor for Find<'_, '_> {
            type Break = ();
            fn pre_visit_relation(&mut self, r: &ObjectName) -> std::ops::ControlFlow<()> {
                if let Some(t) = self.ctx.table(&last(r)) {
                    self.found = Some(t.name.clone());
                    return std::ops::ControlFlow::Break(());
                }
                std::ops::ControlFlow::Continue(())
            }
        }
        let mut f = Find {
            ctx: self,
            found: None,
        };
        let _ = node.visit(&mut f);
        f.found
    }

    fn query(&self, q: &Query) -> ShardPlan {
        match q.body.as_ref() {
            SetExpr::Select(select) if q.with.is_none() => {
                let mut p = self.filtered(&select.from, select.selection.as_ref(), false);
                // A sharded table in a subquery is not narrowed here: every shard.
                if matches!(p.scope, ShardScope::Unsharded)
                    && let Some(t) = self.sharded_relation(q)
                {
                    p.scope = ShardScope::AllShards { table: t };
                }
                p
            }
            _ => ShardPlan {
                scope: match self.sharded_relation(q) {
                    Some(t) => ShardScope::AllShards { table: t },
                    None => ShardScope::Unsharded,
                },
                write: false,
                moves_key: false,
                cross_shard_join: false,
            },
        }
    }

    fn insert(&self, insert: &sqlparser::ast::Insert) -> ShardPlan {
        let mut p = ShardPlan {
            scope: ShardScope::Unsharded,
            write: true,
            moves_key: false,
            cross_shard_join: false,
        };
        let TableObject::TableName(name) = &insert.table else {
            return p;
        };
        let Some(t) = self.table(&last(name)) else {
            return p;
        };
        p.scope = ShardScope::AllShards {
            table: t.name.clone(),
        };
        let Some(col) = insert
            .columns
            .iter()
            .position(|c| last(c).eq_ignore_ascii_case(&t.shard_key))
        else {
            return p;
        };
        let Some(SetExpr::Values(values)) = insert.source.as_ref().map(|q| q.body.as_ref()) else {
            return p;
        };
        let keys: Option<Vec<KeyValue>> = values
            .rows
            .iter()
            .map(|row| row.get(col).and_then(|e| value(self.sql, e)))
            .collect();
        if let Some(keys) = keys {
            p.scope = ShardScope::Keys {
                table: t.name.clone(),
                keys,
            };
        }
        p
    }

    /// SELECT/UPDATE/DELETE: the sharded tables in `from`, narrowed by `selection`.
    fn filtered(
        &self,
        from: &[TableWithJoins],
        selection: Option<&Expr>,
        write: bool,
    ) -> ShardPlan {
        let mut bound = Vec::new();
        let mut join_conditions = Vec::new();
        for twj in from {
            self.bind(&twj.relation, &mut bound);
            for j in &twj.joins {
                self.bind(&j.relation, &mut bound);
                if let JoinOperator::Inner(JoinConstraint::On(e))
                | JoinOperator::Join(JoinConstraint::On(e))
                | JoinOperator::LeftOuter(JoinConstraint::On(e))
                | JoinOperator::Left(JoinConstraint::On(e)) = &j.join_operator
                {
                    join_conditions.push(e);
                }
            }
        }
        let mut p = ShardPlan {
            scope: ShardScope::Unsharded,
            write,
            moves_key: false,
            cross_shard_join: false,
        };
        if bound.is_empty() {
            return p;
        }
        if bound.len() > 1 {
            // Every sharded table must be tied to the first by an equality of shard keys.
            let first = &bound[0];
            let conds: Vec<&Expr> = join_conditions.iter().copied().chain(selection).collect();
            p.cross_shard_join = !bound[1..].iter().all(|b| {
                conds
                    .iter()
                    .any(|c| keys_equated(c, first, b, bound.len() == 1))
            });
        }
        p.scope = ShardScope::AllShards {
            table: bound[0].table.name.clone(),
        };
        if let Some(sel) = selection {
            for b in &bound {
                if let Some(keys) = keys_in(self.sql, sel, b, bound.len() == 1) {
                    p.scope = ShardScope::Keys {
                        table: b.table.name.clone(),
                        keys,
                    };
                    break;
                }
            }
        }
        p
    }

    fn bind(&self, factor: &TableFactor, bound: &mut Vec<Bound<'a>>) {
        if let TableFactor::Table { name, alias, .. } = factor
            && let Some(t) = self.table(&last(name))
        {
            bound.push(Bound {
                table: t,
                refer: alias
                    .as_ref()
                    .map_or_else(|| last(name), |a| a.name.value.clone()),
            });
        }
    }
}

/// Whether `e` is the shard key column of `b` (bare when it is the only table, or qualified).
fn is_key(e: &Expr, b: &Bound, alone: bool) -> bool {
    match e {
        Expr::Identifier(id) => alone && id.value.eq_ignore_ascii_case(&b.table.shard_key),
        Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
            let col = &parts[parts.len() - 1].value;
            let qual = &parts[parts.len() - 2].value;
            col.eq_ignore_ascii_case(&b.table.shard_key)
                && (qual.eq_ignore_ascii_case(&b.refer) || qual.eq_ignore_ascii_case(&b.table.name))
        }
        Expr::Nested(inner) => is_key(inner, b, alone),
        _ => false,
    }
}

/// A key value: a literal or a parameter, possibly cast or parenthesized.
fn value(sql: &str, e: &Expr) -> Option<KeyValue> {
    match e {
        Expr::Value(v) => {
            let literal = |text: &str| {
                let start = v.span.start;
                let index = literal_index(sql, offset_of(sql, start.line, start.column)?)?;
                Some(KeyValue::Literal {
                    text: text.to_string(),
                    index,
                    negative: false,
                })
            };
            match &v.value {
                Value::Number(n, _) => literal(n),
                Value::SingleQuotedString(s) => literal(s),
                Value::Placeholder(p) => p
                    .strip_prefix('$')
                    .and_then(|n| n.parse().ok())
                    .map(KeyValue::Param),
                _ => None,
            }
        }
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match value(sql, expr)? {
            KeyValue::Literal {
                text,
                index,
                negative,
            } => Some(KeyValue::Literal {
                text,
                index,
                negative: !negative,
            }),
            KeyValue::Param(_) => None,
        },
        Expr::Cast { expr, .. } | Expr::Nested(expr) => value(sql, expr),
        _ => None,
    }
}

/// The key values `e` restricts `b` to, if it does.
fn keys_in(sql: &str, e: &Expr, b: &Bound, alone: bool) -> Option<Vec<KeyValue>> {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => keys_in(sql, left, b, alone).or_else(|| keys_in(sql, right, b, alone)),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Or,
            right,
        } => {
            let mut l = keys_in(sql, left, b, alone)?;
            l.extend(keys_in(sql, right, b, alone)?);
            Some(l)
        }
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => {
            if is_key(left, b, alone) {
                value(sql, right).map(|v| vec![v])
            } else if is_key(right, b, alone) {
                value(sql, left).map(|v| vec![v])
            } else {
                None
            }
        }
        Expr::In {
            expr,
            target: InTarget::List(list),
            negated: false,
            ..
        } if is_key(expr, b, alone) => list.iter().map(|e| value(sql, e)).collect(),
        Expr::Nested(inner) => keys_in(sql, inner, b, alone),
        _ => None,
    }
}

/// Whether `e` (a chain of ANDs) equates the shard keys of `a` and `b`.
fn keys_equated(e: &Expr, a: &Bound, b: &Bound, alone: bool) -> bool {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => keys_equated(left, a, b, alone) || keys_equated(right, a, b, alone),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => {
            (is_key(left, a, alone) && is_key(right, b, alone))
                || (is_key(left, b, alone) && is_key(right, a, alone))
        }
        Expr::Nested(inner) => keys_equated(inner, a, b, alone),
        _ => false,
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::KeyType;

    fn tables() -> Vec<TableConfig> {
        vec![
            TableConfig {
                name: "users".into(),
                shard_key: "id".into(),
                key_type: KeyType::Bigint,
            },
            TableConfig {
                name: "orders".into(),
                shard_key: "user_id".into(),
                key_type: KeyType::Bigint,
            },
            TableConfig {
                name: "events".into(),
                shard_key: "email".into(),
                key_type: KeyType::Text,
            },
        ]
    }

    /// The scope, with literal keys reduced to their text (`Param` kept), for comparing.
    fn scope(sql: &str) -> ShardScope {
        strip(plan(sql, &tables()).scope)
    }

    fn strip(scope: ShardScope) -> ShardScope {
        match scope {
            ShardScope::Keys { table, keys } => ShardScope::Keys {
                table,
                keys: keys
                    .into_iter()
                    .map(|k| match k {
                        KeyValue::Literal { .. } => lit(&k.describe()),
                        p => p,
                    })
                    .collect(),
            },
            other => other,
        }
    }

    fn keys(table: &str, keys: &[KeyValue]) -> ShardScope {
        ShardScope::Keys {
            table: table.into(),
            keys: keys.to_vec(),
        }
    }

    fn lit(s: &str) -> KeyValue {
        KeyValue::Literal {
            text: s.into(),
            index: 0,
            negative: false,
        }
    }

    #[test]
    fn literal_keys_rebind_to_texts_of_the_same_shape() {
        let t = tables();
        let a = "SELECT * FROM users WHERE name = 'it''s' AND id = 42 AND n > 1.5";
        let p = plan(a, &t);
        let ShardScope::Keys { keys, .. } = &p.scope else {
            panic!("{p:?}")
        };
        assert_eq!(
            keys[0],
            KeyValue::Literal {
                text: "42".into(),
                index: 1,
                negative: false
            }
        );
        let b = "SELECT * FROM users WHERE name = 'x' AND id = 7 AND n > 2.5";
        assert_eq!(
            strip(rebind(&p, b).unwrap().scope),
            keys_of("users", &["7"])
        );
        // Negative keys, strings, several lines, a multi-byte character before the key.
        let p = plan(
            "INSERT INTO events (note, email) VALUES\n('é', 'a@b'),\n('ü', 'c@d')",
            &t,
        );
        let q = rebind(
            &p,
            "INSERT INTO events (note, email) VALUES\n('x', 'e@f'),\n('y', 'g@h')",
        )
        .unwrap();
        assert_eq!(strip(q.scope), keys_of("events", &["e@f", "g@h"]));
        let p = plan("DELETE FROM users WHERE id = -3", &t);
        let q = rebind(&p, "DELETE FROM users WHERE id = -99").unwrap();
        assert_eq!(strip(q.scope), keys_of("users", &["-99"]));
        assert_eq!(
            literals("SELECT 'a''b', 3, $1, \"x1\" FROM t1"),
            Some(vec!["a'b".to_string(), "3".to_string()])
        );
        assert_eq!(literals("SELECT E'\\n'"), None);
    }

    fn keys_of(table: &str, values: &[&str]) -> ShardScope {
        keys(table, &values.iter().map(|v| lit(v)).collect::<Vec<_>>())
    }

    #[test]
    fn key_lookups() {
        assert_eq!(
            scope("SELECT * FROM users WHERE id = 42"),
            keys("users", &[lit("42")])
        );
        assert_eq!(
            scope("SELECT * FROM users WHERE 42 = id"),
            keys("users", &[lit("42")])
        );
        assert_eq!(
            scope("SELECT * FROM users WHERE id = $1 AND name = 'x'"),
            keys("users", &[KeyValue::Param(1)])
        );
        assert_eq!(
            scope("SELECT * FROM users WHERE name = 'x' AND (id = '7'::bigint)"),
            keys("users", &[lit("7")])
        );
        assert_eq!(
            scope("SELECT * FROM users WHERE id = -3"),
            keys("users", &[lit("-3")])
        );
        assert_eq!(
            scope("SELECT * FROM users u WHERE u.id IN (1, 2, $3)"),
            keys("users", &[lit("1"), lit("2"), KeyValue::Param(3)])
        );
        assert_eq!(
            scope("SELECT * FROM users WHERE id = 1 OR id = 2"),
            keys("users", &[lit("1"), lit("2")])
        );
        assert_eq!(
            scope("SELECT * FROM events WHERE email = 'a@b.c'"),
            keys("events", &[lit("a@b.c")])
        );
    }

    #[test]
    fn no_usable_key_is_every_shard() {
        for sql in [
            "SELECT * FROM users",
            "SELECT * FROM users WHERE id > 3",
            "SELECT * FROM users WHERE id = 1 OR name = 'x'",
            "SELECT * FROM users WHERE id NOT IN (1, 2)",
            "SELECT * FROM (SELECT * FROM users WHERE id = 1) s",
            "SELECT count(*) FROM users UNION ALL SELECT 1",
        ] {
            assert_eq!(
                scope(sql),
                ShardScope::AllShards {
                    table: "users".into()
                },
                "{sql}"
            );
        }
    }

    #[test]
    fn inserts_one_key_per_row() {
        assert_eq!(
            scope("INSERT INTO users (name, id) VALUES ('a', 1), ('b', $2), ('c', -5)"),
            keys("users", &[lit("1"), KeyValue::Param(2), lit("-5")])
        );
        assert_eq!(
            scope("INSERT INTO users (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET name = 'x'"),
            keys("users", &[lit("1")])
        );
        assert_eq!(
            scope("INSERT INTO users (name) VALUES ('no key')"),
            ShardScope::AllShards {
                table: "users".into()
            }
        );
        assert_eq!(
            scope("INSERT INTO audit (a) VALUES (1)"),
            ShardScope::Unsharded
        );
    }

    #[test]
    fn updates_and_deletes() {
        let p = plan("UPDATE users SET name = 'x' WHERE id = 9", &tables());
        assert_eq!(strip(p.scope), keys("users", &[lit("9")]));
        assert!(p.write && !p.moves_key);
        assert!(plan("UPDATE users SET id = 10 WHERE id = 9", &tables()).moves_key);
        assert_eq!(
            scope("DELETE FROM orders WHERE user_id = $1"),
            keys("orders", &[KeyValue::Param(1)])
        );
        assert_eq!(
            scope("DELETE FROM orders"),
            ShardScope::AllShards {
                table: "orders".into()
            }
        );
    }

    #[test]
    fn joins_must_be_co_located() {
        let p = plan(
            "SELECT * FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id = 5",
            &tables(),
        );
        assert_eq!(strip(p.scope), keys("users", &[lit("5")]));
        assert!(!p.cross_shard_join);
        let p = plan(
            "SELECT * FROM users u JOIN orders o ON o.id = u.id WHERE u.id = 5",
            &tables(),
        );
        assert!(p.cross_shard_join);
        // A join with an unsharded table is fine.
        let p = plan(
            "SELECT * FROM users u JOIN countries c ON c.code = u.country WHERE u.id = 5",
            &tables(),
        );
        assert_eq!(strip(p.scope), keys("users", &[lit("5")]));
        assert!(!p.cross_shard_join);
    }

    #[test]
    fn unsharded_and_ddl() {
        let p = plan("SELECT * FROM countries", &tables());
        assert_eq!((p.scope, p.write), (ShardScope::Unsharded, false));
        let p = plan("CREATE TABLE t (a int)", &tables());
        assert_eq!((p.scope, p.write), (ShardScope::Unsharded, true));
        let p = plan("CREATE INDEX ON users (name)", &tables());
        assert_eq!(
            p.scope,
            ShardScope::AllShards {
                table: "users".into()
            }
        );
        assert_eq!(scope("VACUUM ANALYZE users"), ShardScope::Unparsed);
    }
}
