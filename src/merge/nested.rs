//! Shapes inside a SELECT that a merge over shards cannot answer exactly: window functions, and
//! subqueries over sharded tables whose answer depends on all of the table's rows.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Distinct, Expr, GroupByExpr, ObjectName, Query, SelectItem, SetExpr, SetQuantifier, Visit,
    Visitor,
};

use super::plan::{MergeRefusal, contains_aggregate, last};
use crate::config::TableConfig;

/// A UNION without ALL anywhere below this set operation.
pub(super) fn nested_distinct_union(body: &SetExpr) -> bool {
    match body {
        SetExpr::SetOperation {
            set_quantifier,
            left,
            right,
            ..
        } => {
            !matches!(set_quantifier, SetQuantifier::All)
                || nested_distinct_union(left)
                || nested_distinct_union(right)
        }
        SetExpr::Query(q) => nested_distinct_union(&q.body),
        _ => false,
    }
}

/// Refuses window functions anywhere, and subqueries over a sharded table whose answer depends
/// on all of its rows (aggregates, GROUP BY, DISTINCT, LIMIT): each shard would see only its own.
pub(super) fn refuse_nested(query: &Query, tables: &[TableConfig]) -> Result<(), MergeRefusal> {
    struct Nested<'t> {
        depth: usize,
        tables: &'t [TableConfig],
        refusal: Option<MergeRefusal>,
    }
    impl Visitor for Nested<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            self.depth += 1;
            if self.depth > 1 && depends_on_all_rows(q) && reads_sharded(q, self.tables) {
                self.refusal = Some(MergeRefusal(
                    "a subquery over a sharded table with an aggregate, GROUP BY, DISTINCT or LIMIT"
                        .into(),
                ));
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.depth -= 1;
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if let Expr::Function(f) = e
                && f.over.is_some()
            {
                self.refusal = Some(MergeRefusal(format!(
                    "the window function {}() OVER",
                    last(&f.name)
                )));
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
    let mut v = Nested {
        depth: 0,
        tables,
        refusal: None,
    };
    let _ = query.visit(&mut v);
    match v.refusal {
        Some(r) => Err(r),
        None => Ok(()),
    }
}

fn depends_on_all_rows(q: &Query) -> bool {
    if q.limit_clause.is_some() || q.fetch.is_some() {
        return true;
    }
    fn body(b: &SetExpr) -> bool {
        match b {
            SetExpr::Select(s) => {
                !matches!(&s.group_by, GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty())
                    || s.having.is_some()
                    || matches!(s.distinct, Some(Distinct::Distinct) | Some(Distinct::On(_)))
                    || s.projection.iter().any(|p| match p {
                        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                            contains_aggregate(e)
                        }
                        _ => false,
                    })
            }
            SetExpr::SetOperation {
                set_quantifier,
                left,
                right,
                ..
            } => !matches!(set_quantifier, SetQuantifier::All) || body(left) || body(right),
            SetExpr::Query(q) => depends_on_all_rows(q),
            _ => false,
        }
    }
    body(&q.body)
}

fn reads_sharded(q: &Query, tables: &[TableConfig]) -> bool {
    struct Find<'t>(&'t [TableConfig], bool);
    impl Visitor for Find<'_> {
        type Break = ();
        fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
            let name = last(r);
            if self.0.iter().any(|t| t.name.eq_ignore_ascii_case(&name)) {
                self.1 = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
    let mut f = Find(tables, false);
    let _ = q.visit(&mut f);
    f.1
}
