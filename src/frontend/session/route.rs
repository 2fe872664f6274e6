//! Where the session's next request goes: the routing rules applied to a statement's plan, the
//! server a read is balanced to, a read retried on another server when its replica fails before
//! answering, and read-your-writes (the WAL position of the client's last commit).
//!
//! The rules, in order: a `/* shardgate: primary|replica */` comment; `SET shardgate.target`;
//! session pooling → the primary; BEGIN → the primary unless the transaction is read-only; a read
//! (see `router::classify`) → balanced over the replicas; anything else → the primary. While a
//! connection is held (a transaction, a pipeline) everything goes to it, except that a write
//! arriving behind reads on a replica waits for that connection to be given back.

use super::*;
use crate::config::FailoverMode;
use crate::frontend::clients::ClientState;
use crate::topology::Role;
use std::sync::atomic::Ordering;

/// `SET shardgate.target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Auto,
    Primary,
    Replica,
}

impl Target {
    pub(crate) fn parse(value: &str) -> Option<Target> {
        match value.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(Target::Auto),
            "primary" => Some(Target::Primary),
            "replica" => Some(Target::Replica),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Target::Auto => "auto",
            Target::Primary => "primary",
            Target::Replica => "replica",
        }
    }
}

/// What kind of server a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    Primary,
    Read,
}

/// What `ensure_backend` did.
pub(super) enum Got {
    /// A connection is held for the request.
    Ready,
    /// No connection: the client got the error; the message is dropped.
    Dropped,
    /// The held connection is the wrong kind: wait until it is given back.
    Wait,
}

/// Biggest request kept for a retry.
const RETRY_LIMIT: usize = 64 * 1024;

/// A read sent to a replica, kept until the first byte of its answer.
#[derive(Default)]
pub(super) struct Retry {
    /// The client frames handled since the connection was taken.
    frames: BytesMut,
    armed: bool,
    /// The replica the request went to.
    server: Option<ServerAddr>,
    /// Answer frames that only describe the answer (ParseComplete, RowDescription, ...), held back
    /// from the client while the request may still move.
    held: BytesMut,
    /// After a failure: the server to leave out of the next choice.
    pub(super) exclude: Option<ServerAddr>,
    /// After a failure: `frames` are back in the client buffer and must be handled again.
    pub(super) now: bool,
}

impl Retry {
    pub(super) fn arm(&mut self, server: ServerAddr) {
        self.frames.clear();
        self.armed = true;
        self.server = Some(server);
    }

    /// Puts the kept frames back in front of the client's unread input, to be routed again away
    /// from the failed server. Returns false when nothing was kept.
    pub(super) fn put_back(&mut self, cin: &mut BytesMut) -> bool {
        if !self.armed {
            return false;
        }
        let mut frames = std::mem::take(&mut self.frames);
        frames.extend_from_slice(cin);
        *cin = frames;
        self.held.clear();
        self.armed = false;
        self.exclude = self.server.take();
        self.now = true;
        true
    }

    /// Ends the chance of a retry; returns the held-back answer frames, which now go to the
    /// client (use `Session::disarm_retry`).
    #[must_use]
    fn disarm(&mut self) -> Option<BytesMut> {
        if !self.armed {
            return None;
        }
        self.armed = false;
        self.frames.clear();
        if self.frames.capacity() > RETRY_LIMIT {
            self.frames = BytesMut::new();
        }
        (!self.held.is_empty()).then(|| self.held.split())
    }

    pub(super) fn hold(&mut self, frame: &[u8]) {
        self.held.extend_from_slice(frame);
    }

    pub(super) fn is_armed(&self) -> bool {
        self.armed
    }

    /// Keeps a frame the held connection was sent. Returns false for a frame that cannot simply
    /// be sent again (a named Parse, COPY data, a function call, too much): the caller then ends
    /// the chance of a retry.
    pub(super) fn record(&mut self, tag: u8, frame: &[u8]) -> bool {
        if !self.armed {
            return true;
        }
        let replayable = match tag {
            fe::QUERY | fe::BIND | fe::DESCRIBE | fe::EXECUTE | fe::SYNC | fe::FLUSH => true,
            fe::PARSE => fe::parse_name(&frame[5..]).is_ok_and(|(name, _)| name.is_empty()),
            _ => false,
        };
        if !replayable || self.frames.len() + frame.len() > RETRY_LIMIT {
            return false;
        }
        self.frames.extend_from_slice(frame);
        true
    }
}

/// Answer frames that describe an answer without being part of its result: a read that failed
/// after only these may still go to another server.
pub(super) fn describes_only(tag: u8) -> bool {
    matches!(
        tag,
        be::PARSE_COMPLETE
            | be::BIND_COMPLETE
            | be::ROW_DESCRIPTION
            | be::PARAMETER_DESCRIPTION
            | be::NO_DATA
    )
}

/// The internal query that reads the WAL position after a client's write transaction.
const WAL_POSITION_SQL: &str = "SELECT pg_current_wal_insert_lsn()";

/// `X/Y` (a `pg_lsn` as text) as a number.
pub(super) fn parse_lsn(text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?;
    let (hi, lo) = text.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

impl Session {
    /// Ends the chance of a retry; what was held back goes to the client.
    pub(super) fn disarm_retry(&mut self) {
        if let Some(held) = self.retry.disarm() {
            self.cout.extend_from_slice(&held);
        }
    }

    /// The routing plan of a SQL text, from this worker's cache, without counting it (for a
    /// look ahead at a statement that is counted when it is handled).
    pub(super) fn cached_plan(&self, text: &[u8]) -> Arc<Plan> {
        self.worker.routes.borrow_mut().plan(text)
    }

    /// The routing plan of a SQL text about to be handled, from this worker's cache; an
    /// unparsed text is counted.
    pub(super) fn plan_text(&self, text: &[u8]) -> Arc<Plan> {
        let plan = self.cached_plan(text);
        if plan.unparsed {
            self.worker
                .shared
                .unparsed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        plan
    }

    /// What kind of server a statement with this plan needs when no connection is held.
    pub(super) fn want(&self, plan: &Plan) -> Want {
        match plan.hint {
            Some(Hint::Primary) => return Want::Primary,
            Some(Hint::Replica) => return Want::Read,
            None => {}
        }
        match self.target {
            Target::Primary => return Want::Primary,
            Target::Replica => return Want::Read,
            Target::Auto => {}
        }
        if self.session_mode {
            return Want::Primary;
        }
        if self.deferred_begin.is_some() {
            // The statement after a plain BEGIN: only SET TRANSACTION READ ONLY makes the
            // transaction one a replica can run.
            return if matches!(
                plan.tx,
                TxControl::SetTransaction {
                    read_only: Some(true)
                }
            ) {
                Want::Read
            } else {
                Want::Primary
            };
        }
        match plan.tx {
            TxControl::Begin { read_only } => {
                if read_only.unwrap_or_else(|| self.default_read_only()) {
                    Want::Read
                } else {
                    Want::Primary
                }
            }
            _ if plan.read => Want::Read,
            _ => Want::Primary,
        }
    }

    /// `default_transaction_read_only` is on for this client.
    pub(super) fn default_read_only(&self) -> bool {
        self.settings
            .get("default_transaction_read_only")
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "on" | "true" | "yes" | "1"))
    }

    /// Whether the held connection may be given up for one of another kind: nothing of a
    /// transaction, a pinned session or an open segment holds it.
    pub(super) fn can_switch(&self) -> bool {
        !self.session_mode
            && !self.pinned
            && !self.in_segment
            && !self.begun
            && self
                .backend
                .as_ref()
                .is_some_and(|b| b.tx_status == be::TX_IDLE)
    }

    /// The first shard's primary now (its map primary while a failover runs).
    pub(super) fn primary_addr(&self) -> ServerAddr {
        let s = &self.live.topology.shards[0];
        s.primary()
            .unwrap_or_else(|| s.servers().next().expect("a shard has servers"))
            .addr
    }

    pub(super) fn held_role(&self) -> Option<Role> {
        self.held.as_ref().map(|g| g.server().role())
    }

    /// The server a request that wants `want` goes to now, on the unit's shard.
    pub(super) fn pick_server(&self, want: Want, exclude: Option<ServerAddr>) -> Arc<ServerState> {
        self.pick_server_on(self.unit_shard, want, exclude)
    }

    /// The server a request goes to on `shard`.
    pub(super) fn pick_server_on(
        &self,
        shard: usize,
        want: Want,
        exclude: Option<ServerAddr>,
    ) -> Arc<ServerState> {
        let s = &self.live.topology.shards[shard];
        match want {
            // While a failover runs there is none: the map's first server, which fails as the
            // dead primary would (`checkout` waits for the new one first).
            Want::Primary => s
                .primary()
                .unwrap_or_else(|| s.servers().next().expect("a shard has servers"))
                .clone(),
            Want::Read => {
                let routing = &self.live.config.routing;
                let ctx = crate::topology::balance::ReadContext {
                    client_ip: self.client_ip,
                    min_lsn: if routing.read_your_writes {
                        self.min_lsn[shard]
                    } else {
                        0
                    },
                    exclude,
                };
                crate::topology::balance::pick_read(
                    s,
                    routing.read_balance,
                    routing.read_from_primary,
                    &ctx,
                )
                .clone()
            }
        }
    }

    /// A new transaction on `shards` waits while one of them is paused (admin `PAUSE`); a
    /// transaction already open goes on (its statements are what PAUSE waits for). `new`: the
    /// caller knows the transaction is new (a fan-out with no connection yet, whose BEGIN the
    /// session already counts as open). A graceful shutdown ends the wait.
    pub(super) async fn hold_if_paused(&mut self, shards: &[usize], new: bool) {
        if !self.worker.shared.paused_any.load(Ordering::Acquire)
            || (!new && self.client_tx_status() != be::TX_IDLE && self.deferred_begin.is_none())
        {
            return;
        }
        let names: Vec<String> = shards
            .iter()
            .filter_map(|i| self.live.config.shards.get(*i).map(|s| s.name.clone()))
            .collect();
        let mut rx = self.worker.shared.pause.subscribe();
        if !rx.borrow().any() || !names.iter().any(|n| rx.borrow().holds(n)) {
            return;
        }
        self.info.set_state(ClientState::Waiting);
        debug!(?names, "paused: the transaction waits for RESUME");
        let mut drain = self.worker.shared.drain.subscribe();
        tokio::select! {
            _ = rx.wait_for(|p| !names.iter().any(|n| p.holds(n))) => {}
            // Nobody could RESUME after a SHUTDOWN: go on, the session ends after this transaction.
            _ = drain.wait_for(|d| *d) => {}
        }
        self.info.set_state(ClientState::Idle);
    }

    /// Takes a connection for a request that wants `want`: on the chosen server, or, when that is
    /// a replica that cannot be reached, once more on another.
    pub(super) async fn checkout(&mut self, want: Want) -> Result<(), SessionError> {
        let mut exclude = self.retry.exclude.take();
        let mut retried = false;
        let mut chosen = self.chosen.take().filter(|_| want == Want::Read);
        self.hold_if_paused(&[self.unit_shard], false).await;
        if want == Want::Primary {
            self.wait_for_primary(self.unit_shard, None).await?;
        }
        loop {
            let server = match chosen.take() {
                Some(s) => s,
                None => self.pick_server(want, exclude),
            };
            match self.checkout_conn(self.unit_shard, server.addr).await {
                Ok(conn) => {
                    self.shard_idx = self.unit_shard;
                    self.cancel.set(Some(CancelTarget {
                        addr: conn.addr,
                        pid: conn.pid,
                        secret: conn.secret,
                    }));
                    self.unnamed_on = None;
                    self.backend = Some(conn);
                    let replica_read = server.role() == Role::Replica && want == Want::Read;
                    self.held = Some(server.enter());
                    self.info
                        .set(ClientState::Active, Some(Some(self.unit_shard)));
                    if replica_read && self.pending.is_empty() {
                        self.retry.arm(server.addr);
                    }
                    return Ok(());
                }
                Err(e) => {
                    let unreachable = matches!(e, SessionError::BackendUnavailable { .. });
                    if unreachable && want == Want::Primary && self.unit_any && !retried {
                        // Any shard will do: another one whose primary answers.
                        server.suspect();
                        let shards = &self.live.topology.shards;
                        if let Some(other) = (0..shards.len()).find(|&i| {
                            i != self.unit_shard
                                && shards[i].primary().is_some_and(|p| p.failures() == 0)
                        }) {
                            retried = true;
                            self.unit_shard = other;
                            continue;
                        }
                    }
                    if unreachable
                        && want == Want::Primary
                        && !retried
                        && self.live.config.failover.mode != FailoverMode::Off
                    {
                        // The primary may be dying: wait for the failover rather than fail.
                        server.suspect();
                        debug!(server = %server.addr, error = %e, "primary unreachable: waiting for a failover");
                        retried = true;
                        self.wait_for_primary(self.unit_shard, Some(server.addr))
                            .await?;
                        continue;
                    }
                    if unreachable && server.role() == Role::Replica {
                        server.suspect();
                        if !retried {
                            debug!(server = %server.addr, error = %e, "replica unreachable: the read goes to another server");
                            retried = true;
                            exclude = Some(server.addr);
                            continue;
                        }
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Waits until `shard` has a writable primary (other than `not`, a server just found dead),
    /// up to `failover.failover_timeout`; a split brain fails at once. 57P03 when there is none.
    pub(super) async fn wait_for_primary(
        &self,
        shard: usize,
        not: Option<ServerAddr>,
    ) -> Result<(), SessionError> {
        let s = &self.live.topology.shards[shard];
        let failover = &self.live.config.failover;
        if failover.mode == FailoverMode::Off {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + failover.failover_timeout;
        loop {
            let changed = s.primary_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if s.is_split_brain() {
                return Err(SessionError::NoPrimary {
                    shard: s.name.clone(),
                    reason: "several of its servers accept writes (split brain); writes are refused until only one does, reads go on".into(),
                });
            }
            if let Some(p) = s.primary()
                && Some(p.addr) != not
            {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(SessionError::NoPrimary {
                    shard: s.name.clone(),
                    reason: format!(
                        "no server took over within failover.failover_timeout ({:?})",
                        failover.failover_timeout
                    ),
                });
            }
        }
    }

    /// The held connection failed before the first byte of its answer reached the client: put the
    /// request back to be routed again, away from that server. Returns false when it cannot be.
    pub(super) fn retry_elsewhere(&mut self) -> bool {
        if !self.retry.is_armed() || self.backend.is_none() {
            return false;
        }
        let conn = self.backend.take().expect("checked");
        let server = conn.addr;
        drop(Checkout::take(conn));
        self.held = None;
        self.forget_request_timing();
        self.cancel.set(None);
        if let Some(s) = self.live.topology.server(server) {
            s.suspect();
        }
        warn!(%server, "lost a replica connection before any answer: the request goes to another server");
        self.pending.clear();
        self.in_segment = false;
        self.server_skipping = false;
        self.unnamed_on = None;
        self.begun = false;
        self.retry.put_back(&mut self.cin)
    }

    /// Handles client frames that were put back (a retry) or held back (`Flow::Wait`) once the
    /// session can go on with them.
    pub(super) async fn resume_client(&mut self) -> Step {
        if self.retry.now {
            self.retry.now = false;
            return self.on_client_data().await;
        }
        if self.waiting && self.pending.is_empty() && !self.mux_inflight {
            self.waiting = false;
            return self.on_client_data().await;
        }
        Ok(Flow::Continue)
    }

    /// After a write transaction ended on the primary: read its WAL position on the same
    /// connection, without holding up the client (its ReadyForQuery is already on the way).
    pub(super) fn after_write_transaction(&mut self) {
        self.tx_wrote = false;
        if self.tracks_writes() {
            self.append_wal_position();
        }
    }

    /// Read-your-writes applies to the held connection: on, a primary, replicas to read from.
    fn tracks_writes(&self) -> bool {
        self.live.config.routing.read_your_writes
            && self.held_role() == Some(Role::Primary)
            && self.live.topology.shards[self.shard_idx].has_replicas()
    }

    /// Whether the statement with this plan, just sent, ends a write transaction: COMMIT of a
    /// transaction that wrote, or a write outside a transaction block.
    pub(super) fn commits_here(&self, plan: &Plan) -> bool {
        if !self.tracks_writes() {
            return false;
        }
        match plan.tx {
            TxControl::End => self.tx_wrote,
            TxControl::None => {
                plan.writes
                    && !self.begun
                    && self
                        .backend
                        .as_ref()
                        .is_some_and(|b| b.tx_status == be::TX_IDLE)
            }
            _ => false,
        }
    }

    /// Sends the WAL position query right behind what the connection was just sent, in the same
    /// write: the server runs it as soon as the commit is done, and its answer stays with shardgate.
    pub(super) fn append_wal_position(&mut self) {
        self.tx_wrote = false;
        let conn = self.conn();
        fe::write_query(&mut conn.wbuf, WAL_POSITION_SQL);
        self.pending
            .push_back(Pending::Internal { wal_position: true });
    }

    /// A frame of an internal query's answer: never shown to the client.
    pub(super) fn on_internal_frame(&mut self, tag: u8, body: &[u8], wal_position: bool) {
        match tag {
            be::DATA_ROW if wal_position => {
                if let Some(lsn) = be::data_row_columns(body)
                    .and_then(|c| c.first().copied().flatten())
                    .and_then(parse_lsn)
                {
                    let slot = &mut self.min_lsn[self.shard_idx];
                    *slot = (*slot).max(lsn);
                }
            }
            be::READY_FOR_QUERY => {
                if let Some(conn) = self.backend.as_mut() {
                    conn.tx_status = body.first().copied().unwrap_or(be::TX_IDLE);
                }
                self.pending.pop_front();
            }
            be::ERROR_RESPONSE => {
                let severity = be::error_field(body, b'V').or_else(|| be::error_field(body, b'S'));
                if matches!(severity, Some(b"FATAL" | b"PANIC")) {
                    if let Some(conn) = self.backend.as_mut() {
                        conn.broken = true;
                    }
                } else {
                    debug!(
                        "an internal query failed: {:?}",
                        be::error_field(body, b'M')
                    );
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text() {
        assert_eq!(parse_lsn(b"0/0"), Some(0));
        assert_eq!(parse_lsn(b"16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(parse_lsn(b"nope"), None);
        assert!(parse_lsn(b"0/3000060") < parse_lsn(b"0/3000100"));
    }

    #[test]
    fn targets() {
        assert_eq!(Target::parse(" Replica "), Some(Target::Replica));
        assert_eq!(Target::parse("standby"), None);
    }
}
