//! A unit cut into groups, each sent to its shards with a Sync of the proxy's own and answered
//! as one (see `merge`); the frames rewritten per shard connection (prepared statements renamed
//! and prepared where missing) and a multi-row INSERT cut per shard.

use super::merge::merge;
use super::*;
use crate::frontend::session::shards::Parsed;

/// One group of a unit: frames `range` of the unit, sent to the same shards.
pub(super) struct Group {
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) shards: Shards,
    pub(super) plan: Option<Arc<Plan>>,
    /// The statement text (Query, or the Bind's statement).
    pub(super) text: Vec<u8>,
    pub(super) is_query: bool,
    pub(super) executes: bool,
}

/// One shard's answer to a group, frame by frame.
type Answer = Vec<(u8, Bytes)>;

/// A multi-row INSERT cut per shard.
enum Split {
    /// A simple query: each shard's text.
    Texts(std::collections::BTreeMap<usize, String>),
    /// Extended protocol: each shard's text and the original numbers of its parameters.
    Params(std::collections::BTreeMap<usize, (String, Vec<usize>)>),
}

/// The rest (after its names) of the Bind among `frames`, if there is one.
fn bind_rest(frames: &[u8]) -> Option<&[u8]> {
    let mut off = 0;
    while let Ok(Some(h)) = peek_header(&frames[off..], usize::MAX) {
        let body = frames.get(off + 5..off + h.frame_len)?;
        if h.tag == fe::BIND {
            return fe::bind_statement(body).ok().map(|(_, _, rest)| rest);
        }
        off += h.frame_len;
    }
    None
}

impl Session {
    /// Cuts a unit into groups and routes each.
    pub(super) fn groups(
        &self,
        unit: &[u8],
        unit_shards: Shards,
    ) -> Result<Vec<Group>, SessionError> {
        let mut groups = Vec::new();
        let mut off = 0;
        let mut start = 0;
        let mut shards = Shards::Any;
        let mut plan = None;
        let mut text = Vec::new();
        let mut parsed: Vec<Parsed<'_>> = Vec::new();
        while let Ok(Some(h)) = peek_header(&unit[off..], usize::MAX) {
            if unit.len() - off < h.frame_len {
                break;
            }
            let body = &unit[off + 5..off + h.frame_len];
            off += h.frame_len;
            match h.tag {
                fe::QUERY => {
                    let t = fe::query_text(body);
                    // Counted (unparsed texts) when the unit was routed.
                    let p = self.cached_plan(t);
                    if p.shards.len() > 1
                        && !matches!(p.tx, TxControl::None)
                        && unit_shards.set(self.live.config.shards.len()).len() > 1
                    {
                        return Err(SessionError::CrossShard(
                            "a multi-statement query that controls a transaction and touches several shards; send BEGIN, each statement and COMMIT separately".into(),
                        ));
                    }
                    groups.push(Group {
                        start,
                        end: off,
                        shards: unit_shards,
                        plan: Some(p),
                        text: t.to_vec(),
                        is_query: true,
                        executes: true,
                    });
                    start = off;
                }
                fe::PARSE => {
                    let (name, rest) = fe::parse_name(body)?;
                    let t = fe::query_text(rest);
                    let p = self.cached_plan(t);
                    if plan.is_none() {
                        // A Parse without a Bind after it still says what kind of statement
                        // the group prepares (a write's Parse must not go to a replica).
                        plan = Some(p.clone());
                        text = t.to_vec();
                    }
                    parsed.push((name, p, t));
                }
                fe::BIND => {
                    let (_, stmt, rest) = fe::bind_statement(body)?;
                    if let Some((p, t)) = self.bound_statement(&parsed, stmt) {
                        shards = self.text_shards(&p, t, Some(rest))?;
                        plan = Some(p);
                        text = t.to_vec();
                    }
                }
                fe::EXECUTE => {
                    groups.push(Group {
                        start,
                        end: off,
                        shards: std::mem::replace(&mut shards, Shards::Any),
                        plan: plan.take(),
                        text: std::mem::take(&mut text),
                        is_query: false,
                        executes: true,
                    });
                    start = off;
                }
                fe::SYNC | fe::FLUSH => {
                    if off - h.frame_len > start {
                        groups.push(Group {
                            start,
                            end: off - h.frame_len,
                            shards: std::mem::replace(&mut shards, Shards::Any),
                            plan: plan.take(),
                            text: std::mem::take(&mut text),
                            is_query: false,
                            executes: false,
                        });
                    }
                    start = off;
                }
                fe::FUNCTION_CALL | fe::COPY_DATA | fe::COPY_DONE | fe::COPY_FAIL => {
                    return Err(SessionError::CrossShard(
                        "a function call or COPY in a transaction over several shards; run it in a transaction of its own".into(),
                    ));
                }
                _ => {}
            }
        }
        if off > start {
            groups.push(Group {
                start,
                end: off,
                shards,
                plan,
                text,
                is_query: false,
                executes: false,
            });
        }
        Ok(groups)
    }

    /// Sends one group to its shards and merges their answers into the client's. Returns false
    /// when it failed (an error was sent).
    pub(super) async fn run_group(
        &mut self,
        g: &Group,
        frames: &[u8],
        targets: ShardSet,
    ) -> Result<bool, SessionError> {
        if let Some(how) = self.merge_of(g, frames, targets)? {
            return self.run_merged(g, frames, targets, how).await;
        }
        let writes = g.plan.as_ref().is_none_or(|p| p.writes || p.unparsed);
        let bind = (!g.is_query).then(|| bind_rest(frames)).flatten();
        let split = match g
            .plan
            .as_ref()
            .and_then(|p| self.split_insert(p, &g.text, targets, bind))
        {
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => return Err(e),
            None => None,
        };
        if session_state::text_may_change_session(&g.text)
            && let Some(m) = self.multi.as_mut()
        {
            m.dirty = true;
        }
        // Swallowed ParseCompletes, per part, in order of the Parses sent.
        let mut expect: Vec<(usize, VecDeque<bool>)> = Vec::new();
        let mut m = self.multi.take().expect("set");
        let result = async {
            for part in m.parts.iter_mut().filter(|p| targets.contains(p.shard)) {
                let mut order = VecDeque::new();
                match &split {
                    Some(Split::Texts(texts)) => {
                        fe::write_query(&mut part.conn.wbuf, &texts[&part.shard]);
                    }
                    Some(Split::Params(per_shard)) => {
                        self.write_group(part, frames, &mut order, Some(&per_shard[&part.shard]))?
                    }
                    None => self.write_group(part, frames, &mut order, None)?,
                }
                if !g.is_query {
                    fe::write_sync(&mut part.conn.wbuf);
                }
                if writes {
                    part.wrote = true;
                }
                expect.push((part.shard, order));
                part.conn.send().await.map_err(|e| SessionError::lost(part.conn.addr, e))?;
            }
            let mut answers: Vec<Answer> = Vec::new();
            for part in m.parts.iter_mut().filter(|p| targets.contains(p.shard)) {
                let order = &mut expect
                    .iter_mut()
                    .find(|(s, _)| *s == part.shard)
                    .expect("pushed above")
                    .1;
                let name = &self.live.config.shards[part.shard].name;
                part.settle(name).await?;
                let mut answer = Vec::new();
                let mut copy = false;
                part.conn
                    .read_answer("a fan-out answer", |tag, body| {
                        match tag {
                            be::PARSE_COMPLETE if order.pop_front() == Some(true) => {}
                            be::COPY_IN_RESPONSE
                            | be::COPY_OUT_RESPONSE
                            | be::COPY_BOTH_RESPONSE => copy = true,
                            _ => answer.push((tag, body)),
                        }
                        copy
                    })
                    .await
                    .map_err(|e| SessionError::lost(part.conn.addr, e))?;
                if copy {
                    part.conn.broken = true;
                    return Err(SessionError::CrossShard(
                        "COPY over several shards is not supported in this form; COPY ... FROM STDIN into one sharded table, or name the shard".into(),
                    ));
                }
                answers.push(answer);
            }
            // Rows of a sharded table are summed; a table every shard holds a copy of counts once.
            let sum = g.plan.as_ref().is_some_and(|p| {
                p.shards.iter().any(|s| {
                    matches!(
                        s.scope,
                        crate::router::shard::ShardScope::Keys { .. }
                            | crate::router::shard::ShardScope::AllShards { .. }
                    )
                })
            });
            Ok(merge(&answers, &mut self.cout, sum))
        }
        .await;
        self.multi = Some(m);
        result
    }

    /// Writes a group's frames to one part, renaming prepared statements as the ordinary path
    /// does and preparing on this connection what it lacks.
    /// `split`: this shard's rows of a multi-row INSERT with parameters (its text, renumbered, and
    /// the original parameter numbers): the Bind is replaced by an unnamed Parse of that text and a
    /// Bind of those parameters.
    pub(super) fn write_group(
        &mut self,
        part: &mut Part,
        frames: &[u8],
        order: &mut VecDeque<bool>,
        split: Option<&(String, Vec<usize>)>,
    ) -> Result<(), SessionError> {
        let mut off = 0;
        while let Ok(Some(h)) = peek_header(&frames[off..], usize::MAX) {
            let frame = &frames[off..off + h.frame_len];
            let body = &frame[5..];
            off += h.frame_len;
            let conn = &mut part.conn;
            match h.tag {
                fe::PARSE => {
                    let (name, rest) = fe::parse_name(body)?;
                    if name.is_empty() {
                        conn.wbuf.extend_from_slice(frame);
                        order.push_back(false);
                        part.has_unnamed = true;
                        self.unnamed_parse.clear();
                        self.unnamed_parse.extend_from_slice(frame);
                        self.unnamed_plan = Some(self.plan_text(fe::query_text(rest)));
                    } else {
                        let shared = &self.worker.shared;
                        let stmt = match self.statements.get(name) {
                            Some(s) => s.clone(),
                            None => {
                                let s = shared.statements.intern(rest, &self.live.classify);
                                self.statements
                                    .insert(Bytes::copy_from_slice(name), s.clone());
                                s
                            }
                        };
                        fe::write_parse(&mut conn.wbuf, &stmt.server_name, &stmt.parse_rest);
                        conn.prepared.insert(stmt.id);
                        order.push_back(false);
                    }
                }
                fe::BIND if split.is_some() => {
                    let (text, keep) = split.expect("checked");
                    let (portal, stmt_name, rest) = fe::bind_statement(body)?;
                    let types = self.statement_parse_rest(stmt_name);
                    let parse = fe::parse_rest_subset(&types, text, keep);
                    let bind =
                        fe::bind_rest_subset(rest, keep).ok_or(ProtocolError::Malformed {
                            what: "Bind",
                            problem: "its parameters do not add up",
                        })?;
                    fe::write_parse(&mut conn.wbuf, b"", &parse);
                    order.push_back(true);
                    fe::write_bind(&mut conn.wbuf, portal, b"", &bind);
                    // The server's unnamed statement is now this one, not the client's.
                    part.has_unnamed = false;
                }
                fe::BIND => {
                    let (portal, stmt_name, rest) = fe::bind_statement(body)?;
                    if stmt_name.is_empty() {
                        if !part.has_unnamed && !self.unnamed_parse.is_empty() {
                            conn.wbuf.extend_from_slice(&self.unnamed_parse);
                            order.push_back(true);
                            part.has_unnamed = true;
                        }
                        conn.wbuf.extend_from_slice(frame);
                    } else if let Some(stmt) = self.statements.get(stmt_name) {
                        if !conn.prepared.contains(&stmt.id) {
                            fe::write_parse(&mut conn.wbuf, &stmt.server_name, &stmt.parse_rest);
                            conn.prepared.insert(stmt.id);
                            order.push_back(true);
                        }
                        fe::write_bind(&mut conn.wbuf, portal, &stmt.server_name, rest);
                    } else {
                        conn.wbuf.extend_from_slice(frame);
                    }
                }
                fe::DESCRIBE => {
                    let (kind, name) = fe::target(body)?;
                    match self
                        .statements
                        .get(name)
                        .filter(|_| kind == b'S' && !name.is_empty())
                    {
                        Some(stmt) => {
                            if !conn.prepared.contains(&stmt.id) {
                                fe::write_parse(
                                    &mut conn.wbuf,
                                    &stmt.server_name,
                                    &stmt.parse_rest,
                                );
                                conn.prepared.insert(stmt.id);
                                order.push_back(true);
                            }
                            fe::write_target(&mut conn.wbuf, fe::DESCRIBE, b'S', &stmt.server_name);
                        }
                        None => conn.wbuf.extend_from_slice(frame),
                    }
                }
                fe::CLOSE => {
                    let (kind, name) = fe::target(body)?;
                    if kind == b'S' && !name.is_empty() {
                        // The server keeps its shared copy; a harmless Close answers in its place.
                        self.statements.remove(name);
                        fe::write_target(&mut conn.wbuf, fe::CLOSE, b'P', b"_sg_nothing");
                    } else {
                        conn.wbuf.extend_from_slice(frame);
                    }
                }
                fe::SYNC => {}
                _ => conn.wbuf.extend_from_slice(frame),
            }
        }
        Ok(())
    }

    /// The rest of the Parse (`query\0` and parameter types) of the statement a Bind names: the
    /// client's last unnamed Parse, or a prepared statement (empty when unknown).
    pub(super) fn statement_parse_rest(&self, name: &[u8]) -> Vec<u8> {
        if name.is_empty() {
            self.unnamed_parse
                .get(5..)
                .and_then(|b| fe::parse_name(b).ok())
                .map(|(_, r)| r.to_vec())
        } else {
            self.statements.get(name).map(|s| s.parse_rest.to_vec())
        }
        .unwrap_or_default()
    }

    /// A multi-row INSERT's text cut per shard, or an error when its rows go to several shards
    /// and it cannot be cut (parameters as keys). None: send the group as it is.
    fn split_insert(
        &self,
        plan: &Plan,
        text: &[u8],
        targets: ShardSet,
        bind: Option<&[u8]>,
    ) -> Option<Result<Split, SessionError>> {
        let [p] = &plan.shards[..] else {
            return None;
        };
        if !p.insert_rows
            || targets.len() < 2
            || plan.shard_hint.is_some()
            || self.shard_pin.is_some()
        {
            return None;
        }
        let refuse = || {
            Err(SessionError::CrossShard(
                "a multi-row INSERT whose rows go to several shards could not be cut per shard; send one row per statement".into(),
            ))
        };
        let Ok(sql) = std::str::from_utf8(text) else {
            return Some(refuse());
        };
        let values = crate::router::shard::literals(sql);
        let config = &self.live.config;
        let param = |n, t| super::super::shards::bind_key(bind, n, t);
        let Some(rows) = crate::router::shard::key_shards(p, config, values.as_deref(), &param)
        else {
            return Some(refuse());
        };
        let split = match bind {
            None => crate::router::shard::split_insert(sql, &rows).map(Split::Texts),
            Some(_) => crate::router::shard::split_insert_params(sql, &rows).map(Split::Params),
        };
        Some(split.map_or_else(refuse, Ok))
    }

    /// Answers extended-protocol frames the proxy handled itself.
    pub(super) fn synthesize(&mut self, frames: &[u8], tag: &str) {
        let mut off = 0;
        while let Ok(Some(h)) = peek_header(&frames[off..], usize::MAX) {
            off += h.frame_len;
            match h.tag {
                fe::PARSE => be::write_parse_complete(&mut self.cout),
                fe::BIND => self.cout.extend_from_slice(b"2\0\0\0\x04"),
                fe::DESCRIBE => self.cout.extend_from_slice(b"n\0\0\0\x04"),
                fe::EXECUTE | fe::QUERY => be::write_command_complete(&mut self.cout, tag),
                fe::CLOSE => be::write_close_complete(&mut self.cout),
                _ => {}
            }
        }
    }
}

/// The tag of the last whole frame of `unit`.
pub(super) fn last_tag(unit: &[u8]) -> Option<u8> {
    let mut off = 0;
    let mut last = None;
    while let Ok(Some(h)) = peek_header(&unit[off..], usize::MAX) {
        if unit.len() - off < h.frame_len {
            break;
        }
        last = Some(h.tag);
        off += h.frame_len;
    }
    last
}

/// Whether a statement may run inside a transaction block (CREATE INDEX CONCURRENTLY, VACUUM,
/// CREATE DATABASE and a few more may not).
pub(super) fn runs_in_block(sql: &[u8]) -> bool {
    let text = String::from_utf8_lossy(sql).to_ascii_lowercase();
    let words: Vec<&str> = text
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
        .take(4)
        .collect();
    let first = words.first().copied().unwrap_or("");
    !(matches!(first, "vacuum" | "cluster" | "reindex" | "checkpoint")
        || words.contains(&"concurrently")
        || (matches!(first, "create" | "drop" | "alter")
            && matches!(
                words.get(1),
                Some(&"database") | Some(&"tablespace") | Some(&"system")
            ))
        || (first == "alter" && words.get(1) == Some(&"type") && text.contains("add value")))
}
