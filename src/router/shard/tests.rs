use super::*;
use crate::config::TableConfig;
use crate::hash::KeyType;

fn tables() -> Vec<TableConfig> {
    vec![
        TableConfig {
            name: "users".into(),
            shard_key: "id".into(),
            key_type: KeyType::Bigint,
            replicated: false,
        },
        TableConfig {
            name: "orders".into(),
            shard_key: "user_id".into(),
            key_type: KeyType::Bigint,
            replicated: false,
        },
        TableConfig {
            name: "events".into(),
            shard_key: "email".into(),
            key_type: KeyType::Text,
            replicated: false,
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
