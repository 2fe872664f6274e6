//! Tests of `merge::plan`.

use super::*;

fn tables() -> Vec<TableConfig> {
    vec![TableConfig {
        name: "users".into(),
        shard_key: "id".into(),
        key_type: Default::default(),
        replicated: false,
    }]
}

fn merge(sql: &str) -> Result<Merge, MergeRefusal> {
    merge_plan(sql, &tables())
}

fn plan(sql: &str) -> MergePlan {
    match merge(sql) {
        Ok(Merge::Plan(p)) => p,
        other => panic!("{sql}: {other:?}"),
    }
}

fn key(column: usize, desc: bool, nulls_first: bool) -> SortKey {
    SortKey {
        column,
        desc,
        nulls_first,
        c_collation: false,
    }
}

#[test]
fn plain_reads_concatenate() {
    assert_eq!(
        merge("SELECT * FROM users WHERE name = 'x'"),
        Ok(Merge::Concat)
    );
    assert_eq!(
        merge("SELECT a FROM t UNION ALL SELECT a FROM u"),
        Ok(Merge::Concat)
    );
    assert_eq!(
        merge("SELECT * FROM users WHERE id IN (SELECT user_id FROM orders)"),
        Ok(Merge::Concat)
    );
}

#[test]
fn order_and_limit() {
    let p = plan("SELECT id, name FROM users ORDER BY name DESC, 1 LIMIT 10 OFFSET 5");
    assert_eq!(p.order, vec![key(1, true, true), key(0, false, false)]);
    assert_eq!((p.limit, p.offset, p.hidden), (Some(10), 5, 0));
    assert_eq!(
        p.shard_sql,
        "SELECT id, name FROM users ORDER BY name DESC, 1 LIMIT 15"
    );
    let p = plan("SELECT id FROM users ORDER BY id FETCH FIRST 3 ROWS ONLY");
    assert_eq!(p.limit, Some(3));
    assert_eq!(p.shard_sql, "SELECT id FROM users ORDER BY id LIMIT 3");
    let p = plan("SELECT id FROM users LIMIT 2");
    assert!(p.order.is_empty());
    assert_eq!(p.limit, Some(2));
}

#[test]
fn sort_keys_outside_the_select_list_are_hidden_columns() {
    let p = plan("SELECT name FROM users ORDER BY created_at NULLS FIRST LIMIT 3");
    assert_eq!(p.order, vec![key(1, false, true)]);
    assert_eq!(p.hidden, 1);
    assert_eq!(
        p.shard_sql,
        "SELECT name, created_at FROM users ORDER BY created_at NULLS FIRST LIMIT 3"
    );
    let p = plan("SELECT u.name AS n FROM users u ORDER BY n");
    assert_eq!((p.order[0].column, p.hidden), (0, 0));
    // With `*`, the hidden column is found from the end of the row.
    let p = plan("SELECT * FROM users ORDER BY name");
    assert!(p.wildcard);
    assert_eq!((p.items, p.hidden, p.order[0].column), (1, 1, 1));
    assert_eq!(p.position(1, 5), 4);
    assert_eq!(p.shard_sql, "SELECT *, name FROM users ORDER BY name");
    let p = plan("SELECT name FROM users ORDER BY name COLLATE \"C\"");
    assert!(p.order[0].c_collation);
    assert_eq!(p.order[0].column, 0);
}

#[test]
fn aggregates_and_avg() {
    let p = plan(
        "SELECT country, count(*), avg(age) AS a FROM users GROUP BY country ORDER BY 2 DESC LIMIT 5",
    );
    assert!(p.aggregate);
    assert_eq!(
        p.columns,
        vec![
            Column::Plain,
            Column::Count,
            Column::Avg { count_at: 3 },
            Column::Count
        ]
    );
    assert_eq!(p.hidden, 1);
    assert_eq!(
        p.shard_sql,
        "SELECT country, count(*), sum(age) AS a, count(age) FROM users GROUP BY country"
    );
    // The column keeps Postgres's name for it.
    assert_eq!(
        plan("SELECT avg(x) FROM t").shard_sql,
        "SELECT sum(x) AS avg, count(x) FROM t"
    );
    let p = plan("SELECT min(id), max(id), sum(n) FROM users");
    assert_eq!(p.columns, vec![Column::Min, Column::Max, Column::Sum]);
}

#[test]
fn group_keys_outside_the_select_list_are_hidden_columns() {
    let p = plan("SELECT count(*) FROM users GROUP BY country");
    assert_eq!(p.columns, vec![Column::Count, Column::Plain]);
    assert_eq!(
        p.shard_sql,
        "SELECT count(*), country FROM users GROUP BY country"
    );
    // By position and by alias: the item itself.
    let p = plan("SELECT lower(name) AS n, count(*) FROM users GROUP BY 1");
    assert_eq!(p.hidden, 0);
    let p = plan("SELECT lower(name) AS n, count(*) FROM users GROUP BY n");
    assert_eq!(p.hidden, 0);
}

#[test]
fn having_is_evaluated_after_the_merge() {
    let p = plan(
        "SELECT country, count(*) FROM users GROUP BY country HAVING count(*) > 1 AND max(age) <= -3",
    );
    assert_eq!(
        p.having,
        Some(Pred::And(
            Box::new(Pred::Cmp {
                left: Operand::Column(1),
                op: CmpOp::Gt,
                right: Operand::Number("1".into())
            }),
            Box::new(Pred::Cmp {
                left: Operand::Column(2),
                op: CmpOp::LtEq,
                right: Operand::Number("-3".into())
            }),
        ))
    );
    assert_eq!(
        p.shard_sql,
        "SELECT country, count(*), max(age) FROM users GROUP BY country"
    );
    assert_eq!(p.columns[2], Column::Max);
    // An aggregate ORDER BY key outside the select list.
    let p = plan("SELECT country FROM users GROUP BY country ORDER BY sum(age) DESC");
    assert_eq!(p.order, vec![key(1, true, true)]);
    assert_eq!(p.columns, vec![Column::Plain, Column::Sum]);
}

#[test]
fn count_distinct_of_the_shard_key_adds_up() {
    let p = plan("SELECT count(DISTINCT id) FROM users");
    assert_eq!(p.columns, vec![Column::Count]);
    let p = plan("SELECT count(DISTINCT u.id) FROM users u");
    assert_eq!(p.columns, vec![Column::Count]);
    assert!(merge("SELECT count(DISTINCT name) FROM users").is_err());
}

#[test]
fn distinct_and_union() {
    let p = plan("SELECT DISTINCT country FROM users ORDER BY country LIMIT 2");
    assert!(p.distinct);
    assert_eq!(p.shard_sql, "SELECT DISTINCT country FROM users");
    let p = plan("SELECT country FROM users UNION SELECT name FROM users");
    assert!(p.distinct && p.wildcard);
}

#[test]
fn refusals_name_the_construct() {
    for (sql, says) in [
        ("SELECT count(DISTINCT name) FROM users", "DISTINCT"),
        ("SELECT string_agg(name, ',') FROM users", "string_agg"),
        (
            "SELECT country, count(*) FROM users GROUP BY country HAVING count(*) + 1 > 2",
            "expression over an aggregate",
        ),
        (
            "SELECT count(*) + 1 FROM users",
            "expression over an aggregate",
        ),
        ("SELECT id FROM users ORDER BY id LIMIT $1", "parameter $1"),
        ("SELECT DISTINCT ON (a) a FROM users", "DISTINCT ON"),
        ("SELECT a FROM t UNION SELECT a FROM u ORDER BY a", "UNION"),
        ("SELECT a FROM t INTERSECT SELECT a FROM u", "INTERSECT"),
        (
            "SELECT a FROM t UNION ALL (SELECT a FROM u UNION SELECT a FROM v)",
            "UNION (without ALL)",
        ),
        (
            "SELECT rank() OVER (ORDER BY id) FROM users",
            "window function",
        ),
        (
            "SELECT * FROM (SELECT count(*) FROM users) s",
            "subquery over a sharded table",
        ),
        (
            "SELECT name, (SELECT max(id) FROM users) FROM users",
            "subquery over a sharded table",
        ),
        ("SELECT * FROM users ORDER BY 2", "position 2"),
        (
            "SELECT name FROM users ORDER BY name COLLATE \"en_US\"",
            "COLLATE",
        ),
        ("SELECT 1; SELECT count(*) FROM users", "several statements"),
        (
            "SELECT country FROM users GROUP BY country HAVING country LIKE 'a%'",
            "HAVING",
        ),
    ] {
        let e = merge(sql).expect_err(sql);
        assert!(e.to_string().contains(says), "{sql}: {e}");
        assert!(e.to_string().contains("shard key"), "{e}");
    }
    // A subquery over a table every shard holds whole is fine.
    assert!(merge("SELECT name, (SELECT max(id) FROM countries) FROM users").is_ok());
}
