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
//!
//! This file holds the session's state and its event loop; the handling is split by direction:
//! `client` (client → server frames), `server` (server → client frames), `connection` (taking, giving
//! back and losing a server connection) and `multiplexed` (segments pipelined on shared connections).

use std::collections::{HashMap, VecDeque};
use std::io::ErrorKind;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use tracing::{debug, warn};

mod client;
mod connection;
mod fanout;
mod local;
mod multiplexed;
mod route;
mod server;
mod shards;

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
use crate::router::{Hint, Plan, TxControl};
use crate::session_state::{self, Settings};
use crate::topology::{BusyGuard, ServerState};

/// Stop reading one side while this much is waiting to be written to the other.
const HIGH_WATER: usize = 1 << 20;
/// Reads from a server take this much at a time; reads from a client start at `CLIENT_READ_MIN`
/// and grow to this while they fill the buffer.
const READ_CHUNK: usize = 64 * 1024;
const CLIENT_READ_MIN: usize = 2 * 1024;
/// A buffer left larger than this by a big message is freed once empty, so idle clients stay small.
const KEEP_BUFFER: usize = 64 * 1024;
/// A server connection holding more shared statements than this is closed rather than pooled.
const MAX_PREPARED_PER_CONN: usize = 2000;

/// How the loop goes on after handling an event.
enum Flow {
    Continue,
    End,
    /// The frame needs another server than the one held: leave it (and what follows) in the client
    /// buffer until the held connection is given back.
    Wait,
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
    /// shardgate began a graceful shutdown.
    Drain,
    /// Idle longer than `proxy.idle_client_timeout`.
    IdleTimeout,
    /// The request on the held connection ran longer than `proxy.query_timeout`.
    QueryTimeout,
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
    /// The shard map this session routes with: taken when it starts a transaction, kept until
    /// the transaction ends (see `refresh_map`).
    live: Arc<crate::reload::Live>,
    /// This client in `SHOW CLIENTS`.
    info: Arc<super::clients::ClientInfo>,
    /// When the request now running on the held connection was first written to it (for the
    /// server's latency statistics).
    sent_at: Option<Instant>,
    /// `proxy.query_timeout` ran out for the request on the held connection: it was cancelled.
    timed_out: bool,
    /// When the fan-out unit now running began (for the servers' latency statistics).
    fanout_started: Instant,
    /// The fan-out unit's `query_timeout` timer, and whether it fired.
    fanout_watchdog: Option<(tokio::task::JoinHandle<()>, Rc<std::cell::Cell<bool>>)>,
    /// That timer fired in the current unit (its connections are not pooled).
    fanout_fired: bool,
    /// The server's answer to that cancel arrived: the client gets shardgate's 57014 instead.
    timeout_error: bool,
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
    unnamed_plan: Option<Arc<Plan>>,
    unnamed_on: Option<u64>,
    cancel: Arc<CancelSlot>,
    max_message: usize,
    session_mode: bool,
    /// More than one shard, or sharded tables: units are routed by shard (`shards`).
    sharding: bool,
    /// The shard of the held connection.
    shard_idx: usize,
    /// The shard the current unit goes to (see `shards::route_unit`).
    unit_shard: usize,
    /// Graceful shutdown (`Shared::drain`): seen once, then the session ends when idle.
    drain: tokio::sync::watch::Receiver<bool>,
    draining: bool,
    /// The unit may run on any shard (no key, no pin, no held connection): a shard whose primary
    /// is unreachable is swapped for another rather than waited for.
    unit_any: bool,
    /// The current unit has been routed.
    unit_routed: bool,
    /// Bytes of the routed unit not handled yet: a Bind beyond them was not seen by the routing.
    unit_left: usize,
    /// The plan of the simple Query the unit is, from its routing.
    unit_plan: Option<Arc<Plan>>,
    /// `SET shardgate.shard` / `shardgate.sharding_key`.
    shard_pin: Option<crate::router::ShardHint>,
    /// The client's last BEGIN text, to open its transaction on other shards.
    begin_sql: String,
    /// A transaction (or unit) over several shards: its connections.
    multi: Option<Box<fanout::Multi>>,
    /// A COPY FROM STDIN being split over the shards.
    copy_split: Option<Box<fanout::CopySplit>>,
    /// The server of the held connection, counted busy while held.
    held: Option<BusyGuard>,
    /// Routing: the client's address (for `source` balancing), `SET shardgate.target`, the WAL
    /// position of its last write (read-your-writes), a write sent in the current transaction.
    client_ip: std::net::IpAddr,
    target: route::Target,
    /// Per shard.
    min_lsn: Vec<u64>,
    tx_wrote: bool,
    /// The open segment commits a write: read the WAL position after its Sync.
    wal_at_sync: bool,
    /// A BEGIN went to the held connection since its last ReadyForQuery.
    begun: bool,
    /// A simple-query BEGIN not sent yet: the statement after it decides the server (SET
    /// TRANSACTION READ ONLY → a replica).
    deferred_begin: Option<Bytes>,
    /// Client frames waiting for the held connection to be given back (see `Flow::Wait`).
    waiting: bool,
    /// A read sent to a replica, kept until its first answer so it can go to another server if the
    /// connection fails first.
    retry: route::Retry,
    /// The server the multiplexed path chose for a read it then could not multiplex: the exclusive
    /// path takes it, so each read is balanced once.
    chosen: Option<Arc<ServerState>>,
    /// `SET/SHOW shardgate.*` prepared through the extended protocol, answered by the proxy.
    local: local::LocalStatements,
    /// CopyDone and CopyFail messages the client sent so far.
    copy_ends: u32,
    /// How much the next client read may take (see `read_client`).
    read_chunk: usize,
    /// Where answers to this session's multiplexed segments arrive.
    mux_out: Rc<MuxOutput>,
    /// A multiplexed segment of this session is in flight; the client's next frames wait for it.
    mux_inflight: bool,
    /// A segment being timed on an exclusive connection, to learn whether it may be multiplexed.
    timing: Option<(Arc<StatementSpeed>, Instant)>,
}

impl Session {
    pub fn new(
        worker: Rc<Worker>,
        ready: Ready,
        cancel: Arc<CancelSlot>,
        info: Arc<super::clients::ClientInfo>,
    ) -> Session {
        let live = worker.sync();
        let config = live.config.clone();
        Session {
            client: Rc::new(ready.stream),
            // pgwire's read buffer, only if it holds bytes (else its 8 kB would stay with an idle client).
            cin: if ready.leftover.is_empty() {
                BytesMut::new()
            } else {
                ready.leftover
            },
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
            unnamed_plan: None,
            unnamed_on: None,
            cancel,
            max_message: config.proxy.max_message_size,
            session_mode: config.proxy.pool_mode == PoolMode::Session,
            sharding: live.classify.sharding,
            shard_idx: 0,
            unit_shard: 0,
            drain: worker.shared.drain.subscribe(),
            draining: false,
            unit_any: false,
            unit_routed: false,
            unit_left: 0,
            unit_plan: None,
            shard_pin: None,
            begin_sql: "BEGIN".into(),
            multi: None,
            copy_split: None,
            held: None,
            client_ip: ready
                .client_addr
                .map_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), |a| {
                    a.ip()
                }),
            target: route::Target::Auto,
            min_lsn: vec![0; config.shards.len()],
            tx_wrote: false,
            wal_at_sync: false,
            begun: false,
            deferred_begin: None,
            waiting: false,
            retry: route::Retry::default(),
            local: local::LocalStatements::default(),
            chosen: None,
            copy_ends: 0,
            read_chunk: CLIENT_READ_MIN,
            mux_out: Rc::new(MuxOutput::default()),
            mux_inflight: false,
            timing: None,
            worker,
            live,
            info,
            sent_at: None,
            timed_out: false,
            timeout_error: false,
            fanout_started: Instant::now(),
            fanout_watchdog: None,
            fanout_fired: false,
        }
    }

    /// Takes the map in force if a reload installed a new one and this session has nothing open
    /// (no transaction, no held connection, nothing owed): what a transaction started on, it
    /// finishes on.
    fn refresh_map(&mut self) {
        if self.live.generation == self.worker.shared.generation()
            || self.backend.is_some()
            || self.multi.is_some()
            || self.in_segment
            || !self.idle_for_shutdown()
        {
            return;
        }
        let live = self.worker.sync();
        let config = &live.config;
        if config.shards.len() != self.live.config.shards.len() {
            self.min_lsn = vec![0; config.shards.len()];
            self.shard_idx = 0;
            self.unit_shard = 0;
        }
        self.max_message = config.proxy.max_message_size;
        self.session_mode = config.proxy.pool_mode == PoolMode::Session;
        self.sharding = live.classify.sharding;
        if !Arc::ptr_eq(&live.classify, &self.live.classify) {
            // Plans made with the old tables and functions: the statements are made again.
            for stmt in self.statements.values_mut() {
                *stmt = self
                    .worker
                    .shared
                    .statements
                    .intern(&stmt.parse_rest, &live.classify);
            }
            self.unnamed_plan = None;
        }
        self.chosen = None;
        self.live = live;
    }

    /// Runs the session until the client leaves or a FATAL error; then cleans up the server connection.
    pub async fn run(mut self) {
        let mut outcome = if self.cin.is_empty() {
            Ok(Flow::Continue)
        } else {
            self.on_client_data().await
        };
        while let Ok(Flow::Continue) = outcome {
            if self.draining && self.idle_for_shutdown() {
                debug!(
                    status = self.client_tx_status(),
                    multi = self.multi.is_some(),
                    backend = self.backend.is_some(),
                    deferred = self.deferred_begin.is_some(),
                    "shutting down: the session has no transaction open; closing it"
                );
                outcome = Err(End::Fatal(SessionError::Shutdown));
                break;
            }
            outcome = match self.next_event().await {
                Event::Drain => {
                    self.draining = true;
                    Ok(Flow::Continue)
                }
                Event::IdleTimeout => Err(End::Fatal(SessionError::IdleTimeout)),
                Event::QueryTimeout => {
                    self.cancel_for_timeout();
                    Ok(Flow::Continue)
                }
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
            if let Ok(Flow::Continue) = outcome {
                outcome = self.resume_client().await;
            }
        }
        if let Err(End::Fatal(e)) = outcome {
            debug!(error = %e, "closing the session");
            e.write_to(&mut self.cout);
            self.write_out_before_close().await;
        }
        self.finish().await;
    }

    /// No transaction open and nothing owed either way: a draining session may end now.
    fn idle_for_shutdown(&self) -> bool {
        self.client_tx_status() == be::TX_IDLE
            && self.pending.is_empty()
            && !self.mux_inflight
            && self.copy_split.is_none()
            && self
                .backend
                .as_ref()
                .is_none_or(|b| b.tx_status == be::TX_IDLE)
    }

    async fn next_event(&mut self) -> Event {
        let draining = self.draining;
        // The idle timer runs only when it is set and the client has nothing open or owed.
        let idle_limit = self.live.config.proxy.idle_client_timeout;
        let idle = !idle_limit.is_zero() && self.cin.is_empty() && self.idle_for_shutdown();
        // The query timer runs while a request written to the held connection is unanswered.
        let query_limit = self.live.config.proxy.query_timeout;
        let query_deadline = match self.sent_at {
            Some(t) if !query_limit.is_zero() && !self.timed_out && !self.pending.is_empty() => {
                Some(tokio::time::Instant::from_std(t + query_limit))
            }
            _ => None,
        };
        let drain = &mut self.drain;
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
            _ = drain.wait_for(|d| *d), if !draining => Event::Drain,
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
            _ = tokio::time::sleep(idle_limit), if idle => Event::IdleTimeout,
            _ = async { tokio::time::sleep_until(query_deadline.expect("checked")).await }, if query_deadline.is_some() => Event::QueryTimeout,
        }
    }

    /// `proxy.query_timeout` ran out: the server is asked to cancel the request (its 57014 is
    /// passed on with shardgate's message), and the connection is closed afterwards rather than
    /// pooled, so a late cancel can never hit another client's statement.
    fn cancel_for_timeout(&mut self) {
        let Some(conn) = self.backend.as_deref_mut() else {
            return;
        };
        self.timed_out = true;
        conn.broken = true;
        let (addr, pid, secret) = (conn.addr, conn.pid, conn.secret);
        warn!(server = %addr, timeout = ?self.live.config.proxy.query_timeout, "query_timeout: cancelling the statement");
        tokio::task::spawn_local(async move {
            if let Err(e) = crate::backend::send_cancel(addr, pid, secret).await {
                warn!(server = %addr, error = %e, "could not send the cancel for query_timeout");
            }
        });
    }

    fn conn(&mut self) -> &mut crate::backend::BackendConn {
        self.backend.as_mut().expect("a server connection is held")
    }

    fn client_tx_status(&self) -> u8 {
        match &self.backend {
            Some(b) => b.tx_status,
            None if self.failed_tx => be::TX_FAILED,
            None if self.multi.is_some() => self.multi.as_ref().expect("checked").status(),
            None if self.deferred_begin.is_some() => be::TX_IN_BLOCK,
            None => be::TX_IDLE,
        }
    }

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
            if self.cout.capacity() > KEEP_BUFFER {
                self.cout = BytesMut::new();
            }
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
                Ok(n) => {
                    conn.wbuf.advance(n);
                    if let Some(h) = &self.held {
                        h.server().stats.sent(self.worker.index, n);
                    }
                    if self.sent_at.is_none() {
                        self.sent_at = Some(Instant::now());
                    }
                }
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
}
