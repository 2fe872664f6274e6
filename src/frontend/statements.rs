//! Named prepared statements under transaction pooling.
//!
//! A client's statement names are its own; on the servers every distinct (query text, parameter types)
//! is prepared once per server connection under a proxy-wide name `_sg_<id>`, and re-prepared on
//! whichever connection serves the next Bind or Describe (the same idea as PgBouncer 1.21 and PgDog).
//! Ids are never reused, so a name on a server always means one text.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

/// One distinct statement, shared by every client that prepared the same text and parameter types.
#[derive(Debug)]
pub struct Statement {
    pub id: u64,
    /// `_sg_<id>`, the name it has on servers.
    pub server_name: Bytes,
    /// The Parse body after the name: `query\0`, parameter count, parameter type OIDs.
    pub parse_rest: Bytes,
    /// Whether running it may change session state (see `session_state::text_may_change_session`).
    pub changes_session: bool,
    /// Whether its text has the shape a multiplexed segment needs (see `multiplex`).
    pub multiplexable: bool,
    /// How fast it has been.
    pub speed: Arc<super::multiplex::StatementSpeed>,
    /// Where it may run (classified once, when first prepared).
    pub plan: Arc<crate::router::Plan>,
    /// The options `plan` was made with (a reload that changes them makes new statements).
    pub options: Arc<crate::router::ClassifyOptions>,
}

/// The proxy-wide table of statements. Locked only when a client parses a named statement.
#[derive(Default)]
pub struct StatementRegistry {
    by_text: Mutex<HashMap<Bytes, Weak<Statement>>>,
    /// Speed records by `multiplex::speed_key`, kept when a statement is closed and prepared again.
    speeds: Mutex<HashMap<u64, Arc<super::multiplex::StatementSpeed>>>,
    next_id: AtomicU64,
}

impl StatementRegistry {
    /// The statement for this Parse body, shared with other clients that prepared the same.
    pub fn intern(
        &self,
        parse_rest: &[u8],
        opts: &Arc<crate::router::ClassifyOptions>,
    ) -> Arc<Statement> {
        let mut map = self.by_text.lock().expect("statement registry lock");
        if let Some(live) = map.get(parse_rest).and_then(Weak::upgrade)
            && Arc::ptr_eq(&live.options, opts)
        {
            return live;
        }
        if map.len() >= 1024 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let rest = Bytes::copy_from_slice(parse_rest);
        let text = crate::protocol::frontend::query_text(&rest);
        let speed = {
            let mut speeds = self.speeds.lock().expect("statement speeds lock");
            if speeds.len() > 10_000 {
                speeds.clear();
            }
            speeds
                .entry(super::multiplex::speed_key(text))
                .or_default()
                .clone()
        };
        // Text that is not UTF-8 is something the router cannot read: the primary.
        let plan = Arc::new(match std::str::from_utf8(text) {
            Ok(sql) => crate::router::classify(sql, opts),
            Err(_) => crate::router::Plan::unparsed(None),
        });
        let stmt = Arc::new(Statement {
            plan,
            options: opts.clone(),
            id,
            server_name: Bytes::from(format!("_sg_{id}")),
            changes_session: crate::session_state::text_may_change_session(text),
            multiplexable: super::multiplex::text_qualifies(text),
            speed,
            parse_rest: rest.clone(),
        });
        map.insert(rest, Arc::downgrade(&stmt));
        stmt
    }

    /// Statements some client still holds.
    pub fn live(&self) -> usize {
        let map = self.by_text.lock().expect("statement registry lock");
        map.values().filter(|w| w.strong_count() > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_same_statement_until_dropped() {
        let r = StatementRegistry::default();
        let o = Arc::new(crate::router::ClassifyOptions {
            write_functions: vec![],
            ..Default::default()
        });
        let a = r.intern(b"select 1\0\0\0", &o);
        let b = r.intern(b"select 1\0\0\0", &o);
        assert_eq!(a.id, b.id);
        assert_eq!(&a.server_name[..], format!("_sg_{}", a.id).as_bytes());
        let c = r.intern(b"select 2\0\0\0", &o);
        assert_ne!(a.id, c.id);
        let old = a.id;
        drop((a, b));
        let d = r.intern(b"select 1\0\0\0", &o);
        assert_ne!(d.id, old, "ids are never reused");
        assert_eq!(r.live(), 2);
    }
}
