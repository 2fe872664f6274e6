//! The fan-out path: a unit of client messages that needs several shards, or any unit of a
//! transaction that already spans several.
//!
//! The session holds one connection per shard it touched (`Multi::parts`). A unit is cut into
//! groups (a simple Query; or the extended messages up to and including each Execute); each group
//! goes, with a Sync of the proxy's own, to the shards it needs, and the answers are merged into
//! one: the first shard's descriptions (ParseComplete, RowDescription, ...), the rows of every
//! shard in shard order, the CommandComplete counts summed, the first error. The client's own Sync
//! is answered once, at the end. After an error the rest of the unit is skipped, as a server would.
//!
//! Atomicity: a unit outside a transaction block that writes on several shards runs in a
//! transaction on each and commits with two-phase commit; a transaction block that wrote on several
//! shards commits the same way at COMMIT (`commit.rs`): PREPARE TRANSACTION everywhere, the decision
//! made durable in the decision log (`twophase`), then COMMIT PREPARED. One writing shard commits
//! with a plain COMMIT. Statements that cannot run in a transaction block (CREATE INDEX
//! CONCURRENTLY, VACUUM, ...) are sent to each shard as they are, without that guarantee.
//!
//! A single SELECT over a sharded table is read from its shards side by side and merged as its
//! rows come (`merged.rs`, `crate::merge`): ORDER BY, LIMIT/OFFSET, aggregates, HAVING, DISTINCT
//! give what one database would. Other groups (writes, several statements) are gathered, then
//! answered as one.

//! Files: `groups.rs` (cutting a unit into groups, sending them, rewriting their frames per
//! shard), `merge.rs` (gathered answers of several shards into one), `merged.rs` (SELECTs merged
//! as their rows come), `commit.rs` (COMMIT/ROLLBACK over the
//! shards, two-phase commit), `copy.rs` (COPY FROM STDIN split by key).

mod commit;
mod copy;
mod groups;
mod merge;
mod merged;

pub(in crate::frontend::session) use copy::CopySplit;

use super::*;
use crate::router::shard::{ShardSet, Shards};
use groups::{Group, last_tag, runs_in_block};

/// One shard's connection in a fan-out.
pub(super) struct Part {
    shard: usize,
    conn: Checkout,
    _busy: BusyGuard,
    /// A statement that may write went here in this transaction.
    wrote: bool,
    /// The connection has the client's current unnamed statement.
    has_unnamed: bool,
    /// A BEGIN was queued on the connection; its answer is still to be read.
    begin_pending: bool,
}

impl Part {
    /// Sends what is queued and reads the answer of a queued BEGIN, if any: after this the next
    /// answer on the connection is that of the part's request.
    async fn settle(&mut self, shard_name: &str) -> Result<(), SessionError> {
        if !self.conn.wbuf.is_empty() {
            self.conn
                .send()
                .await
                .map_err(|e| SessionError::lost(self.conn.addr, e))?;
        }
        if !std::mem::take(&mut self.begin_pending) {
            return Ok(());
        }
        let mut error = None;
        self.conn
            .read_answer("BEGIN", |tag, body| {
                if tag == be::ERROR_RESPONSE && error.is_none() {
                    error = Some(crate::errors::ServerError { body });
                }
                false
            })
            .await
            .map_err(|e| SessionError::lost(self.conn.addr, e))?;
        match error {
            Some(e) => Err(SessionError::CrossShard(format!(
                "could not open the transaction on shard {shard_name}: {e}"
            ))),
            None => Ok(()),
        }
    }
}

/// The connections of a transaction (or unit) over several shards.
pub(super) struct Multi {
    parts: Vec<Part>,
    /// The client's transaction block is open.
    explicit: bool,
    /// What opens the transaction on a shard joining it.
    begin_sql: String,
    /// A statement failed in the transaction block: only ROLLBACK is accepted.
    failed: bool,
    /// A statement may have changed session state (SET, ...): read it back before the
    /// connections go back to the pool.
    dirty: bool,
}

impl Multi {
    /// A statement failed: in a transaction block, only ROLLBACK is accepted now.
    fn fail(&mut self) {
        self.failed = self.explicit;
    }

    pub(super) fn status(&self) -> u8 {
        if !self.explicit {
            be::TX_IDLE
        } else if self.failed {
            be::TX_FAILED
        } else {
            be::TX_IN_BLOCK
        }
    }
}

/// `proxy.query_timeout` for a unit over several shards: after `limit`, every server of the
/// unit is asked to cancel (each answers 57014, passed on to the client).
fn watchdog(
    slot: Arc<crate::cancel::CancelSlot>,
    limit: std::time::Duration,
) -> (tokio::task::JoinHandle<()>, Rc<std::cell::Cell<bool>>) {
    let fired = Rc::new(std::cell::Cell::new(false));
    let flag = fired.clone();
    let task = tokio::task::spawn_local(async move {
        tokio::time::sleep(limit).await;
        flag.set(true);
        let targets = slot.targets();
        warn!(servers = targets.len(), timeout = ?limit, "query_timeout: cancelling a request over several shards");
        for t in targets {
            if let Err(e) = crate::backend::send_cancel(t.addr, t.pid, t.secret).await {
                warn!(server = %t.addr, error = %e, "could not send the cancel for query_timeout");
            }
        }
    });
    (task, fired)
}

impl Session {
    /// Moves the held connection (in a transaction, nothing owed) into a fan-out.
    pub(super) fn escalate(&mut self) {
        let Some(conn) = self.backend.take() else {
            return;
        };
        self.forget_request_timing();
        self.disarm_retry();
        self.cancel.set(None);
        let explicit = conn.tx_status != be::TX_IDLE || self.begun;
        let has_unnamed = self.unnamed_on == Some(conn.id);
        let busy = self.held.take().expect("a held connection has its guard");
        let mut conn = conn;
        if !explicit && self.pinned {
            // Session state that cannot follow the client: close rather than pool it.
            conn.broken = true;
        }
        let part = Part {
            shard: self.shard_idx,
            conn,
            _busy: busy,
            wrote: self.tx_wrote,
            has_unnamed,
            begin_pending: false,
        };
        let failed = part.conn.tx_status == be::TX_FAILED;
        self.multi = Some(Box::new(Multi {
            parts: vec![part],
            explicit,
            begin_sql: self.begin_sql.clone(),
            failed,
            dirty: std::mem::take(&mut self.dirty),
        }));
        self.begun = false;
        self.unnamed_on = None;
    }

    /// Runs one unit over several shards; the unit is `unit` (whole frames).
    pub(super) async fn run_fanout(&mut self, unit: &[u8], shards: Shards) -> Step {
        self.fanout_started = Instant::now();
        self.stop_watchdog();
        self.run_fanout_unit(unit, shards).await
    }

    /// Stops the unit's `query_timeout` timer (before a commit over shards, which must not be
    /// cancelled half way, and when the unit is answered), remembering whether it fired.
    pub(super) fn stop_watchdog(&mut self) {
        if let Some((timer, fired)) = self.fanout_watchdog.take() {
            timer.abort();
            self.fanout_fired |= fired.get();
        }
    }

    /// Adds what the unit's shards answered to their servers' statistics.
    fn count_fanout(&mut self) {
        let started = self.fanout_started;
        // The unit is answered: its query timer stops. If it fired, the shards were asked to
        // cancel; their connections are closed rather than pooled, so no late cancel can reach
        // another client's statement.
        self.stop_watchdog();
        let fired = std::mem::take(&mut self.fanout_fired);
        let Some(m) = self.multi.as_mut() else {
            return;
        };
        if fired {
            for p in &mut m.parts {
                p.conn.broken = true;
            }
        }
        let n = self.live.config.shards.len();
        let kind = if m.parts.len() >= n {
            crate::topology::stats::RouteKind::Broadcast
        } else {
            crate::topology::stats::RouteKind::Multi
        };
        let idle = !m.explicit;
        let took = started.elapsed();
        let worker = self.worker.index;
        for p in &mut m.parts {
            let stats = &p._busy.server().stats;
            let (sent, received) = std::mem::take(&mut p.conn.unreported);
            if sent == 0 && received == 0 {
                // Not part of this unit.
                continue;
            }
            stats.sent(worker, sent as usize);
            stats.received(worker, received as usize);
            stats.answered(worker, kind, Some(took), idle);
        }
    }

    async fn run_fanout_unit(&mut self, unit: &[u8], shards: Shards) -> Step {
        let n = self.live.config.shards.len();
        if self.multi.is_none() {
            let explicit = self.deferred_begin.is_some();
            self.multi = Some(Box::new(Multi {
                parts: Vec::new(),
                explicit,
                begin_sql: self.begin_sql.clone(),
                failed: false,
                dirty: false,
            }));
        }
        if let Some(begin) = self.deferred_begin.take() {
            let text = String::from_utf8_lossy(fe::query_text(&begin[5..])).into_owned();
            let m = self.multi.as_mut().expect("set above");
            m.begin_sql = text;
            m.explicit = true;
        }
        let groups = match self.groups(unit, shards) {
            Ok(g) => g,
            Err(e) => {
                self.fanout_error(&e);
                return self.after_unit(unit).await;
            }
        };
        if let Some(g) = groups.iter().find(|g| g.executes)
            && let Some(p) = &g.plan
            && p.shard_hint.is_none()
            && self.shard_pin.is_none()
            && let Some(c) = std::str::from_utf8(&g.text)
                .ok()
                .and_then(crate::router::shard::copy_in)
        {
            // Into a sharded table: split by key; into any other: every row to every shard.
            let frames = (!g.is_query).then(|| unit[g.start..g.end].to_vec());
            return self.start_copy_split(&g.text.clone(), frames, c).await;
        }
        // The whole unit's reach: writes and shards decide the servers and the wrapping.
        let mut reach = ShardSet::default();
        let mut writes = false;
        let mut transactional = true;
        for g in &groups {
            reach = reach.union(self.group_targets(g, n));
            if let Some(p) = &g.plan {
                writes |= p.writes;
                transactional &= runs_in_block(&g.text);
            }
        }
        let explicit = self.multi.as_ref().expect("set").explicit;
        let wrap = !explicit && writes && reach.len() > 1 && transactional;
        let want = if explicit || writes || self.session_mode {
            route::Want::Primary
        } else {
            route::Want::Read
        };
        let begin = if wrap {
            Some("BEGIN".to_string())
        } else if explicit {
            Some(self.multi.as_ref().expect("set").begin_sql.clone())
        } else {
            None
        };
        let mut failed = self.multi.as_ref().expect("set").failed;
        for g in &groups {
            let ends = g
                .plan
                .as_ref()
                .is_some_and(|p| matches!(p.tx, TxControl::End));
            if failed && !(ends && g.executes) {
                if self.multi.as_ref().is_some_and(|m| m.failed) {
                    // A transaction block already failed: as Postgres answers.
                    SessionError::InFailedTransaction.write_to(&mut self.cout);
                }
                break;
            }
            if let Some(p) = &g.plan
                && g.executes
                && matches!(p.tx, TxControl::End)
                && explicit
            {
                let rollback = client::rolls_back(&g.text);
                self.finish_multi(!rollback, g, &unit[g.start..g.end]).await;
                failed = self.multi.as_ref().is_some_and(|m| m.failed);
                continue;
            }
            if let Some(p) = &g.plan
                && g.executes
                && matches!(p.tx, TxControl::Begin { .. })
            {
                let m = self.multi.as_mut().expect("set");
                if !m.explicit {
                    m.explicit = true;
                    m.begin_sql = String::from_utf8_lossy(&g.text).into_owned();
                    if m.parts.is_empty() {
                        self.synthesize(&unit[g.start..g.end], "BEGIN");
                        continue;
                    }
                }
            }
            let targets = self.group_targets(g, n);
            if let Err(e) = self.ensure_parts(targets, want, begin.as_deref()).await {
                self.fanout_error(&e);
                failed = true;
                break;
            }
            match self.run_group(g, &unit[g.start..g.end], targets).await {
                Ok(ok) => failed = !ok,
                Err(e) => {
                    self.fanout_error(&e);
                    failed = true;
                }
            }
        }
        if wrap {
            self.stop_watchdog();
            if failed {
                self.rollback_parts().await;
            } else if let Err(e) = self.commit_parts().await {
                self.fanout_error(&e);
            }
        } else if failed && let Some(m) = self.multi.as_mut() {
            m.failed = m.explicit;
        }
        self.after_unit(unit).await
    }

    /// Answers the unit's Sync (or Query) and gives the connections back when no transaction is open.
    async fn after_unit(&mut self, unit: &[u8]) -> Step {
        self.count_fanout();
        let last = last_tag(unit);
        if matches!(last, Some(fe::SYNC) | Some(fe::QUERY)) {
            let status = self.multi.as_ref().map_or(be::TX_IDLE, |m| m.status());
            be::write_ready_for_query(&mut self.cout, status);
        }
        let open = self.multi.as_ref().is_some_and(|m| m.explicit);
        if !open && !self.session_mode {
            self.release_parts().await;
        }
        Ok(Flow::Continue)
    }

    /// Gives every fan-out connection back (after reading session state if it may have changed).
    pub(super) async fn release_parts(&mut self) {
        let Some(mut m) = self.multi.take() else {
            return;
        };
        self.cancel.set_fanout(Vec::new());
        self.info
            .set(crate::frontend::clients::ClientState::Idle, None);
        if std::mem::take(&mut m.dirty) {
            for p in &mut m.parts {
                if !p.conn.broken && p.conn.tx_status == be::TX_IDLE {
                    self.capture_on(&mut p.conn).await;
                }
            }
            if self.pinned {
                // Session state that cannot move (temp tables, LISTEN, ...): the client keeps
                // these connections, as it would keep one on a single shard.
                self.multi = Some(m);
                return;
            }
        }
        for mut p in m.parts {
            if p.conn.tx_status != be::TX_IDLE
                || !p.conn.rbuf.is_empty()
                || !p.conn.wbuf.is_empty()
                || p.begin_pending
            {
                p.conn.broken = true;
            }
            if p.conn.broken || p.conn.prepared.len() > MAX_PREPARED_PER_CONN {
                drop(Checkout::take(p.conn));
            }
        }
    }

    /// The client is gone: every fan-out connection is closed (which rolls back what was open).
    pub(super) fn drop_parts(&mut self) {
        self.cancel.set_fanout(Vec::new());
        if let Some(m) = self.multi.take() {
            for p in m.parts {
                drop(Checkout::take(p.conn));
            }
        }
    }

    /// The shards a group goes to.
    fn group_targets(&self, g: &Group, n: usize) -> ShardSet {
        let parts: ShardSet = self.multi.as_ref().map_or(ShardSet::default(), |m| {
            let mut s = ShardSet::default();
            for p in &m.parts {
                s.insert(p.shard);
            }
            s
        });
        match g.shards {
            Shards::Set(s) => s,
            Shards::All => ShardSet::all(n),
            Shards::Any => {
                let state_only = g
                    .plan
                    .as_ref()
                    .is_some_and(|p| p.shards.is_empty() && !p.read && !p.writes && !p.unparsed);
                if state_only && !parts.is_empty() {
                    // SET, SAVEPOINT, ...: every shard of the transaction.
                    parts
                } else if let Some(first) = parts.iter().next() {
                    ShardSet::one(first)
                } else {
                    ShardSet::one(self.default_shard())
                }
            }
        }
    }

    /// Takes a connection on each target shard that has none yet; `begin` opens a transaction there.
    async fn ensure_parts(
        &mut self,
        targets: ShardSet,
        want: route::Want,
        begin: Option<&str>,
    ) -> Result<(), SessionError> {
        if self.multi.as_ref().expect("set").parts.is_empty() {
            let all: Vec<usize> = targets.iter().collect();
            self.hold_if_paused(&all, true).await;
        }
        for shard in targets.iter() {
            if self
                .multi
                .as_ref()
                .expect("set")
                .parts
                .iter()
                .any(|p| p.shard == shard)
            {
                continue;
            }
            if want == route::Want::Primary {
                self.wait_for_primary(shard, None).await?;
            }
            let server = self.pick_server_on(shard, want, None);
            let mut conn = self.checkout_conn(shard, server.addr).await?;
            // The BEGIN goes out with the part's first request; its answer is read then (`settle`).
            let begin_pending = begin.is_some();
            if let Some(sql) = begin {
                fe::write_query(&mut conn.wbuf, sql);
            }
            let busy = server.enter();
            let m = self.multi.as_mut().expect("set");
            m.parts.push(Part {
                shard,
                conn,
                _busy: busy,
                wrote: false,
                has_unnamed: false,
                begin_pending,
            });
            m.parts.sort_by_key(|p| p.shard);
            self.info
                .set(crate::frontend::clients::ClientState::Active, Some(None));
        }
        // The unit's query_timeout runs from its first connection on (not while it waited for
        // them).
        let limit = self.live.config.proxy.query_timeout;
        if !limit.is_zero() && self.fanout_watchdog.is_none() {
            self.fanout_watchdog = Some(watchdog(self.cancel.clone(), limit));
        }
        self.cancel.set_fanout(
            self.multi
                .as_ref()
                .expect("set")
                .parts
                .iter()
                .map(|p| CancelTarget {
                    addr: p.conn.addr,
                    pid: p.conn.pid,
                    secret: p.conn.secret,
                })
                .collect(),
        );
        Ok(())
    }

    fn fail_multi(&mut self) {
        if let Some(m) = self.multi.as_mut() {
            m.fail();
        }
    }

    /// An error for the whole unit (no server saw it, or a connection was lost).
    fn fanout_error(&mut self, e: &SessionError) {
        debug!(error = %e, "fan-out failed");
        e.write_to(&mut self.cout);
        if let Some(m) = self.multi.as_mut() {
            m.parts.retain(|p| !p.conn.broken);
            if m.explicit {
                m.failed = true;
            }
        }
    }
}
