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

use super::hint::{self, Hint, ShardHint};
use super::local;
use super::shard::{self, ShardPlan, ShardScope};
use crate::config::TableConfig;

mod fallback;
use fallback::{counts_for_depth, fallback, has_row_lock_words};

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
    /// With sharding on (`ClassifyOptions::sharding`): the shard plan of each statement that reads
    /// or writes data (statements that only touch session or transaction state have none, and go
    /// wherever the session is). Empty: any shard.
    pub shards: Vec<ShardPlan>,
    /// `/* shardgate: shard=NAME */` or `key=VALUE` as the leading comment.
    pub shard_hint: Option<ShardHint>,
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
            shards: Vec::new(),
            shard_hint: None,
        }
    }
}

/// Classification settings from the configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClassifyOptions {
    /// Extra names of functions that write (config `routing.write_functions`), lowercase. A
    /// schema-qualified entry matches on its last part.
    pub write_functions: Vec<String>,
    /// More than one shard: plan which shards each statement touches.
    pub sharding: bool,
    /// The sharded tables (`[[tables]]`).
    pub tables: Vec<TableConfig>,
    /// Tables every shard holds whole (`[[tables]] replicated = true`), lowercase.
    pub replicated: Vec<String>,
}

impl ClassifyOptions {
    pub fn from_config(config: &crate::config::Config) -> ClassifyOptions {
        ClassifyOptions {
            write_functions: config
                .routing
                .write_functions
                .iter()
                .map(|f| f.trim().to_ascii_lowercase())
                .collect(),
            // One shard holds every row: nothing to route by key.
            sharding: config.shards.len() > 1,
            tables: config.tables.clone(),
            replicated: config.replicated.clone(),
        }
    }
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
    let (hint, shard_hint) = hint::leading_all(sql).unwrap_or((None, None));
    let mut plan = classify_text(sql, opts, hint);
    if opts.sharding {
        plan.shard_hint = shard_hint;
        if plan.unparsed && !plan.local {
            plan.shards = vec![unparsed_shard_plan(sql, &opts.tables)];
        }
    }
    plan
}

/// The shard plan of a text sqlparser cannot read: every shard's primary, unless it looks like
/// reading or changing rows of a sharded table, which cannot be placed without its key.
fn unparsed_shard_plan(sql: &str, tables: &[TableConfig]) -> ShardPlan {
    let mut p = ShardPlan {
        scope: ShardScope::Unparsed,
        ..ShardPlan::unsharded(true)
    };
    // COPY ... FROM STDIN into a sharded table is split by key, whatever options sqlparser refuses.
    if let Some(c) = shard::copy_in(sql)
        && let Some(t) = tables
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(&c.table))
    {
        p.scope = ShardScope::AllShards {
            table: t.name.clone(),
        };
        return p;
    }
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        return p;
    };
    let words: Vec<&str> = tokens
        .iter()
        .filter_map(|t| match t {
            Token::Word(w) => Some(w.value.as_str()),
            _ => None,
        })
        .collect();
    let dml = words.first().is_some_and(|w| {
        [
            "insert", "update", "delete", "merge", "select", "with", "copy",
        ]
        .iter()
        .any(|k| w.eq_ignore_ascii_case(k))
    });
    if dml
        && let Some(t) = tables
            .iter()
            .find(|t| words.iter().any(|w| w.eq_ignore_ascii_case(&t.name)))
    {
        p.unparsed_table = Some(t.name.clone());
    }
    p
}

fn classify_text(sql: &str, opts: &ClassifyOptions, hint: Option<Hint>) -> Plan {
    if local::parse(sql).is_some() {
        return Plan {
            local: true,
            writes: false,
            unparsed: false,
            ..Plan::unparsed(hint)
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
        ..Plan::unparsed(hint)
    };
    for stmt in &statements {
        let class = statement(stmt, opts);
        if opts.sharding && (class.read || class.writes) {
            let mut p = shard::plan_statement(stmt, sql, &opts.tables);
            p.replicated_only = matches!(p.scope, ShardScope::Unsharded)
                && !p.write
                && reads_replicated_only(stmt, &opts.replicated);
            plan.shards.push(p);
        }
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

/// Whether every table a statement names is a replicated one (and it names at least one).
fn reads_replicated_only(stmt: &Statement, replicated: &[String]) -> bool {
    if replicated.is_empty() {
        return false;
    }
    struct Tables<'r> {
        replicated: &'r [String],
        any: bool,
        other: bool,
    }
    impl Visitor for Tables<'_> {
        type Break = ();
        fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
            let name =
                r.0.last()
                    .and_then(|p| p.as_ident())
                    .map(|i| i.value.to_ascii_lowercase())
                    .unwrap_or_default();
            if self.replicated.contains(&name) {
                self.any = true;
                ControlFlow::Continue(())
            } else {
                self.other = true;
                ControlFlow::Break(())
            }
        }
    }
    let mut t = Tables {
        replicated,
        any: false,
        other: false,
    };
    let _ = stmt.visit(&mut t);
    t.any && !t.other
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

#[cfg(test)]
mod tests;
