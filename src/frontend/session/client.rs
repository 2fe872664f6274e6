//! Client → server: frames checked and forwarded, prepared statements renamed, the answers the
//! proxy makes up itself queued in order, and a failed transaction answered while it has no server.

use super::multiplexed::MuxTry;
use super::route::{Got, Target, Want};
use super::shards::UnitStep;
use super::*;

impl Session {
    pub(super) async fn read_client(&mut self) -> Step {
        // Small reads for small messages (an idle client keeps a few kB), doubling while reads fill
        // the buffer (a COPY stream gets large reads).
        if self.cin.capacity() - self.cin.len() < self.read_chunk / 2 {
            self.cin.reserve(self.read_chunk);
        }
        let spare = self.cin.capacity() - self.cin.len();
        match self.client.try_read_buf(&mut self.cin) {
            Ok(0) => Err(End::ClientGone),
            Ok(n) => {
                if n == spare && self.read_chunk < READ_CHUNK {
                    self.read_chunk *= 2;
                }
                self.on_client_data().await
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(Flow::Continue),
            Err(_) => Err(End::ClientGone),
        }
    }

    /// Handles every whole frame in `cin`, then writes what is ready on both sides.
    pub(super) async fn on_client_data(&mut self) -> Step {
        if self.mux_inflight {
            if !self.mux_out.done.get() {
                self.mux_out.input_waiting.set(!self.cin.is_empty());
                return Ok(Flow::Continue);
            }
            // Answered (perhaps written straight to the client by the multiplexed connection).
            self.take_mux_answer();
        }
        let mut cin = std::mem::take(&mut self.cin);
        let mut off = 0;
        let result = loop {
            self.refresh_map();
            if self.mux_ready() {
                match self.try_multiplex(&cin[off..]).await {
                    MuxTry::Submitted(len) => {
                        off += len;
                        break Ok(Flow::Continue);
                    }
                    MuxTry::Time(speed) => self.timing = Some((speed, Instant::now())),
                    MuxTry::No => {}
                }
            }
            let header = match peek_header(&cin[off..], self.max_message) {
                Ok(Some(h)) => h,
                Ok(None) => break Ok(Flow::Continue),
                Err(e) => break Err(End::from(e)),
            };
            if cin.len() - off < header.frame_len {
                cin.reserve(header.frame_len - (cin.len() - off));
                break Ok(Flow::Continue);
            }
            if self.sharding
                && self.copy_split.is_none()
                && (self.multi.is_some() || !self.unit_routed)
                && !self.local_skip
                && !self.server_skipping
                && !self.failed_tx
                && starts_unit(header.tag)
            {
                match self.shard_unit(&cin[off..]).await {
                    UnitStep::Go => {}
                    UnitStep::Done(len) => {
                        off += len;
                        continue;
                    }
                    UnitStep::More => break Ok(Flow::Continue),
                    UnitStep::Wait => {
                        self.waiting = true;
                        break Ok(Flow::Continue);
                    }
                    UnitStep::End(e) => break Err(e),
                }
            }
            let frame = &cin[off..off + header.frame_len];
            match self.on_client_frame(header.tag, frame).await {
                Ok(Flow::Continue) => {
                    if !self.retry.record(header.tag, frame) {
                        self.disarm_retry();
                    }
                    if matches!(header.tag, fe::SYNC | fe::QUERY) {
                        self.unit_routed = false;
                        self.unit_plan = None;
                    }
                    self.unit_left = self.unit_left.saturating_sub(header.frame_len);
                    off += header.frame_len;
                }
                Ok(Flow::Wait) => {
                    // Handled again once the held connection is given back (`resume_client`).
                    self.waiting = true;
                    break Ok(Flow::Continue);
                }
                other => break other,
            }
        };
        cin.advance(off);
        if cin.is_empty() && cin.capacity() > KEEP_BUFFER {
            // A big message went through: do not keep its buffer for an idle client.
            cin = BytesMut::new();
            self.read_chunk = CLIENT_READ_MIN;
        }
        self.cin = cin;
        if let Ok(Flow::Continue) = result {
            self.emit_synthetic_front();
            self.flush_backend_now();
            return self.flush_client();
        }
        result
    }

    pub(super) async fn on_client_frame(&mut self, tag: u8, frame: &[u8]) -> Step {
        if !fe::is_known_tag(tag) {
            return Err(ProtocolError::UnknownFrontendTag { tag }.into());
        }
        if tag == fe::TERMINATE {
            return Ok(Flow::End);
        }
        if self.copy_split.is_some() {
            return self.on_copy_split_frame(tag, frame).await;
        }
        if self.local_skip || self.server_skipping {
            if tag == fe::SYNC {
                self.local_skip = false;
                self.on_sync(frame);
            }
            return Ok(Flow::Continue);
        }
        if self.failed_tx {
            self.on_failed_tx_frame(tag, frame);
            return Ok(Flow::Continue);
        }
        match tag {
            fe::SYNC => self.on_sync(frame),
            fe::FLUSH => {
                if let Some(b) = self.backend.as_mut() {
                    b.wbuf.extend_from_slice(frame);
                }
            }
            fe::QUERY => return self.on_query(frame).await,
            fe::PARSE => return self.on_parse(frame).await,
            fe::BIND => return self.on_bind(frame).await,
            fe::DESCRIBE => return self.on_describe(frame).await,
            fe::CLOSE => self.on_close(frame)?,
            fe::EXECUTE => {
                if self.local.take_portal_execute(&frame[5..]) {
                    let out = self.local_execute_portal();
                    self.push_synthetic(Pending::Synth(out));
                    return Ok(Flow::Continue);
                }
                match self.ensure_backend(false, Want::Primary).await? {
                    Got::Ready => {}
                    Got::Dropped => return Ok(Flow::Continue),
                    Got::Wait => return Ok(Flow::Wait),
                }
                self.in_segment = true;
                self.conn().wbuf.extend_from_slice(frame);
                let copy_ends = self.copy_ends;
                self.pending.push_back(Pending::Execute { copy_ends });
            }
            fe::FUNCTION_CALL => {
                match self.ensure_backend(true, Want::Primary).await? {
                    Got::Ready => {}
                    Got::Dropped => return Ok(Flow::Continue),
                    Got::Wait => return Ok(Flow::Wait),
                }
                self.tx_wrote = true;
                self.conn().wbuf.extend_from_slice(frame);
                self.pending.push_back(Pending::FunctionCall);
            }
            // CopyData / CopyDone / CopyFail: only meaningful while a server is in COPY.
            _ => {
                if let Some(b) = self.backend.as_mut() {
                    b.wbuf.extend_from_slice(frame);
                    if tag != fe::COPY_DATA {
                        self.copy_ends = self.copy_ends.wrapping_add(1);
                    }
                }
            }
        }
        Ok(Flow::Continue)
    }

    /// Notes what a statement sent to the held connection means for routing: a write to remember
    /// for read-your-writes, a BEGIN that keeps the connection.
    pub(super) fn note_sent(&mut self, plan: &Plan) {
        if plan.writes {
            self.tx_wrote = true;
        }
        if matches!(plan.tx, TxControl::Begin { .. }) {
            self.begun = true;
        }
    }

    pub(super) async fn on_query(&mut self, frame: &[u8]) -> Step {
        let text = fe::query_text(&frame[5..]);
        let plan = match self.unit_plan.take() {
            Some(p) => p,
            None => self.plan_text(text),
        };
        if plan.local {
            self.local_simple(text);
            return Ok(Flow::Continue);
        }
        if self.deferred_begin.is_some()
            && matches!(plan.tx, TxControl::End)
            && !plan.unparsed
            && single_statement(text)
        {
            // BEGIN then COMMIT or ROLLBACK with nothing between: no server needs to see either.
            self.deferred_begin = None;
            let tag = if rolls_back(text) {
                "ROLLBACK"
            } else {
                "COMMIT"
            };
            be::write_command_complete(&mut self.cout, tag);
            be::write_ready_for_query(&mut self.cout, be::TX_IDLE);
            return Ok(Flow::Continue);
        }
        if self.may_defer_begin(&plan, text) {
            // The next statement picks the server (and shard): SET TRANSACTION READ ONLY makes it
            // a replica.
            self.begin_sql = String::from_utf8_lossy(text).into_owned();
            self.deferred_begin = Some(Bytes::copy_from_slice(frame));
            be::write_command_complete(&mut self.cout, "BEGIN");
            be::write_ready_for_query(&mut self.cout, be::TX_IN_BLOCK);
            return Ok(Flow::Continue);
        }
        let want = self.want(&plan);
        match self.ensure_backend(true, want).await? {
            Got::Ready => {}
            Got::Dropped => return Ok(Flow::Continue),
            Got::Wait => return Ok(Flow::Wait),
        }
        if session_state::text_may_change_session(text) {
            self.dirty = true;
        }
        self.note_sent(&plan);
        if matches!(plan.tx, TxControl::Begin { .. }) {
            self.begin_sql = String::from_utf8_lossy(text).into_owned();
        }
        self.conn().wbuf.extend_from_slice(frame);
        self.pending.push_back(Pending::SimpleQuery);
        if self.commits_here(&plan) {
            self.append_wal_position();
        }
        Ok(Flow::Continue)
    }

    /// A plain BEGIN, alone, with nothing held: its server is chosen with the next statement.
    fn may_defer_begin(&self, plan: &Plan, text: &[u8]) -> bool {
        matches!(plan.tx, TxControl::Begin { read_only: None })
            && plan.hint.is_none()
            && self.target == Target::Auto
            && !self.session_mode
            && self.backend.is_none()
            && self.pending.is_empty()
            && self.deferred_begin.is_none()
            && !self.default_read_only()
            && (self.sharding || self.live.topology.shards[0].has_replicas())
            && single_statement(text)
    }

    pub(super) fn on_sync(&mut self, frame: &[u8]) {
        self.in_segment = false;
        match self.backend.as_mut() {
            Some(b) => {
                b.wbuf.extend_from_slice(frame);
                let copy_ends = self.copy_ends;
                self.pending.push_back(Pending::Sync { copy_ends });
                self.server_skipping = false;
                if std::mem::take(&mut self.wal_at_sync) {
                    self.append_wal_position();
                }
            }
            None => {
                let status = self.client_tx_status();
                be::write_ready_for_query(&mut self.cout, status);
            }
        }
    }

    pub(super) async fn on_parse(&mut self, frame: &[u8]) -> Step {
        let (name, rest) = fe::parse_name(&frame[5..])?;
        let text = fe::query_text(rest);
        let (plan, stmt) = if name.is_empty() {
            (self.plan_text(text), None)
        } else {
            let shared = &self.worker.shared;
            let stmt = shared.statements.intern(rest, &self.live.classify);
            if stmt.plan.unparsed {
                shared
                    .unparsed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            (stmt.plan.clone(), Some(stmt))
        };
        if plan.local {
            if name.is_empty() {
                self.unnamed_parse.clear();
                self.unnamed_plan = None;
            } else if self.statements.contains_key(name) || self.local.has_statement(name) {
                let err =
                    SessionError::DuplicateStatement(String::from_utf8_lossy(name).into_owned());
                self.push_local_error(err);
                return Ok(Flow::Continue);
            }
            self.local.parse(name, text);
            self.push_synthetic(Pending::SynthParseComplete);
            return Ok(Flow::Continue);
        }
        let want = self.want(&plan);
        match self.ensure_backend(false, want).await? {
            Got::Ready => {}
            Got::Dropped => return Ok(Flow::Continue),
            Got::Wait => return Ok(Flow::Wait),
        }
        self.in_segment = true;
        let Some(stmt) = stmt else {
            if session_state::text_may_change_session(text) {
                self.dirty = true;
            }
            self.local.forget_unnamed();
            self.unnamed_parse.clear();
            self.unnamed_parse.extend_from_slice(frame);
            self.unnamed_plan = Some(plan);
            let conn = self.conn();
            conn.wbuf.extend_from_slice(frame);
            let id = conn.id;
            self.unnamed_on = Some(id);
            self.pending.push_back(Pending::Parse {
                stmt: None,
                client_name: None,
                swallow: false,
            });
            return Ok(Flow::Continue);
        };
        if self.statements.contains_key(name) || self.local.has_statement(name) {
            let err = SessionError::DuplicateStatement(String::from_utf8_lossy(name).into_owned());
            self.push_local_error(err);
            return Ok(Flow::Continue);
        }
        let client_name = Bytes::copy_from_slice(name);
        self.statements.insert(client_name.clone(), stmt.clone());
        let conn = self.conn();
        if conn.prepared.contains(&stmt.id) {
            self.pending.push_back(Pending::SynthParseComplete);
        } else {
            fe::write_parse(&mut conn.wbuf, &stmt.server_name, &stmt.parse_rest);
            conn.prepared.insert(stmt.id);
            self.pending.push_back(Pending::Parse {
                stmt: Some(stmt.id),
                client_name: Some(client_name),
                swallow: false,
            });
        }
        Ok(Flow::Continue)
    }

    /// The plan of the statement a Bind or Describe names (None: the client never prepared it).
    pub(super) fn statement_plan(&self, client_name: &[u8]) -> Option<Arc<Plan>> {
        if client_name.is_empty() {
            self.unnamed_plan.clone()
        } else {
            self.statements.get(client_name).map(|s| s.plan.clone())
        }
    }

    /// Makes sure the held connection has the statement a Bind or Describe names, injecting a Parse
    /// whose answer is swallowed; returns the name to use on the server.
    pub(super) fn prepare_on_conn(&mut self, client_name: &[u8]) -> Option<Bytes> {
        if client_name.is_empty() {
            let conn_id = self.backend.as_ref().map(|b| b.id);
            if self.unnamed_on != conn_id && !self.unnamed_parse.is_empty() {
                let parse = std::mem::take(&mut self.unnamed_parse);
                self.conn().wbuf.extend_from_slice(&parse);
                self.unnamed_parse = parse;
                self.unnamed_on = conn_id;
                self.pending.push_back(Pending::Parse {
                    stmt: None,
                    client_name: None,
                    swallow: true,
                });
            }
            return None;
        }
        let stmt = self.statements.get(client_name)?.clone();
        if stmt.changes_session {
            self.dirty = true;
        }
        let conn = self.conn();
        if !conn.prepared.contains(&stmt.id) {
            fe::write_parse(&mut conn.wbuf, &stmt.server_name, &stmt.parse_rest);
            conn.prepared.insert(stmt.id);
            self.pending.push_back(Pending::Parse {
                stmt: Some(stmt.id),
                client_name: None,
                swallow: true,
            });
        }
        Some(stmt.server_name.clone())
    }

    pub(super) async fn on_bind(&mut self, frame: &[u8]) -> Step {
        let (portal, stmt_name, rest) = fe::bind_statement(&frame[5..])?;
        if self.local.bind(portal, stmt_name) {
            self.push_synthetic(Pending::Synth(Bytes::from_static(b"2\0\0\0\x04")));
            return Ok(Flow::Continue);
        }
        let plan = self.statement_plan(stmt_name);
        if self.sharding && self.unit_left == 0 && self.backend.is_some() {
            // A Bind that arrived after its unit was routed must belong to the same shard.
            let fits = match self.bound_statement(&[], stmt_name) {
                Some((p, text)) => match self.text_shards(&p, text, Some(rest)) {
                    Ok(crate::router::shard::Shards::Any) => true,
                    Ok(crate::router::shard::Shards::Set(s)) => s.single() == Some(self.shard_idx),
                    _ => false,
                },
                None => true,
            };
            if !fits {
                self.push_local_error(SessionError::CrossShard(
                    "this Bind needs another shard than the messages before it in the same pipeline; send a Sync before it".into(),
                ));
                return Ok(Flow::Continue);
            }
        }
        let want = plan.as_deref().map_or(Want::Primary, |p| self.want(p));
        match self.ensure_backend(false, want).await? {
            Got::Ready => {}
            Got::Dropped => return Ok(Flow::Continue),
            Got::Wait => return Ok(Flow::Wait),
        }
        self.in_segment = true;
        match plan {
            Some(p) => {
                self.note_sent(&p);
                if self.commits_here(&p) {
                    self.wal_at_sync = true;
                }
            }
            None => self.tx_wrote = true,
        }
        match self.prepare_on_conn(stmt_name) {
            Some(server_name) => fe::write_bind(&mut self.conn().wbuf, portal, &server_name, rest),
            // Unnamed, or a name the client never prepared: the server answers (26000 for the latter).
            None => self.conn().wbuf.extend_from_slice(frame),
        }
        self.pending.push_back(Pending::Bind);
        Ok(Flow::Continue)
    }

    pub(super) async fn on_describe(&mut self, frame: &[u8]) -> Step {
        let (kind, name) = fe::target(&frame[5..])?;
        if let Some(out) = self.local_describe(kind, name) {
            self.push_synthetic(Pending::Synth(out));
            return Ok(Flow::Continue);
        }
        let want = match (kind, self.backend.is_some()) {
            (b'S', false) => self
                .statement_plan(name)
                .as_deref()
                .map_or(Want::Primary, |p| self.want(p)),
            _ => Want::Primary,
        };
        match self.ensure_backend(false, want).await? {
            Got::Ready => {}
            Got::Dropped => return Ok(Flow::Continue),
            Got::Wait => return Ok(Flow::Wait),
        }
        self.in_segment = true;
        let renamed = if kind == b'S' {
            self.prepare_on_conn(name)
        } else {
            None
        };
        match renamed {
            Some(server_name) => {
                fe::write_target(&mut self.conn().wbuf, fe::DESCRIBE, kind, &server_name)
            }
            None => self.conn().wbuf.extend_from_slice(frame),
        }
        self.pending.push_back(Pending::Describe);
        Ok(Flow::Continue)
    }

    pub(super) fn on_close(&mut self, frame: &[u8]) -> Result<(), End> {
        let (kind, name) = fe::target(&frame[5..])?;
        if self.local.close(kind, name) {
            self.push_synthetic(Pending::SynthCloseComplete);
            return Ok(());
        }
        if kind == b'S' && !name.is_empty() {
            // The server keeps its shared copy for other clients; only the client's name goes.
            self.statements.remove(name);
            self.push_synthetic(Pending::SynthCloseComplete);
            return Ok(());
        }
        match self.backend.as_mut() {
            Some(b) => {
                self.in_segment = true;
                b.wbuf.extend_from_slice(frame);
                self.pending.push_back(Pending::Close);
            }
            // No connection: no portal or unnamed statement exists on any server for this client.
            None => {
                if kind == b'S' {
                    self.unnamed_parse.clear();
                }
                be::write_close_complete(&mut self.cout);
            }
        }
        Ok(())
    }

    /// Queues an answer the proxy makes up, or sends it at once when nothing is owed before it.
    pub(super) fn push_synthetic(&mut self, p: Pending) {
        if self.backend.is_some() {
            self.in_segment = true;
            self.pending.push_back(p);
        } else {
            self.write_synthetic(p);
        }
    }

    pub(super) fn push_local_error(&mut self, err: SessionError) {
        let mut buf = BytesMut::new();
        err.write_to(&mut buf);
        self.push_synthetic(Pending::LocalError(buf.freeze()));
        self.local_skip = true;
    }

    pub(super) fn write_synthetic(&mut self, p: Pending) {
        match p {
            Pending::SynthParseComplete => be::write_parse_complete(&mut self.cout),
            Pending::SynthCloseComplete => be::write_close_complete(&mut self.cout),
            Pending::LocalError(bytes) | Pending::Synth(bytes) => {
                self.cout.extend_from_slice(&bytes)
            }
            Pending::SynthReady => {
                let status = self.client_tx_status();
                be::write_ready_for_query(&mut self.cout, status);
            }
            _ => unreachable!("only synthetic entries are written by the proxy"),
        }
    }

    /// Sends the made-up answers at the front of `pending`.
    pub(super) fn emit_synthetic_front(&mut self) {
        while self.pending.front().is_some_and(Pending::is_synthetic) {
            self.disarm_retry();
            let p = self.pending.pop_front().expect("front exists");
            self.write_synthetic(p);
        }
    }

    /// A client in a transaction whose server connection was lost: only ROLLBACK (or COMMIT, which
    /// Postgres also answers with ROLLBACK here) ends it; everything else gets 25P02.
    pub(super) fn on_failed_tx_frame(&mut self, tag: u8, frame: &[u8]) {
        let body = &frame[5..];
        // The first error tells why the transaction failed; later ones say it has.
        let failed = match tag {
            fe::SYNC | fe::FLUSH | fe::CLOSE => SessionError::InFailedTransaction,
            fe::QUERY if ends_transaction(fe::query_text(body)) => {
                SessionError::InFailedTransaction
            }
            _ => self
                .unreported_loss
                .take()
                .unwrap_or(SessionError::InFailedTransaction),
        };
        match tag {
            fe::QUERY => {
                if ends_transaction(fe::query_text(body)) {
                    be::write_command_complete(&mut self.cout, "ROLLBACK");
                    self.failed_tx = false;
                    self.unreported_loss = None;
                    be::write_ready_for_query(&mut self.cout, be::TX_IDLE);
                } else {
                    failed.write_to(&mut self.cout);
                    be::write_ready_for_query(&mut self.cout, be::TX_FAILED);
                }
            }
            fe::PARSE => {
                let ends = fe::parse_name(body)
                    .map(|(_, rest)| ends_transaction(fe::query_text(rest)))
                    .unwrap_or(false);
                if ends {
                    self.failed_tx_rollback = true;
                    be::write_parse_complete(&mut self.cout);
                } else {
                    failed.write_to(&mut self.cout);
                    self.local_skip = true;
                }
            }
            fe::BIND if self.failed_tx_rollback => {
                self.cout.extend_from_slice(b"2\0\0\0\x04");
            }
            fe::DESCRIBE if self.failed_tx_rollback => {
                self.cout.extend_from_slice(b"n\0\0\0\x04");
            }
            fe::EXECUTE if self.failed_tx_rollback => {
                be::write_command_complete(&mut self.cout, "ROLLBACK");
            }
            fe::CLOSE => be::write_close_complete(&mut self.cout),
            fe::SYNC => {
                let status = if self.failed_tx_rollback {
                    self.failed_tx = false;
                    self.failed_tx_rollback = false;
                    self.unreported_loss = None;
                    be::TX_IDLE
                } else {
                    be::TX_FAILED
                };
                be::write_ready_for_query(&mut self.cout, status);
            }
            fe::FLUSH => {}
            _ => {
                failed.write_to(&mut self.cout);
                self.local_skip = true;
            }
        }
    }
}

/// Messages that may start a unit of work (Sync and Flush alone need no routing).
fn starts_unit(tag: u8) -> bool {
    matches!(
        tag,
        fe::QUERY
            | fe::PARSE
            | fe::BIND
            | fe::DESCRIBE
            | fe::EXECUTE
            | fe::CLOSE
            | fe::FUNCTION_CALL
    )
}

/// Whether a SQL text holds one statement (a `;` may only end it).
fn single_statement(sql: &[u8]) -> bool {
    match memchr::memchr(b';', sql) {
        Some(semi) => sql[semi + 1..].iter().all(|b| b.is_ascii_whitespace()),
        None => true,
    }
}

/// Whether a transaction-ending statement is ROLLBACK or ABORT (rather than COMMIT or END).
pub(super) fn rolls_back(sql: &[u8]) -> bool {
    let text = String::from_utf8_lossy(sql);
    let mut rest = text.trim_start();
    // Past leading comments.
    loop {
        if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else {
            break;
        }
    }
    let first = rest
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    matches!(first.as_str(), "ROLLBACK" | "ABORT")
}

/// Whether a statement ends a transaction block (what a client sends to leave a failed transaction).
fn ends_transaction(sql: &[u8]) -> bool {
    let text = String::from_utf8_lossy(sql);
    let first = text
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    matches!(first.as_str(), "ROLLBACK" | "ABORT" | "COMMIT" | "END")
}

#[cfg(test)]
mod tests {
    use super::ends_transaction;

    #[test]
    fn rollback_or_commit() {
        assert!(super::rolls_back(b" rollback;"));
        assert!(super::rolls_back(b"ABORT"));
        assert!(super::rolls_back(b"/* app */ ROLLBACK"));
        assert!(super::rolls_back(b"-- why\nrollback"));
        assert!(!super::rolls_back(b"commit"));
        assert!(!super::rolls_back(b"END"));
    }

    #[test]
    fn transaction_enders() {
        assert!(ends_transaction(b"  rollback"));
        assert!(ends_transaction(b"COMMIT;"));
        assert!(ends_transaction(b"abort"));
        assert!(!ends_transaction(b"SELECT 1"));
        assert!(!ends_transaction(b"rollbacks"));
    }
}
