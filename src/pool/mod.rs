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
}

impl Pools {
    /// Pools for every server of the map, each of `pool_size / workers` connections (at least 1).
    pub fn new(config: &Config, workers: usize) -> Pools {
        let per_worker = config.proxy.pool_size.div_ceil(workers.max(1)).max(1);
        let mut pools = HashMap::new();
        for shard in &config.shards {
            for addr in std::iter::once(&shard.primary).chain(shard.replicas.iter()) {
                let addr =
                    ServerAddr(crate::config::resolve(addr.addr()).expect("validated at load"));
                pools.entry(addr).or_insert_with(|| {
                    managed::Pool::builder(BackendManager {
                        addr,
                        backend: config.backend.clone(),
                        connect_timeout: config.proxy.connect_timeout,
                    })
                    .max_size(per_worker)
                    .queue_mode(QueueMode::Lifo)
                    .wait_timeout(Some(config.proxy.pool_wait_timeout))
                    .create_timeout(Some(config.proxy.connect_timeout))
                    .runtime(Runtime::Tokio1)
                    .build()
                    .expect("runtime is set")
                });
            }
        }
        Pools {
            pools,
            wait_timeout: config.proxy.pool_wait_timeout,
            per_worker,
        }
    }

    /// Connections each pool of this worker may hold.
    pub fn per_worker(&self) -> usize {
        self.per_worker
    }

    /// Checks out a connection to `addr` of shard `shard`, waiting up to `proxy.pool_wait_timeout`.
    pub async fn get(&self, shard: &str, addr: ServerAddr) -> Result<Checkout, SessionError> {
        let pool = self
            .pools
            .get(&addr)
            .expect("every server of the map has a pool");
        pool.get().await.map_err(|e| match e {
            PoolError::Timeout(managed::TimeoutType::Wait) => SessionError::PoolTimeout {
                shard: shard.to_string(),
                server: addr,
                waited: self.wait_timeout,
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
}
