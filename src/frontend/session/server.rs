//! Server → client: frames scanned by tag, copied through in runs, answers owed popped in order.

use super::route;
use super::*;

impl Session {
    pub(super) async fn read_backend(&mut self) -> Step {
        let Some(conn) = self.backend.as_deref_mut() else {
            return Ok(Flow::Continue);
        };
        if conn.rbuf.capacity() - conn.rbuf.len() < READ_CHUNK / 2 {
            conn.rbuf.reserve(READ_CHUNK);
        }
        match conn.stream.try_read_buf(&mut conn.rbuf) {
            Ok(0) => {
                self.on_backend_lost("the server closed the connection".into());
                return self.flush_client();
            }
            Ok(n) => {
                if let Some(h) = &self.held {
                    h.server().stats.received(self.worker.index, n);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Flow::Continue),
            Err(e) => {
                self.on_backend_lost(e.to_string());
                return self.flush_client();
            }
        }
        if let Err(reason) = self.on_backend_data() {
            self.on_backend_lost(reason);
            return self.flush_client();
        }
        self.maybe_release().await;
        self.flush_client()
    }

    /// Handles every whole frame the server sent: copies runs of frames to the client, drops the ones
    /// the client must not see, inserts the proxy's own answers where they belong.
    pub(super) fn on_backend_data(&mut self) -> Result<(), String> {
        let mut rbuf = std::mem::take(&mut self.conn().rbuf);
        let mut off = 0;
        let mut run = 0;
        let mut result = Ok(());
        while let Ok(Some(h)) = peek_header(&rbuf[off..], usize::MAX) {
            if rbuf.len() - off < h.frame_len {
                break;
            }
            let forward = match self.on_backend_frame(h.tag, &rbuf[off + 5..off + h.frame_len]) {
                Ok(f) => f,
                Err(reason) => {
                    result = Err(reason);
                    break;
                }
            };
            let frame = &rbuf[off..off + h.frame_len];
            if !forward {
                self.cout.extend_from_slice(&rbuf[run..off]);
                run = off + h.frame_len;
                if std::mem::take(&mut self.timeout_error) {
                    SessionError::QueryTimeout(self.live.config.proxy.query_timeout)
                        .write_to(&mut self.cout);
                }
            } else if self.retry.is_armed() {
                // A read that may still move to another server: hold back what only describes the
                // answer; the first row (or anything else) makes it the client's for good.
                self.cout.extend_from_slice(&rbuf[run..off]);
                run = off + h.frame_len;
                if route::describes_only(h.tag) {
                    self.retry.hold(frame);
                } else {
                    self.disarm_retry();
                    self.cout.extend_from_slice(frame);
                }
            }
            off += h.frame_len;
            if self.pending.front().is_some_and(Pending::is_synthetic) {
                self.cout.extend_from_slice(&rbuf[run..off]);
                run = off;
                self.emit_synthetic_front();
            }
        }
        if rbuf.len() - off >= 5 && peek_header(&rbuf[off..], usize::MAX).is_err() {
            result = Err("the server sent a malformed message".into());
        }
        self.cout.extend_from_slice(&rbuf[run..off]);
        rbuf.advance(off);
        if let Some(conn) = self.backend.as_mut() {
            conn.rbuf = rbuf;
        }
        result
    }

    /// Updates the session for one server frame; returns whether the client sees it.
    pub(super) fn on_backend_frame(&mut self, tag: u8, body: &[u8]) -> Result<bool, String> {
        if let Some(&Pending::Internal { wal_position }) = self.pending.front() {
            self.on_internal_frame(tag, body, wal_position);
            return Ok(false);
        }
        let conn = self
            .backend
            .as_mut()
            .expect("reading from a held connection");
        match tag {
            be::DATA_ROW | be::COPY_DATA | be::NOTICE_RESPONSE | be::NOTIFICATION_RESPONSE => {
                Ok(true)
            }
            be::READY_FOR_QUERY => {
                conn.tx_status = body.first().copied().unwrap_or(be::TX_IDLE);
                self.begun = false;
                if let Some(h) = &self.held {
                    let took = self.sent_at.take().map(|t| t.elapsed());
                    h.server().stats.answered(
                        self.worker.index,
                        crate::topology::stats::RouteKind::Single,
                        took,
                        conn.tx_status == be::TX_IDLE,
                    );
                }
                self.timed_out = false;
                if self.pending.len() > 1 {
                    // The next request of a pipeline is already with the server.
                    self.sent_at = Some(Instant::now());
                }
                if conn.tx_status == be::TX_IDLE && self.tx_wrote {
                    self.after_write_transaction();
                }
                match self.pending.pop_front() {
                    Some(p) if p.ends_with_ready() => {
                        if self.pending.is_empty()
                            && let Some((speed, started)) = self.timing.take()
                        {
                            let took = started.elapsed();
                            if took >= multiplex::SLOW {
                                debug!(?took, "a statement was slow on an exclusive connection");
                            }
                            speed.record(took);
                        }
                        Ok(true)
                    }
                    other => Err(format!(
                        "ReadyForQuery arrived while {other:?} was expected"
                    )),
                }
            }
            be::PARSE_COMPLETE => match self.pending.pop_front() {
                Some(Pending::Parse { swallow, .. }) => Ok(!swallow),
                other => Err(format!(
                    "ParseComplete arrived while {other:?} was expected"
                )),
            },
            be::BIND_COMPLETE => self.pop_expected(|p| matches!(p, Pending::Bind), "BindComplete"),
            be::CLOSE_COMPLETE => {
                self.pop_expected(|p| matches!(p, Pending::Close), "CloseComplete")
            }
            be::ROW_DESCRIPTION | be::NO_DATA => {
                if matches!(self.pending.front(), Some(Pending::Describe)) {
                    self.pending.pop_front();
                }
                Ok(true)
            }
            be::COMMAND_COMPLETE => {
                let command = be::command_tag(body);
                if session_state::tag_may_change_session(command) {
                    self.dirty = true;
                    self.touched = true;
                    if session_state::tag_drops_prepared(command) {
                        conn.prepared.clear();
                        self.statements.clear();
                    }
                }
                if matches!(self.pending.front(), Some(Pending::Execute { .. })) {
                    self.pending.pop_front();
                }
                Ok(true)
            }
            be::COPY_IN_RESPONSE => {
                // COPY FROM STDIN started by an Execute: the server ignores the Syncs the client
                // sent before ending the data stream, so no ReadyForQuery will answer them.
                if let Some(&Pending::Execute { copy_ends }) = self.pending.front() {
                    self.pending.retain(
                        |p| !matches!(p, Pending::Sync { copy_ends: c } if *c == copy_ends),
                    );
                }
                Ok(true)
            }
            be::EMPTY_QUERY_RESPONSE | be::PORTAL_SUSPENDED => {
                if matches!(self.pending.front(), Some(Pending::Execute { .. })) {
                    self.pending.pop_front();
                }
                Ok(true)
            }
            be::PARAMETER_STATUS => {
                conn.note_param(body);
                Ok(true)
            }
            be::ERROR_RESPONSE => {
                if let Some(h) = &self.held {
                    h.server().stats.error(self.worker.index);
                }
                let severity = be::error_field(body, b'V').or_else(|| be::error_field(body, b'S'));
                if self.timed_out && be::error_field(body, b'C') == Some(b"57014") {
                    // Our cancel (query_timeout): the client is told why.
                    self.timeout_error = true;
                    self.timed_out = false;
                    match self.pending.front() {
                        Some(Pending::SimpleQuery | Pending::FunctionCall) | None => {}
                        Some(_) => self.fail_segment(),
                    }
                    return Ok(false);
                }
                crate::errors::CLIENT_ERRORS.count_body(body);
                if matches!(severity, Some(b"FATAL" | b"PANIC")) {
                    // About the server connection, not the client's session (shutdown, terminate):
                    // the client hears of it as the loss of that connection, and keeps its own.
                    let message = be::error_field(body, b'M').unwrap_or(b"FATAL error");
                    self.server_fatal = Some(String::from_utf8_lossy(message).into_owned());
                    conn.broken = true;
                    return Ok(false);
                }
                match self.pending.front() {
                    Some(Pending::SimpleQuery | Pending::FunctionCall) | None => {}
                    Some(_) => self.fail_segment(),
                }
                Ok(true)
            }
            _ => Ok(true),
        }
    }

    pub(super) fn pop_expected(
        &mut self,
        want: fn(&Pending) -> bool,
        what: &str,
    ) -> Result<bool, String> {
        match self.pending.pop_front() {
            Some(p) if want(&p) => Ok(true),
            other => Err(format!("{what} arrived while {other:?} was expected")),
        }
    }

    /// An error in the extended protocol: the server skips to the next Sync, so do its entries.
    pub(super) fn fail_segment(&mut self) {
        while let Some(front) = self.pending.front() {
            if matches!(front, Pending::Sync { .. }) {
                return;
            }
            if let Some(Pending::Parse {
                stmt: Some(id),
                client_name,
                ..
            }) = self.pending.pop_front()
            {
                if let Some(conn) = self.backend.as_mut() {
                    conn.prepared.remove(&id);
                }
                if let Some(name) = client_name
                    && self.statements.get(&name).is_some_and(|s| s.id == id)
                {
                    self.statements.remove(&name);
                }
            }
        }
        self.server_skipping = true;
    }
}
