//! The multiplexed path (see `frontend::multiplex`): which segments qualify, queueing them on a
//! shared connection, and taking the answer back.

use super::*;

/// What `try_multiplex` did with the frames at the front of the buffer.
pub(super) enum MuxTry {
    /// Queued on a multiplexed connection: that many bytes were used.
    Submitted(usize),
    /// The segment has the right shape but has not been timed: run it exclusively and time it.
    Time(Arc<StatementSpeed>),
    No,
}

/// A multiplexable segment: its length, named statement, speed record and plan.
pub(super) type Segment = (
    usize,
    Option<Arc<Statement>>,
    Arc<StatementSpeed>,
    Arc<Plan>,
);

impl Session {
    /// Whether the next segment may go to a multiplexed connection: nothing else is going on.
    pub(super) fn mux_ready(&self) -> bool {
        self.worker.mux_limit.get() > 0
            && !self.sharding
            // PAUSE holds new transactions at checkout; query_timeout cancels on a connection
            // of the session's own: both take the exclusive path.
            && !self.worker.shared.paused_any.load(std::sync::atomic::Ordering::Relaxed)
            && self.live.config.proxy.query_timeout.is_zero()
            && self.backend.is_none()
            && self.pending.is_empty()
            && !self.session_mode
            && !self.pinned
            && !self.dirty
            && !self.local_skip
            && !self.server_skipping
            && !self.failed_tx
            && !self.in_segment
            && !self.mux_inflight
            && !self.waiting
            && self.deferred_begin.is_none()
    }

    /// Queues the segment at the front of `buf` on a multiplexed connection if it qualifies.
    pub(super) async fn try_multiplex(&mut self, buf: &[u8]) -> MuxTry {
        let Some((len, named, speed, plan)) = self.qualifying_segment(buf) else {
            tracing::trace!(first = ?buf.first().map(|b| *b as char), "segment does not qualify for multiplexing");
            return MuxTry::No;
        };
        // Only reads: a write needs its WAL position read afterwards (read-your-writes).
        if plan.writes || plan.local || !matches!(plan.tx, TxControl::None) {
            return MuxTry::No;
        }
        tracing::trace!(
            fast = speed.is_fast(),
            untimed = speed.is_untimed(),
            "qualifying segment"
        );
        if speed.is_untimed() {
            return MuxTry::Time(speed);
        }
        if !speed.is_fast() {
            return MuxTry::No;
        }
        let want = self.want(&plan);
        let exclude = self.retry.exclude.take();
        let server = self.pick_server(want, exclude);
        let Some(mux) = self.pick_mux(&server).await else {
            self.chosen = Some(server);
            tracing::trace!(
                limit = self.worker.mux_limit.get(),
                "no multiplexed connection"
            );
            return MuxTry::No;
        };
        let mut swallow = 0u8;
        {
            let mut out = mux.out.borrow_mut();
            let mut off = 0;
            while off < len {
                let Ok(Some(h)) = peek_header(&buf[off..], usize::MAX) else {
                    break;
                };
                let frame = &buf[off..off + h.frame_len];
                match (h.tag, &named) {
                    (fe::PARSE, _) => {
                        // The client's unnamed statement is now this one, wherever it goes next.
                        self.unnamed_parse.clear();
                        self.unnamed_parse.extend_from_slice(frame);
                        self.unnamed_plan = Some(plan.clone());
                        self.unnamed_on = None;
                        self.local.forget_unnamed();
                        out.extend_from_slice(frame);
                    }
                    (fe::BIND, Some(stmt)) => {
                        let mut prepared = mux.prepared.borrow_mut();
                        if !prepared.contains(&stmt.id) {
                            fe::write_parse(&mut out, &stmt.server_name, &stmt.parse_rest);
                            prepared.insert(stmt.id);
                            swallow += 1;
                        }
                        let (portal, _, rest) =
                            fe::bind_statement(&frame[5..]).expect("checked by qualifying_segment");
                        fe::write_bind(&mut out, portal, &stmt.server_name, rest);
                    }
                    _ => out.extend_from_slice(frame),
                }
                off += h.frame_len;
            }
        }
        // Kept until the answer starts, to go to another server if this one fails first.
        if server.role() == crate::topology::Role::Replica {
            self.retry.arm(server.addr);
            if !self.retry.record(fe::QUERY, &buf[..len]) {
                self.disarm_retry();
            }
        }
        // With nothing of ours waiting to go out, the answer may go straight to the client socket.
        let direct = self.cout.is_empty().then(|| self.client.clone());
        self.mux_out.input_waiting.set(len < buf.len());
        mux.submit(self.mux_out.clone(), swallow, Some(speed), direct);
        self.mux_inflight = true;
        MuxTry::Submitted(len)
    }

    /// `(length, named statement, speed record, plan)` of a multiplexable segment at the front of
    /// `buf`: `Query`, or `[Parse ""] Bind [Describe portal ""] Execute("", 0) Sync`, all of it
    /// buffered.
    pub(super) fn qualifying_segment(&self, buf: &[u8]) -> Option<Segment> {
        let mut off = 0;
        let next = |off: &mut usize| -> Option<(u8, &[u8])> {
            let h = peek_header(&buf[*off..], self.max_message).ok()??;
            let frame = buf.get(*off..*off + h.frame_len)?;
            *off += h.frame_len;
            Some((h.tag, &frame[5..]))
        };
        let (tag, body) = next(&mut off)?;
        if tag == fe::QUERY {
            let text = fe::query_text(body);
            return multiplex::text_qualifies(text)
                .then(|| (off, None, self.text_speed(text), self.plan_text(text)));
        }
        let (mut tag, mut body) = (tag, body);
        let mut unnamed_text = None;
        if tag == fe::PARSE {
            let (name, rest) = fe::parse_name(body).ok()?;
            let text = fe::query_text(rest);
            if !name.is_empty() || !multiplex::text_qualifies(text) {
                return None;
            }
            unnamed_text = Some(text);
            (tag, body) = next(&mut off)?;
        }
        if tag != fe::BIND {
            return None;
        }
        let (portal, stmt_name, _) = fe::bind_statement(body).ok()?;
        if !portal.is_empty() {
            return None;
        }
        let (named, speed, plan) = match unnamed_text {
            Some(text) if stmt_name.is_empty() => {
                (None, self.text_speed(text), self.plan_text(text))
            }
            Some(_) => return None,
            None => {
                let stmt = self.statements.get(stmt_name)?;
                if !stmt.multiplexable {
                    return None;
                }
                (Some(stmt.clone()), stmt.speed.clone(), stmt.plan.clone())
            }
        };
        (tag, body) = next(&mut off)?;
        if tag == fe::DESCRIBE {
            if fe::target(body).ok()? != (b'P', &b""[..]) {
                return None;
            }
            (tag, body) = next(&mut off)?;
        }
        // Execute of the unnamed portal, all rows.
        if tag != fe::EXECUTE || body != b"\0\0\0\0\0" {
            return None;
        }
        let (tag, _) = next(&mut off)?;
        (tag == fe::SYNC).then_some((off, named, speed, plan))
    }

    /// The speed record of a SQL text (see `multiplex::speed_key`).
    pub(super) fn text_speed(&self, text: &[u8]) -> Arc<StatementSpeed> {
        let key = multiplex::speed_key(text);
        let mut speeds = self.worker.text_speeds.borrow_mut();
        if speeds.len() > 10_000 {
            speeds.clear();
        }
        speeds.entry(key).or_default().clone()
    }

    /// A multiplexed connection to `server` for this session's settings: an idle one, a new one
    /// while under the limit, else the least busy.
    pub(super) async fn pick_mux(&mut self, server: &Arc<ServerState>) -> Option<Rc<MuxConn>> {
        let addr = server.addr;
        let (best, count) = {
            let mut list = self.worker.mux.borrow_mut();
            list.retain(|m| !m.is_broken());
            let best = list
                .iter()
                .filter(|m| m.server.addr == addr && m.accepts(&self.settings))
                .min_by_key(|m| m.in_flight())
                .cloned();
            let opening = self.worker.mux_opening.borrow();
            let count = list.iter().filter(|m| m.server.addr == addr).count()
                + opening.iter().filter(|a| **a == addr).count();
            (best, count)
        };
        if let Some(m) = &best
            && (m.in_flight() == 0 || count >= self.worker.mux_limit.get())
        {
            return best;
        }
        if count >= self.worker.mux_limit.get() {
            return None;
        }
        // Count it before the await, so sessions that arrive meanwhile do not open more.
        self.worker.mux_opening.borrow_mut().push(addr);
        let conn = self.checkout_conn(0, addr).await;
        {
            let mut opening = self.worker.mux_opening.borrow_mut();
            if let Some(i) = opening.iter().position(|a| *a == addr) {
                opening.swap_remove(i);
            }
        }
        match conn {
            Ok(conn) => {
                let count_busy = self.live.config.routing.read_balance
                    == crate::config::ReadBalance::LeastConnections;
                let mux = multiplex::start(conn, server.clone(), count_busy, self.worker.index);
                self.worker.mux.borrow_mut().push(mux.clone());
                Some(mux)
            }
            Err(e) => {
                debug!(error = %e, "no connection to multiplex on");
                if server.role() == crate::topology::Role::Replica {
                    server.suspect();
                }
                best
            }
        }
    }

    /// Moves what the multiplexed connection collected for this session into `cout`.
    pub(super) fn take_mux_answer(&mut self) {
        if self.mux_out.done.get() && self.mux_out.lost_clean.replace(false) {
            // The replica failed before answering: the segment goes back to be routed again.
            self.mux_inflight = false;
            self.mux_out.buf.borrow_mut().clear();
            if self.retry.put_back(&mut self.cin) {
                // `now` is for a held connection's retry; this one is handled by the caller.
                self.retry.now = false;
                return;
            }
            let lost = SessionError::BackendLost {
                server: self.primary_addr(),
                reason: "a multiplexed connection failed".into(),
            };
            lost.write_to(&mut self.cout);
            be::write_ready_for_query(&mut self.cout, be::TX_IDLE);
            return;
        }
        let mut buf = self.mux_out.buf.borrow_mut();
        self.cout.extend_from_slice(&buf);
        buf.clear();
        if self.mux_out.done.get() {
            self.mux_inflight = false;
            drop(buf);
            self.disarm_retry();
        }
    }

    pub(super) async fn on_mux_answer(&mut self) -> Step {
        if !self.mux_inflight {
            return Ok(Flow::Continue);
        }
        self.take_mux_answer();
        self.flush_client()?;
        if !self.mux_inflight && !self.cin.is_empty() {
            return self.on_client_data().await;
        }
        Ok(Flow::Continue)
    }
}
