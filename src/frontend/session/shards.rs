//! Which shard a request goes to. With more than one shard, each unit of
//! client messages (a simple Query, or the extended-protocol messages up to Sync or Flush) is
//! routed as a whole before its first message is handled: the shard plans of its statements
//! (`router::shard`), with literal keys from the text and `$n` keys from the Bind, give the shards.
//! One shard: the ordinary path on that shard's connection. Several, or a transaction that has
//! already touched another shard: the fan-out path (`fanout`).
//!
//! A leading `/* shardgate: shard=NAME */` or `key=VALUE` comment, then `SET shardgate.shard` /
//! `shardgate.sharding_key`, override what the statements say.

use super::*;
use crate::hash::{KeyType, ShardKey};
use crate::router::ShardHint;
use crate::router::shard::{RouteError, ShardScope, Shards, literals, needs_literals, shards_of};

/// A statement parsed earlier in the same unit: its name, plan and text.
pub(super) type Parsed<'a> = (&'a [u8], Arc<Plan>, &'a [u8]);

/// A unit can wait this long for its Sync before it is routed on what has arrived.
const LOOKAHEAD_LIMIT: usize = 1 << 20;

/// The routing of one unit of client messages.
pub(super) enum UnitRoute {
    /// The unit's messages have not all arrived.
    Incomplete,
    /// `len` bytes of messages, to these shards; a simple Query's plan comes along so it is not
    /// looked up again.
    Go {
        shards: Shards,
        len: usize,
        query_plan: Option<Arc<Plan>>,
        /// Every statement reads replicated tables only: any shard may answer.
        spread: bool,
    },
    /// A statement of the unit cannot be routed: the client gets this error.
    Refused { error: SessionError, len: usize },
}

/// What the session loop does with a unit after routing it.
pub(super) enum UnitStep {
    /// Handle its messages on the ordinary path (the shard is chosen).
    Go,
    /// This many bytes were handled (fan-out, or refused).
    Done(usize),
    /// Wait for more bytes from the client.
    More,
    /// Wait until the held connection owes nothing.
    Wait,
    End(End),
}

impl Session {
    /// Routes the unit at the front of `buf` and, when it needs several shards, runs it.
    pub(super) async fn shard_unit(&mut self, buf: &[u8]) -> UnitStep {
        let (shards, len, query_plan, spread) = match self.route_unit(buf) {
            UnitRoute::Incomplete => return UnitStep::More,
            UnitRoute::Refused { error, len } => {
                if !self.pending.is_empty() {
                    return UnitStep::Wait;
                }
                error.write_to(&mut self.cout);
                if self.client_tx_status() != be::TX_IDLE {
                    self.abort_transaction().await;
                }
                if buf[0] == fe::QUERY || last_is_sync(&buf[..len]) {
                    let status = self.client_tx_status();
                    be::write_ready_for_query(&mut self.cout, status);
                } else {
                    self.local_skip = true;
                }
                return UnitStep::Done(len);
            }
            UnitRoute::Go {
                shards,
                len,
                query_plan,
                spread,
            } => (shards, len, query_plan, spread),
        };
        let local = query_plan.as_ref().is_some_and(|p| p.local);
        // One shard (None: any), or a fan-out.
        let single = match shards {
            _ if local => Some(None),
            Shards::Any => Some(None),
            Shards::Set(s) => s.single().map(Some),
            Shards::All if self.live.config.shards.len() == 1 => Some(Some(0)),
            Shards::All => None,
        };
        let go = match (single, &self.multi) {
            (Some(target), None) => {
                let held = self.backend.as_ref().map(|_| self.shard_idx);
                self.unit_any = target.is_none() && held.is_none() && self.shard_pin.is_none();
                let shard = target.or(held).unwrap_or_else(|| {
                    if spread && self.shard_pin.is_none() {
                        self.spread_shard()
                    } else {
                        self.default_shard()
                    }
                });
                held.is_none_or(|h| h == shard).then_some(shard)
            }
            // `SET shardgate.*` in a transaction over several shards: answered here.
            (_, Some(_)) if local => Some(self.shard_idx),
            _ => None,
        };
        if let Some(shard) = go {
            return self.go_to(shard, len, query_plan);
        }
        // Another shard than the held connection's, or several.
        if self.backend.is_some() {
            if !self.pending.is_empty() {
                return UnitStep::Wait;
            }
            if !self.can_switch() {
                self.escalate();
            } else {
                self.release();
                if let (Some(Some(shard)), None) = (single, &self.multi) {
                    // Free to take the other shard's connection: the ordinary path.
                    return self.go_to(shard, len, query_plan);
                }
            }
        }
        self.fanout_unit(&buf[..len], shards).await
    }

    /// The unit goes the ordinary way, to `shard`.
    fn go_to(&mut self, shard: usize, len: usize, query_plan: Option<Arc<Plan>>) -> UnitStep {
        self.unit_shard = shard;
        self.unit_routed = true;
        self.unit_left = len;
        self.unit_plan = query_plan;
        UnitStep::Go
    }

    /// A refused statement in a transaction block aborts the transaction, as an error on a
    /// server would: what the servers did is rolled back, and until ROLLBACK (or COMMIT, answered
    /// ROLLBACK) every statement gets 25P02.
    async fn abort_transaction(&mut self) {
        if let Some(conn) = self.backend.as_mut() {
            match conn.run_internal("ROLLBACK").await {
                Ok(r) if r.error.is_none() => {}
                _ => conn.broken = true,
            }
            self.begun = false;
            self.tx_wrote = false;
            self.release();
        }
        if self.multi.is_some() {
            self.rollback_parts().await;
            self.release_parts().await;
        }
        self.deferred_begin = None;
        self.failed_tx = true;
    }

    async fn fanout_unit(&mut self, unit: &[u8], shards: Shards) -> UnitStep {
        match self.run_fanout(unit, shards).await {
            Ok(_) => UnitStep::Done(unit.len()),
            Err(e) => UnitStep::End(e),
        }
    }

    /// Routes the unit that starts at `buf`.
    pub(super) fn route_unit(&self, buf: &[u8]) -> UnitRoute {
        let mut off = 0;
        let mut last = 0;
        let mut shards = Shards::Any;
        // Every Bind so far reads replicated tables only (None: no Bind yet).
        let mut spread: Option<bool> = None;
        // Statements parsed in this unit, by name, for the Binds after them.
        let mut parsed: Vec<Parsed<'_>> = Vec::new();
        loop {
            let header = match peek_header(&buf[off..], usize::MAX) {
                Ok(Some(h)) if buf.len() - off >= h.frame_len => h,
                _ if off >= LOOKAHEAD_LIMIT => {
                    return UnitRoute::Go {
                        shards,
                        len: off,
                        query_plan: None,
                        spread: false,
                    };
                }
                // Everything that arrived ends with an Execute: a client may wait for its answer
                // before it sends the Sync (COPY FROM STDIN sends its data first). A Bind that
                // comes later in the unit is checked against the shard chosen now.
                Ok(None) if off == buf.len() && last == fe::EXECUTE => {
                    return UnitRoute::Go {
                        shards,
                        len: off,
                        query_plan: None,
                        spread: spread.unwrap_or(false),
                    };
                }
                _ => return UnitRoute::Incomplete,
            };
            last = header.tag;
            let body = &buf[off + 5..off + header.frame_len];
            off += header.frame_len;
            let step = match header.tag {
                fe::QUERY => {
                    let text = fe::query_text(body);
                    let plan = self.plan_text(text);
                    return match self.text_shards(&plan, text, None) {
                        Ok(s) => UnitRoute::Go {
                            shards: s,
                            len: off,
                            spread: reads_replicated(&plan),
                            query_plan: Some(plan),
                        },
                        Err(e) => UnitRoute::Refused { error: e, len: off },
                    };
                }
                fe::PARSE => {
                    if let Ok((name, rest)) = fe::parse_name(body) {
                        let text = fe::query_text(rest);
                        // Counted (unparsed texts) when the Parse is handled.
                        parsed.push((name, self.cached_plan(text), text));
                    }
                    Ok(Shards::Any)
                }
                fe::BIND => match fe::bind_statement(body) {
                    Ok((_, stmt, rest)) => match self.bound_statement(&parsed, stmt) {
                        Some((plan, text)) => {
                            spread = Some(spread.unwrap_or(true) && reads_replicated(&plan));
                            self.text_shards(&plan, text, Some(rest))
                        }
                        None => Ok(Shards::Any),
                    },
                    Err(_) => Ok(Shards::Any),
                },
                fe::SYNC | fe::FLUSH => {
                    return UnitRoute::Go {
                        shards,
                        len: off,
                        query_plan: None,
                        spread: spread.unwrap_or(false),
                    };
                }
                _ => Ok(Shards::Any),
            };
            match step {
                Ok(s) => shards = shards.union(s),
                Err(error) => {
                    // Refuse the whole unit, up to its Sync.
                    let len = unit_end(buf, off);
                    return UnitRoute::Refused { error, len };
                }
            }
        }
    }

    /// The plan and text of the statement a Bind names: parsed earlier in its unit, or prepared
    /// before (the unnamed one: by the client's last unnamed Parse).
    pub(super) fn bound_statement<'a>(
        &'a self,
        parsed: &[Parsed<'a>],
        stmt: &[u8],
    ) -> Option<(Arc<Plan>, &'a [u8])> {
        if let Some((_, plan, text)) = parsed.iter().rev().find(|(n, _, _)| *n == stmt) {
            return Some((plan.clone(), text));
        }
        if stmt.is_empty() {
            self.unnamed_plan.clone().map(|p| (p, self.unnamed_text()))
        } else {
            self.statements
                .get(stmt)
                .map(|s| (s.plan.clone(), fe::query_text(&s.parse_rest)))
        }
    }

    /// The text of the last unnamed Parse.
    fn unnamed_text(&self) -> &[u8] {
        if self.unnamed_parse.len() > 5 {
            fe::parse_name(&self.unnamed_parse[5..])
                .map(|(_, rest)| fe::query_text(rest))
                .unwrap_or_default()
        } else {
            b""
        }
    }

    /// The shards of one statement text; `bind`: the rest of its Bind (parameters), if executed.
    pub(super) fn text_shards(
        &self,
        plan: &Plan,
        text: &[u8],
        bind: Option<&[u8]>,
    ) -> Result<Shards, SessionError> {
        let config = &self.live.config;
        if plan.local {
            return Ok(Shards::Any);
        }
        let key_type = plan.shards.iter().find_map(|p| match &p.scope {
            ShardScope::Keys { table, .. } | ShardScope::AllShards { table } => {
                config.table(table).map(|t| t.key_type)
            }
            _ => None,
        });
        if let Some(h) = plan.shard_hint.as_ref().or(self.shard_pin.as_ref()) {
            return h
                .shard_index(config, key_type)
                .map(|i| Shards::Set(crate::router::shard::ShardSet::one(i)))
                .map_err(SessionError::BadShardHint);
        }
        let values = if needs_literals(&plan.shards) {
            std::str::from_utf8(text).ok().and_then(literals)
        } else {
            None
        };
        let param = |n: usize, t: KeyType| bind_key(bind, n, t);
        match shards_of(&plan.shards, config, values.as_deref(), &param) {
            Ok(s) => Ok(s),
            // A Parse not yet bound (a statement prepared for later): any shard can prepare it.
            Err(RouteError::Unbound(_)) if bind.is_none() => Ok(Shards::Any),
            Err(e) => Err(SessionError::Route(e)),
        }
    }

    /// The shard for a request that may go anywhere: the session's pin, else the first.
    pub(super) fn default_shard(&self) -> usize {
        if let Some(pinned) = self
            .shard_pin
            .as_ref()
            .and_then(|h| h.shard_index(&self.live.config, None).ok())
        {
            return pinned;
        }
        // The first shard with a primary now: a statement any shard can take (a Parse, a read
        // of an unlisted table) does not wait for a shard that is failing over.
        let shards = &self.live.topology.shards;
        shards
            .iter()
            .position(|s| s.primary().is_some_and(|p| p.failures() == 0))
            .unwrap_or(0)
    }

    /// The next shard in turn for a read any shard can answer (replicated tables).
    fn spread_shard(&self) -> usize {
        let n = self.live.config.shards.len().max(1);
        let next = self.worker.spread.get().wrapping_add(1);
        self.worker.spread.set(next);
        next % n
    }

    /// Sets `SET shardgate.shard` / `shardgate.sharding_key` (None: reset), checked against the map.
    pub(super) fn set_shard_pin(&mut self, pin: Option<ShardHint>) -> Result<(), String> {
        if let Some(ShardHint::Shard(_)) = &pin {
            pin.as_ref()
                .expect("checked")
                .shard_index(&self.live.config, None)?;
        }
        self.shard_pin = pin;
        Ok(())
    }
}

/// The `n`-th parameter of a Bind (`bind`: its rest after the names) as a shard key of type `t`.
pub(super) fn bind_key(bind: Option<&[u8]>, n: usize, t: KeyType) -> Result<ShardKey, RouteError> {
    let (binary, value) = bind
        .and_then(|rest| fe::bind_param(rest, n))
        .ok_or(RouteError::Unbound(n))?;
    let value = value
        .ok_or_else(|| RouteError::BadKey(format!("the shard key (parameter ${n}) is NULL")))?;
    let key = if binary {
        ShardKey::from_binary(t, value)
    } else {
        ShardKey::from_text(t, &String::from_utf8_lossy(value))
    };
    key.map_err(|e| RouteError::BadKey(format!("parameter ${n}: {e}")))
}

/// Whether the last whole frame of `buf` is a Sync.
fn last_is_sync(buf: &[u8]) -> bool {
    let mut off = 0;
    let mut last = 0;
    while let Ok(Some(h)) = peek_header(&buf[off..], usize::MAX) {
        if buf.len() - off < h.frame_len {
            break;
        }
        last = h.tag;
        off += h.frame_len;
    }
    last == fe::SYNC
}

/// The end of the unit whose messages start before `off`: past its Sync, or the end of `buf`.
fn unit_end(buf: &[u8], mut off: usize) -> usize {
    loop {
        match peek_header(&buf[off..], usize::MAX) {
            Ok(Some(h)) if buf.len() - off >= h.frame_len => {
                off += h.frame_len;
                if h.tag == fe::SYNC {
                    return off;
                }
            }
            _ => return off,
        }
    }
}

/// A text whose statements all read replicated tables only.
fn reads_replicated(plan: &Plan) -> bool {
    !plan.shards.is_empty() && plan.shards.iter().all(|s| s.replicated_only)
}
