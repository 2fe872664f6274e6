use super::*;

fn opts() -> ClassifyOptions {
    ClassifyOptions {
        write_functions: vec!["audit_log".into(), "app.bump_counter".into()],
        ..Default::default()
    }
}

fn plan(sql: &str) -> Plan {
    classify(sql, &opts())
}

#[track_caller]
fn assert_read(sql: &str) {
    let p = plan(sql);
    assert!(
        p.read && !p.writes && !p.unparsed && !p.local,
        "{sql}: {p:?}"
    );
}

/// Not a read, may write, parsed.
#[track_caller]
fn assert_write(sql: &str) {
    let p = plan(sql);
    assert!(
        !p.read && p.writes && !p.unparsed && !p.local,
        "{sql}: {p:?}"
    );
}

/// Not a read, writes nothing (session or transaction state).
#[track_caller]
fn assert_state(sql: &str) {
    let p = plan(sql);
    assert!(
        !p.read && !p.writes && !p.unparsed && !p.local,
        "{sql}: {p:?}"
    );
}

#[track_caller]
fn assert_unparsed(sql: &str) {
    let p = plan(sql);
    assert!(
        !p.read && p.writes && p.unparsed && !p.local,
        "{sql}: {p:?}"
    );
}

#[test]
fn plain_reads() {
    assert_read("SELECT 1");
    assert_read("select abalance from pgbench_accounts where aid = $1");
    assert_read("SELECT a, count(*) FROM t JOIN u USING (id) WHERE b > 1 GROUP BY a");
    assert_read("SELECT * FROM (SELECT * FROM t) s, LATERAL (SELECT 1) l");
    assert_read("WITH x AS (SELECT 1) SELECT * FROM x");
    assert_read("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM r) SELECT * FROM r");
    assert_read("SELECT 1 UNION SELECT 2 EXCEPT SELECT 3");
    assert_read("VALUES (1), (2)");
    assert_read("TABLE t");
    assert_read("TABLE ONLY s.t;");
    assert_read("SELECT * FROM generate_series(1, 10) g");
    assert_read("SELECT * FROM unnest(ARRAY[1,2]) WITH ORDINALITY");
    assert_read("SELECT set_config('search_path', 'a', false)");
    assert_read("SELECT current_setting('x'), now(), pg_catalog.version()");
    assert_read("SELECT 1; SELECT 2;");
    assert_read("SELECT 'FOR UPDATE', \"for\" FROM t -- FOR NO KEY UPDATE");
    // PostgreSQL ends a -- comment at \r as well as \n.
    assert_write("SELECT 1 -- x\r, nextval('s')");
}

#[test]
fn show_is_a_read() {
    assert_read("SHOW search_path");
    assert_read("SHOW ALL");
    assert_read("show TIME ZONE");
    assert_read("SHOW transaction_read_only; SELECT 1");
}

#[test]
fn row_locks_are_not_reads() {
    assert_write("SELECT * FROM t FOR UPDATE");
    assert_write("SELECT * FROM t FOR SHARE NOWAIT");
    assert_write("SELECT * FROM t FOR UPDATE OF t SKIP LOCKED");
    assert_write("SELECT * FROM (SELECT * FROM t FOR UPDATE) s");
    assert_write("SELECT x FROM t WHERE EXISTS (SELECT 1 FROM u FOR SHARE)");
    assert_write("WITH x AS (SELECT * FROM t FOR UPDATE) SELECT * FROM x");
    assert_write("SELECT (SELECT a FROM u FOR UPDATE) FROM t");
    assert_write("SELECT 1 UNION (SELECT 2 FROM t FOR UPDATE)");
    // Not parsed by sqlparser 0.64, and never a read anyway.
    assert_unparsed("SELECT * FROM t FOR NO KEY UPDATE");
    assert_unparsed("SELECT * FROM t FOR KEY SHARE");
    assert_unparsed("SELECT * FROM t for /* c */ no key update");
}

#[test]
fn row_lock_words_check() {
    let toks = |sql: &str| {
        Tokenizer::new(&PostgreSqlDialect {}, sql)
            .tokenize()
            .unwrap()
            .into_iter()
            .filter(|t| !matches!(t, Token::Whitespace(_)))
            .collect::<Vec<_>>()
    };
    let check = |sql: &str| has_row_lock_words(&toks(sql).iter().collect::<Vec<_>>());
    assert!(check("SELECT * FROM t FOR NO KEY UPDATE"));
    assert!(check("select * from t for key share of t"));
    assert!(check("SELECT * FROM t FOR /* x */ KEY -- y\n SHARE"));
    assert!(!check("SELECT 'FOR KEY SHARE'"));
    assert!(!check("SELECT \"for\" key share"));
    assert!(!check("SELECT * FROM t FOR UPDATE"));
    assert!(!check("SELECT * FROM t FOR SHARE"));
}

#[test]
fn data_modifying_ctes_are_not_reads() {
    assert_write("WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x");
    assert_write("WITH u AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM u");
    assert_write("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d");
    assert_write(
        "WITH m AS (MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE RETURNING *) \
         SELECT 1",
    );
    assert_write("WITH a AS (SELECT 1) INSERT INTO t SELECT * FROM a");
    assert_write("SELECT * FROM t WHERE a IN (WITH x AS (DELETE FROM y RETURNING 1) SELECT 1)");
    assert_write(
        "WITH a AS (SELECT 1), b AS (WITH c AS (DELETE FROM y RETURNING 1) SELECT 1) SELECT 1",
    );
}

#[test]
fn select_into_is_not_a_read() {
    assert_write("SELECT * INTO newt FROM t");
    assert_write("SELECT 1 INTO TEMP t2");
    assert_write("CREATE TABLE x AS SELECT 1");
}

#[test]
fn writing_functions_are_not_reads() {
    for sql in [
        "SELECT nextval('s')",
        "SELECT NEXTVAL('s')",
        "SELECT pg_catalog.nextval('s')",
        "SELECT \"nextval\"('s')",
        "SELECT setval('s', 1)",
        "SELECT currval('s')",
        "SELECT lastval()",
        "SELECT * FROM nextval('s')",
        "SELECT * FROM pg_catalog.nextval('s') AS n(x)",
        "SELECT * FROM t, LATERAL nextval('s') x",
        "SELECT (SELECT nextval('s'))",
        "SELECT a FROM t WHERE b = (SELECT max(c) FROM u WHERE d = nextval('s'))",
        "SELECT 1 UNION SELECT nextval('s')",
        "WITH x AS (SELECT nextval('s')) SELECT * FROM x",
        "SELECT coalesce(nextval('s'), 0)::text",
        "SELECT CASE WHEN a THEN nextval('s') END FROM t",
        "VALUES (nextval('s'))",
        "SELECT pg_advisory_lock(1)",
        "SELECT pg_advisory_xact_lock_shared(1)",
        "SELECT pg_try_advisory_lock(1, 2)",
        "SELECT pg_advisory_unlock_all()",
        "SELECT pg_try_advisory_xact_lock(1)",
        "SELECT lo_create(0)",
        "SELECT lo_creat(-1)",
        "SELECT lo_import('/tmp/x')",
        "SELECT lo_export(1, '/tmp/x')",
        "SELECT lo_unlink(1)",
        "SELECT lo_open(1, 131072)",
        "SELECT lo_put(1, 0, 'x')",
        "SELECT lo_from_bytea(0, 'x')",
        "SELECT lo_truncate(1, 0)",
        "SELECT lo_get(1)",
        "SELECT lowrite(0, 'x')",
        "SELECT txid_current()",
        "SELECT txid_current_if_assigned()",
        "SELECT pg_current_xact_id()",
        "SELECT pg_current_xact_id_if_assigned()",
        "SELECT pg_notify('c', 'x')",
        "SELECT pg_current_wal_lsn()",
        "SELECT pg_current_wal_insert_lsn()",
        "SELECT pg_current_wal_flush_lsn()",
        "SELECT pg_switch_wal()",
        "SELECT pg_create_restore_point('x')",
        "SELECT audit_log('x')",
        "SELECT app.audit_log('x')",
        "SELECT * FROM Bump_Counter()",
        "SELECT 1; SELECT nextval('s')",
    ] {
        assert_write(sql);
    }
}

#[test]
fn writing_functions_anywhere_in_a_query() {
    for sql in [
        "SELECT a FROM t ORDER BY nextval('s')",
        "SELECT a FROM t GROUP BY a HAVING count(*) > nextval('s')",
        "SELECT a FROM t LIMIT nextval('s')",
        "SELECT a FROM t OFFSET nextval('s')",
        "SELECT count(nextval('s')) FROM t",
        "SELECT count(*) FILTER (WHERE nextval('s') > 0) FROM t",
        "SELECT row_number() OVER (ORDER BY nextval('s')) FROM t",
        "SELECT sum(a) OVER w FROM t WINDOW w AS (PARTITION BY nextval('s'))",
        "SELECT DISTINCT ON (nextval('s')) a FROM t",
        "SELECT ARRAY(SELECT nextval('s'))",
        "SELECT a FROM t WHERE a IN (SELECT nextval('s'))",
        "SELECT a FROM t WHERE EXISTS (SELECT nextval('s'))",
        "SELECT a FROM t WHERE a = ANY(ARRAY[nextval('s')])",
        "SELECT CAST(nextval('s') AS text)",
        "SELECT nextval('s')::text",
        "SELECT ROW(nextval('s'))",
        "SELECT (nextval('s'), 1)",
        "SELECT a FROM t JOIN u ON nextval('s') > 0",
        "SELECT * FROM generate_series(1, nextval('s'))",
        "SELECT * FROM t, LATERAL (SELECT nextval('s')) x",
        "SELECT * FROM (VALUES (nextval('s'))) v(a)",
        "SELECT a FROM t WHERE b BETWEEN 1 AND nextval('s')",
        "SELECT a FROM t WHERE b LIKE nextval('s')::text",
        "SELECT COALESCE(a, nextval('s')) FROM t",
        "SELECT greatest(1, nextval('s'))",
        "SELECT a FROM t WHERE (SELECT nextval('s')) IS NOT NULL",
        "SELECT jsonb_build_object('k', nextval('s'))",
    ] {
        assert_write(sql);
    }
}

#[test]
fn function_name_matching() {
    let o = opts();
    assert!(is_write_function("NextVal", &o));
    assert!(is_write_function("lo_anything", &o));
    assert!(is_write_function("pg_advisory_unlock_shared", &o));
    assert!(is_write_function("AUDIT_LOG", &o));
    assert!(is_write_function("bump_counter", &o));
    assert!(!is_write_function("set_config", &o));
    assert!(!is_write_function("nextval2", &o));
    assert!(!is_write_function("my_nextval", &o));
    assert!(!is_write_function("log", &o));
    assert!(!is_write_function("app", &o));
    assert!(!is_write_function("audit_log", &ClassifyOptions::default()));
}

#[test]
fn explain() {
    assert_state("EXPLAIN INSERT INTO t VALUES (1)");
    assert_state("EXPLAIN SELECT * FROM t FOR UPDATE");
    assert_state("EXPLAIN SELECT nextval('s')");
    assert_write("EXPLAIN ANALYZE SELECT 1");
    assert_write("EXPLAIN (ANALYZE) SELECT 1");
    assert_write("EXPLAIN (ANALYZE, BUFFERS) SELECT 1");
    assert_write("EXPLAIN (analyze false) SELECT 1");
    assert_write("EXPLAIN ANALYZE INSERT INTO t VALUES (1)");
    for sql in [
        "EXPLAIN SELECT 1",
        "EXPLAIN VERBOSE SELECT * FROM t",
        "EXPLAIN (COSTS OFF) SELECT 1",
        "explain (format json) SELECT * FROM t WHERE a = 1",
    ] {
        let p = plan(sql);
        assert!(p.read && !p.writes && !p.unparsed, "{sql}: {p:?}");
    }
}

#[test]
fn dml_ddl_and_others_go_to_the_primary() {
    for sql in [
        "INSERT INTO t VALUES (1)",
        "UPDATE t SET a = 1",
        "DELETE FROM t",
        "MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE",
        "CREATE TABLE t (a int)",
        "DROP TABLE t",
        "ALTER TABLE t ADD COLUMN b int",
        "TRUNCATE t",
        "COPY t TO STDOUT",
        "COPY t FROM STDIN",
        "CALL p()",
        "LOCK TABLE t",
        "EXECUTE p",
        "NOTIFY c, 'x'",
        "DECLARE c CURSOR FOR SELECT 1",
        "VACUUM t",
        "ANALYZE t",
        "GRANT SELECT ON t TO u",
        "REFRESH MATERIALIZED VIEW v",
        "SELECT 1; INSERT INTO t VALUES (1)",
    ] {
        assert_write(sql);
    }
    for sql in [
        "VACUUM ANALYZE t",
        "DO $$ BEGIN END $$",
        "PREPARE TRANSACTION 'x'",
        "COMMIT PREPARED 'x'",
        "ROLLBACK PREPARED 'x'",
        "CHECKPOINT",
        "SELECT * FROM ROWS FROM (generate_series(1, 2))",
        "SELEC 1",
        "SELECT (",
        "SELECT 'abc",
        "TABLE t WHERE",
        "TABLE t; TABLE u",
    ] {
        assert_unparsed(sql);
    }
}

#[test]
fn session_and_transaction_state() {
    for sql in [
        "SET search_path = a",
        "SET LOCAL statement_timeout = 5",
        "SET TIME ZONE 'UTC'",
        "SET ROLE x",
        "SET SESSION AUTHORIZATION x",
        "RESET ALL",
        "RESET search_path",
        "DISCARD ALL",
        "PREPARE p AS SELECT 1",
        "PREPARE p(int) AS INSERT INTO t VALUES ($1)",
        "DEALLOCATE p",
        "DEALLOCATE ALL",
        "LISTEN c",
        "UNLISTEN *",
        "FETCH 10 FROM c",
        "CLOSE c",
        "CLOSE ALL",
        "SAVEPOINT a",
        "RELEASE SAVEPOINT a",
        "ROLLBACK TO SAVEPOINT a",
        "BEGIN",
        "COMMIT",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "BEGIN; SET search_path = a; COMMIT",
    ] {
        assert_state(sql);
    }
}

#[test]
fn empty_texts() {
    for sql in ["", "  ", ";", " ; ; ", "-- nothing", "/* nothing */"] {
        let p = plan(sql);
        assert!(
            !p.read && !p.writes && !p.unparsed && !p.local && p.tx == TxControl::None,
            "{sql:?}: {p:?}"
        );
    }
}

#[test]
fn transaction_control() {
    use TxControl::{Begin, End, SetTransaction};
    let tx = |sql: &str| plan(sql).tx;
    assert_eq!(tx("BEGIN"), Begin { read_only: None });
    assert_eq!(tx("begin work"), Begin { read_only: None });
    assert_eq!(tx("START TRANSACTION"), Begin { read_only: None });
    assert_eq!(
        tx("BEGIN READ ONLY"),
        Begin {
            read_only: Some(true)
        }
    );
    assert_eq!(
        tx("BEGIN TRANSACTION READ WRITE"),
        Begin {
            read_only: Some(false)
        }
    );
    assert_eq!(
        tx("START TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"),
        Begin {
            read_only: Some(true)
        }
    );
    assert_eq!(
        tx("BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY"),
        Begin {
            read_only: Some(true)
        }
    );
    assert_eq!(
        tx("SET TRANSACTION READ ONLY"),
        SetTransaction {
            read_only: Some(true)
        }
    );
    assert_eq!(
        tx("SET TRANSACTION READ WRITE"),
        SetTransaction {
            read_only: Some(false)
        }
    );
    assert_eq!(
        tx("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
        SetTransaction { read_only: None }
    );
    assert_eq!(
        tx("SET TRANSACTION SNAPSHOT '00000003-1'"),
        SetTransaction { read_only: None }
    );
    assert_eq!(
        tx("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
        TxControl::None
    );
    for end in [
        "COMMIT",
        "COMMIT WORK",
        "END",
        "END TRANSACTION",
        "ROLLBACK",
        "ROLLBACK AND NO CHAIN",
        "ABORT",
        "abort transaction",
    ] {
        assert_eq!(tx(end), End, "{end}");
        assert_state(end);
    }
    assert_eq!(tx("COMMIT AND CHAIN"), TxControl::None);
    assert_eq!(tx("ROLLBACK TO SAVEPOINT a"), TxControl::None);
    assert_eq!(tx("ROLLBACK TO a"), TxControl::None);
    assert_eq!(tx("SAVEPOINT a"), TxControl::None);
    assert_eq!(tx("RELEASE a"), TxControl::None);
    assert_eq!(tx("COMMIT PREPARED 'x'"), TxControl::None);
    assert_eq!(tx("ROLLBACK PREPARED 'x'"), TxControl::None);
    assert_eq!(tx("PREPARE TRANSACTION 'x'"), End);
    assert_eq!(tx("SELECT 1"), TxControl::None);
    assert_eq!(tx("INSERT INTO t VALUES (1)"), TxControl::None);
}

#[test]
fn deferrable_transaction_fallback() {
    use TxControl::{Begin, SetTransaction};
    for (sql, want) in [
        (
            "BEGIN READ ONLY DEFERRABLE",
            Begin {
                read_only: Some(true),
            },
        ),
        (
            "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
            Begin {
                read_only: Some(true),
            },
        ),
        ("BEGIN NOT DEFERRABLE;", Begin { read_only: None }),
        (
            "START TRANSACTION READ WRITE NOT DEFERRABLE",
            Begin {
                read_only: Some(false),
            },
        ),
        (
            "SET TRANSACTION DEFERRABLE",
            SetTransaction { read_only: None },
        ),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY DEFERRABLE",
            TxControl::None,
        ),
    ] {
        let p = plan(sql);
        assert_eq!(p.tx, want, "{sql}");
        assert_state(sql);
    }
    assert_unparsed("BEGIN READ ONLY DEFERRABLE; SELECT 1");
    assert_unparsed("BEGIN DEFERRABLE NONSENSE");
    assert_unparsed("BEGIN ISOLATION LEVEL SOMETIMES DEFERRABLE");
}

#[test]
fn multi_statement_transactions() {
    use TxControl::{Begin, End};
    let tx = |sql: &str| plan(sql).tx;
    assert_eq!(tx("BEGIN; SELECT 1"), Begin { read_only: None });
    assert_eq!(tx("BEGIN; INSERT INTO t VALUES (1); COMMIT"), End);
    assert_eq!(
        tx("BEGIN; SET TRANSACTION READ ONLY; SELECT 1"),
        Begin {
            read_only: Some(true)
        }
    );
    assert_eq!(
        tx("BEGIN READ ONLY; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
        Begin {
            read_only: Some(true)
        }
    );
    assert_eq!(tx("COMMIT; BEGIN"), Begin { read_only: None });
    assert_eq!(tx("SELECT 1; SELECT 2"), TxControl::None);
    let p = plan("BEGIN; SELECT 1; COMMIT");
    assert!(!p.read && !p.writes, "{p:?}");
    let p = plan("BEGIN; UPDATE t SET a = 1; COMMIT");
    assert!(!p.read && p.writes, "{p:?}");
}

#[test]
fn hints_are_carried() {
    let p = plan("/* shardgate: replica */ INSERT INTO t VALUES (1)");
    assert_eq!(p.hint, Some(Hint::Replica));
    assert!(!p.read && p.writes);
    let p = plan("/* shardgate: primary */ SELECT 1");
    assert_eq!(p.hint, Some(Hint::Primary));
    assert!(p.read);
    assert_eq!(plan("SELECT /* shardgate: primary */ 1").hint, Option::None);
    let p = plan("/* shardgate:primary */ SELEC 1");
    assert!(p.unparsed && p.hint == Some(Hint::Primary));
}

#[test]
fn local_commands() {
    for sql in [
        "SET shardgate.target = 'replica'",
        "SHOW shardgate.target",
        "RESET shardgate.target",
        "SET shardgate.target = 'replica'; SELECT 1",
        "SET shardgate.target",
    ] {
        let p = plan(sql);
        assert!(
            p.local && !p.read && !p.writes && !p.unparsed && p.tx == TxControl::None,
            "{sql}: {p:?}"
        );
    }
    assert!(!plan("/* shardgate: replica */ SELECT 1").local);
    assert!(!plan("SHOW search_path").local);
}

#[test]
fn deep_chains_are_refused_not_overflowed() {
    // Just under the limit still parses; over it is refused before parsing.
    let under = format!("SELECT {}", vec!["1"; MAX_OPERATOR_TOKENS].join(" + "));
    let over = format!("SELECT {}", vec!["1"; MAX_OPERATOR_TOKENS + 3].join(" + "));
    let big_list = format!(
        "SELECT * FROM t WHERE id IN ({})",
        vec!["1"; 3 * MAX_OPERATOR_TOKENS].join(", ")
    );
    // Debug builds use far more stack per level than release builds.
    let stack = if cfg!(debug_assertions) {
        64 << 20
    } else {
        2 << 20
    };
    std::thread::Builder::new()
        .stack_size(stack)
        .spawn(move || {
            assert_read(&under);
            assert_unparsed(&over);
            assert_read(&big_list);
        })
        .unwrap()
        .join()
        .unwrap();
}
