//! Holding a server connection: taking one (with the client's settings replayed), giving it back
//! after reading session state back, losing it, and leaving nothing open when the client goes.

use super::route::{Got, Want};
use super::*;

impl Session {
    /// Takes a server connection for a request that wants `want`, if none is held. On failure the
    /// client gets the error (and, for a simple query, ReadyForQuery): the message is dropped.
    pub(super) async fn ensure_backend(&mut self, simple: bool, want: Want) -> Result<Got, End> {
        if self.backend.is_some() {
            if want == Want::Primary
                && self.held_role() == Some(crate::topology::Role::Replica)
                && self.can_switch()
            {
                if !self.pending.is_empty() {
                    return Ok(Got::Wait);
                }
                self.release();
            } else {
                return Ok(Got::Ready);
            }
        }
        match self.checkout(want).await {
            Ok(()) => {
                // Time the statement from here: waiting for the pool says nothing of it.
                if let Some((_, started)) = self.timing.as_mut() {
                    *started = Instant::now();
                }
                if let Some(begin) = self.deferred_begin.take() {
                    // The BEGIN is not among the frames a retry would send again.
                    self.disarm_retry();
                    self.conn().wbuf.extend_from_slice(&begin);
                    self.pending.push_back(Pending::Internal {
                        wal_position: false,
                    });
                    self.begun = true;
                }
                Ok(Got::Ready)
            }
            Err(e) => {
                warn!(error = %e, "no server connection for the client");
                e.write_to(&mut self.cout);
                if simple {
                    let status = self.client_tx_status();
                    be::write_ready_for_query(&mut self.cout, status);
                } else {
                    self.local_skip = true;
                }
                Ok(Got::Dropped)
            }
        }
    }

    /// A pooled connection to `addr` with this client's session settings applied.
    pub(super) async fn checkout_conn(
        &mut self,
        shard: usize,
        addr: ServerAddr,
    ) -> Result<Checkout, SessionError> {
        let name = &self.live.config.shards[shard].name;
        let mut conn = self.worker.checkout(name, addr).await?;
        match conn.apply_settings(&self.settings).await {
            Ok(None) => Ok(conn),
            // The setting was accepted once; the client goes on, the connection is not reused.
            Ok(Some(e)) => {
                warn!(error = %e, "could not restore the client's settings on a server connection");
                Ok(conn)
            }
            Err(source) => {
                let _ = Checkout::take(conn);
                Err(SessionError::BackendUnavailable {
                    shard: name.clone(),
                    source,
                })
            }
        }
    }

    /// The held connection went (given back, lost, moved into a fan-out): its request timing
    /// and `query_timeout` state go with it.
    pub(super) fn forget_request_timing(&mut self) {
        self.sent_at = None;
        self.timed_out = false;
        self.timeout_error = false;
    }

    /// Gives the server connection back (or closes it when it cannot be trusted).
    pub(super) fn release(&mut self) {
        if let Some(conn) = self.backend.take() {
            self.held = None;
            self.forget_request_timing();
            self.info
                .set(crate::frontend::clients::ClientState::Idle, None);
            self.disarm_retry();
            self.cancel.set(None);
            self.unnamed_on = None;
            if conn.broken || conn.prepared.len() > MAX_PREPARED_PER_CONN {
                drop(Checkout::take(conn));
            }
        }
    }

    /// After a transaction: read back session state if it may have changed, then give the
    /// connection back unless the session is pinned to it.
    pub(super) async fn maybe_release(&mut self) {
        let Some(conn) = self.backend.as_ref() else {
            return;
        };
        if self.session_mode
            || !self.pending.is_empty()
            || self.in_segment
            || conn.tx_status != be::TX_IDLE
            || !conn.wbuf.is_empty()
            || !conn.rbuf.is_empty()
        {
            return;
        }
        if self.dirty {
            self.dirty = false;
            self.capture().await;
        }
        if !self.pinned {
            self.release();
        }
    }

    /// Reads the server's view of the session (settings, pins) after a state-changing transaction.
    pub(super) async fn capture(&mut self) {
        if let Some(mut conn) = self.backend.take() {
            self.capture_on(&mut conn).await;
            self.backend = Some(conn);
        }
    }

    /// Reads the session state `conn` holds into the client's settings and pins, and puts the
    /// connection back to the client's startup settings where it differs.
    pub(super) async fn capture_on(&mut self, conn: &mut crate::backend::BackendConn) {
        let startup = self.startup_settings.clone();
        let result = match conn.run_internal(session_state::CAPTURE_SQL).await {
            Ok(r) if r.error.is_none() => r,
            Ok(r) => {
                warn!(error = ?r.error.map(|e| e.to_string()), "could not read session state; the server connection stays with this client");
                self.pinned = true;
                return;
            }
            Err(e) => {
                warn!(error = %e, "lost the server connection while reading session state");
                conn.broken = true;
                return;
            }
        };
        let captured = session_state::parse_capture(&result.rows);
        self.pinned = captured.pins > 0;
        let desired = session_state::with_startup_defaults(&captured.settings, &startup);
        if let Some(sql) = session_state::replay_sql(&captured.settings, &desired) {
            match conn.run_internal(&sql).await {
                Ok(r) => {
                    for (name, value) in &r.param_changes {
                        be::write_parameter_status(
                            &mut self.cout,
                            name.as_bytes(),
                            value.as_bytes(),
                        );
                    }
                }
                Err(_) => conn.broken = true,
            }
        }
        let desired = Arc::new(desired);
        conn.settings = desired.clone();
        self.settings = desired;
    }

    /// The server connection failed: answer everything the client still waits for with an error, as
    /// the server would have, and keep the client.
    pub(super) fn on_backend_lost(&mut self, reason: String) {
        if self.retry_elsewhere() {
            return;
        }
        let Some(conn) = self.backend.take() else {
            return;
        };
        self.held = None;
        self.forget_request_timing();
        self.info
            .set(crate::frontend::clients::ClientState::Idle, None);
        let reason = self.server_fatal.take().unwrap_or(reason);
        self.cancel.set(None);
        let server = conn.addr;
        // A BEGIN sent since the last ReadyForQuery counts: the client was told it is in a block.
        let in_tx = conn.tx_status != be::TX_IDLE || self.begun;
        self.begun = false;
        self.tx_wrote = false;
        self.wal_at_sync = false;
        drop(Checkout::take(conn));
        warn!(%server, %reason, "lost a server connection");
        let err = SessionError::BackendLost { server, reason };
        let owed_ready = self.pending.iter().filter(|p| p.ends_with_ready()).count();
        self.server_skipping = false;
        self.unnamed_on = None;
        let status = if in_tx { be::TX_FAILED } else { be::TX_IDLE };
        let owed_synthetic: Vec<Pending> = std::mem::take(&mut self.pending)
            .into_iter()
            .filter(Pending::is_synthetic)
            .collect();
        for _ in 0..owed_ready {
            err.write_to(&mut self.cout);
            be::write_ready_for_query(&mut self.cout, status);
        }
        if self.in_segment {
            err.write_to(&mut self.cout);
            self.local_skip = true;
            self.in_segment = false;
        }
        self.failed_tx = in_tx;
        for p in owed_synthetic {
            self.write_synthetic(p);
        }
        if in_tx && owed_ready == 0 && !self.local_skip {
            // The client sits idle in its transaction: tell it with its next statement.
            self.unreported_loss = Some(err);
        }
    }

    /// The client is gone: leave nothing open on the server connection.
    pub(super) async fn finish(&mut self) {
        self.drop_parts();
        let Some(mut conn) = self.backend.take() else {
            return;
        };
        let _busy = self.held.take();
        self.cancel.set(None);
        let mid_request = !self.pending.is_empty() || self.in_segment || !conn.wbuf.is_empty();
        if mid_request || conn.broken {
            // A query may still be running: cancel it, and close the connection so the server rolls
            // back whatever transaction it had.
            if mid_request {
                let (addr, pid, secret) = (conn.addr, conn.pid, conn.secret);
                tokio::spawn(async move {
                    let _ = crate::backend::send_cancel(addr, pid, secret).await;
                });
            }
            drop(Checkout::take(conn));
            return;
        }
        let cleanup = async {
            if conn.tx_status != be::TX_IDLE {
                let r = conn.run_internal("ROLLBACK").await?;
                if r.error.is_some() {
                    return Ok(false);
                }
            }
            if self.pinned || (self.session_mode && self.touched) {
                let r = conn.run_internal("DISCARD ALL").await?;
                if r.error.is_some() {
                    return Ok(false);
                }
                conn.prepared.clear();
                conn.settings = Settings::empty();
            }
            Ok::<bool, crate::errors::BackendError>(conn.tx_status == be::TX_IDLE)
        };
        let reusable = matches!(
            tokio::time::timeout(std::time::Duration::from_secs(10), cleanup).await,
            Ok(Ok(true))
        );
        if !reusable {
            drop(Checkout::take(conn));
        }
    }
}
