//! How the rows of a SELECT that runs on several shards are merged into what one database would
//! return: the planning half, pure (a parsed statement in, a [`MergePlan`] out). The rows are
//! merged by [`super::rows`].
//!
//! - `ORDER BY` keys become output column positions; a key that is not in the select list is
//!   appended as a hidden column the merge removes again.
//! - `LIMIT n OFFSET m` (literals): each shard is asked for `LIMIT n + m`, no OFFSET; the merge cuts.
//! - Aggregates `count`, `sum`, `min`, `max`, `avg` with `GROUP BY` and `HAVING`: each shard
//!   aggregates its rows per group; the merge combines the groups of all shards, then applies
//!   HAVING. `avg(x)` is asked as `sum(x)` plus a hidden `count(x)`; GROUP BY expressions and
//!   HAVING's aggregates that are not in the select list become hidden columns.
//!   `count(DISTINCT k)` is exact when `k` is the table's shard key (a value lives on one shard).
//! - `DISTINCT` and `UNION`: rows are de-duplicated after the merge.
//!
//! Shapes the merge cannot do correctly are refused with the construct named
//! ([`MergeRefusal`]), never answered wrongly.

use sqlparser::ast::{
    BinaryOperator, Distinct, DuplicateTreatment, Expr, Function, FunctionArg, FunctionArgExpr,
    FunctionArguments, GroupByExpr, Ident, LimitClause, ObjectName, ObjectNamePart, OrderByKind,
    OrderBySort, Query, Select, SelectItem, SetExpr, SetOperator, SetQuantifier, Statement,
    TableFactor, UnaryOperator, Value, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::ops::ControlFlow;
use thiserror::Error;

use super::nested::{nested_distinct_union, refuse_nested};
use crate::config::TableConfig;

/// One ORDER BY key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortKey {
    /// The column: see [`MergePlan::position`].
    pub column: usize,
    pub desc: bool,
    pub nulls_first: bool,
    /// `COLLATE "C"` (or `"POSIX"`) was written: text compares bytewise whatever the database's
    /// collation.
    pub c_collation: bool,
}

/// What an output column holds, for the merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    /// A value passed through (or a GROUP BY key when the plan aggregates).
    Plain,
    Count,
    Sum,
    Min,
    Max,
    /// `avg(x)`: the shard returns `sum(x)` here and `count(x)` in column `count_at`.
    Avg {
        count_at: usize,
    },
}

/// A HAVING condition, evaluated on the merged groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pred {
    And(Box<Pred>, Box<Pred>),
    Or(Box<Pred>, Box<Pred>),
    Not(Box<Pred>),
    Cmp {
        left: Operand,
        op: CmpOp,
        right: Operand,
    },
    IsNull {
        operand: Operand,
        negated: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    /// A column of the shards' result (absolute position).
    Column(usize),
    /// A literal, as written: a number, a string, or a boolean (`true`/`false`).
    Number(String),
    Text(String),
    Bool(bool),
    Null,
}

/// How to merge the shards' rows of one SELECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergePlan {
    pub order: Vec<SortKey>,
    pub limit: Option<u64>,
    pub offset: u64,
    /// The number of select-list items.
    pub items: usize,
    /// A `*` in the select list: the number of visible columns is known only from the shards'
    /// RowDescription.
    pub wildcard: bool,
    /// What each column of the shards' result holds (visible, then hidden), when the plan
    /// aggregates (no `*` then); all [`Column::Plain`] otherwise.
    pub columns: Vec<Column>,
    /// Columns the shard query adds after the client's (sort keys, group keys, avg counts,
    /// HAVING's aggregates).
    pub hidden: usize,
    /// Aggregates are merged per group of the `Plain` columns (or over all rows without GROUP BY).
    pub aggregate: bool,
    pub having: Option<Pred>,
    pub distinct: bool,
    /// The statement each shard runs.
    pub shard_sql: String,
}

impl MergePlan {
    /// The position in the shards' result of a plan column, given the result's field count: the
    /// select items before a `*` keep their positions, hidden columns are the last `hidden`.
    pub fn position(&self, column: usize, fields: usize) -> usize {
        if column >= self.items {
            fields.saturating_sub(self.hidden) + (column - self.items)
        } else {
            column
        }
    }

    /// What column `at` (absolute, as resolved by [`Self::position`]) holds.
    pub fn column(&self, at: usize) -> Column {
        self.columns.get(at).copied().unwrap_or(Column::Plain)
    }
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

/// The merge plan of a SQL text that runs on several shards (`tables`: the sharded tables).
pub fn merge_plan(sql: &str, tables: &[TableConfig]) -> Result<Merge, MergeRefusal> {
    let Ok(mut statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return Ok(Merge::Concat);
    };
    match &mut statements[..] {
        [Statement::Query(query)] => plan_query(query, tables),
        many => {
            for s in many.iter_mut() {
                if let Statement::Query(q) = s
                    && plan_query(q, tables)? != Merge::Concat
                {
                    return refuse(
                        "a query of several statements, one of which needs merging (ORDER BY, LIMIT, aggregates, DISTINCT),",
                    );
                }
            }
            Ok(Merge::Concat)
        }
    }
}

/// The sharded table a single-table FROM reads, with the name it is referred to by.
fn single_table<'t>(
    select: &Select,
    tables: &'t [TableConfig],
) -> Option<(String, &'t TableConfig)> {
    let [from] = &select.from[..] else {
        return None;
    };
    if !from.joins.is_empty() {
        return None;
    }
    let TableFactor::Table { name, alias, .. } = &from.relation else {
        return None;
    };
    let table = last(name);
    let t = tables
        .iter()
        .find(|t| t.name.eq_ignore_ascii_case(&table))?;
    let refer = alias.as_ref().map_or(table, |a| a.name.value.clone());
    Some((refer, t))
}

/// Builds the shard query's hidden columns while planning.
struct Columns<'a> {
    projection: &'a mut Vec<SelectItem>,
    columns: Vec<Column>,
    /// Items before the first `*` (their positions are known).
    known: usize,
    /// The select-list items (hidden columns come after).
    items: usize,
    key: Option<(String, &'a TableConfig)>,
}

impl Columns<'_> {
    fn expr(&self, i: usize) -> Option<&Expr> {
        match self.projection.get(i)? {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => Some(e),
            _ => None,
        }
    }

    /// The position of an expression among the columns (visible ones before any `*`, or hidden).
    fn find(&self, e: &Expr) -> Option<usize> {
        (0..self.projection.len())
            .filter(|&i| i < self.known || i >= self.items)
            .find(|&i| self.expr(i) == Some(e))
    }

    fn push_hidden(&mut self, e: Expr, column: Column) -> usize {
        self.projection.push(SelectItem::UnnamedExpr(e));
        self.columns.push(column);
        self.projection.len() - 1
    }

    /// The column of a plain expression (a group key), added hidden when missing.
    fn plain(&mut self, e: &Expr) -> usize {
        match self.find(e) {
            Some(i) => i,
            None => self.push_hidden(e.clone(), Column::Plain),
        }
    }

    /// The column of an aggregate call (HAVING, ORDER BY), added hidden when missing.
    fn aggregate(&mut self, e: &Expr) -> Result<usize, MergeRefusal> {
        let Some(c) = aggregate_of(e, self.key.as_ref())? else {
            return refuse("an expression over an aggregate");
        };
        Ok(match self.find(e) {
            Some(i) => i,
            None => self.push_hidden(e.clone(), c),
        })
    }

    /// An operand of a HAVING comparison.
    fn operand(&mut self, e: &Expr) -> Result<Operand, MergeRefusal> {
        Ok(match e {
            Expr::Nested(inner) => return self.operand(inner),
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => Operand::Number(n.clone()),
                Value::SingleQuotedString(s) => Operand::Text(s.clone()),
                Value::Boolean(b) => Operand::Bool(*b),
                Value::Null => Operand::Null,
                _ => return refuse("this value in HAVING"),
            },
            Expr::UnaryOp {
                op: UnaryOperator::Minus,
                expr,
            } => match self.operand(expr)? {
                Operand::Number(n) => Operand::Number(format!("-{n}")),
                _ => return refuse("this value in HAVING"),
            },
            e if contains_aggregate(e) => Operand::Column(self.aggregate(e)?),
            e => Operand::Column(self.plain(e)),
        })
    }

    fn pred(&mut self, e: &Expr) -> Result<Pred, MergeRefusal> {
        Ok(match e {
            Expr::Nested(inner) => return self.pred(inner),
            Expr::BinaryOp { left, op, right } => {
                let cmp = match op {
                    BinaryOperator::And => {
                        return Ok(Pred::And(
                            Box::new(self.pred(left)?),
                            Box::new(self.pred(right)?),
                        ));
                    }
                    BinaryOperator::Or => {
                        return Ok(Pred::Or(
                            Box::new(self.pred(left)?),
                            Box::new(self.pred(right)?),
                        ));
                    }
                    BinaryOperator::Eq => CmpOp::Eq,
                    BinaryOperator::NotEq => CmpOp::NotEq,
                    BinaryOperator::Lt => CmpOp::Lt,
                    BinaryOperator::LtEq => CmpOp::LtEq,
                    BinaryOperator::Gt => CmpOp::Gt,
                    BinaryOperator::GtEq => CmpOp::GtEq,
                    _ => return refuse(format!("the operator {op} in HAVING")),
                };
                Pred::Cmp {
                    left: self.operand(left)?,
                    op: cmp,
                    right: self.operand(right)?,
                }
            }
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr,
            } => Pred::Not(Box::new(self.pred(expr)?)),
            Expr::IsNull(inner) => Pred::IsNull {
                operand: self.operand(inner)?,
                negated: false,
            },
            Expr::IsNotNull(inner) => Pred::IsNull {
                operand: self.operand(inner)?,
                negated: true,
            },
            _ => return refuse("this HAVING condition (only comparisons, AND, OR, NOT, IS NULL)"),
        })
    }
}

fn plan_query(query: &mut Query, tables: &[TableConfig]) -> Result<Merge, MergeRefusal> {
    refuse_nested(query, tables)?;
    let ordered = query.order_by.is_some();
    let limited = query.limit_clause.is_some() || query.fetch.is_some();
    let select = match query.body.as_mut() {
        SetExpr::Select(select) => select,
        SetExpr::SetOperation {
            op, set_quantifier, ..
        } => {
            if ordered || limited {
                return refuse("ORDER BY or LIMIT on a UNION, INTERSECT or EXCEPT");
            }
            if !matches!(op, SetOperator::Union) {
                return refuse(format!("{op}"));
            }
            let all = matches!(set_quantifier, SetQuantifier::All);
            if all {
                // Every branch must keep its duplicates too: a UNION below a UNION ALL would
                // de-duplicate each shard's rows only.
                if nested_distinct_union(query.body.as_ref()) {
                    return refuse("UNION (without ALL) inside UNION ALL");
                }
                return Ok(Merge::Concat);
            }
            return Ok(Merge::Plan(MergePlan {
                order: vec![],
                limit: None,
                offset: 0,
                items: 0,
                wildcard: true,
                columns: vec![],
                hidden: 0,
                aggregate: false,
                having: None,
                distinct: true,
                shard_sql: query.to_string(),
            }));
        }
        _ => {
            if ordered || limited {
                return refuse("ORDER BY or LIMIT on this kind of query");
            }
            return Ok(Merge::Concat);
        }
    };
    let select: &mut Select = select;
    let key = single_table(select, tables);
    let distinct = match &select.distinct {
        None | Some(Distinct::All) => false,
        Some(Distinct::Distinct) => true,
        Some(_) => return refuse("DISTINCT ON"),
    };
    let items = select.projection.len();
    let known = select
        .projection
        .iter()
        .position(|p| {
            !matches!(
                p,
                SelectItem::UnnamedExpr(_) | SelectItem::ExprWithAlias { .. }
            )
        })
        .unwrap_or(items);
    let wildcard = known < items;
    let mut group_by = match &select.group_by {
        GroupByExpr::Expressions(exprs, modifiers) if modifiers.is_empty() => exprs.clone(),
        _ => {
            return refuse("GROUP BY ALL or GROUP BY with modifiers (ROLLUP, CUBE, GROUPING SETS)");
        }
    };
    for g in &mut group_by {
        // `GROUP BY 2` and `GROUP BY alias` name select items.
        if let Some(i) = output_position(&select.projection, g, known)? {
            *g = match &select.projection[i] {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e.clone(),
                _ => unreachable!("positions are expressions"),
            };
        }
    }
    let mut columns = Vec::with_capacity(items);
    let mut aggregate = !group_by.is_empty() || select.having.is_some();
    for item in &select.projection {
        let column = match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                aggregate_of(e, key.as_ref())?.unwrap_or(Column::Plain)
            }
            _ => Column::Plain,
        };
        aggregate |= column != Column::Plain;
        columns.push(column);
    }
    if aggregate && wildcard {
        return refuse("* in an aggregate query");
    }
    let having = if aggregate {
        select.having.take()
    } else {
        None
    };
    let order_exprs = match &query.order_by {
        None => Vec::new(),
        Some(ob) => match &ob.kind {
            OrderByKind::Expressions(exprs) => exprs.clone(),
            OrderByKind::All(_) => return refuse("ORDER BY ALL"),
        },
    };
    let mut cols = Columns {
        projection: &mut select.projection,
        columns,
        known,
        items,
        key,
    };
    if aggregate {
        for g in &group_by {
            cols.plain(g);
        }
    }
    // ORDER BY keys as positions; keys not in the select list become hidden columns.
    let mut order = Vec::new();
    for o in &order_exprs {
        let desc = match o.options.sort {
            None | Some(OrderBySort::Asc) => false,
            Some(OrderBySort::Desc) => true,
            Some(OrderBySort::Using(_)) => return refuse("ORDER BY ... USING"),
        };
        // Postgres: NULLS LAST by default ascending, FIRST descending.
        let nulls_first = o.options.nulls_first.unwrap_or(desc);
        let (expr, c_collation) = match &o.expr {
            Expr::Collate { expr, collation } => {
                let name = last(collation);
                if !(name.eq_ignore_ascii_case("c") || name.eq_ignore_ascii_case("posix")) {
                    return refuse(format!(
                        "ORDER BY ... COLLATE \"{name}\" (shardgate merges text in the \"C\" collation or the database's when that is \"C\")"
                    ));
                }
                (expr.as_ref(), true)
            }
            e => (e, false),
        };
        let column = match output_position(cols.projection, expr, known)? {
            Some(i) => i,
            None if aggregate && contains_aggregate(expr) => cols.aggregate(expr)?,
            None => cols.plain(expr),
        };
        order.push(SortKey {
            column,
            desc,
            nulls_first,
            c_collation,
        });
    }
    let having = match &having {
        Some(h) => Some(cols.pred(h)?),
        None => None,
    };
    // avg(x) → sum(x) here and a hidden count(x).
    for i in 0..cols.columns.len() {
        if !matches!(cols.columns[i], Column::Avg { .. }) {
            continue;
        }
        // The column keeps its name: `avg`, as Postgres names it, unless aliased.
        if let SelectItem::UnnamedExpr(e) = &cols.projection[i] {
            cols.projection[i] = SelectItem::ExprWithAlias {
                expr: e.clone(),
                alias: Ident::new("avg"),
            };
        }
        let SelectItem::ExprWithAlias {
            expr: Expr::Function(f),
            ..
        } = &mut cols.projection[i]
        else {
            unreachable!("aggregates are calls");
        };
        let mut count = f.clone();
        rename(f, "sum");
        rename(&mut count, "count");
        let at = cols.push_hidden(Expr::Function(count), Column::Count);
        cols.columns[i] = Column::Avg { count_at: at };
    }
    let hidden = cols.projection.len() - items;
    let columns = if aggregate { cols.columns } else { Vec::new() };
    let (mut limit, offset) = match &query.limit_clause {
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
        Some(LimitClause::OffsetCommaLimit { offset, limit }) => {
            (literal_count(limit)?, literal_count(offset)?.unwrap_or(0))
        }
        Some(_) => return refuse("this LIMIT form"),
    };
    if let Some(f) = query.fetch.take() {
        if f.with_ties || f.percent {
            return refuse("FETCH FIRST ... WITH TIES or PERCENT");
        }
        limit = match &f.quantity {
            Some(q) => literal_count(q)?,
            None => Some(1),
        };
    }
    if order.is_empty() && limit.is_none() && offset == 0 && !aggregate && !distinct {
        return Ok(Merge::Concat);
    }
    query.limit_clause = match limit {
        Some(n) if !aggregate && !distinct => Some(LimitClause::LimitOffset {
            limit: Some(Expr::value(Value::Number(
                n.saturating_add(offset).to_string(),
                false,
            ))),
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
        items,
        wildcard,
        columns,
        hidden,
        aggregate,
        having,
        distinct,
        shard_sql: query.to_string(),
    }))
}

/// The aggregate an output expression is, if it is one (`key`: the single sharded table of the
/// FROM clause and the name it goes by, for `count(DISTINCT key)`).
fn aggregate_of(
    expr: &Expr,
    key: Option<&(String, &TableConfig)>,
) -> Result<Option<Column>, MergeRefusal> {
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
        n if AGGREGATES.contains(&n) => return refuse(format!("the aggregate {name}()")),
        _ => {
            if contains_aggregate(expr) {
                return refuse("an expression over an aggregate");
            }
            return Ok(None);
        }
    };
    if f.over.is_some() {
        return refuse(format!("the window function {name}() OVER"));
    }
    if f.filter.is_some() || !f.within_group.is_empty() {
        return refuse(format!("{name}() with FILTER or WITHIN GROUP"));
    }
    if let FunctionArguments::List(list) = &f.args {
        if !list.clauses.is_empty() {
            return refuse(format!("{name}(... ORDER BY)"));
        }
        if matches!(list.duplicate_treatment, Some(DuplicateTreatment::Distinct)) {
            // Distinct values of the shard key never repeat across shards: the counts add up.
            let on_key = column == Column::Count
                && matches!(&list.args[..], [FunctionArg::Unnamed(FunctionArgExpr::Expr(e))]
                    if key.is_some_and(|(refer, t)| is_column(e, refer, &t.shard_key)));
            if !on_key {
                return refuse(format!(
                    "{name}(DISTINCT ...) other than count(DISTINCT <shard key>)"
                ));
            }
        }
    }
    Ok(Some(column))
}

/// `col` or `refer.col`.
fn is_column(e: &Expr, refer: &str, col: &str) -> bool {
    match e {
        Expr::Identifier(id) => id.value.eq_ignore_ascii_case(col),
        Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
            parts[0].value.eq_ignore_ascii_case(refer) && parts[1].value.eq_ignore_ascii_case(col)
        }
        Expr::Nested(inner) => is_column(inner, refer, col),
        _ => false,
    }
}

/// Aggregates the merge cannot combine from per-shard results.
const AGGREGATES: &[&str] = &[
    "string_agg",
    "array_agg",
    "json_agg",
    "jsonb_agg",
    "stddev",
    "stddev_samp",
    "stddev_pop",
    "variance",
    "var_samp",
    "var_pop",
    "bool_and",
    "bool_or",
    "every",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "json_object_agg",
    "jsonb_object_agg",
    "xmlagg",
    "bit_and",
    "bit_or",
    "bit_xor",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_count",
    "regr_sxx",
    "regr_syy",
    "regr_sxy",
    "regr_avgx",
    "regr_avgy",
    "regr_r2",
    "regr_slope",
    "regr_intercept",
    "range_agg",
    "range_intersect_agg",
    "any_value",
];

pub(super) fn contains_aggregate(expr: &Expr) -> bool {
    /// `.1`: the depth of subqueries (an aggregate inside one belongs to it).
    struct Find(bool, usize);
    impl Visitor for Find {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if let Expr::Function(f) = e
                && f.over.is_none()
                && self.1 == 0
            {
                let name = last(&f.name).to_ascii_lowercase();
                if matches!(name.as_str(), "count" | "sum" | "min" | "max" | "avg")
                    || AGGREGATES.contains(&name.as_str())
                {
                    self.0 = true;
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.1 += 1;
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.1 -= 1;
            ControlFlow::Continue(())
        }
    }
    let mut f = Find(false, 0);
    let _ = expr.visit(&mut f);
    f.0
}

fn rename(f: &mut Function, name: &str) {
    f.name = ObjectName(vec![ObjectNamePart::Identifier(Ident::new(name))]);
}

pub(super) fn last(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(|i| i.value.clone())
        .unwrap_or_default()
}

/// The output column an ORDER BY or GROUP BY expression names: a position (`ORDER BY 2`), an
/// alias, or the same expression as a select item; only items before any `*` (`known`), whose
/// positions are known.
fn output_position(
    projection: &[SelectItem],
    e: &Expr,
    known: usize,
) -> Result<Option<usize>, MergeRefusal> {
    if let Expr::Value(v) = e
        && let Value::Number(n, _) = &v.value
    {
        let n: usize = n
            .parse()
            .map_err(|_| MergeRefusal("ORDER BY a number".into()))?;
        if n == 0 || n > known {
            return refuse(format!(
                "ORDER BY or GROUP BY position {n} (after a * or out of range)"
            ));
        }
        return Ok(Some(n - 1));
    }
    for (i, item) in projection.iter().enumerate().take(known) {
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
        Expr::Nested(inner) => literal_count(inner),
        _ => refuse("LIMIT/OFFSET given as an expression"),
    }
}
#[cfg(test)]
#[path = "tests/plan.rs"]
mod tests;
