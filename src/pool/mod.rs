//! Pools of backend connections, one per server, built on `deadpool`'s managed pool.
//!
//! Owns: creating, checking out, recycling and discarding [`BackendConn`]s. Each event-loop worker has
//! its own [`Pools`] (so a connection's socket is driven by the thread that uses it); `proxy.pool_size`
//! is split evenly over the workers. It never reads client traffic.

use std::collections::HashMap;
use std::time::Duration;

use deadpool::Runtime;
use deadpool::managed::{self, Metrics, PoolError, QueueMode, RecycleError, RecycleResult};

use crate::backend::BackendConn;
use crate::config::{BackendConfig, Config, ServerAddr};
use crate::errors::{BackendError, SessionError};

/// Creates and recycles connections to one server.
pub struct BackendManager {
    addr: ServerAddr,
    backend: BackendConfig,
    connect_timeout: Duration,
}

impl managed::Manager for BackendManager {
    type Type = BackendConn;
    type Error = BackendError;

    async fn create(&self) -> Result<BackendConn, BackendError> {
        BackendConn::connect(self.addr, &self.backend, self.connect_timeout).await
    }

    async fn recycle(&self, conn: &mut BackendConn, _: &Metrics) -> RecycleResult<BackendError> {
        if conn.tx_status != crate::protocol::backend::TX_IDLE || conn.is_dead_while_idle() {
            return Err(RecycleError::message(
                "connection is not idle or was closed",
            ));
        }
        Ok(())
    }
}

pub type Pool = managed::Pool<BackendManager>;
/// A checked-out connection; dropping it returns it to its pool, `Checkout::take` discards it.
pub type Checkout = managed::Object<BackendManager>;

/// One worker's pools, by server.
pub struct Pools {
    pools: HashMap<ServerAddr, Pool>,
    wait_timeout: Duration,
    per_worker: usize,
    /// What the pools were built with: a change rebuilds them.
    backend: BackendConfig,
    connect_timeout: Duration,
}

impl Pools {
    /// Pools for every server of the map, each of `pool_size / workers` connections (at least 1).
    pub fn new(config: &Config, workers: usize) -> Pools {
        let mut pools = Pools {
            pools: HashMap::new(),
            wait_timeout: config.proxy.pool_wait_timeout,
            per_worker: 0,
            backend: config.backend.clone(),
            connect_timeout: config.proxy.connect_timeout,
        };
        pools.update(config, workers);
        pools
    }

    /// Brings the pools in line with a (reloaded) map: new servers get a pool, removed servers'
    /// pools are dropped (idle connections close now, checked-out ones when given back), sizes
    /// follow `proxy.pool_size`, the wait follows `proxy.pool_wait_timeout`; a change of
    /// `[backend]` or `proxy.connect_timeout` rebuilds every pool (old connections close as they
    /// come back).
    /// Returns whether every pool was rebuilt.
    pub fn update(&mut self, config: &Config, workers: usize) -> bool {
        let per_worker = config.proxy.pool_size.div_ceil(workers.max(1)).max(1);
        // The wait applies per checkout (`get`); the rest is the connections' own.
        let rebuild = self.backend.user != config.backend.user
            || self.backend.password != config.backend.password
            || self.backend.database != config.backend.database
            || self.connect_timeout != config.proxy.connect_timeout;
        if rebuild {
            self.pools.clear();
        }
        self.backend = config.backend.clone();
        self.connect_timeout = config.proxy.connect_timeout;
        self.wait_timeout = config.proxy.pool_wait_timeout;
        let mut wanted = HashMap::new();
        for shard in &config.shards {
            for spec in std::iter::once(&shard.primary).chain(shard.replicas.iter()) {
                let addr =
                    ServerAddr(crate::config::resolve(spec.addr()).expect("validated at load"));
                let pool = match self.pools.remove(&addr) {
                    Some(p) => {
                        if per_worker != self.per_worker {
                            p.resize(per_worker);
                        }
                        p
                    }
                    None => self.build(addr, per_worker),
                };
                wanted.insert(addr, pool);
            }
        }
        self.pools = wanted;
        self.per_worker = per_worker;
        rebuild
    }

    fn build(&self, addr: ServerAddr, size: usize) -> Pool {
        managed::Pool::builder(BackendManager {
            addr,
            backend: self.backend.clone(),
            connect_timeout: self.connect_timeout,
        })
        .max_size(size)
        .queue_mode(QueueMode::Lifo)
        .wait_timeout(Some(self.wait_timeout))
        .create_timeout(Some(self.connect_timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .expect("runtime is set")
    }

    /// Connections each pool of this worker may hold.
    pub fn per_worker(&self) -> usize {
        self.per_worker
    }

    /// The pool of `addr`; a server no longer in the map (a transaction that began before a
    /// reload) gets a pool of its own, not kept: its connection closes when given back.
    pub fn pool(&self, addr: ServerAddr) -> Pool {
        match self.pools.get(&addr) {
            Some(p) => p.clone(),
            None => self.build(addr, 1),
        }
    }

    /// Every pool, by server (for the admin console and metrics).
    pub fn all(&self) -> impl Iterator<Item = (&ServerAddr, &Pool)> {
        self.pools.iter()
    }

    pub fn wait_timeout(&self) -> Duration {
        self.wait_timeout
    }
}

/// Checks out a connection to `addr` of shard `shard` from `pool`, waiting up to
/// `proxy.pool_wait_timeout` (`waited`, for the message).
pub async fn get(
    pool: Pool,
    waited: Duration,
    shard: &str,
    addr: ServerAddr,
) -> Result<Checkout, SessionError> {
    let timeouts = managed::Timeouts {
        wait: Some(waited),
        create: pool.timeouts().create,
        recycle: None,
    };
    pool.timeout_get(&timeouts).await.map_err(|e| match e {
        PoolError::Timeout(managed::TimeoutType::Wait) => SessionError::PoolTimeout {
            shard: shard.to_string(),
            server: addr,
            waited,
        },
        PoolError::Timeout(_) => SessionError::BackendUnavailable {
            shard: shard.to_string(),
            source: BackendError::ConnectTimeout { addr },
        },
        PoolError::Backend(source) => SessionError::BackendUnavailable {
            shard: shard.to_string(),
            source,
        },
        other => SessionError::BackendUnavailable {
            shard: shard.to_string(),
            source: BackendError::Connect {
                addr,
                source: std::io::Error::other(other.to_string()),
            },
        },
    })
}
