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
    /// Which worker this is (0-based).
    pub index: usize,
    /// Pools of the servers of the map in force (see `sync`).
    pub pools: RefCell<Pools>,
    /// The map generation `pools`, `mux_limit` and the caches were made for.
    pub generation: std::cell::Cell<u64>,
    /// Sessions running on this worker.
    pub sessions: Arc<AtomicUsize>,
    /// Multiplexed server connections (see `multiplex`), at most `mux_limit` per server.
    pub mux: RefCell<Vec<Rc<super::multiplex::MuxConn>>>,
    /// `proxy.multiplex_connections` shared by the servers that take reads: the fewer connections
    /// the segments are spread over, the more of them go out in one write.
    pub mux_limit: std::cell::Cell<usize>,
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
    /// The reload thread (it owns the health checker).
    reloader: Option<crate::reload::Reloader>,
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
        self.shared.live().config.proxy.shutdown_timeout
    }

    /// Reloads the map file shardgate was started with (as SIGHUP does) and waits for the outcome:
    /// what changed, or why the map was refused (the old one keeps serving then).
    pub async fn reload(&self) -> crate::reload::ReloadResult {
        match self.shared.request_reload(crate::reload::Trigger::Api) {
            Some(rx) => rx
                .await
                .unwrap_or_else(|_| Err("the reload thread stopped".into())),
            None => Err("the reload thread does not run".into()),
        }
    }

    /// Asks for a reload without waiting (SIGHUP).
    pub fn reload_soon(&self) {
        if let Some(tx) = self
            .shared
            .reload_tx
            .lock()
            .expect("reload sender lock")
            .as_ref()
        {
            tx.nudge(crate::reload::Trigger::Signal);
        }
    }

    /// Resolves when a graceful shutdown was asked for (the admin console's SHUTDOWN).
    pub async fn drain_requested(&self) {
        let mut rx = self.shared.drain.subscribe();
        let _ = rx.wait_for(|d| *d).await;
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
        self.reloader = None;
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
    start_with_map(config, None)
}

/// [`start`], with the map file `config` was read from: it is watched, and SIGHUP, the admin
/// console's RELOAD and [`ProxyHandle::reload`] read it again (see `reload`).
pub fn start_with_map(
    config: Config,
    map: Option<std::path::PathBuf>,
) -> std::io::Result<ProxyHandle> {
    let listener = std::net::TcpListener::bind(config.listen_addr())?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let workers = config.worker_count();
    let decisions = open_decision_log(&config.proxy.state_dir)?;
    let shared = Arc::new(Shared::new(config, decisions));
    let live = shared.live();
    let state_dir = &live.config.proxy.state_dir;
    let fenced = Arc::new(crate::failover::Fenced::load(
        (!state_dir.is_empty()).then(|| std::path::Path::new(state_dir)),
        &live.topology,
    ));
    let health = crate::health::start(
        live.topology.clone(),
        live.config.backend.clone(),
        live.config.health.clone(),
        live.config.failover.clone(),
        fenced.clone(),
        shared.decisions.clone(),
    )?;
    let reloader = crate::reload::start(shared.clone(), map, health, fenced)?;
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
                    let live = shared.live();
                    let pools = Pools::new(&live.config, workers);
                    let worker = Worker {
                        mux_limit: std::cell::Cell::new(mux_limit(&live.config, &pools)),
                        pools: RefCell::new(pools),
                        generation: std::cell::Cell::new(live.generation),
                        mux: RefCell::new(Vec::new()),
                        mux_opening: RefCell::new(Vec::new()),
                        routes: RefCell::new(crate::router::RouteCache::new(
                            ROUTE_CACHE_SIZE,
                            live.classify.clone(),
                        )),
                        text_speeds: RefCell::new(HashMap::new()),
                        merges: RefCell::new(HashMap::new()),
                        spread: std::cell::Cell::new(0),
                        shared,
                        sessions,
                        index,
                    };
                    worker.publish_pools();
                    run_worker(worker, rx, stop)
                })?,
        );
    }
    let mut metrics_addr = None;
    let metrics_listen = live.config.proxy.metrics_listen.trim().to_string();
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
        reloader: Some(reloader),
        shutdown,
        threads,
        shared,
    })
}

/// Multiplexed connections per server of a worker: they come out of the pool, so at least three
/// quarters of it is left to transactions, and the servers that take reads share
/// `proxy.multiplex_connections`.
fn mux_limit(config: &Config, pools: &Pools) -> usize {
    let readers = config.shards[0].replicas.len()
        + usize::from(config.routing.read_from_primary || config.shards[0].replicas.is_empty());
    match config
        .proxy
        .multiplex_connections
        .min(pools.per_worker() / 4)
    {
        0 => 0,
        n => (n / readers.max(1)).max(1),
    }
}

impl Worker {
    /// Checks out a connection to `addr` (of shard `shard`, for messages).
    pub async fn checkout(
        &self,
        shard: &str,
        addr: crate::config::ServerAddr,
    ) -> Result<crate::pool::Checkout, crate::errors::SessionError> {
        let (pool, waited) = {
            let pools = self.pools.borrow();
            (pools.pool(addr), pools.wait_timeout())
        };
        let started = std::time::Instant::now();
        let got = crate::pool::get(pool, waited, shard, addr).await;
        self.shared.pool_wait.record(self.index, started.elapsed());
        got
    }

    /// Brings the worker in line with the map in force if a reload installed a new one: pools for
    /// new servers, pools of removed servers dropped (their idle connections close now, the others
    /// when given back), multiplexed connections to removed servers closed, caches that depend on
    /// the map emptied. Returns the map in force.
    pub fn sync(&self) -> Arc<crate::reload::Live> {
        let live = self.shared.live();
        if live.generation == self.generation.get() {
            return live;
        }
        let workers = live.config.worker_count();
        let rebuilt = self.pools.borrow_mut().update(&live.config, workers);
        let limit = mux_limit(&live.config, &self.pools.borrow());
        // Fewer allowed, or connections made with the old [backend]: start over.
        let start_over = rebuilt || limit < self.mux_limit.get();
        self.mux_limit.set(limit);
        self.mux.borrow_mut().retain(|m| {
            let kept = !start_over
                && live
                    .topology
                    .server(m.server.addr)
                    .is_some_and(|s| Arc::ptr_eq(s, &m.server));
            if !kept {
                m.retire();
            }
            kept
        });
        let mut routes = self.routes.borrow_mut();
        if !Arc::ptr_eq(routes.options(), &live.classify) {
            *routes = crate::router::RouteCache::new(ROUTE_CACHE_SIZE, live.classify.clone());
        }
        self.merges.borrow_mut().clear();
        self.generation.set(live.generation);
        self.publish_pools();
        live
    }

    /// Puts this worker's pools in `Shared::pools` (for `SHOW POOLS` and `/metrics`).
    fn publish_pools(&self) {
        let mut all = self.shared.pools.lock().expect("pool registry lock");
        all.retain(|(w, _), _| *w != self.index);
        for (addr, pool) in self.pools.borrow().all() {
            all.insert((self.index, *addr), pool.clone());
        }
    }
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
        let mut reloaded = worker.shared.reloaded.subscribe();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                // A new map: pools of removed servers go even when no session here is active.
                _ = reloaded.changed() => {
                    worker.sync();
                }
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
