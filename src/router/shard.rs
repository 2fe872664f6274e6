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
    /// A literal in the text (`42`, `'alice'`).
    Literal(String),
    /// The n-th Bind parameter (1-based).
    Param(usize),
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
    let ctx = Ctx { tables };
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
            .map(|row| row.get(col).and_then(value))
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
                if let Some(keys) = keys_in(sel, b, bound.len() == 1) {
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
fn value(e: &Expr) -> Option<KeyValue> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => Some(KeyValue::Literal(n.clone())),
            Value::SingleQuotedString(s) => Some(KeyValue::Literal(s.clone())),
            Value::Placeholder(p) => p
                .strip_prefix('$')
                .and_then(|n| n.parse().ok())
                .map(KeyValue::Param),
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match value(expr)? {
            KeyValue::Literal(n) => Some(KeyValue::Literal(format!("-{n}"))),
            KeyValue::Param(_) => None,
        },
        Expr::Cast { expr, .. } | Expr::Nested(expr) => value(expr),
        _ => None,
    }
}

/// The key values `e` restricts `b` to, if it does.
fn keys_in(e: &Expr, b: &Bound, alone: bool) -> Option<Vec<KeyValue>> {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => keys_in(left, b, alone).or_else(|| keys_in(right, b, alone)),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Or,
            right,
        } => {
            let mut l = keys_in(left, b, alone)?;
            l.extend(keys_in(right, b, alone)?);
            Some(l)
        }
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => {
            if is_key(left, b, alone) {
                value(right).map(|v| vec![v])
            } else if is_key(right, b, alone) {
                value(left).map(|v| vec![v])
            } else {
                None
            }
        }
        Expr::In {
            expr,
            target: InTarget::List(list),
            negated: false,
            ..
        } if is_key(expr, b, alone) => list.iter().map(value).collect(),
        Expr::Nested(inner) => keys_in(inner, b, alone),
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
                    KeyValue::Literal(text) => {
                        ShardKey::from_text(t.key_type, text).map_err(|e| e.to_string())?
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
                    KeyValue::Literal(text) => match ShardKey::from_text(t.key_type, text) {
                        Ok(key) => {
                            let h = key.hash();
                            format!("{text} (hash {h}) -> {}", config.shard_for_hash(h).name)
                        }
                        Err(e) => format!("{e}"),
                    },
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

    fn scope(sql: &str) -> ShardScope {
        plan(sql, &tables()).scope
    }

    fn keys(table: &str, keys: &[KeyValue]) -> ShardScope {
        ShardScope::Keys {
            table: table.into(),
            keys: keys.to_vec(),
        }
    }

    fn lit(s: &str) -> KeyValue {
        KeyValue::Literal(s.into())
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
        assert_eq!(p.scope, keys("users", &[lit("9")]));
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
        assert_eq!(p.scope, keys("users", &[lit("5")]));
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
        assert_eq!(p.scope, keys("users", &[lit("5")]));
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
