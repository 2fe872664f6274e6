//! Multiplexed server connections: short, self-contained statements of different clients pipelined on
//! one server connection.
//!
//! A segment qualifies when it cannot leave anything behind on the connection: one simple `Query`, or
//! `[Parse unnamed] Bind [Describe portal] Execute Sync`, of a single statement that starts with SELECT,
//! does not look like it changes session state (`session_state::text_may_change_session`), and has run
//! in under [`FAST`] every time it was timed on an exclusive connection. Such a segment ends with Sync,
//! so the server commits or rolls back its implicit transaction and is idle again before it reads the
//! next client's segment; an error in one segment makes the server skip only to that segment's Sync.
//!
//! Why: on a machine where the proxy, Postgres and the clients share the cores, a round trip costs
//! mostly wake-ups and syscalls. Segments that arrive in the same event-loop turn go out in one write;
//! the server reads them in one read and runs them back to back without sleeping in between; answers
//! come back in few reads. What this could cost is head-of-line blocking, which is why only statements
//! that have always been fast are multiplexed: one whose answer ever takes longer than [`SLOW`] is never
//! multiplexed again.
//!
//! The connection is owned by one task ([`run`]): it writes what sessions queued in [`MuxConn::out`]
//! and hands each answer, up to its ReadyForQuery, to the session that asked, in order.

use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::io::ErrorKind;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::sync::Notify;
use tracing::warn;

use crate::errors::SessionError;
use crate::pool::Checkout;
use crate::protocol::backend as be;
use crate::protocol::peek_header;
use crate::session_state::{self, Settings};
use crate::topology::{BusyGuard, Role, ServerState};

/// A statement that ran faster than this on an exclusive connection may be multiplexed.
pub const FAST: Duration = Duration::from_millis(2);
/// A multiplexed segment whose answer took longer than this marks its statement slow for good.
pub const SLOW: Duration = Duration::from_millis(50);
/// Segments in flight on one connection before sessions use exclusive connections instead.
const MAX_IN_FLIGHT: usize = 64;

/// Slow answers in a row that make a statement slow for good. One slow answer can be a stall of
/// the machine (a checkpoint, a descheduled thread), not the statement.
const STRIKES: u8 = 3;

/// Fast/slow record of a statement (a prepared statement, or a SQL text).
#[derive(Debug, Default)]
pub struct StatementSpeed {
    /// 0 = not yet timed, 1 = fast, 2 = slow (never multiplexed).
    state: AtomicU8,
    /// Slow answers in a row.
    strikes: AtomicU8,
}

impl StatementSpeed {
    pub fn is_fast(&self) -> bool {
        self.state.load(Ordering::Relaxed) == 1
    }

    pub fn is_untimed(&self) -> bool {
        self.state.load(Ordering::Relaxed) == 0
    }

    /// Records one timing: under [`FAST`] makes an untimed statement fast and clears the strikes;
    /// over [`SLOW`] [`STRIKES`] times in a row makes it slow for good; in between (a busy moment)
    /// says nothing.
    pub fn record(&self, elapsed: Duration) {
        if elapsed >= SLOW {
            if self.strikes.fetch_add(1, Ordering::Relaxed) + 1 >= STRIKES {
                self.state.store(2, Ordering::Relaxed);
            }
        } else if elapsed < FAST {
            self.strikes.store(0, Ordering::Relaxed);
            let _ = self
                .state
                .compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

/// Whether SQL text has the shape of a multiplexable statement: a single statement starting with
/// SELECT that does not look like it changes session state.
pub fn text_qualifies(sql: &[u8]) -> bool {
    let start = sql
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(sql.len());
    let sql = &sql[start..];
    if sql.len() < 7 || !sql[..6].eq_ignore_ascii_case(b"select") || !sql[6].is_ascii_whitespace() {
        return false;
    }
    // One statement: a ';' may only end it.
    if let Some(semi) = memchr::memchr(b';', sql)
        && sql[semi + 1..].iter().any(|b| !b.is_ascii_whitespace())
    {
        return false;
    }
    !session_state::text_may_change_session(sql)
}

/// The key speed records are kept under: a hash of the SQL text without its numbers and string
/// literals, so `... WHERE aid = 1` and `... WHERE aid = 2` share one record.
pub fn speed_key(text: &[u8]) -> u64 {
    use std::hash::{DefaultHasher, Hasher};
    let mut h = DefaultHasher::new();
    let mut in_string = false;
    for &b in text {
        if b == b'\'' {
            in_string = !in_string;
            continue;
        }
        if !in_string && !b.is_ascii_digit() {
            h.write_u8(b);
        }
    }
    h.finish()
}

/// Where a session receives the answer to its multiplexed segment.
#[derive(Default)]
pub struct MuxOutput {
    pub buf: RefCell<BytesMut>,
    /// Set when the answer is complete (its ReadyForQuery arrived, or the connection failed).
    pub done: Cell<bool>,
    /// The session holds client input it will handle once the answer is complete: it must be woken
    /// even when the answer went straight to the client.
    pub input_waiting: Cell<bool>,
    /// The connection (to a replica) failed before any of the answer arrived: the session may send
    /// the segment elsewhere.
    pub lost_clean: Cell<bool>,
    pub notify: Notify,
}

struct Waiter {
    out: Rc<MuxOutput>,
    /// The client socket, when the answer may be written to it directly.
    direct: Option<Rc<tokio::net::TcpStream>>,
    /// ParseCompletes of Parses the proxy injected, which the client must not see.
    swallow: u8,
    speed: Option<Arc<StatementSpeed>>,
    /// When the segment went out to the server.
    written: Option<Instant>,
    /// Part of the answer has been handed over.
    started: bool,
    /// Counts the segment as running on the server (for `least_connections` only: the count is
    /// an atomic shared by every worker).
    _busy: Option<BusyGuard>,
}

/// One multiplexed server connection, as sessions see it.
pub struct MuxConn {
    pub server: Arc<ServerState>,
    /// The worker it runs on (its slot in the server's statistics).
    worker: usize,
    count_busy: bool,
    /// Segments queued by sessions, written by [`run`].
    pub out: RefCell<BytesMut>,
    /// Shared statements (`_sg_<id>`) the connection holds.
    pub prepared: RefCell<HashSet<u64>>,
    pub settings: Arc<Settings>,
    waiters: RefCell<VecDeque<Waiter>>,
    flush: Notify,
    broken: Cell<bool>,
    /// When the last answer completed: the server works on one segment at a time, so a segment's
    /// own time is from the later of this and its write to its ReadyForQuery.
    last_done: Cell<Instant>,
}

impl MuxConn {
    /// Whether a session with `settings` may queue a segment here now.
    pub fn accepts(&self, settings: &Arc<Settings>) -> bool {
        !self.broken.get()
            && self.waiters.borrow().len() < MAX_IN_FLIGHT
            && (Arc::ptr_eq(&self.settings, settings) || *self.settings == **settings)
    }

    pub fn is_broken(&self) -> bool {
        self.broken.get()
    }

    /// Takes no more segments; the connection closes once the queued ones are answered (its server
    /// left the shard map).
    pub fn retire(&self) {
        self.broken.set(true);
        self.flush.notify_one();
    }

    pub fn in_flight(&self) -> usize {
        self.waiters.borrow().len()
    }

    /// Queues the segment the session just appended to `out`, and wakes the writer.
    pub fn submit(
        &self,
        out: Rc<MuxOutput>,
        swallow: u8,
        speed: Option<Arc<StatementSpeed>>,
        direct: Option<Rc<tokio::net::TcpStream>>,
    ) {
        out.done.set(false);
        out.lost_clean.set(false);
        self.waiters.borrow_mut().push_back(Waiter {
            out,
            direct,
            swallow,
            speed,
            written: None,
            started: false,
            _busy: self.count_busy.then(|| self.server.enter()),
        });
        self.flush.notify_one();
    }
}

/// Makes `conn` a multiplexed connection and starts its task on the current `LocalSet`.
pub fn start(
    mut conn: Checkout,
    server: Arc<ServerState>,
    count_busy: bool,
    worker: usize,
) -> Rc<MuxConn> {
    let mux = Rc::new(MuxConn {
        server,
        worker,
        count_busy,
        out: RefCell::new(BytesMut::with_capacity(16 * 1024)),
        prepared: RefCell::new(std::mem::take(&mut conn.prepared)),
        settings: conn.settings.clone(),
        waiters: RefCell::new(VecDeque::new()),
        flush: Notify::new(),
        broken: Cell::new(false),
        last_done: Cell::new(Instant::now()),
    });
    tokio::task::spawn_local(run(mux.clone(), conn));
    mux
}

/// Owns the server connection: writes queued segments, routes answers, until it fails.
async fn run(mux: Rc<MuxConn>, mut conn: Checkout) {
    let result: Result<(), String> = async {
        loop {
            let want_write = !conn.wbuf.is_empty();
            tokio::select! {
                biased;
                r = conn.stream.readable() => {
                    r.map_err(|e| e.to_string())?;
                    read_and_route(&mux, &mut conn)?;
                }
                _ = mux.flush.notified() => {}
                r = conn.stream.writable(), if want_write => {
                    r.map_err(|e| e.to_string())?;
                }
            }
            // Take what sessions queued and write as much as the socket takes now.
            {
                let mut out = mux.out.borrow_mut();
                if !out.is_empty() {
                    conn.wbuf.extend_from_slice(&out);
                    out.clear();
                    let now = Instant::now();
                    for w in mux.waiters.borrow_mut().iter_mut().rev() {
                        if w.written.is_some() {
                            break;
                        }
                        w.written = Some(now);
                    }
                }
            }
            while !conn.wbuf.is_empty() {
                match conn.stream.try_write(&conn.wbuf) {
                    Ok(n) => {
                        conn.wbuf.advance(n);
                        mux.server.stats.sent(mux.worker, n);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.to_string()),
                }
            }
            if mux.broken.get() && mux.waiters.borrow().is_empty() {
                return Err("retired".into());
            }
        }
    }
    .await;
    let reason = result.err().unwrap_or_default();
    mux.broken.set(true);
    let lost = SessionError::BackendLost {
        server: conn.addr,
        reason: reason.clone(),
    };
    let replica = mux.server.role() == Role::Replica;
    if replica {
        mux.server.suspect();
    }
    for w in mux.waiters.borrow_mut().drain(..) {
        if replica && !w.started {
            // Nothing of the answer reached the session: it sends the segment elsewhere.
            w.out.lost_clean.set(true);
        } else {
            let mut buf = w.out.buf.borrow_mut();
            lost.write_to(&mut buf);
            be::write_ready_for_query(&mut buf, be::TX_IDLE);
        }
        w.out.done.set(true);
        w.out.notify.notify_one();
    }
    if reason != "retired" {
        warn!(server = %conn.addr, %reason, "a multiplexed server connection failed");
    } else {
        tracing::debug!(server = %conn.addr, "a multiplexed server connection retired");
    }
    conn.broken = true;
    drop(Checkout::take(conn));
}

/// Hands the end of a session's answer over: straight to its client socket when nothing else of
/// the session is waiting to go out (no wake-up of the session needed), else through its buffer.
fn deliver(w: &Waiter, tail: &[u8]) {
    let mut buf = w.out.buf.borrow_mut();
    if let Some(client) = &w.direct
        && buf.is_empty()
    {
        let mut written = 0;
        while written < tail.len() {
            match client.try_write(&tail[written..]) {
                Ok(n) => written += n,
                Err(_) => break,
            }
        }
        w.out.done.set(true);
        if written == tail.len() && !w.out.input_waiting.get() {
            // The session learns it is done when its client sends the next message.
            return;
        }
        buf.extend_from_slice(&tail[written..]);
    } else {
        buf.extend_from_slice(tail);
        w.out.done.set(true);
    }
    drop(buf);
    w.out.notify.notify_one();
}

/// Reads what the server sent and hands each frame to the session whose segment it answers.
fn read_and_route(mux: &MuxConn, conn: &mut crate::backend::BackendConn) -> Result<(), String> {
    if conn.rbuf.capacity() - conn.rbuf.len() < 8 * 1024 {
        conn.rbuf.reserve(32 * 1024);
    }
    match conn.stream.try_read_buf(&mut conn.rbuf) {
        Ok(0) => return Err("the server closed the connection".into()),
        Ok(n) => mux.server.stats.received(mux.worker, n),
        Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
        Err(e) => return Err(e.to_string()),
    }
    let mut waiters = mux.waiters.borrow_mut();
    let mut off = 0;
    let mut run_start = 0;
    // The session whose answer the bytes in `run_start..off` belong to gets them in one copy.
    while let Ok(Some(h)) = peek_header(&conn.rbuf[off..], usize::MAX) {
        if conn.rbuf.len() - off < h.frame_len {
            break;
        }
        let Some(front) = waiters.front_mut() else {
            return Err("the server sent an answer nobody asked for".into());
        };
        let body = &conn.rbuf[off + 5..off + h.frame_len];
        let mut keep = true;
        match h.tag {
            be::PARSE_COMPLETE if front.swallow > 0 => {
                front.swallow -= 1;
                keep = false;
            }
            be::ERROR_RESPONSE if front.swallow > 0 => {
                // A Parse the proxy injected failed: the connection's statements are now unknown.
                mux.broken.set(true);
            }
            be::ERROR_RESPONSE => {
                mux.server.stats.error(mux.worker);
                crate::errors::CLIENT_ERRORS.count_body(body);
                let severity = be::error_field(body, b'V');
                if matches!(severity, Some(b"FATAL" | b"PANIC")) {
                    return Err(String::from_utf8_lossy(
                        be::error_field(body, b'M').unwrap_or(b"FATAL error"),
                    )
                    .into_owned());
                }
            }
            be::COMMAND_COMPLETE
                if session_state::tag_may_change_session(be::command_tag(body)) =>
            {
                // Not expected from a qualifying statement; never reuse this connection.
                mux.broken.set(true);
            }
            be::PARAMETER_STATUS => {
                // A setting changed under other clients' feet: retire the connection.
                mux.broken.set(true);
            }
            _ => {}
        }
        if !keep {
            front.started |= run_start < off;
            front
                .out
                .buf
                .borrow_mut()
                .extend_from_slice(&conn.rbuf[run_start..off]);
            run_start = off + h.frame_len;
        }
        off += h.frame_len;
        if h.tag == be::READY_FOR_QUERY {
            if body.first() != Some(&be::TX_IDLE) {
                mux.broken.set(true);
            }
            let w = waiters.pop_front().expect("front exists");
            deliver(&w, &conn.rbuf[run_start..off]);
            run_start = off;
            let now = Instant::now();
            let began = w.written.map_or(now, |t| t.max(mux.last_done.get()));
            mux.last_done.set(now);
            mux.server.stats.answered(
                mux.worker,
                crate::topology::stats::RouteKind::Single,
                Some(now.duration_since(began)),
                true,
            );
            if let Some(speed) = &w.speed {
                let took = now.duration_since(began);
                if took > SLOW {
                    tracing::debug!(?took, "a multiplexed statement was slow");
                }
                speed.record(took);
            }
        }
    }
    if run_start < off {
        // Part of a long answer: give the session what is here so far. From here on the session
        // writes this answer, since part of it sits in its buffer.
        if let Some(front) = waiters.front_mut() {
            front.started = true;
            front.direct = None;
            front
                .out
                .buf
                .borrow_mut()
                .extend_from_slice(&conn.rbuf[run_start..off]);
            front.out.notify.notify_one();
        }
    }
    conn.rbuf.advance(off);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualifying_texts() {
        assert!(text_qualifies(
            b"SELECT abalance FROM pgbench_accounts WHERE aid = $1"
        ));
        assert!(text_qualifies(b"  select 1;  "));
        assert!(!text_qualifies(b"SELECT 1; SELECT 2"));
        assert!(!text_qualifies(b"UPDATE t SET a = 1"));
        assert!(!text_qualifies(b"SELECT set_config('a', 'b', false)"));
        assert!(!text_qualifies(b"SELECT pg_advisory_lock(1)"));
        assert!(!text_qualifies(b"selectx"));
    }

    #[test]
    fn speed_keys_ignore_literals() {
        assert_eq!(
            speed_key(b"SELECT 1 WHERE a = 'x'"),
            speed_key(b"SELECT 22 WHERE a = 'yy'")
        );
        assert_ne!(speed_key(b"SELECT a"), speed_key(b"SELECT b"));
    }

    #[test]
    fn speed_is_fast_only_until_slow() {
        let s = StatementSpeed::default();
        assert!(s.is_untimed() && !s.is_fast());
        s.record(Duration::from_micros(50));
        assert!(s.is_fast());
        s.record(Duration::from_millis(10));
        assert!(s.is_fast(), "a busy moment does not demote it");
        s.record(Duration::from_millis(60));
        s.record(Duration::from_millis(60));
        assert!(s.is_fast(), "two stalls do not demote it");
        s.record(Duration::from_micros(60));
        s.record(Duration::from_millis(60));
        s.record(Duration::from_millis(60));
        assert!(s.is_fast(), "a fast answer clears the strikes");
        s.record(Duration::from_millis(60));
        assert!(!s.is_fast() && !s.is_untimed());
        s.record(Duration::from_micros(50));
        assert!(!s.is_fast(), "slow is for good");
    }
}
