//! CancelRequest routing: the key a client got in BackendKeyData → the server connection serving it now.
//!
//! A client's slot is updated when it checks a server connection out and cleared when it returns it, so
//! a cancel reaches only the query the client is running. The registry map is locked at connect,
//! disconnect and cancel; the per-client slot is an uncontended lock taken once per transaction.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::ServerAddr;

/// Where a cancel for a client goes right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelTarget {
    pub addr: ServerAddr,
    pub pid: i32,
    pub secret: i32,
}

#[derive(Debug)]
pub struct CancelSlot {
    pub secret: i32,
    target: Mutex<Option<CancelTarget>>,
    /// The connections of a request over several shards (usually empty, so `set` on the hot path
    /// never allocates).
    fanout: Mutex<Vec<CancelTarget>>,
}

impl CancelSlot {
    pub fn set(&self, target: Option<CancelTarget>) {
        *self.target.lock().expect("cancel slot lock") = target;
    }

    /// The servers of a request over several shards (empty: none).
    pub fn set_fanout(&self, targets: Vec<CancelTarget>) {
        *self.fanout.lock().expect("cancel slot lock") = targets;
    }

    /// Every server the client's request runs on now.
    pub fn targets(&self) -> Vec<CancelTarget> {
        let mut all: Vec<CancelTarget> = self
            .target
            .lock()
            .expect("cancel slot lock")
            .iter()
            .copied()
            .collect();
        all.extend(
            self.fanout
                .lock()
                .expect("cancel slot lock")
                .iter()
                .copied(),
        );
        all
    }
}

#[derive(Default)]
pub struct CancelRegistry {
    slots: Mutex<HashMap<i32, Arc<CancelSlot>>>,
}

/// Unregisters the client's key when the session ends.
pub struct CancelGuard<'a> {
    registry: &'a CancelRegistry,
    pub pid: i32,
    pub slot: Arc<CancelSlot>,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        self.registry
            .slots
            .lock()
            .expect("cancel registry lock")
            .remove(&self.pid);
    }
}

impl CancelRegistry {
    /// Issues a fresh (pid, secret) for a client.
    pub fn register(&self) -> CancelGuard<'_> {
        let mut slots = self.slots.lock().expect("cancel registry lock");
        loop {
            let pid = rand::random::<i32>() & 0x7fff_ffff;
            if pid == 0 || slots.contains_key(&pid) {
                continue;
            }
            let slot = Arc::new(CancelSlot {
                secret: rand::random(),
                target: Mutex::new(None),
                fanout: Mutex::new(Vec::new()),
            });
            slots.insert(pid, slot.clone());
            return CancelGuard {
                registry: self,
                pid,
                slot,
            };
        }
    }

    /// The servers to cancel for a request carrying `(pid, secret)`: none if the key is unknown,
    /// the secret is wrong, or the client runs nothing on a server now.
    pub fn lookup(&self, pid: i32, secret: i32) -> Vec<CancelTarget> {
        let slot = self
            .slots
            .lock()
            .expect("cancel registry lock")
            .get(&pid)
            .cloned();
        match slot {
            Some(slot) if slot.secret == secret => slot.targets(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_secret_cancels_nothing() {
        let r = CancelRegistry::default();
        let g = r.register();
        let t = CancelTarget {
            addr: ServerAddr("127.0.0.1:1".parse().unwrap()),
            pid: 7,
            secret: 9,
        };
        g.slot.set(Some(t));
        assert_eq!(r.lookup(g.pid, g.slot.secret), vec![t]);
        assert_eq!(r.lookup(g.pid, g.slot.secret.wrapping_add(1)), vec![]);
        let u = CancelTarget { pid: 8, ..t };
        g.slot.set(None);
        g.slot.set_fanout(vec![t, u]);
        assert_eq!(
            r.lookup(g.pid, g.slot.secret),
            vec![t, u],
            "every shard of a fan-out"
        );
        let pid = g.pid;
        drop(g);
        assert_eq!(r.lookup(pid, 0), vec![]);
    }
}
