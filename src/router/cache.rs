//! A bounded per-thread cache of routing plans, keyed by [`normalize`](super::normalize) keys.
//!
//! Each worker's event loop owns one (behind a `RefCell`; no locking inside). A hit costs one pass over
//! the text into a reused key buffer and one `HashMap` lookup; only a miss runs [`classify`]. Keys are
//! the owned normalized bytes, so two texts can only share a plan when their keys are equal, never on a
//! hash collision. A key is tagged with whether it is normalized or the exact text, which keeps the two
//! kinds apart by construction.
//!
//! When full, the cache sweeps once in the manner of a clock: entries not hit since the previous sweep
//! go, the others lose their mark; if that frees less than a quarter, arbitrary entries go until a
//! quarter is free, so sweeps (O(capacity), no allocation) happen at most once per quarter-capacity
//! misses. Texts longer than [`MAX_CACHED_LEN`] are classified every time rather than held.

use std::collections::HashMap;
use std::sync::Arc;

use super::classify::{ClassifyOptions, Plan, classify};
use super::hint;
use super::normalize::normalize_into;

/// Longest text whose plan is cached.
pub const MAX_CACHED_LEN: usize = 32 * 1024;

/// Key tags: normalized text, exact text.
const NORMALIZED: u8 = b'N';
const EXACT: u8 = b'E';

struct Entry {
    plan: Arc<Plan>,
    /// Hit since the last sweep.
    used: bool,
}

/// Plans by cache key, for one thread.
pub struct RouteCache {
    map: HashMap<Box<[u8]>, Entry>,
    capacity: usize,
    opts: Arc<ClassifyOptions>,
    /// Reused key buffer.
    key: Vec<u8>,
    parse_count: u64,
    unparsed_count: u64,
}

impl RouteCache {
    /// A cache of at most `capacity` plans (0: classify every time).
    pub fn new(capacity: usize, opts: Arc<ClassifyOptions>) -> RouteCache {
        RouteCache {
            map: HashMap::with_capacity(capacity.min(4096)),
            capacity,
            opts,
            key: Vec::new(),
            parse_count: 0,
            unparsed_count: 0,
        }
    }

    /// The options plans are made with.
    pub fn options(&self) -> &Arc<ClassifyOptions> {
        &self.opts
    }

    /// The plan for one SQL text. A text that is not UTF-8 is unparsed (primary).
    pub fn plan(&mut self, sql: &[u8]) -> Arc<Plan> {
        if sql.len() > MAX_CACHED_LEN || self.capacity == 0 {
            return Arc::new(self.classify(sql));
        }
        self.key.clear();
        self.key.push(NORMALIZED);
        if !normalize_into(sql, &mut self.key) {
            self.key.clear();
            self.key.push(EXACT);
            self.key.extend_from_slice(sql);
        }
        if let Some(entry) = self.map.get_mut(self.key.as_slice()) {
            entry.used = true;
            return entry.plan.clone();
        }
        let plan = Arc::new(self.classify(sql));
        if self.map.len() >= self.capacity {
            self.evict();
        }
        self.map.insert(
            self.key.as_slice().into(),
            Entry {
                plan: plan.clone(),
                used: false,
            },
        );
        plan
    }

    /// Cached plans.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// How many times [`classify`] actually ran.
    pub fn parse_count(&self) -> u64 {
        self.parse_count
    }

    /// How many of those runs found a text sqlparser could not parse (each distinct key counts once
    /// while cached; the caller counts queries).
    pub fn unparsed_count(&self) -> u64 {
        self.unparsed_count
    }

    fn classify(&mut self, sql: &[u8]) -> Plan {
        self.parse_count += 1;
        let plan = match std::str::from_utf8(sql) {
            Ok(text) => classify(text, &self.opts),
            Err(e) => {
                let valid = std::str::from_utf8(&sql[..e.valid_up_to()]).unwrap_or_default();
                Plan::unparsed(hint::leading(valid))
            }
        };
        if plan.unparsed {
            self.unparsed_count += 1;
        }
        plan
    }

    /// Makes room for at least one entry (see the module docs).
    fn evict(&mut self) {
        self.map
            .retain(|_, entry| std::mem::replace(&mut entry.used, false));
        let target = self.capacity - (self.capacity / 4).max(1);
        if self.map.len() > target {
            let mut excess = self.map.len() - target;
            self.map.retain(|_, _| {
                if excess > 0 {
                    excess -= 1;
                    false
                } else {
                    true
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::classify::TxControl;
    use crate::router::hint::Hint;

    fn cache(capacity: usize) -> RouteCache {
        RouteCache::new(capacity, Arc::new(ClassifyOptions::default()))
    }

    #[test]
    fn literals_hit_one_entry() {
        let mut c = cache(100);
        for aid in 1..=1000 {
            let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid}");
            let plan = c.plan(sql.as_bytes());
            assert!(plan.read);
        }
        assert_eq!(c.parse_count(), 1);
        assert_eq!(c.len(), 1);
        for v in ["'a'", "'it''s'", "'é'"] {
            c.plan(format!("UPDATE t SET name = {v} WHERE id = 7").as_bytes());
        }
        assert_eq!(c.parse_count(), 2);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn different_texts_different_plans() {
        let mut c = cache(100);
        assert!(c.plan(b"SELECT * FROM t1").read);
        assert!(!c.plan(b"SELECT nextval('s1')").read);
        assert!(c.plan(b"SELECT 'nextval(s1)'").read);
        let p = c.plan(b"/* shardgate: primary */ SELECT 1");
        assert_eq!(p.hint, Some(Hint::Primary));
        assert_eq!(c.plan(b"SELECT 1").hint, None);
        assert_eq!(c.parse_count(), 5);
    }

    #[test]
    fn exact_text_keys() {
        let mut c = cache(100);
        let local = c.plan(b"SET shardgate.target = 'replica'");
        assert!(local.local);
        assert!(c.plan(b"SET shardgate.target = 'primary'").local);
        assert!(c.plan(b"SET shardgate.target = 'replica'").local);
        assert_eq!(c.parse_count(), 2);
        assert_eq!(c.plan(b"BEGIN").tx, TxControl::Begin { read_only: None });
        assert!(c.plan(b"SELECT E'\\n'").read);
        assert!(c.plan(b"SELECT E'\\n'").read);
        assert_eq!(c.parse_count(), 4);
    }

    #[test]
    fn non_utf8_is_unparsed() {
        let mut c = cache(100);
        let p = c.plan(b"/* shardgate: replica */ SELECT '\xff'");
        assert!(p.unparsed && !p.read && p.writes);
        assert_eq!(p.hint, Some(Hint::Replica));
        // Its key must not be shared with a valid text whose string differs.
        assert!(c.plan(b"/* shardgate: replica */ SELECT 'x'").read);
        assert_eq!(c.unparsed_count(), 1);
        assert_eq!(c.parse_count(), 2);
    }

    #[test]
    fn counts_unparsed() {
        let mut c = cache(100);
        c.plan(b"SELEC 1");
        c.plan(b"SELEC 2");
        c.plan(b"VACUUM ANALYZE t");
        assert_eq!(c.unparsed_count(), 2);
        assert_eq!(c.parse_count(), 2);
    }

    #[test]
    fn bounded_and_keeps_hot_entries() {
        let mut c = cache(8);
        c.plan(b"SELECT hot FROM t");
        for i in 0..100 {
            c.plan(format!("SELECT c{i} FROM t").as_bytes());
            c.plan(b"SELECT hot FROM t");
            assert!(c.len() <= 8);
        }
        assert_eq!(c.parse_count(), 101, "the hot text stayed cached");
    }

    #[test]
    fn tiny_and_zero_capacity() {
        let mut c = cache(1);
        c.plan(b"SELECT a FROM t");
        c.plan(b"SELECT b FROM t");
        c.plan(b"SELECT b FROM t");
        assert_eq!(c.len(), 1);
        assert_eq!(c.parse_count(), 2);
        let mut c = cache(0);
        c.plan(b"SELECT a FROM t");
        c.plan(b"SELECT a FROM t");
        assert!(c.is_empty());
        assert_eq!(c.parse_count(), 2);
    }

    #[test]
    fn long_texts_are_not_held() {
        let mut c = cache(8);
        let sql = format!("SELECT '{}'", "x".repeat(MAX_CACHED_LEN));
        assert!(c.plan(sql.as_bytes()).read);
        assert!(c.plan(sql.as_bytes()).read);
        assert!(c.is_empty());
        assert_eq!(c.parse_count(), 2);
    }

    #[test]
    fn write_functions_from_options() {
        let opts = Arc::new(ClassifyOptions {
            write_functions: vec!["audit".into()],
            ..Default::default()
        });
        let mut c = RouteCache::new(10, opts);
        assert!(!c.plan(b"SELECT audit(1)").read);
        assert!(c.plan(b"SELECT audit2(1)").read);
    }
}
