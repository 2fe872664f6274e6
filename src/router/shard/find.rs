//! The walk over the parse tree: the sharded tables a statement names and the key values its
//! conditions or VALUES rows give them.

use sqlparser::ast::{
    Assignment, AssignmentTarget, BinaryOperator, Expr, FromTable, InTarget, JoinConstraint,
    JoinOperator, ObjectName, Query, SetExpr, Statement, TableFactor, TableObject, TableWithJoins,
    UnaryOperator, Value, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::literals::{literal_index, offset_of};
use super::{KeyValue, ShardPlan, ShardScope};
use crate::config::TableConfig;

/// The plan of one SQL text (for tests and `shardgate route`; the classifier plans each statement
/// of a text it already parsed with [`plan_statement`]).
pub fn plan(sql: &str, tables: &[TableConfig]) -> ShardPlan {
    let unparsed = ShardPlan {
        scope: ShardScope::Unparsed,
        ..ShardPlan::unsharded(true)
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
    plan_statement(statement, sql, tables)
}

/// The plan of one parsed statement of `sql`.
pub fn plan_statement(statement: &Statement, sql: &str, tables: &[TableConfig]) -> ShardPlan {
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
            let mut p = ShardPlan::unsharded(true);
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
                ..ShardPlan::unsharded(false)
            },
        }
    }

    fn insert(&self, insert: &sqlparser::ast::Insert) -> ShardPlan {
        let mut p = ShardPlan::unsharded(true);
        let TableObject::TableName(name) = &insert.table else {
            return p;
        };
        let Some(t) = self.table(&last(name)) else {
            return p;
        };
        p.scope = ShardScope::AllShards {
            table: t.name.clone(),
        };
        // Until the rows' keys are found, this INSERT cannot be placed.
        p.keyless_insert = true;
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
            p.keyless_insert = false;
            p.insert_rows = true;
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
        let mut p = ShardPlan::unsharded(write);
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
