//! The session loop: one task owns a client socket and, while it holds one, a pooled server connection,
//! and moves frames between them as the bytes that arrived.
//!
//! Client → server: frames are read in batches, checked (known tag, length under
//! `proxy.max_message_size`), and appended to the server connection's write buffer; only Parse, Bind,
//! Describe and Close are looked into, to rename prepared statements (see `statements`). One write per
//! batch. Server → client: frames are scanned by tag only; ReadyForQuery, CommandComplete, ErrorResponse
//! and ParameterStatus update the session's view; everything else (rows, COPY data) is copied through.
//!
//! Transaction pooling: the server connection is taken at the first message that needs one and given
//! back at a ReadyForQuery with status idle once nothing more is owed (`pending`), no extended-protocol
//! segment is open, and the session is not pinned (temp tables, LISTEN, ...; see `session_state`).

use std::collections::{HashMap, VecDeque};
use std::io::ErrorKind;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use tracing::{debug, warn};

use super::listener::Worker;
use super::multiplex::{self, MuxConn, MuxOutput, StatementSpeed};
use super::pending::Pending;
use super::startup::Ready;
use super::statements::Statement;
use crate::cancel::{CancelSlot, CancelTarget};
use crate::config::{PoolMode, ServerAddr};
use crate::errors::SessionError;
use crate::pool::Checkout;
use crate::protocol::backend as be;
use crate::protocol::frontend as fe;
use crate::protocol::{ProtocolError, peek_header};
use crate::session_state::{self, Settings};

/// Stop reading one side while this much is waiting to be written to the other.
const HIGH_WATER: usize = 1 << 20;
/// Read at least this much at a time.
const READ_CHUNK: usize = 16 * 1024;
/// A server connection holding more shared statements than this is closed rather than pooled.
const MAX_PREPARED_PER_CONN: usize = 2000;

/// How the loop goes on after handling an event.
enum Flow {
    Continue,
    End,
}

/// Why a session ends early.
enum End {
    /// The client closed its socket or the write failed.
    ClientGone,
    /// A FATAL error to report, then close.
    Fatal(SessionError),
}

type Step = Result<Flow, End>;

impl From<ProtocolError> for End {
    fn from(e: ProtocolError) -> End {
        End::Fatal(SessionError::Protocol(e))
    }
}

enum Event {
    MuxAnswer,
    ClientReadable,
    BackendReadable,
    ClientWritable,
    BackendWritable,
    ClientError,
    BackendError(String),
}

pub struct Session {
    worker: Rc<Worker>,
    /// Shared with multiplexed connections, which write answers straight to it when they can.
    client: Rc<tokio::net::TcpStream>,
    /// Bytes read from the client and not yet handled.
    cin: BytesMut,
    /// Bytes to send to the client.
    cout: BytesMut,
    backend: Option<Checkout>,
    pending: VecDeque<Pending>,
    /// The server discards messages until Sync (an error in the extended protocol).
    server_skipping: bool,
    /// The proxy reported an error itself and drops the client's messages until Sync.
    local_skip: bool,
    /// An extended-protocol segment is open (a message since the last Sync).
    in_segment: bool,
    /// The server connection was lost inside a transaction: the client's transaction is aborted.
    failed_tx: bool,
    /// In a failed transaction, the open segment is a ROLLBACK the proxy answers itself.
    failed_tx_rollback: bool,
    /// The loss of the server connection that failed the transaction, not yet told to the client.
    unreported_loss: Option<SessionError>,
    /// A FATAL error the server sent before closing; the reason given when the connection ends.
    server_fatal: Option<String>,
    statements: HashMap<Bytes, Arc<Statement>>,
    /// The client's session settings (startup parameters, then what it SET).
    settings: Arc<Settings>,
    startup_settings: Arc<Settings>,
    /// A statement may have changed session state: read it back before giving the connection away.
    dirty: bool,
    /// Session state that cannot move between connections exists: keep the connection.
    pinned: bool,
    /// Whether this session ever changed session state (session mode cleans up with DISCARD ALL).
    touched: bool,
    /// The last unnamed Parse, to re-prepare it if a later Bind lands on another connection.
    unnamed_parse: BytesMut,
    unnamed_on: Option<u64>,
    cancel: Arc<CancelSlot>,
    max_message: usize,
    session_mode: bool,
    shard: String,
    primary: ServerAddr,
    /// CopyDone and CopyFail messages the client sent so far.
    copy_ends: u32,
    /// Where answers to this session's multiplexed segments arrive.
    mux_out: Rc<MuxOutput>,
    /// A multiplexed segment of this session is in flight; the client's next frames wait for it.
    mux_inflight: bool,
    /// A segment being timed on an exclusive connection, to learn whether it may be multiplexed.
    timing: Option<(Arc<StatementSpeed>, Instant)>,
}

/// What `try_multiplex` did with the frames at the front of the buffer.
enum MuxTry {
    /// Queued on a multiplexed connection: that many bytes were used.
    Submitted(usize),
    /// The segment has the right shape but has not been timed: run it exclusively and time it.
    Time(Arc<StatementSpeed>),
    No,
}

impl Session {
    pub fn new(worker: Rc<Worker>, ready: Ready, cancel: Arc<CancelSlot>) -> Session {
        let config = worker.shared.config.clone();
        Session {
            client: Rc::new(ready.stream),
            cin: ready.leftover,
            cout: BytesMut::new(),
            backend: None,
            pending: VecDeque::new(),
            server_skipping: false,
            local_skip: false,
            in_segment: false,
            failed_tx: false,
            failed_tx_rollback: false,
            unreported_loss: None,
            server_fatal: None,
            statements: HashMap::new(),
            settings: ready.startup_settings.clone(),
            startup_settings: ready.startup_settings,
            dirty: false,
            pinned: false,
            touched: false,
            unnamed_parse: BytesMut::new(),
            unnamed_on: None,
            cancel,
            max_message: config.proxy.max_message_size,
            session_mode: config.proxy.pool_mode == PoolMode::Session,
            shard: config.shards[0].name.clone(),
            primary: config.default_primary(),
            copy_ends: 0,
            mux_out: Rc::new(MuxOutput::default()),
            mux_inflight: false,
            timing: None,
            worker,
        }
    }

    /// Runs the session until the client leaves or a FATAL error; then cleans up the server connection.
    pub async fn run(mut self) {
        let mut outcome = if self.cin.is_empty() {
            Ok(Flow::Continue)
        } else {
            self.on_client_data().await
        };
        while let Ok(Flow::Continue) = outcome {
            outcome = match self.next_event().await {
                Event::MuxAnswer => self.on_mux_answer().await,
                Event::ClientReadable => self.read_client().await,
                Event::BackendReadable => self.read_backend().await,
                Event::ClientWritable => self.flush_client(),
                Event::BackendWritable => self.flush_backend_step().await,
                Event::ClientError => Err(End::ClientGone),
                Event::BackendError(reason) => {
                    self.on_backend_lost(reason);
                    self.flush_client()
                }
            };
        }
        if let Err(End::Fatal(e)) = outcome {
            debug!(error = %e, "closing the session");
            e.write_to(&mut self.cout);
            self.write_out_before_close().await;
        }
        self.finish().await;
    }

    async fn next_event(&self) -> Event {
        let want_client = self
            .backend
            .as_ref()
            .is_none_or(|b| b.wbuf.len() < HIGH_WATER)
            && !(self.mux_inflight && self.cin.len() >= HIGH_WATER);
        let backend = self.backend.as_deref();
        let want_backend = backend.is_some() && self.cout.len() < HIGH_WATER;
        let backend_out = backend.is_some_and(|b| !b.wbuf.is_empty());
        tokio::select! {
            biased;
            _ = self.mux_out.notify.notified(), if self.mux_inflight => Event::MuxAnswer,
            r = async { backend.expect("checked").stream.readable().await }, if want_backend => match r {
                Ok(()) => Event::BackendReadable,
                Err(e) => Event::BackendError(e.to_string()),
            },
            r = self.client.readable(), if want_client => match r {
                Ok(()) => Event::ClientReadable,
                Err(_) => Event::ClientError,
            },
            r = self.client.writable(), if !self.cout.is_empty() => match r {
                Ok(()) => Event::ClientWritable,
                Err(_) => Event::ClientError,
            },
            r = async { backend.expect("checked").stream.writable().await }, if backend_out => match r {
                Ok(()) => Event::BackendWritable,
                Err(e) => Event::BackendError(e.to_string()),
            },
        }
    }

    // ---------------------------------------------------------------- client → server

    async fn read_client(&mut self) -> Step {
        if self.cin.capacity() - self.cin.len() < READ_CHUNK / 2 {
            self.cin.reserve(READ_CHUNK);
        }
        match self.client.try_read_buf(&mut self.cin) {
            Ok(0) => Err(End::ClientGone),
            Ok(_) => self.on_client_data().await,
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(Flow::Continue),
            Err(_) => Err(End::ClientGone),
        }
    }

    /// Handles every whole frame in `cin`, then writes what is ready on both sides.
    async fn on_client_data(&mut self) -> Step {
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
            let frame = &cin[off..off + header.frame_len];
            match self.on_client_frame(header.tag, frame).await {
                Ok(Flow::Continue) => off += header.frame_len,
                other => break other,
            }
        };
        cin.advance(off);
        self.cin = cin;
        if let Ok(Flow::Continue) = result {
            self.emit_synthetic_front();
            self.flush_backend_now();
            return self.flush_client();
        }
        result
    }

    async fn on_client_frame(&mut self, tag: u8, frame: &[u8]) -> Step {
        if !fe::is_known_tag(tag) {
            return Err(ProtocolError::UnknownFrontendTag { tag }.into());
        }
        if tag == fe::TERMINATE {
            return Ok(Flow::End);
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
        let body = &frame[5..];
        match tag {
            fe::SYNC => self.on_sync(frame),
            fe::FLUSH => {
                if let Some(b) = self.backend.as_mut() {
                    b.wbuf.extend_from_slice(frame);
                }
            }
            fe::QUERY => {
                if self.ensure_backend(true).await? {
                    if session_state::text_may_change_session(fe::query_text(body)) {
                        self.dirty = true;
                    }
                    self.conn().wbuf.extend_from_slice(frame);
                    self.pending.push_back(Pending::SimpleQuery);
                }
            }
            fe::PARSE => self.on_parse(frame).await?,
            fe::BIND => self.on_bind(frame).await?,
            fe::DESCRIBE => self.on_describe(frame).await?,
            fe::CLOSE => self.on_close(frame)?,
            fe::EXECUTE => {
                if self.ensure_backend(false).await? {
                    self.in_segment = true;
                    self.conn().wbuf.extend_from_slice(frame);
                    let copy_ends = self.copy_ends;
                    self.pending.push_back(Pending::Execute { copy_ends });
                }
            }
            fe::FUNCTION_CALL => {
                if self.ensure_backend(true).await? {
                    self.conn().wbuf.extend_from_slice(frame);
                    self.pending.push_back(Pending::FunctionCall);
                }
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

    fn conn(&mut self) -> &mut crate::backend::BackendConn {
        self.backend.as_mut().expect("a server connection is held")
    }

    fn on_sync(&mut self, frame: &[u8]) {
        self.in_segment = false;
        match self.backend.as_mut() {
            Some(b) => {
                b.wbuf.extend_from_slice(frame);
                let copy_ends = self.copy_ends;
                self.pending.push_back(Pending::Sync { copy_ends });
                self.server_skipping = false;
            }
            None => {
                let status = self.client_tx_status();
                be::write_ready_for_query(&mut self.cout, status);
            }
        }
    }

    fn client_tx_status(&self) -> u8 {
        match &self.backend {
            Some(b) => b.tx_status,
            None if self.failed_tx => be::TX_FAILED,
            None => be::TX_IDLE,
        }
    }

    async fn on_parse(&mut self, frame: &[u8]) -> Result<(), End> {
        if !self.ensure_backend(false).await? {
            return Ok(());
        }
        self.in_segment = true;
        let (name, rest) = fe::parse_name(&frame[5..])?;
        if name.is_empty() {
            if session_state::text_may_change_session(fe::query_text(rest)) {
                self.dirty = true;
            }
            self.unnamed_parse.clear();
            self.unnamed_parse.extend_from_slice(frame);
            let conn = self.conn();
            conn.wbuf.extend_from_slice(frame);
            let id = conn.id;
            self.unnamed_on = Some(id);
            self.pending.push_back(Pending::Parse {
                stmt: None,
                client_name: None,
                swallow: false,
            });
            return Ok(());
        }
        if self.statements.contains_key(name) {
            let err = SessionError::DuplicateStatement(String::from_utf8_lossy(name).into_owned());
            self.push_local_error(err);
            return Ok(());
        }
        let stmt = self.worker.shared.statements.intern(rest);
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
        Ok(())
    }

    /// Makes sure the held connection has the statement a Bind or Describe names, injecting a Parse
    /// whose answer is swallowed; returns the name to use on the server.
    fn prepare_on_conn(&mut self, client_name: &[u8]) -> Option<Bytes> {
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

    async fn on_bind(&mut self, frame: &[u8]) -> Result<(), End> {
        if !self.ensure_backend(false).await? {
            return Ok(());
        }
        self.in_segment = true;
        let (portal, stmt_name, rest) = fe::bind_statement(&frame[5..])?;
        match self.prepare_on_conn(stmt_name) {
            Some(server_name) => fe::write_bind(&mut self.conn().wbuf, portal, &server_name, rest),
            // Unnamed, or a name the client never prepared: the server answers (26000 for the latter).
            None => self.conn().wbuf.extend_from_slice(frame),
        }
        self.pending.push_back(Pending::Bind);
        Ok(())
    }

    async fn on_describe(&mut self, frame: &[u8]) -> Result<(), End> {
        if !self.ensure_backend(false).await? {
            return Ok(());
        }
        self.in_segment = true;
        let (kind, name) = fe::target(&frame[5..])?;
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
        Ok(())
    }

    fn on_close(&mut self, frame: &[u8]) -> Result<(), End> {
        let (kind, name) = fe::target(&frame[5..])?;
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
    fn push_synthetic(&mut self, p: Pending) {
        if self.backend.is_some() {
            self.in_segment = true;
            self.pending.push_back(p);
        } else {
            self.write_synthetic(p);
        }
    }

    fn push_local_error(&mut self, err: SessionError) {
        let mut buf = BytesMut::new();
        err.write_to(&mut buf);
        self.push_synthetic(Pending::LocalError(buf.freeze()));
        self.local_skip = true;
    }

    fn write_synthetic(&mut self, p: Pending) {
        match p {
            Pending::SynthParseComplete => be::write_parse_complete(&mut self.cout),
            Pending::SynthCloseComplete => be::write_close_complete(&mut self.cout),
            Pending::LocalError(bytes) => self.cout.extend_from_slice(&bytes),
            _ => unreachable!("only synthetic entries are written by the proxy"),
        }
    }

    /// Sends the made-up answers at the front of `pending`.
    fn emit_synthetic_front(&mut self) {
        while self.pending.front().is_some_and(Pending::is_synthetic) {
            let p = self.pending.pop_front().expect("front exists");
            self.write_synthetic(p);
        }
    }

    /// Takes a server connection if none is held. On failure the client gets the error (and, for a
    /// simple query, ReadyForQuery) and `Ok(false)`: the message is dropped.
    async fn ensure_backend(&mut self, simple: bool) -> Result<bool, End> {
        if self.backend.is_some() {
            return Ok(true);
        }
        match self.checkout().await {
            Ok(()) => {
                // Time the statement from here: waiting for the pool says nothing of it.
                if let Some((_, started)) = self.timing.as_mut() {
                    *started = Instant::now();
                }
                Ok(true)
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
                Ok(false)
            }
        }
    }

    async fn checkout(&mut self) -> Result<(), SessionError> {
        let conn = self.checkout_conn().await?;
        self.cancel.set(Some(CancelTarget {
            addr: conn.addr,
            pid: conn.pid,
            secret: conn.secret,
        }));
        self.unnamed_on = None;
        self.backend = Some(conn);
        Ok(())
    }

    /// A pooled connection with this client's session settings applied.
    async fn checkout_conn(&mut self) -> Result<Checkout, SessionError> {
        let mut conn = self.worker.pools.get(&self.shard, self.primary).await?;
        if !Arc::ptr_eq(&conn.settings, &self.settings) {
            if *conn.settings != *self.settings
                && let Some(sql) = session_state::replay_sql(&conn.settings, &self.settings)
            {
                match conn.run_internal(&sql).await {
                    Ok(r) => {
                        if let Some(e) = r.error {
                            warn!(error = %e, "could not restore the client's settings on a server connection");
                            conn.broken = true;
                        }
                    }
                    Err(source) => {
                        let _ = Checkout::take(conn);
                        return Err(SessionError::BackendUnavailable {
                            shard: self.shard.clone(),
                            source,
                        });
                    }
                }
            }
            conn.settings = self.settings.clone();
        }
        Ok(conn)
    }

    // ------------------------------------------------------------ multiplexing (see `multiplex`)

    /// Whether the next segment may go to a multiplexed connection: nothing else is going on.
    fn mux_ready(&self) -> bool {
        self.worker.mux_limit > 0
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
    }

    /// Queues the segment at the front of `buf` on a multiplexed connection if it qualifies.
    async fn try_multiplex(&mut self, buf: &[u8]) -> MuxTry {
        let Some((len, named, speed)) = self.qualifying_segment(buf) else {
            tracing::trace!(first = ?buf.first().map(|b| *b as char), "segment does not qualify for multiplexing");
            return MuxTry::No;
        };
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
        let Some(mux) = self.pick_mux().await else {
            tracing::trace!(limit = self.worker.mux_limit, "no multiplexed connection");
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
                        self.unnamed_on = None;
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
        // With nothing of ours waiting to go out, the answer may go straight to the client socket.
        let direct = self.cout.is_empty().then(|| self.client.clone());
        self.mux_out.input_waiting.set(len < buf.len());
        mux.submit(self.mux_out.clone(), swallow, Some(speed), direct);
        self.mux_inflight = true;
        MuxTry::Submitted(len)
    }

    /// `(length, named statement, speed record)` of a multiplexable segment at the front of `buf`:
    /// `Query`, or `[Parse ""] Bind [Describe portal ""] Execute("", 0) Sync`, all of it buffered.
    fn qualifying_segment(
        &self,
        buf: &[u8],
    ) -> Option<(usize, Option<Arc<Statement>>, Arc<StatementSpeed>)> {
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
            return multiplex::text_qualifies(text).then(|| (off, None, self.text_speed(text)));
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
        let (named, speed) = match unnamed_text {
            Some(text) if stmt_name.is_empty() => (None, self.text_speed(text)),
            Some(_) => return None,
            None => {
                let stmt = self.statements.get(stmt_name)?;
                if !stmt.multiplexable {
                    return None;
                }
                (Some(stmt.clone()), stmt.speed.clone())
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
        (tag == fe::SYNC).then_some((off, named, speed))
    }

    /// The speed record of a SQL text (see `multiplex::speed_key`).
    fn text_speed(&self, text: &[u8]) -> Arc<StatementSpeed> {
        let key = multiplex::speed_key(text);
        let mut speeds = self.worker.text_speeds.borrow_mut();
        if speeds.len() > 10_000 {
            speeds.clear();
        }
        speeds.entry(key).or_default().clone()
    }

    /// A multiplexed connection for this session's settings: an idle one, a new one while under the
    /// limit, else the least busy.
    async fn pick_mux(&mut self) -> Option<Rc<MuxConn>> {
        let (best, count) = {
            let mut list = self.worker.mux.borrow_mut();
            list.retain(|m| !m.is_broken());
            let best = list
                .iter()
                .filter(|m| m.accepts(&self.settings))
                .min_by_key(|m| m.in_flight())
                .cloned();
            (best, list.len() + self.worker.mux_opening.get())
        };
        if let Some(m) = &best
            && (m.in_flight() == 0 || count >= self.worker.mux_limit)
        {
            return best;
        }
        if count >= self.worker.mux_limit {
            return None;
        }
        // Count it before the await, so sessions that arrive meanwhile do not open more.
        let opening = &self.worker.mux_opening;
        opening.set(opening.get() + 1);
        let conn = self.checkout_conn().await;
        let opening = &self.worker.mux_opening;
        opening.set(opening.get() - 1);
        match conn {
            Ok(conn) => {
                let mux = multiplex::start(conn);
                self.worker.mux.borrow_mut().push(mux.clone());
                Some(mux)
            }
            Err(e) => {
                debug!(error = %e, "no connection to multiplex on");
                best
            }
        }
    }

    /// Moves what the multiplexed connection collected for this session into `cout`.
    fn take_mux_answer(&mut self) {
        let mut buf = self.mux_out.buf.borrow_mut();
        self.cout.extend_from_slice(&buf);
        buf.clear();
        if self.mux_out.done.get() {
            self.mux_inflight = false;
        }
    }

    async fn on_mux_answer(&mut self) -> Step {
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

    /// Gives the server connection back (or closes it when it cannot be trusted).
    fn release(&mut self) {
        if let Some(conn) = self.backend.take() {
            self.cancel.set(None);
            self.unnamed_on = None;
            if conn.broken || conn.prepared.len() > MAX_PREPARED_PER_CONN {
                drop(Checkout::take(conn));
            }
        }
    }

    /// A client in a transaction whose server connection was lost: only ROLLBACK (or COMMIT, which
    /// Postgres also answers with ROLLBACK here) ends it; everything else gets 25P02.
    fn on_failed_tx_frame(&mut self, tag: u8, frame: &[u8]) {
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

    // ---------------------------------------------------------------- server → client

    async fn read_backend(&mut self) -> Step {
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
            Ok(_) => {}
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
    fn on_backend_data(&mut self) -> Result<(), String> {
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
            if !forward {
                self.cout.extend_from_slice(&rbuf[run..off]);
                run = off + h.frame_len;
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
    fn on_backend_frame(&mut self, tag: u8, body: &[u8]) -> Result<bool, String> {
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
                let severity = be::error_field(body, b'V').or_else(|| be::error_field(body, b'S'));
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

    fn pop_expected(&mut self, want: fn(&Pending) -> bool, what: &str) -> Result<bool, String> {
        match self.pending.pop_front() {
            Some(p) if want(&p) => Ok(true),
            other => Err(format!("{what} arrived while {other:?} was expected")),
        }
    }

    /// An error in the extended protocol: the server skips to the next Sync, so do its entries.
    fn fail_segment(&mut self) {
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

    /// After a transaction: read back session state if it may have changed, then give the
    /// connection back unless the session is pinned to it.
    async fn maybe_release(&mut self) {
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
    async fn capture(&mut self) {
        let startup = self.startup_settings.clone();
        let Some(conn) = self.backend.as_mut() else {
            return;
        };
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
    fn on_backend_lost(&mut self, reason: String) {
        let Some(conn) = self.backend.take() else {
            return;
        };
        let reason = self.server_fatal.take().unwrap_or(reason);
        self.cancel.set(None);
        let server = conn.addr;
        let in_tx = conn.tx_status != be::TX_IDLE;
        drop(Checkout::take(conn));
        warn!(%server, %reason, "lost a server connection");
        let err = SessionError::BackendLost { server, reason };
        let owed_ready = self.pending.iter().filter(|p| p.ends_with_ready()).count();
        self.pending.clear();
        self.server_skipping = false;
        self.unnamed_on = None;
        let status = if in_tx { be::TX_FAILED } else { be::TX_IDLE };
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
        if in_tx && owed_ready == 0 && !self.local_skip {
            // The client sits idle in its transaction: tell it with its next statement.
            self.unreported_loss = Some(err);
        }
    }

    // ---------------------------------------------------------------- writing

    /// Writes to the client what it can without waiting.
    fn flush_client(&mut self) -> Step {
        while !self.cout.is_empty() {
            match self.client.try_write(&self.cout) {
                Ok(n) => self.cout.advance(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return Err(End::ClientGone),
            }
        }
        if self.cout.is_empty() {
            self.cout.clear();
        }
        Ok(Flow::Continue)
    }

    /// Writes to the server what it can without waiting; a failure ends the connection.
    fn flush_backend_now(&mut self) {
        let Some(conn) = self.backend.as_deref_mut() else {
            return;
        };
        let mut failure = None;
        while !conn.wbuf.is_empty() {
            match conn.stream.try_write(&conn.wbuf) {
                Ok(n) => conn.wbuf.advance(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(reason) = failure {
            self.on_backend_lost(reason);
        }
    }

    async fn flush_backend_step(&mut self) -> Step {
        self.flush_backend_now();
        self.flush_client()
    }

    async fn write_out_before_close(&mut self) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !self.cout.is_empty() {
            match tokio::time::timeout_at(deadline, self.client.writable()).await {
                Ok(Ok(())) => match self.client.try_write(&self.cout) {
                    Ok(n) => self.cout.advance(n),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => break,
                },
                _ => break,
            }
        }
        self.cout.clear();
    }

    /// The client is gone: leave nothing open on the server connection.
    async fn finish(&mut self) {
        let Some(mut conn) = self.backend.take() else {
            return;
        };
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
    fn transaction_enders() {
        assert!(ends_transaction(b"  rollback"));
        assert!(ends_transaction(b"COMMIT;"));
        assert!(ends_transaction(b"abort"));
        assert!(!ends_transaction(b"SELECT 1"));
        assert!(!ends_transaction(b"rollbacks"));
    }
}
