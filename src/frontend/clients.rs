//! The clients connected now, for the admin console's `SHOW CLIENTS`.
//!
//! Each session updates its own entry with relaxed atomic stores when it takes or gives back a
//! server connection (once per transaction); the registry's lock is taken only when a client
//! connects, disconnects, or is listed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// What a client is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Connected, no server connection held.
    Idle,
    /// Holds a server connection (a transaction or statement runs).
    Active,
    /// Waits: for a pooled connection, a shard's primary, or the end of a PAUSE.
    Waiting,
    /// On the admin console.
    Admin,
}

impl ClientState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Active => "active",
            ClientState::Waiting => "waiting",
            ClientState::Admin => "admin",
        }
    }

    fn from_u8(v: u8) -> ClientState {
        match v {
            1 => ClientState::Active,
            2 => ClientState::Waiting,
            3 => ClientState::Admin,
            _ => ClientState::Idle,
        }
    }
}

/// No shard (`ClientInfo::shard`).
const NO_SHARD: usize = usize::MAX;
/// Several shards at once (a transaction over shards).
const SEVERAL: usize = usize::MAX - 1;

/// One connected client.
#[derive(Debug)]
pub struct ClientInfo {
    pub id: u64,
    pub addr: Option<SocketAddr>,
    pub user: String,
    pub database: String,
    pub connected: SystemTime,
    state: AtomicU8,
    /// The index of the shard it holds a connection to, [`NO_SHARD`] or [`SEVERAL`].
    shard: AtomicUsize,
}

impl ClientInfo {
    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// The shard it holds a connection to: `Some(Some(i))`, several: `Some(None)`, none: `None`.
    pub fn shard(&self) -> Option<Option<usize>> {
        match self.shard.load(Ordering::Relaxed) {
            NO_SHARD => None,
            SEVERAL => Some(None),
            i => Some(Some(i)),
        }
    }

    pub fn set(&self, state: ClientState, shard: Option<Option<usize>>) {
        self.state.store(state as u8, Ordering::Relaxed);
        let shard = match shard {
            None => NO_SHARD,
            Some(None) => SEVERAL,
            Some(Some(i)) => i,
        };
        self.shard.store(shard, Ordering::Relaxed);
    }

    pub fn set_state(&self, state: ClientState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }
}

/// Every connected client, by id.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    next: AtomicU64,
    clients: Mutex<BTreeMap<u64, Arc<ClientInfo>>>,
}

/// Removes its client from the registry when dropped.
pub struct Registered<'a> {
    registry: &'a ClientRegistry,
    pub info: Arc<ClientInfo>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry
            .clients
            .lock()
            .expect("client registry lock")
            .remove(&self.info.id);
    }
}

impl ClientRegistry {
    pub fn register(
        &self,
        addr: Option<SocketAddr>,
        user: &str,
        database: &str,
        admin: bool,
    ) -> Registered<'_> {
        let info = Arc::new(ClientInfo {
            id: self.next.fetch_add(1, Ordering::Relaxed) + 1,
            addr,
            user: user.to_string(),
            database: database.to_string(),
            connected: SystemTime::now(),
            state: AtomicU8::new(if admin {
                ClientState::Admin as u8
            } else {
                ClientState::Idle as u8
            }),
            shard: AtomicUsize::new(NO_SHARD),
        });
        self.clients
            .lock()
            .expect("client registry lock")
            .insert(info.id, info.clone());
        Registered {
            registry: self,
            info,
        }
    }

    /// Every client, oldest first.
    pub fn list(&self) -> Vec<Arc<ClientInfo>> {
        self.clients
            .lock()
            .expect("client registry lock")
            .values()
            .cloned()
            .collect()
    }
}
