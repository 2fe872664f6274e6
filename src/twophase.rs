//! Two-phase commit over shards, and the durable decision log that makes it survive a crash.
//!
//! Protocol (presumed abort): every participant shard runs `PREPARE TRANSACTION '<gid>'`; only when
//! all have prepared is `<gid> commit` appended to the decision log and flushed to disk (fsync);
//! then `COMMIT PREPARED '<gid>'` goes to every participant. A failure before the log write rolls
//! every prepared participant back. After a crash, [`recover`] looks at each shard primary's
//! `pg_prepared_xacts`: a transaction of this log with a commit record is committed, any other is
//! rolled back. So a transaction is committed on every shard or on none, whenever the proxy dies.
//!
//! Transaction ids are `shardgate_<log id>_<run>_<n>`: the log id is random, written at the top of
//! the log, so a proxy resolves only its own transactions, never another proxy's in flight; the run
//! is random per start of the proxy, so recovery (which runs while the proxy already serves
//! clients) resolves only what earlier runs left, never a transaction of this run between its
//! PREPARE and its decision.
//!
//! Owns: the log file and recovery. Driving PREPARE/COMMIT PREPARED on client connections is the
//! session's job (`Coordinator` gives it ids and records decisions).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TwoPhaseError {
    #[error("decision log {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("decision log {path} is not a shardgate decision log (first line: {first:?})")]
    NotALog { path: PathBuf, first: String },
    #[error("shard {shard} ({addr}): {message}")]
    Shard {
        shard: String,
        addr: String,
        message: String,
    },
}

const HEADER: &str = "shardgate decision log v1 id=";

/// The append-only, fsync'ed record of commit decisions.
pub struct DecisionLog {
    path: PathBuf,
    id: String,
    /// This run's part of the transaction ids.
    run: String,
    file: Mutex<File>,
    next: AtomicU64,
    committed: Mutex<HashSet<String>>,
}

impl DecisionLog {
    /// Opens the log at `path`, creating it (with a new random id) if it does not exist.
    pub fn open(path: &Path) -> Result<DecisionLog, TwoPhaseError> {
        let err = |source| TwoPhaseError::Log {
            path: path.to_path_buf(),
            source,
        };
        let (id, committed, count) = if path.exists() {
            let f = File::open(path).map_err(err)?;
            let mut lines = BufReader::new(f).lines();
            let first = lines.next().transpose().map_err(err)?.unwrap_or_default();
            let Some(id) = first.strip_prefix(HEADER) else {
                return Err(TwoPhaseError::NotALog {
                    path: path.to_path_buf(),
                    first,
                });
            };
            let mut committed = HashSet::new();
            let mut count = 0u64;
            for line in lines {
                let line = line.map_err(err)?;
                // A torn last line (crash mid-write) has no " commit" and counts as no decision.
                if let Some(gid) = line.strip_suffix(" commit") {
                    committed.insert(gid.to_string());
                    count += 1;
                }
            }
            (id.to_string(), committed, count)
        } else {
            let id = format!("{:016x}", rand::random::<u64>());
            let mut f = File::create(path).map_err(err)?;
            writeln!(f, "{HEADER}{id}").map_err(err)?;
            f.sync_all().map_err(err)?;
            (id, HashSet::new(), 0)
        };
        let mut file = OpenOptions::new().append(true).open(path).map_err(err)?;
        // A line torn by a crash must not swallow the next record.
        let ends_cleanly = std::fs::read(path)
            .map_err(err)?
            .last()
            .is_none_or(|b| *b == b'\n');
        if !ends_cleanly {
            file.write_all(b"\n").map_err(err)?;
            file.sync_data().map_err(err)?;
        }
        Ok(DecisionLog {
            path: path.to_path_buf(),
            id,
            run: format!("{:08x}", rand::random::<u32>()),
            file: Mutex::new(file),
            // Ids go on after the ones already used, so a restarted proxy never reuses one.
            next: AtomicU64::new(count + u64::from(rand::random::<u32>())),
            committed: Mutex::new(committed),
        })
    }

    /// This log's id (part of every transaction id it hands out).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A new transaction id, unique to this log.
    pub fn new_gid(&self) -> String {
        format!(
            "shardgate_{}_{}_{}",
            self.id,
            self.run,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Whether `gid` belongs to this run of the proxy (it may be in flight right now).
    pub fn is_this_run(&self, gid: &str) -> bool {
        gid.strip_prefix("shardgate_")
            .and_then(|rest| rest.strip_prefix(self.id.as_str()))
            .and_then(|rest| rest.strip_prefix('_'))
            .and_then(|rest| rest.strip_prefix(self.run.as_str()))
            .is_some_and(|rest| rest.starts_with('_'))
    }

    /// Whether `gid` was handed out by this log.
    pub fn owns(&self, gid: &str) -> bool {
        gid.strip_prefix("shardgate_")
            .and_then(|rest| rest.split_once('_'))
            .is_some_and(|(id, _)| id == self.id)
    }

    /// Durably records that `gid` commits: returns once it is on disk.
    pub fn record_commit(&self, gid: &str) -> Result<(), TwoPhaseError> {
        let err = |source| TwoPhaseError::Log {
            path: self.path.clone(),
            source,
        };
        let mut f = self.file.lock().expect("decision log lock");
        writeln!(f, "{gid} commit").map_err(err)?;
        f.sync_data().map_err(err)?;
        self.committed
            .lock()
            .expect("decision log lock")
            .insert(gid.to_string());
        Ok(())
    }

    /// Whether a commit of `gid` was recorded.
    pub fn is_committed(&self, gid: &str) -> bool {
        self.committed
            .lock()
            .expect("decision log lock")
            .contains(gid)
    }
}

/// A transaction id when no decision log is configured (`proxy.state_dir` empty): unique to this
/// process, never resolved by recovery (a crash between PREPARE and COMMIT PREPARED leaves it for
/// the operator, see the README).
pub fn ephemeral_gid() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static RUN: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(rand::random::<u32>);
    format!(
        "shardgate_nolog{run:08x}_{}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// What recovery did on one shard.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub committed: Vec<String>,
    pub rolled_back: Vec<String>,
}

/// Resolves this log's prepared transactions left on the server at `conninfo` (a shard primary,
/// as a role allowed to finish them): committed if the log says so, else rolled back.
pub async fn recover(
    log: &DecisionLog,
    shard: &str,
    config: &tokio_postgres::Config,
) -> Result<Recovered, TwoPhaseError> {
    let addr = format!("{:?}:{:?}", config.get_hosts(), config.get_ports());
    let fail = |message: String| TwoPhaseError::Shard {
        shard: shard.to_string(),
        addr: addr.clone(),
        message,
    };
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| fail(e.to_string()))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let rows = client
        .query(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND gid LIKE $1",
            &[&format!("shardgate\\_{}\\_%", log.id())],
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut done = Recovered::default();
    for row in rows {
        let gid: String = row.get(0);
        if !log.owns(&gid) || log.is_this_run(&gid) {
            continue;
        }
        let quoted = gid.replace('\'', "''");
        if log.is_committed(&gid) {
            client
                .batch_execute(&format!("COMMIT PREPARED '{quoted}'"))
                .await
                .map_err(|e| fail(format!("COMMIT PREPARED '{gid}': {e}")))?;
            done.committed.push(gid);
        } else {
            client
                .batch_execute(&format!("ROLLBACK PREPARED '{quoted}'"))
                .await
                .map_err(|e| fail(format!("ROLLBACK PREPARED '{gid}': {e}")))?;
            done.rolled_back.push(gid);
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.log");
        let log = DecisionLog::open(&path).unwrap();
        let a = log.new_gid();
        let b = log.new_gid();
        assert_ne!(a, b);
        assert!(log.owns(&a) && !log.owns("shardgate_other_1") && !log.owns("x"));
        assert!(log.is_this_run(&a), "{a}");
        log.record_commit(&a).unwrap();
        let id = log.id().to_string();
        drop(log);
        // A torn line from a crash mid-write is no decision.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(format!("{b} comm").as_bytes())
            .unwrap();
        let log = DecisionLog::open(&path).unwrap();
        assert_eq!(log.id(), id);
        assert!(
            log.owns(&a) && !log.is_this_run(&a),
            "a new run: {a} is an earlier run's"
        );
        assert!(log.is_committed(&a));
        assert!(!log.is_committed(&b));
        let c = log.new_gid();
        assert!(c != a && c != b && log.owns(&c));
        log.record_commit(&c).unwrap();
        drop(log);
        let log = DecisionLog::open(&path).unwrap();
        assert!(log.is_committed(&c), "the record after a torn line is kept");
    }

    #[test]
    fn a_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, "hello\n").unwrap();
        assert!(matches!(
            DecisionLog::open(&path),
            Err(TwoPhaseError::NotALog { .. })
        ));
    }
}
