//! Accepting clients and running them on per-core workers.
//!
//! Each worker is one thread with a `current_thread` tokio runtime and its own connection pools: a
//! client's session task owns its client socket and its server connection on that one thread, so no
//! message crosses threads on the hot path (measured in `shared/baseline.md`: one event loop per core is
//! the cheapest epoll shape). The acceptor hands each new socket to the worker with the fewest clients.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::Shared;
use crate::config::Config;
use crate::pool::Pools;

/// One event-loop thread's share of the proxy. It lives on its thread (`Rc`), so sessions share
/// its multiplexed connections without locks.
pub struct Worker {
    pub shared: Arc<Shared>,
    pub pools: Pools,
    /// Sessions running on this worker.
    pub sessions: Arc<AtomicUsize>,
    /// Multiplexed server connections (see `multiplex`), at most `mux_limit` per server.
    pub mux: RefCell<Vec<Rc<super::multiplex::MuxConn>>>,
    /// `proxy.multiplex_connections` shared by the servers that take reads: the fewer connections
    /// the segments are spread over, the more of them go out in one write.
    pub mux_limit: usize,
    /// Servers multiplexed connections are being opened to now (they count against `mux_limit`).
    pub mux_opening: RefCell<Vec<crate::config::ServerAddr>>,
    /// Routing plans of SQL texts (see `router`), for this thread only: no lock on a hit.
    pub routes: RefCell<crate::router::RouteCache>,
    /// How fast simple-query and unnamed-statement texts have been, by a hash of the text.
    pub text_speeds: RefCell<HashMap<u64, Arc<super::multiplex::StatementSpeed>>>,
    /// Merge plans of SELECT texts run over several shards, by exact text (a plan holds literal
    /// LIMITs and the rewritten shard query, so texts that share a routing plan differ here).
    pub merges: RefCell<HashMap<Box<[u8]>, Arc<crate::merge::MergeResult>>>,
    /// Turns for spreading reads of replicated tables over the shards.
    pub spread: std::cell::Cell<usize>,
}

/// Distinct statement shapes each worker keeps routing plans for.
const ROUTE_CACHE_SIZE: usize = 10_000;

/// A running proxy. Dropping it stops it.
pub struct ProxyHandle {
    addr: SocketAddr,
    /// Where `/metrics` is served, when `proxy.metrics_listen` is set.
    metrics_addr: Option<SocketAddr>,
    health: Option<crate::health::HealthChecker>,
    shutdown: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl ProxyHandle {
    /// Starts a graceful shutdown: no new clients; idle sessions end at once (57P01), the others
    /// when their transaction ends. [`Self::clients`] says how many remain.
    pub fn drain(&self) {
        self.shared.drain.send_replace(true);
    }

    /// `proxy.shutdown_timeout`.
    pub fn shutdown_timeout(&self) -> std::time::Duration {
        self.shared.config.proxy.shutdown_timeout
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.shared
            .clients
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Where Prometheus scrapes `/metrics` (the real port when the map says port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The address clients connect to (the real port when the map says port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Clients connected now.
    pub fn client_count(&self) -> usize {
        self.shared.clients.load(Ordering::Relaxed)
    }

    /// Stops accepting, ends every session and joins the worker threads.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    /// What the proxy shares between its workers (topology, counters), for tests and tools.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    fn stop_inner(&mut self) {
        self.health = None;
        let _ = self.shutdown.send(true);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Binds `proxy.listen` and starts the workers. Returns once the proxy accepts connections.
pub fn start(config: Config) -> std::io::Result<ProxyHandle> {
    let listener = std::net::TcpListener::bind(config.listen_addr())?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let workers = config.worker_count();
    let decisions = open_decision_log(&config.proxy.state_dir)?;
    let shared = Arc::new(Shared::new(config, decisions));
    let state_dir = &shared.config.proxy.state_dir;
    let fenced = Arc::new(crate::failover::Fenced::load(
        (!state_dir.is_empty()).then(|| std::path::Path::new(state_dir)),
        &shared.topology,
    ));
    let health = crate::health::start(
        shared.topology.clone(),
        shared.config.backend.clone(),
        shared.config.health.clone(),
        shared.config.failover.clone(),
        fenced,
        shared.decisions.clone(),
    )?;
    let (shutdown, shutdown_rx) = watch::channel(false);

    let mut senders = Vec::with_capacity(workers);
    let mut loads = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers + 1);
    for index in 0..workers {
        let (tx, rx) = mpsc::unbounded_channel::<std::net::TcpStream>();
        let sessions = Arc::new(AtomicUsize::new(0));
        senders.push(tx);
        loads.push(sessions.clone());
        let shared = shared.clone();
        let stop = shutdown_rx.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("shardgate-w{index}"))
                .spawn(move || {
                    let pools = Pools::new(&shared.config, workers);
                    // Multiplexed connections come out of the pool: leave at least three quarters
                    // of it to transactions.
                    let config = &shared.config;
                    let readers = config.shards[0].replicas.len()
                        + usize::from(
                            config.routing.read_from_primary
                                || config.shards[0].replicas.is_empty(),
                        );
                    let mux_limit = match config
                        .proxy
                        .multiplex_connections
                        .min(pools.per_worker() / 4)
                    {
                        0 => 0,
                        n => (n / readers.max(1)).max(1),
                    };
                    let worker = Worker {
                        pools,
                        mux: RefCell::new(Vec::new()),
                        mux_limit,
                        mux_opening: RefCell::new(Vec::new()),
                        routes: RefCell::new(crate::router::RouteCache::new(
                            ROUTE_CACHE_SIZE,
                            shared.classify.clone(),
                        )),
                        text_speeds: RefCell::new(HashMap::new()),
                        merges: RefCell::new(HashMap::new()),
                        spread: std::cell::Cell::new(0),
                        shared,
                        sessions,
                    };
                    run_worker(worker, rx, stop)
                })?,
        );
    }
    let mut metrics_addr = None;
    let metrics_listen = shared.config.proxy.metrics_listen.trim().to_string();
    if !metrics_listen.is_empty() {
        let l = std::net::TcpListener::bind(&metrics_listen).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("proxy.metrics_listen {metrics_listen}: {e}"),
            )
        })?;
        l.set_nonblocking(true)?;
        metrics_addr = Some(l.local_addr()?);
        let src = crate::metrics::Sources {
            topology: shared.topology.clone(),
            shared: shared.clone(),
        };
        let stop = shutdown_rx.clone();
        threads.push(
            std::thread::Builder::new()
                .name("shardgate-metrics".into())
                .spawn(move || runtime().block_on(crate::metrics::serve(l, src, stop)))?,
        );
    }
    let stop = shutdown_rx.clone();
    let accept_shared = shared.clone();
    threads.push(
        std::thread::Builder::new()
            .name("shardgate-accept".into())
            .spawn(move || run_acceptor(listener, senders, loads, accept_shared, stop))?,
    );
    info!(%addr, workers, "listening");
    Ok(ProxyHandle {
        addr,
        metrics_addr,
        health: Some(health),
        shutdown,
        threads,
        shared,
    })
}

/// The decision log in `state_dir` (created if need be), or None when no state dir is set.
fn open_decision_log(
    state_dir: &str,
) -> std::io::Result<Option<Arc<crate::twophase::DecisionLog>>> {
    if state_dir.trim().is_empty() {
        return Ok(None);
    }
    let dir = std::path::Path::new(state_dir.trim());
    std::fs::create_dir_all(dir)?;
    crate::twophase::DecisionLog::open(&dir.join("decisions.log"))
        .map(|log| Some(Arc::new(log)))
        .map_err(std::io::Error::other)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn run_acceptor(
    listener: std::net::TcpListener,
    senders: Vec<mpsc::UnboundedSender<std::net::TcpStream>>,
    loads: Vec<Arc<AtomicUsize>>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    runtime().block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot register the listener");
                return;
            }
        };
        let mut drain = shared.drain.subscribe();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                // Draining: the listening socket closes, new clients are refused.
                _ = drain.wait_for(|d| *d) => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _peer)) => {
                        let Ok(stream) = stream.into_std() else { continue };
                        // The worker with the fewest sessions takes it.
                        let (i, _) = loads
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, l)| l.load(Ordering::Relaxed))
                            .expect("at least one worker");
                        loads[i].fetch_add(1, Ordering::Relaxed);
                        let _ = senders[i].send(stream);
                    }
                    Err(e) => {
                        // EMFILE and friends: report and keep accepting.
                        warn!(error = %e, clients = shared.clients.load(Ordering::Relaxed), "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        }
    });
}

fn run_worker(
    worker: Worker,
    mut sockets: mpsc::UnboundedReceiver<std::net::TcpStream>,
    mut stop: watch::Receiver<bool>,
) {
    let worker = Rc::new(worker);
    let rt = runtime();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        // The acceptor stops handing out sockets when shardgate drains; the sessions here go on
        // until they end or `stop`.
        let mut accepting = true;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                socket = sockets.recv(), if accepting => {
                    let Some(socket) = socket else {
                        accepting = false;
                        continue;
                    };
                    let w = worker.clone();
                    tokio::task::spawn_local(async move {
                        match tokio::net::TcpStream::from_std(socket) {
                            Ok(stream) => super::startup::serve(w.clone(), stream).await,
                            Err(e) => warn!(error = %e, "cannot register a client socket"),
                        }
                        w.sessions.fetch_sub(1, Ordering::Relaxed);
                    });
                }
            }
        }
    });
    // Dropping the tasks and the runtime here ends every session of this worker.
    drop(local);
    drop(rt);
}
