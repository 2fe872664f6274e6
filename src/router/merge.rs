//! How the rows of a SELECT that runs on several shards are merged into what one database would
//! return (issue 5; this is the planning half, pure: SQL text in, a [`MergePlan`] out).
//!
//! - `ORDER BY` keys become output column positions; a key that is not in the select list is
//!   appended as a hidden column the merge removes again.
//! - `LIMIT n OFFSET m` (literals): each shard is asked for `LIMIT n + m`, no OFFSET; the merge cuts.
//! - Aggregates `count`, `sum`, `min`, `max`, `avg` with `GROUP BY` on select-list expressions:
//!   each shard aggregates its rows; `avg(x)` is asked as `sum(x)` plus a hidden `count(x)`.
//! - `DISTINCT`: rows are de-duplicated after the merge.
//!
//! Shapes the merge cannot do correctly are refused with the construct named
//! ([`MergeRefusal`]), never answered wrongly.

use sqlparser::ast::{
    Distinct, Expr, Function, FunctionArguments, GroupByExpr, Ident, LimitClause, ObjectName,
    ObjectNamePart, OrderByKind, OrderBySort, Query, Select, SelectItem, SetExpr, Statement, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use thiserror::Error;

/// One ORDER BY key, on an output column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortKey {
    /// 0-based position in the shard's result (hidden columns included).
    pub column: usize,
    pub desc: bool,
    pub nulls_first: bool,
}

/// What an output column holds, for the merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    /// A value passed through (or a GROUP BY key when the plan groups).
    Plain,
    Count,
    Sum,
    Min,
    Max,
    /// `avg(x)`: the shard returns `sum(x)` here and `count(x)` in hidden column `count_at`.
    Avg {
        count_at: usize,
    },
}

/// How to merge the shards' rows of one SELECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergePlan {
    pub order: Vec<SortKey>,
    pub limit: Option<u64>,
    pub offset: u64,
    /// One entry per column the client sees.
    pub columns: Vec<Column>,
    /// Columns the shard query adds after the client's (sort keys, avg counts).
    pub hidden: usize,
    /// Aggregates are merged per group of the `Plain` columns (or over all rows without GROUP BY).
    pub aggregate: bool,
    pub distinct: bool,
    /// The statement each shard runs.
    pub shard_sql: String,
}

/// What a SELECT over several shards needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merge {
    /// Rows in any order, all of them: concatenation is exact.
    Concat,
    Plan(MergePlan),
}

/// A shape the merge cannot answer exactly.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "{0} cannot be merged exactly over several shards; add a condition on the shard key so the query runs on one shard, or name the shard with /* shardgate: shard=NAME */"
)]
pub struct MergeRefusal(pub String);

fn refuse<T>(what: impl Into<String>) -> Result<T, MergeRefusal> {
    Err(MergeRefusal(what.into()))
}

/// The merge plan of a SELECT text that runs on several shards.
pub fn merge_plan(sql: &str) -> Result<Merge, MergeRefusal> {
    let Ok(mut statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return Ok(Merge::Concat);
    };
    let [Statement::Query(query)] = &mut statements[..] else {
        return Ok(Merge::Concat);
    };
    plan_query(query)
}

fn plan_query(query: &mut Query) -> Result<Merge, MergeRefusal> {
    let ordered = query.order_by.is_some();
    let limited = query.limit_clause.is_some() || query.fetch.is_some();
    let SetExpr::Select(select) = query.body.as_mut() else {
        if ordered || limited {
            return refuse("ORDER BY or LIMIT on a UNION, INTERSECT or EXCEPT");
        }
        return Ok(Merge::Concat);
    };
    if query.fetch.is_some() {
        return refuse("FETCH FIRST");
    }
    let select: &mut Select = select;
    let group_by = match &select.group_by {
        GroupByExpr::Expressions(exprs, modifiers) if modifiers.is_empty() => exprs.clone(),
        _ => return refuse("GROUP BY ALL or GROUP BY with modifiers"),
    };
    let distinct = match &select.distinct {
        None | Some(Distinct::All) => false,
        Some(Distinct::Distinct) => true,
        Some(_) => return refuse("DISTINCT ON"),
    };
    if select.having.is_some() {
        return refuse("HAVING");
    }
    let visible = select.projection.len();
    let mut columns = Vec::with_capacity(visible);
    let mut aggregate = !group_by.is_empty();
    let mut avg_at = Vec::new();
    for (i, item) in select.projection.iter().enumerate() {
        let expr = match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
            _ => {
                columns.push(Column::Plain);
                continue;
            }
        };
        let column = match aggregate_of(expr)? {
            Some(c) => {
                aggregate = true;
                if matches!(c, Column::Avg { .. }) {
                    avg_at.push(i);
                }
                c
            }
            None => Column::Plain,
        };
        columns.push(column);
    }
    if aggregate {
        for (i, item) in select.projection.iter().enumerate() {
            if columns[i] != Column::Plain {
                continue;
            }
            let grouped = match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                    group_by.iter().any(|g| g == e)
                }
                _ => false,
            };
            if !grouped {
                return refuse(format!(
                    "the output column {} (neither an aggregate nor a GROUP BY expression)",
                    i + 1
                ));
            }
        }
        if select.projection.iter().any(|p| {
            !matches!(
                p,
                SelectItem::UnnamedExpr(_) | SelectItem::ExprWithAlias { .. }
            )
        }) {
            return refuse("* in an aggregate query");
        }
    }
    // ORDER BY keys as output positions; keys not in the select list become hidden columns.
    let mut order = Vec::new();
    let mut hidden = Vec::new();
    if let Some(ob) = &query.order_by {
        let OrderByKind::Expressions(exprs) = &ob.kind else {
            return refuse("ORDER BY ALL");
        };
        for o in exprs {
            let desc = match o.options.sort {
                None | Some(OrderBySort::Asc) => false,
                Some(OrderBySort::Desc) => true,
                Some(OrderBySort::Using(_)) => return refuse("ORDER BY ... USING"),
            };
            // Postgres: NULLS LAST by default ascending, FIRST descending.
            let nulls_first = o.options.nulls_first.unwrap_or(desc);
            let column = match output_position(&select.projection, &o.expr)? {
                Some(i) => i,
                None if aggregate => {
                    return refuse(
                        "ORDER BY an expression not in the select list of an aggregate query",
                    );
                }
                None => {
                    hidden.push(o.expr.clone());
                    visible + hidden.len() - 1
                }
            };
            order.push(SortKey {
                column,
                desc,
                nulls_first,
            });
        }
    }
    let (limit, offset) = match &query.limit_clause {
        None => (None, 0),
        Some(LimitClause::LimitOffset {
            limit,
            offset,
            limit_by,
        }) if limit_by.is_empty() => {
            let limit = limit.as_ref().map(literal_count).transpose()?;
            let offset = match offset {
                Some(o) => literal_count(&o.value)?.unwrap_or(0),
                None => 0,
            };
            (limit.flatten(), offset)
        }
        Some(_) => return refuse("this LIMIT form"),
    };
    if order.is_empty() && limit.is_none() && offset == 0 && !aggregate && !distinct {
        return Ok(Merge::Concat);
    }
    // The shards' statement: avg as sum + count, hidden sort keys, LIMIT n + m without OFFSET
    // (a shard cannot cut before grouping or de-duplicating, so then no LIMIT at all).
    let mut hidden_count = hidden.len();
    for e in hidden {
        select.projection.push(SelectItem::UnnamedExpr(e));
    }
    for &i in &avg_at {
        let (SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }) =
            &mut select.projection[i]
        else {
            unreachable!("aggregates are expressions");
        };
        let Expr::Function(f) = e else {
            unreachable!("avg is a call");
        };
        let mut count = f.clone();
        rename(f, "sum");
        rename(&mut count, "count");
        select
            .projection
            .push(SelectItem::UnnamedExpr(Expr::Function(count)));
        columns[i] = Column::Avg {
            count_at: visible + hidden_count,
        };
        hidden_count += 1;
    }
    query.limit_clause = match limit {
        Some(n) if !aggregate && !distinct => Some(LimitClause::LimitOffset {
            limit: Some(Expr::value(Value::Number((n + offset).to_string(), false))),
            offset: None,
            limit_by: vec![],
        }),
        _ => None,
    };
    if aggregate || distinct {
        // Sorting happens after the merge; the shards need not sort.
        query.order_by = None;
    }
    Ok(Merge::Plan(MergePlan {
        order,
        limit,
        offset,
        columns,
        hidden: hidden_count,
        aggregate,
        distinct,
        shard_sql: query.to_string(),
    }))
}

/// The aggregate an output expression is, if it is one.
fn aggregate_of(expr: &Expr) -> Result<Option<Column>, MergeRefusal> {
    let Expr::Function(f) = expr else {
        if contains_aggregate(expr) {
            return refuse("an expression over an aggregate");
        }
        return Ok(None);
    };
    let name = last(&f.name).to_ascii_lowercase();
    let column = match name.as_str() {
        "count" => Column::Count,
        "sum" => Column::Sum,
        "min" => Column::Min,
        "max" => Column::Max,
        "avg" => Column::Avg { count_at: 0 },
        "string_agg" | "array_agg" | "json_agg" | "jsonb_agg" | "stddev" | "stddev_samp"
        | "stddev_pop" | "variance" | "var_samp" | "var_pop" | "bool_and" | "bool_or" | "every"
        | "percentile_cont" | "percentile_disc" | "mode" | "json_object_agg"
        | "jsonb_object_agg" | "xmlagg" | "bit_and" | "bit_or" | "corr" | "covar_pop"
        | "covar_samp" => return refuse(format!("the aggregate {name}()")),
        _ => return Ok(None),
    };
    if f.over.is_some() {
        return refuse(format!("the window function {name}() OVER"));
    }
    if f.filter.is_some() || !f.within_group.is_empty() {
        return refuse(format!("{name}() with FILTER or WITHIN GROUP"));
    }
    if let FunctionArguments::List(list) = &f.args
        && (list.duplicate_treatment.is_some() || !list.clauses.is_empty())
    {
        return refuse(format!("{name}(DISTINCT ...) or {name}(... ORDER BY)"));
    }
    Ok(Some(column))
}

fn contains_aggregate(expr: &Expr) -> bool {
    use sqlparser::ast::Visit;
    use std::ops::ControlFlow;
    struct Find(bool);
    impl sqlparser::ast::Visitor for Find {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if let Expr::Function(f) = e
                && matches!(
                    last(&f.name).to_ascii_lowercase().as_str(),
                    "count" | "sum" | "min" | "max" | "avg"
                )
            {
                self.0 = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
    let mut f = Find(false);
    let _ = expr.visit(&mut f);
    f.0
}

fn rename(f: &mut Function, name: &str) {
    f.name = ObjectName(vec![ObjectNamePart::Identifier(Ident::new(name))]);
}

fn last(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(|i| i.value.clone())
        .unwrap_or_default()
}

/// The output column an ORDER BY expression names: a position (`ORDER BY 2`), an alias, or the
/// same expression as a select item.
fn output_position(projection: &[SelectItem], e: &Expr) -> Result<Option<usize>, MergeRefusal> {
    if let Expr::Value(v) = e
        && let Value::Number(n, _) = &v.value
    {
        let n: usize = n
            .parse()
            .map_err(|_| MergeRefusal("ORDER BY a number".into()))?;
        if n == 0 || n > projection.len() {
            return refuse(format!("ORDER BY position {n}"));
        }
        return Ok(Some(n - 1));
    }
    for (i, item) in projection.iter().enumerate() {
        match item {
            SelectItem::ExprWithAlias { expr, alias } => {
                if expr == e {
                    return Ok(Some(i));
                }
                if let Expr::Identifier(id) = e
                    && id.value.eq_ignore_ascii_case(&alias.value)
                {
                    return Ok(Some(i));
                }
            }
            SelectItem::UnnamedExpr(expr) => {
                if expr == e {
                    return Ok(Some(i));
                }
                // `SELECT t.a ... ORDER BY a`: the column's name.
                if let (Expr::CompoundIdentifier(parts), Expr::Identifier(id)) = (expr, e)
                    && parts
                        .last()
                        .is_some_and(|p| p.value.eq_ignore_ascii_case(&id.value))
                {
                    return Ok(Some(i));
                }
            }
            _ => {}
        }
    }
    Ok(None)
}

fn literal_count(e: &Expr) -> Result<Option<u64>, MergeRefusal> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n
                .parse()
                .map(Some)
                .map_err(|_| MergeRefusal(format!("LIMIT/OFFSET {n}"))),
            Value::Null => Ok(None),
            Value::Placeholder(p) => refuse(format!("LIMIT/OFFSET given as parameter {p}")),
            _ => refuse("this LIMIT/OFFSET value"),
        },
        _ => refuse("LIMIT/OFFSET given as an expression"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(sql: &str) -> MergePlan {
        match merge_plan(sql) {
            Ok(Merge::Plan(p)) => p,
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn plain_reads_concatenate() {
        assert_eq!(
            merge_plan("SELECT * FROM users WHERE name = 'x'"),
            Ok(Merge::Concat)
        );
        assert_eq!(
            merge_plan("SELECT a FROM t UNION ALL SELECT a FROM u"),
            Ok(Merge::Concat)
        );
    }

    #[test]
    fn order_and_limit() {
        let p = plan("SELECT id, name FROM users ORDER BY name DESC, 1 LIMIT 10 OFFSET 5");
        assert_eq!(
            p.order,
            vec![
                SortKey {
                    column: 1,
                    desc: true,
                    nulls_first: true
                },
                SortKey {
                    column: 0,
                    desc: false,
                    nulls_first: false
                },
            ]
        );
        assert_eq!((p.limit, p.offset, p.hidden), (Some(10), 5, 0));
        assert_eq!(
            p.shard_sql,
            "SELECT id, name FROM users ORDER BY name DESC, 1 LIMIT 15"
        );
    }

    #[test]
    fn sort_keys_outside_the_select_list_are_hidden_columns() {
        let p = plan("SELECT name FROM users ORDER BY created_at NULLS FIRST LIMIT 3");
        assert_eq!(
            p.order,
            vec![SortKey {
                column: 1,
                desc: false,
                nulls_first: true
            }]
        );
        assert_eq!(p.hidden, 1);
        assert_eq!(
            p.shard_sql,
            "SELECT name, created_at FROM users ORDER BY created_at NULLS FIRST LIMIT 3"
        );
        let p = plan("SELECT u.name AS n FROM users u ORDER BY n");
        assert_eq!((p.order[0].column, p.hidden), (0, 0));
    }

    #[test]
    fn aggregates_and_avg() {
        let p = plan(
            "SELECT country, count(*), avg(age) AS a FROM users GROUP BY country ORDER BY 2 DESC LIMIT 5",
        );
        assert!(p.aggregate);
        assert_eq!(
            p.columns,
            vec![Column::Plain, Column::Count, Column::Avg { count_at: 3 }]
        );
        assert_eq!(p.hidden, 1);
        assert_eq!(
            p.shard_sql,
            "SELECT country, count(*), sum(age) AS a, count(age) FROM users GROUP BY country"
        );
        let p = plan("SELECT min(id), max(id), sum(n) FROM users");
        assert_eq!(p.columns, vec![Column::Min, Column::Max, Column::Sum]);
    }

    #[test]
    fn distinct() {
        let p = plan("SELECT DISTINCT country FROM users ORDER BY country LIMIT 2");
        assert!(p.distinct);
        assert_eq!(p.shard_sql, "SELECT DISTINCT country FROM users");
    }

    #[test]
    fn refusals_name_the_construct() {
        for (sql, says) in [
            ("SELECT count(DISTINCT id) FROM users", "DISTINCT"),
            ("SELECT string_agg(name, ',') FROM users", "string_agg"),
            (
                "SELECT country, count(*) FROM users GROUP BY country HAVING count(*) > 1",
                "HAVING",
            ),
            (
                "SELECT name, count(*) FROM users GROUP BY country",
                "output column 1",
            ),
            (
                "SELECT count(*) + 1 FROM users",
                "expression over an aggregate",
            ),
            ("SELECT id FROM users ORDER BY id LIMIT $1", "parameter $1"),
            ("SELECT DISTINCT ON (a) a FROM users", "DISTINCT ON"),
            ("SELECT a FROM t UNION SELECT a FROM u ORDER BY a", "UNION"),
            (
                "SELECT rank() OVER (ORDER BY id), count(*) OVER () FROM users",
                "window function",
            ),
        ] {
            let e = merge_plan(sql).expect_err(sql);
            assert!(e.to_string().contains(says), "{sql}: {e}");
            assert!(e.to_string().contains("shard key"), "{e}");
        }
    }
}
