//! The end of a transaction over several shards: ROLLBACK everywhere, or COMMIT — a plain one
//! when at most one shard wrote, else two-phase commit with the decision made durable in the
//! decision log (`crate::twophase`) between PREPARE TRANSACTION and COMMIT PREPARED.

use super::*;

/// The fail points the crash-recovery tests use: `SHARDGATE_FAILPOINT=before_decision` (die
/// after every participant prepared, before the decision is logged) or `after_decision` (die after
/// the decision is logged, before any COMMIT PREPARED).
fn failpoint(name: &str) {
    static POINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let point = POINT.get_or_init(|| std::env::var("SHARDGATE_FAILPOINT").ok());
    if point.as_deref() == Some(name) {
        eprintln!("shardgate: fail point {name}: exiting");
        std::process::abort();
    }
}

impl Session {
    /// COMMIT or ROLLBACK of a transaction over several shards; answers the group's frames.
    pub(super) async fn finish_multi(&mut self, commit: bool, g: &Group, frames: &[u8]) {
        // A commit over shards is not cancelled half way by query_timeout.
        self.stop_watchdog();
        let failed = self.multi.as_ref().is_some_and(|m| m.failed);
        let tag = if commit && !failed {
            if let Err(e) = self.commit_parts().await {
                // Everything was rolled back (or left to recovery); the error is the answer, in
                // either protocol.
                e.write_to(&mut self.cout);
                if let Some(m) = self.multi.as_mut() {
                    m.explicit = false;
                }
                return;
            }
            "COMMIT"
        } else {
            self.rollback_parts().await;
            "ROLLBACK"
        };
        if let Some(m) = self.multi.as_mut() {
            m.explicit = false;
            m.failed = false;
        }
        if g.is_query {
            be::write_command_complete(&mut self.cout, tag);
        } else {
            self.synthesize(frames, tag);
        }
    }

    /// Rolls back every part's transaction.
    pub(in crate::frontend::session) async fn rollback_parts(&mut self) {
        let Some(m) = self.multi.as_mut() else {
            return;
        };
        for p in &mut m.parts {
            let name = &self.live.config.shards[p.shard].name;
            if p.settle(name).await.is_err() {
                p.conn.broken = true;
            }
            if p.conn.tx_status != be::TX_IDLE && p.conn.run_internal("ROLLBACK").await.is_err() {
                p.conn.broken = true;
            }
            p.wrote = false;
        }
    }

    /// Commits every part's transaction: one writer with COMMIT, several with two-phase commit.
    pub(super) async fn commit_parts(&mut self) -> Result<(), SessionError> {
        let mut m = self.multi.take().expect("a fan-out is open");
        let r = self.commit_inner(&mut m).await;
        for p in &mut m.parts {
            p.wrote = false;
        }
        self.multi = Some(m);
        r
    }

    async fn commit_inner(&mut self, m: &mut Multi) -> Result<(), SessionError> {
        let lost = |p: &Part, e: crate::errors::BackendError| SessionError::lost(p.conn.addr, e);
        for p in &mut m.parts {
            p.settle(&self.live.config.shards[p.shard].name).await?;
        }
        // Shards that only read commit first; their outcome changes nothing.
        for p in m.parts.iter_mut().filter(|p| !p.wrote) {
            if p.conn.tx_status != be::TX_IDLE {
                p.conn
                    .run_internal("COMMIT")
                    .await
                    .map_err(|e| lost(p, e))?;
            }
        }
        let writers: Vec<usize> = (0..m.parts.len()).filter(|&i| m.parts[i].wrote).collect();
        if writers.len() <= 1 {
            for &i in &writers {
                let p = &mut m.parts[i];
                let r = p
                    .conn
                    .run_internal("COMMIT")
                    .await
                    .map_err(|e| lost(p, e))?;
                if let Some(e) = r.error {
                    return Err(SessionError::TwoPhase(e.to_string()));
                }
            }
            self.note_wal_positions(m, &writers).await;
            return Ok(());
        }
        let gid = match &self.worker.shared.decisions {
            Some(log) => log.new_gid(),
            None => crate::twophase::ephemeral_gid(),
        };
        let prepare = format!("PREPARE TRANSACTION '{gid}'");
        for &i in &writers {
            fe::write_query(&mut m.parts[i].conn.wbuf, &prepare);
        }
        let mut failure = None;
        let mut prepared = Vec::new();
        // Every participant prepares at once; then the answers are read.
        let mut sent = Vec::new();
        for &i in &writers {
            match m.parts[i].conn.send().await {
                Ok(()) => sent.push(i),
                Err(e) => {
                    failure.get_or_insert(e.to_string());
                }
            }
        }
        for &i in &sent {
            let p = &mut m.parts[i];
            match read_to_ready(&mut p.conn).await {
                Ok(None) => prepared.push(i),
                Ok(Some(e)) => {
                    failure.get_or_insert(format!(
                        "shard {}: {e}",
                        self.live.config.shards[p.shard].name
                    ));
                }
                Err(e) => {
                    failure.get_or_insert(e.to_string());
                }
            }
        }
        if let Some(reason) = failure {
            // Presumed abort: nothing was logged, so every participant rolls back.
            for &i in &writers {
                let p = &mut m.parts[i];
                let sql = if prepared.contains(&i) {
                    format!("ROLLBACK PREPARED '{gid}'")
                } else {
                    "ROLLBACK".to_string()
                };
                if p.conn.run_internal(&sql).await.is_err() {
                    p.conn.broken = true;
                }
            }
            return Err(SessionError::TwoPhase(format!(
                "{reason}; the transaction was rolled back on every shard"
            )));
        }
        failpoint("before_decision");
        // The fsync waits on a blocking thread, not on this worker's event loop.
        let recorded = match self.worker.shared.decisions.clone() {
            Some(log) => {
                let g = gid.clone();
                tokio::task::spawn_blocking(move || log.record_commit(&g))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
            }
            None => Ok(()),
        };
        if let Err(e) = recorded {
            for &i in &writers {
                let _ = m.parts[i]
                    .conn
                    .run_internal(&format!("ROLLBACK PREPARED '{gid}'"))
                    .await;
            }
            return Err(SessionError::TwoPhase(format!(
                "could not record the commit decision ({e}); the transaction was rolled back on every shard"
            )));
        }
        failpoint("after_decision");
        let commit = format!("COMMIT PREPARED '{gid}'");
        for &i in &writers {
            let p = &mut m.parts[i];
            fe::write_query(&mut p.conn.wbuf, &commit);
            if p.conn.send().await.is_err() {
                p.conn.broken = true;
            }
        }
        for &i in &writers {
            let p = &mut m.parts[i];
            let result = if p.conn.broken {
                Err("the connection was lost".to_string())
            } else {
                match read_to_ready(&mut p.conn).await {
                    Ok(None) => Ok(()),
                    Ok(Some(e)) => Err(e),
                    Err(e) => Err(e.to_string()),
                }
            };
            if let Err(e) = result {
                // Decided: the next start of shardgate commits it (recovery).
                p.conn.broken = true;
                warn!(gid = %gid, shard = %self.live.config.shards[p.shard].name, error = %e, "COMMIT PREPARED failed; the decision is logged and recovery at the next start will finish it");
            }
        }
        self.note_wal_positions(m, &writers).await;
        Ok(())
    }

    /// Read-your-writes after a commit on these parts: their WAL positions.
    async fn note_wal_positions(&mut self, m: &mut Multi, which: &[usize]) {
        if !self.live.config.routing.read_your_writes {
            return;
        }
        for &i in which {
            let p = &mut m.parts[i];
            if !self.live.topology.shards[p.shard].has_replicas() || p.conn.broken {
                continue;
            }
            if let Ok(r) = p
                .conn
                .run_internal("SELECT pg_current_wal_insert_lsn()")
                .await
                && let Some(Some(text)) = r.rows.first().and_then(|row| row.first())
                && let Some(lsn) = route::parse_lsn(text.as_bytes())
            {
                let slot = &mut self.min_lsn[p.shard];
                *slot = (*slot).max(lsn);
            }
        }
    }
}

/// Reads a simple query's answer to its ReadyForQuery: the first error, if any.
async fn read_to_ready(
    conn: &mut crate::backend::BackendConn,
) -> Result<Option<String>, crate::errors::BackendError> {
    let mut error = None;
    conn.read_answer("two-phase commit", |tag, body| {
        if tag == be::ERROR_RESPONSE && error.is_none() {
            error = Some(
                be::error_field(&body, b'M')
                    .map(|m| String::from_utf8_lossy(m).into_owned())
                    .unwrap_or_default(),
            );
        }
        false
    })
    .await?;
    Ok(error)
}
