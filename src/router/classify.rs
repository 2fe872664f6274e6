//! Classification of one SQL text: may it run on a streaming replica, may it change data, does it
//! open or close a transaction.
//!
//! A text is a read (replica-safe) when every statement in it is one of:
//!
//! - a query (`SELECT`, `VALUES`, `TABLE t`, `WITH ...`) with, at any depth (subqueries, CTEs, set
//!   operations, `FROM` items): no row lock (`FOR UPDATE/SHARE/NO KEY UPDATE/KEY SHARE`), no
//!   data-modifying CTE (`WITH x AS (INSERT/UPDATE/DELETE/MERGE ...)`), no `SELECT ... INTO newtable`,
//!   and no call of a writing function (see [`is_write_function`]), in an expression or as a table
//!   function;
//! - `SHOW name` (`SHOW shardgate.*` is a local command, see [`super::local`]);
//! - `EXPLAIN` without `ANALYZE` of such a query.
//!
//! Everything else goes to the primary: DML, DDL, `COPY`, `SET`, `CALL`, `DO`, `LOCK`,
//! `PREPARE`/`EXECUTE`/`DEALLOCATE`, `LISTEN`/`NOTIFY`, `DECLARE`/`FETCH`, transaction control,
//! `VACUUM`, and any text sqlparser cannot parse.
//!
//! Separately, [`Plan::writes`] says whether the text may change data (for read-your-writes): false for
//! reads and for statements that only touch session or transaction state, true for everything else,
//! including unparsed texts.
//!
//! The work is done by sqlparser (`PostgreSqlDialect`) and its `Visitor`. Its 0.64 quirks, and what
//! this module does about them:
//!
//! - `FOR NO KEY UPDATE` / `FOR KEY SHARE` do not parse (the text is unparsed, so primary); a token
//!   check also keeps any text with those words from ever being a read, should a later parser accept
//!   them and drop the lock strength.
//! - `BEGIN`/`START TRANSACTION`/`SET TRANSACTION` with `[NOT] DEFERRABLE` do not parse; a small
//!   fallback grammar for transaction modes recognises them, so `pg_dump`'s
//!   `BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE` still reports `Begin`.
//! - `TABLE t` does not parse as a statement; a fallback recognises `TABLE [ONLY] name [*]`.
//! - `PREPARE TRANSACTION 'x'` does not parse; it stays unparsed (a write) but reports
//!   [`TxControl::End`], since it ends the session's transaction. `COMMIT PREPARED` and
//!   `ROLLBACK PREPARED` do not parse either and stay unparsed writes with no transaction effect.
//! - `EXPLAIN (ANALYZE)` sets an option, not `analyze`; any `ANALYZE` option counts, whatever its
//!   argument (`EXPLAIN (ANALYZE false)` goes to the primary: cache keys ignore literal values, so the
//!   classification must too).
//! - `VACUUM ANALYZE t`, `DO $$...$$`, `ROWS FROM (...)`, `CHECKPOINT`, `CLUSTER`, `REINDEX` do not
//!   parse: unparsed, primary.
//! - The parser limits recursion, but left-deep chains (`a + b + c ...`, `x OR y OR ...`, `::` casts,
//!   `UNION`s) build trees as deep as the chain, and visiting or dropping one recurses once per level.
//!   Texts with more than [`MAX_OPERATOR_TOKENS`] operator-like tokens are not parsed (unparsed,
//!   primary) so a hostile query cannot overflow the stack of the thread classifying it.

use std::ops::ControlFlow;

use sqlparser::ast::{
    DescribeAlias, Expr, ObjectName, ObjectNamePart, Query, Select, Set, SetExpr, Statement,
    TableFactor, TransactionAccessMode, TransactionMode, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::hint::{self, Hint};
use super::local;

/// What a text does to the session's transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxControl {
    None,
    /// BEGIN / START TRANSACTION; read_only: Some(true) for READ ONLY, Some(false) for READ WRITE,
    /// None when not said.
    Begin {
        read_only: Option<bool>,
    },
    /// SET TRANSACTION READ ONLY (Some(true)) / READ WRITE (Some(false)); other SET TRANSACTION
    /// forms: None. (`SET SESSION CHARACTERISTICS AS TRANSACTION ...` changes no transaction:
    /// [`TxControl::None`].)
    SetTransaction {
        read_only: Option<bool>,
    },
    /// COMMIT, END, ROLLBACK, ABORT (not ROLLBACK TO SAVEPOINT), and PREPARE TRANSACTION; COMMIT/
    /// ROLLBACK PREPARED excluded (those are writes). `COMMIT AND CHAIN` / `ROLLBACK AND CHAIN` end a
    /// transaction and open the next one at once, so they are [`TxControl::None`].
    End,
}

/// How to route one SQL text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// May run on a replica.
    pub read: bool,
    /// May change data; false for reads and for statements that only touch session/transaction state.
    pub writes: bool,
    /// sqlparser could not parse the text (route: primary; counted by the caller).
    pub unparsed: bool,
    /// `/* shardgate: primary */` or `/* shardgate: replica */` as the leading comment. Carried, not
    /// applied: `read` is what the text itself allows.
    pub hint: Option<Hint>,
    /// For a multi-statement text, the net effect of its transaction-control statements in order:
    /// the last one wins, except that `SET TRANSACTION READ ONLY/WRITE` after a `BEGIN` updates that
    /// `Begin`'s `read_only` (`BEGIN; ...; COMMIT` is `End`, `BEGIN; SELECT 1` is `Begin`). The
    /// server's ReadyForQuery status stays the truth about whether a transaction is open (a failing
    /// statement skips the rest of the text).
    pub tx: TxControl,
    /// The text is a `SET/RESET/SHOW shardgate.<name>` command answered by the proxy (parse it with
    /// [`local::parse`]); such plans have read=false, writes=false.
    pub local: bool,
}

impl Plan {
    /// A text that could not be parsed: primary, counted as a write.
    pub fn unparsed(hint: Option<Hint>) -> Plan {
        Plan {
            read: false,
            writes: true,
            unparsed: true,
            hint,
            tx: TxControl::None,
            local: false,
        }
    }
}

/// Classification settings from the configuration.
#[derive(Debug, Clone, Default)]
pub struct ClassifyOptions {
    /// Extra names of functions that write (config `routing.write_functions`), lowercase. A
    /// schema-qualified entry matches on its last part.
    pub write_functions: Vec<String>,
}

/// Texts with more operator-like tokens than this are not parsed (see the module docs). A release
/// build uses about 80 bytes of stack per level of the deepest chain this allows (`1 + 1 + ...`),
/// so about 650 KiB, well inside a 2 MiB thread stack. (A debug build uses some 25 times more.)
pub const MAX_OPERATOR_TOKENS: usize = 8192;

/// Functions that write, or that fail or mean something else on a standby.
const WRITE_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    // Session state left by nextval on the primary; a replica session has none.
    "currval",
    "lastval",
    // Large objects not named lo_*.
    "loread",
    "lowrite",
    "txid_current",
    "txid_current_if_assigned",
    "pg_current_xact_id",
    "pg_current_xact_id_if_assigned",
    "pg_notify",
    "pg_current_wal_lsn",
    "pg_current_wal_insert_lsn",
    "pg_current_wal_flush_lsn",
    "pg_switch_wal",
    "pg_create_restore_point",
];

/// Prefixes of writing functions: large objects and advisory locks (lock and unlock).
const WRITE_FUNCTION_PREFIXES: &[&str] = &["lo_", "pg_advisory", "pg_try_advisory"];

/// Whether a function of this (unqualified) name writes. `set_config` does not: it only changes
/// session state, which a replica session can hold as well.
pub fn is_write_function(name: &str, opts: &ClassifyOptions) -> bool {
    let name = name.to_ascii_lowercase();
    WRITE_FUNCTIONS.contains(&name.as_str())
        || WRITE_FUNCTION_PREFIXES.iter().any(|p| name.starts_with(p))
        || opts.write_functions.iter().any(|w| {
            let last = w.rsplit('.').next().unwrap_or(w);
            last.eq_ignore_ascii_case(&name)
        })
}

/// Classifies one SQL text (one simple Query, or one Parse of the extended protocol).
pub fn classify(sql: &str, opts: &ClassifyOptions) -> Plan {
    let hint = hint::leading(sql);
    if local::parse(sql).is_some() {
        return Plan {
            read: false,
            writes: false,
            unparsed: false,
            hint,
            tx: TxControl::None,
            local: true,
        };
    }

    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql)
        .with_unescape(true)
        .tokenize_with_location()
    else {
        return Plan::unparsed(hint);
    };
    let sig: Vec<&Token> = tokens
        .iter()
        .map(|t| &t.token)
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    if sig.iter().filter(|t| counts_for_depth(t)).count() > MAX_OPERATOR_TOKENS {
        return Plan::unparsed(hint);
    }
    let row_lock_words = has_row_lock_words(&sig);

    let statements = match Parser::new(&dialect)
        .with_tokens_with_locations(tokens.clone())
        .parse_statements()
    {
        Ok(statements) => statements,
        Err(_) => return fallback(&sig, hint),
    };

    let mut plan = Plan {
        read: !statements.is_empty(),
        writes: false,
        unparsed: false,
        hint,
        tx: TxControl::None,
        local: false,
    };
    for stmt in &statements {
        let class = statement(stmt, opts);
        plan.read &= class.read;
        plan.writes |= class.writes;
        plan.tx = fold_tx(plan.tx, class.tx);
    }
    if row_lock_words && plan.read {
        plan.read = false;
        plan.writes = true;
    }
    plan
}

/// The classification of one statement.
struct StmtClass {
    read: bool,
    writes: bool,
    tx: TxControl,
}

impl StmtClass {
    fn read(read: bool) -> StmtClass {
        StmtClass {
            read,
            writes: !read,
            tx: TxControl::None,
        }
    }

    /// Touches only session or transaction state.
    fn state(tx: TxControl) -> StmtClass {
        StmtClass {
            read: false,
            writes: false,
            tx,
        }
    }
}

fn statement(stmt: &Statement, opts: &ClassifyOptions) -> StmtClass {
    match stmt {
        Statement::Query(query) => StmtClass::read(query_is_read(query, opts)),
        Statement::Explain {
            describe_alias: DescribeAlias::Explain,
            analyze,
            options,
            statement,
            ..
        } => {
            let analyze = *analyze
                || options.iter().flatten().any(|o| {
                    o.name.value.eq_ignore_ascii_case("analyze")
                        || o.name.value.eq_ignore_ascii_case("analyse")
                });
            if analyze {
                StmtClass::read(false)
            } else {
                StmtClass {
                    read: matches!(&**statement, Statement::Query(q) if query_is_read(q, opts)),
                    writes: false,
                    tx: TxControl::None,
                }
            }
        }
        Statement::ShowVariable { .. } => StmtClass::read(true),
        Statement::StartTransaction {
            modes,
            statements,
            exception,
            ..
        } if statements.is_empty() && exception.is_none() => StmtClass::state(TxControl::Begin {
            read_only: access_mode(modes),
        }),
        Statement::Commit { chain, .. } => StmtClass::state(if *chain {
            TxControl::None
        } else {
            TxControl::End
        }),
        Statement::Rollback { chain, savepoint } => {
            StmtClass::state(if *chain || savepoint.is_some() {
                TxControl::None
            } else {
                TxControl::End
            })
        }
        Statement::Set(Set::SetTransaction { modes, session, .. }) => {
            StmtClass::state(if *session {
                TxControl::None
            } else {
                TxControl::SetTransaction {
                    read_only: access_mode(modes),
                }
            })
        }
        Statement::Fetch { into: None, .. }
        | Statement::Set(_)
        | Statement::Reset(_)
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. }
        | Statement::Discard { .. }
        | Statement::Prepare { .. }
        | Statement::Deallocate { .. }
        | Statement::LISTEN { .. }
        | Statement::UNLISTEN { .. }
        | Statement::Close { .. } => StmtClass::state(TxControl::None),
        _ => StmtClass::read(false),
    }
}

/// `READ ONLY` → Some(true), `READ WRITE` → Some(false), the last one said wins.
fn access_mode(modes: &[TransactionMode]) -> Option<bool> {
    modes.iter().rev().find_map(|m| match m {
        TransactionMode::AccessMode(TransactionAccessMode::ReadOnly) => Some(true),
        TransactionMode::AccessMode(TransactionAccessMode::ReadWrite) => Some(false),
        TransactionMode::IsolationLevel(_) => None,
    })
}

/// The net transaction effect of `acc` followed by `next` (see [`Plan::tx`]).
fn fold_tx(acc: TxControl, next: TxControl) -> TxControl {
    match (acc, next) {
        (_, TxControl::None) => acc,
        (
            TxControl::Begin { .. },
            TxControl::SetTransaction {
                read_only: Some(ro),
            },
        ) => TxControl::Begin {
            read_only: Some(ro),
        },
        (TxControl::Begin { .. }, TxControl::SetTransaction { read_only: None }) => acc,
        (_, next) => next,
    }
}

/// Whether a query (and everything nested in it) is replica-safe.
fn query_is_read(query: &Query, opts: &ClassifyOptions) -> bool {
    query.visit(&mut ReadCheck { opts }).is_continue()
}

/// Breaks at the first thing that keeps a query off a replica.
struct ReadCheck<'a> {
    opts: &'a ClassifyOptions,
}

impl ReadCheck<'_> {
    fn check(&self, writes: bool) -> ControlFlow<()> {
        if writes {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    /// A function name writes if its last part is a writing function's name; a name whose last part
    /// is not an identifier cannot be checked, so it counts as writing.
    fn function_writes(&self, name: &ObjectName) -> bool {
        match name.0.last() {
            Some(ObjectNamePart::Identifier(ident)) => is_write_function(&ident.value, self.opts),
            _ => true,
        }
    }
}

impl Visitor for ReadCheck<'_> {
    type Break = ();

    /// Row locks, and a body that is itself INSERT/UPDATE/DELETE/MERGE (a data-modifying CTE, or
    /// `WITH ... INSERT`).
    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        self.check(
            !query.locks.is_empty()
                || matches!(
                    *query.body,
                    SetExpr::Insert(_)
                        | SetExpr::Update(_)
                        | SetExpr::Delete(_)
                        | SetExpr::Merge(_)
                ),
        )
    }

    /// `SELECT ... INTO newtable`.
    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        self.check(select.into.is_some())
    }

    /// The visit starts at a query, so any statement met is nested in it: data-modifying.
    fn pre_visit_statement(&mut self, _statement: &Statement) -> ControlFlow<()> {
        ControlFlow::Break(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        match expr {
            Expr::Function(f) => self.check(self.function_writes(&f.name)),
            _ => ControlFlow::Continue(()),
        }
    }

    /// Table functions: `FROM nextval('s')`, `LATERAL f(x)`.
    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => self.check(self.function_writes(name)),
            _ => ControlFlow::Continue(()),
        }
    }
}

/// Tokens that can add a level to a left-deep chain: everything but whitespace, literals, commas,
/// parentheses (their nesting is bounded by the parser) and semicolons.
fn counts_for_depth(token: &Token) -> bool {
    !matches!(
        token,
        Token::Whitespace(_)
            | Token::Comma
            | Token::LParen
            | Token::RParen
            | Token::SemiColon
            | Token::Number(..)
            | Token::Placeholder(_)
            | Token::SingleQuotedString(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::DollarQuotedString(_)
    )
}

/// The value of an unquoted word token, for keyword checks.
fn word<'t>(token: Option<&&'t Token>) -> Option<&'t str> {
    match token {
        Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.value.as_str()),
        _ => None,
    }
}

fn is_word(token: Option<&&Token>, kw: &str) -> bool {
    word(token).is_some_and(|w| w.eq_ignore_ascii_case(kw))
}

/// `FOR NO KEY UPDATE` or `FOR KEY SHARE` as consecutive words (comments between them allowed).
fn has_row_lock_words(sig: &[&Token]) -> bool {
    (0..sig.len()).any(|i| {
        let at = |j: usize, kw: &str| is_word(sig.get(i + j), kw);
        at(0, "for")
            && ((at(1, "no") && at(2, "key") && at(3, "update"))
                || (at(1, "key") && at(2, "share")))
    })
}

/// What can still be said about a text sqlparser could not parse: the transaction statements and
/// `TABLE t` it does not know, `PREPARE TRANSACTION` ending the transaction; else unparsed.
fn fallback(sig: &[&Token], hint: Option<Hint>) -> Plan {
    let mut end = sig.len();
    while end > 0 && matches!(sig[end - 1], Token::SemiColon) {
        end -= 1;
    }
    let stmt = &sig[..end];
    if stmt.iter().any(|t| matches!(t, Token::SemiColon)) {
        return Plan::unparsed(hint);
    }
    let known = |read: bool, tx: TxControl| Plan {
        read,
        writes: false,
        unparsed: false,
        hint,
        tx,
        local: false,
    };
    if let Some(tx) = transaction_statement(stmt) {
        return known(false, tx);
    }
    if is_table_statement(stmt) {
        return known(true, TxControl::None);
    }
    let mut plan = Plan::unparsed(hint);
    if is_word(stmt.first(), "prepare")
        && is_word(stmt.get(1), "transaction")
        && matches!(stmt.get(2), Some(Token::SingleQuotedString(_)))
        && stmt.len() == 3
    {
        plan.tx = TxControl::End;
    }
    plan
}

/// `BEGIN [WORK|TRANSACTION] [modes]`, `START TRANSACTION [modes]`, `SET TRANSACTION modes`,
/// `SET SESSION CHARACTERISTICS AS TRANSACTION modes`, where a mode may be `[NOT] DEFERRABLE`.
fn transaction_statement(stmt: &[&Token]) -> Option<TxControl> {
    let kw = |i: usize, k: &str| is_word(stmt.get(i), k);
    let (modes_at, make): (usize, fn(Option<bool>) -> TxControl) = if kw(0, "begin") {
        let at = if kw(1, "work") || kw(1, "transaction") {
            2
        } else {
            1
        };
        (at, |read_only| TxControl::Begin { read_only })
    } else if kw(0, "start") && kw(1, "transaction") {
        (2, |read_only| TxControl::Begin { read_only })
    } else if kw(0, "set") && kw(1, "transaction") {
        (2, |read_only| TxControl::SetTransaction { read_only })
    } else if kw(0, "set")
        && kw(1, "session")
        && kw(2, "characteristics")
        && kw(3, "as")
        && kw(4, "transaction")
    {
        (5, |_| TxControl::None)
    } else {
        return None;
    };
    let read_only = transaction_modes(&stmt[modes_at.min(stmt.len())..])?;
    Some(make(read_only))
}

/// `mode [[,] mode]...` to its access mode; None if anything else is there.
fn transaction_modes(toks: &[&Token]) -> Option<Option<bool>> {
    let kw = |i: usize, k: &str| is_word(toks.get(i), k);
    let mut read_only = None;
    let mut i = 0;
    while i < toks.len() {
        if i > 0 && matches!(toks[i], Token::Comma) {
            i += 1;
        }
        if kw(i, "read") && kw(i + 1, "only") {
            read_only = Some(true);
            i += 2;
        } else if kw(i, "read") && kw(i + 1, "write") {
            read_only = Some(false);
            i += 2;
        } else if kw(i, "deferrable") {
            i += 1;
        } else if kw(i, "not") && kw(i + 1, "deferrable") {
            i += 2;
        } else if kw(i, "isolation") && kw(i + 1, "level") {
            i += 2;
            let level = if kw(i, "serializable") {
                1
            } else if (kw(i, "repeatable") && kw(i + 1, "read"))
                || (kw(i, "read") && (kw(i + 1, "committed") || kw(i + 1, "uncommitted")))
            {
                2
            } else {
                return None;
            };
            i += level;
        } else {
            return None;
        }
    }
    Some(read_only)
}

/// `TABLE [ONLY] name[.name...] [*]`.
fn is_table_statement(stmt: &[&Token]) -> bool {
    if !is_word(stmt.first(), "table") {
        return false;
    }
    let mut i = 1;
    if is_word(stmt.get(i), "only") && matches!(stmt.get(i + 1), Some(Token::Word(_))) {
        i += 1;
    }
    loop {
        if !matches!(stmt.get(i), Some(Token::Word(_))) {
            return false;
        }
        i += 1;
        if matches!(stmt.get(i), Some(Token::Period)) {
            i += 1;
        } else {
            break;
        }
    }
    if matches!(stmt.get(i), Some(Token::Mul)) {
        i += 1;
    }
    i == stmt.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> ClassifyOptions {
        ClassifyOptions {
            write_functions: vec!["audit_log".into(), "app.bump_counter".into()],
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
        assert_read(
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM r) SELECT * FROM r",
        );
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
}
