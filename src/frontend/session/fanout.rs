//! The fan-out path: a unit of client messages that needs several shards, or any unit of a
//! transaction that already spans several.
//!
//! The session holds one connection per shard it touched (`Multi::parts`). A unit is cut into
//! groups (a simple Query; or the extended messages up to and including each Execute); each group
//! goes, with a Sync of the proxy's own, to the shards it needs, and the answers are merged into
//! one: the first shard's descriptions (ParseComplete, RowDescription, ...), the rows of every
//! shard in shard order, the CommandComplete counts summed, the first error. The client's own Sync
//! is answered once, at the end. After an error the rest of the unit is skipped, as a server would.
//!
//! Atomicity: a unit outside a transaction block that writes on several shards runs in a
//! transaction on each and commits with two-phase commit; a transaction block that wrote on several
//! shards commits the same way at COMMIT (`commit`): PREPARE TRANSACTION everywhere, the decision
//! made durable in the decision log (`twophase`), then COMMIT PREPARED. One writing shard commits
//! with a plain COMMIT. Statements that cannot run in a transaction block (CREATE INDEX
//! CONCURRENTLY, VACUUM, ...) are sent to each shard as they are, without that guarantee.
//!
//! Rows are gathered from all shards before they are sent (ordered merging and streaming come with
//! the merge engine).

use super::*;
use crate::router::shard::{ShardSet, Shards};

/// The fail points the crash-recovery tests use: `SHARDGATE_FAILPOINT=before_decision` (die
/// after every participant prepared, before the decision is logged) or `after_decision` (die after
/// the decision is logged, before any COMMIT PREPARED).
fn failpoint(name: &str) {
    static POINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let point = POINT.get_or_init(|| std::env::var("SHARDGATE_FAILPOINT").ok());
    if point.as_deref() == Some(name) {
        eprintln!("shardgate: fail point {name}: exiting");
        std::process::abort();
    }
}

/// One shard's connection in a fan-out.
pub(super) struct Part {
    shard: usize,
    conn: Checkout,
    _busy: BusyGuard,
    /// A statement that may write went here in this transaction.
    wrote: bool,
    /// The connection has the client's current unnamed statement.
    has_unnamed: bool,
}

/// The connections of a transaction (or unit) over several shards.
pub(super) struct Multi {
    parts: Vec<Part>,
    /// The client's transaction block is open.
    explicit: bool,
    /// What opens the transaction on a shard joining it.
    begin_sql: String,
    /// A statement failed in the transaction block: only ROLLBACK is accepted.
    failed: bool,
}

impl Multi {
    pub(super) fn is_explicit(&self) -> bool {
        self.explicit
    }

    pub(super) fn begin_text(&self) -> &str {
        &self.begin_sql
    }

    pub(super) fn first_conn(&mut self) -> &mut crate::backend::BackendConn {
        &mut self.parts[0].conn
    }

    pub(super) fn len(&self) -> usize {
        self.parts.len()
    }

    /// The shards of the parts, in order.
    pub(super) fn shards(&self) -> Vec<usize> {
        self.parts.iter().map(|p| p.shard).collect()
    }

    /// The connections, to mark them when the client leaves.
    pub(super) fn parts_mut(&mut self) -> impl Iterator<Item = &mut crate::backend::BackendConn> {
        self.parts.iter_mut().map(|p| &mut *p.conn)
    }

    pub(super) fn status(&self) -> u8 {
        if !self.explicit {
            be::TX_IDLE
        } else if self.failed {
            be::TX_FAILED
        } else {
            be::TX_IN_BLOCK
        }
    }
}

/// One group of a unit: frames `range` of the unit, sent to the same shards.
struct Group {
    start: usize,
    end: usize,
    shards: Shards,
    plan: Option<Arc<Plan>>,
    /// The statement text (Query, or the Bind's statement).
    text: Vec<u8>,
    is_query: bool,
    executes: bool,
}

/// One shard's answer to a group, frame by frame.
type Answer = Vec<(u8, Bytes)>;

impl Session {
    /// Moves the held connection (in a transaction, nothing owed) into a fan-out.
    pub(super) fn escalate(&mut self) {
        let Some(conn) = self.backend.take() else {
            return;
        };
        self.disarm_retry();
        self.cancel.set(None);
        let explicit = conn.tx_status != be::TX_IDLE || self.begun;
        let has_unnamed = self.unnamed_on == Some(conn.id);
        let busy = self.held.take().expect("a held connection has its guard");
        let mut conn = conn;
        if !explicit && self.pinned {
            // Session state that cannot follow the client: close rather than pool it.
            conn.broken = true;
        }
        let part = Part {
            shard: self.shard_idx,
            conn,
            _busy: busy,
            wrote: self.tx_wrote,
            has_unnamed,
        };
        let failed = part.conn.tx_status == be::TX_FAILED;
        self.multi = Some(Box::new(Multi {
            parts: vec![part],
            explicit,
            begin_sql: self.begin_sql.clone(),
            failed,
        }));
        self.begun = false;
        self.unnamed_on = None;
    }

    /// Runs one unit over several shards; the unit is `unit` (whole frames).
    pub(super) async fn run_fanout(&mut self, unit: &[u8], shards: Shards) -> Step {
        let n = self.worker.shared.config.shards.len();
        if self.multi.is_none() {
            let explicit = self.deferred_begin.is_some();
            self.multi = Some(Box::new(Multi {
                parts: Vec::new(),
                explicit,
                begin_sql: self.begin_sql.clone(),
                failed: false,
            }));
        }
        if let Some(begin) = self.deferred_begin.take() {
            let text = String::from_utf8_lossy(fe::query_text(&begin[5..])).into_owned();
            let m = self.multi.as_mut().expect("set above");
            m.begin_sql = text;
            m.explicit = true;
        }
        let groups = match self.groups(unit, shards) {
            Ok(g) => g,
            Err(e) => {
                self.fanout_error(&e);
                return self.after_unit(unit).await;
            }
        };
        if let Some(g) = groups.iter().find(|g| g.executes)
            && let Some(p) = &g.plan
            && p.shard_hint.is_none()
            && self.shard_pin.is_none()
            && let Some(c) = std::str::from_utf8(&g.text)
                .ok()
                .and_then(crate::router::shard::copy_in)
            && self.worker.shared.config.table(&c.table).is_some()
        {
            let frames = (!g.is_query).then(|| unit[g.start..g.end].to_vec());
            return self.start_copy_split(&g.text.clone(), frames, c).await;
        }
        // The whole unit's reach: writes and shards decide the servers and the wrapping.
        let mut reach = ShardSet::default();
        let mut writes = false;
        let mut transactional = true;
        for g in &groups {
            reach = reach.union(self.group_targets(g, n));
            if let Some(p) = &g.plan {
                writes |= p.writes;
                transactional &= runs_in_block(&g.text);
            }
        }
        let explicit = self.multi.as_ref().expect("set").explicit;
        let wrap = !explicit && writes && reach.len() > 1 && transactional;
        let want = if explicit || writes || self.session_mode {
            route::Want::Primary
        } else {
            route::Want::Read
        };
        let begin = if wrap {
            Some("BEGIN".to_string())
        } else if explicit {
            Some(self.multi.as_ref().expect("set").begin_sql.clone())
        } else {
            None
        };
        let mut failed = self.multi.as_ref().expect("set").failed;
        for g in &groups {
            let ends = g
                .plan
                .as_ref()
                .is_some_and(|p| matches!(p.tx, TxControl::End));
            if failed && !(ends && g.executes) {
                if self.multi.as_ref().is_some_and(|m| m.failed) {
                    // A transaction block already failed: as Postgres answers.
                    SessionError::InFailedTransaction.write_to(&mut self.cout);
                }
                break;
            }
            if let Some(p) = &g.plan
                && g.executes
                && matches!(p.tx, TxControl::End)
                && explicit
            {
                let rollback = client::rolls_back(&g.text);
                self.finish_multi(!rollback, g, &unit[g.start..g.end]).await;
                failed = self.multi.as_ref().is_some_and(|m| m.failed);
                continue;
            }
            if let Some(p) = &g.plan
                && g.executes
                && matches!(p.tx, TxControl::Begin { .. })
            {
                let m = self.multi.as_mut().expect("set");
                if !m.explicit {
                    m.explicit = true;
                    m.begin_sql = String::from_utf8_lossy(&g.text).into_owned();
                    if m.parts.is_empty() {
                        self.synthesize(&unit[g.start..g.end], "BEGIN");
                        continue;
                    }
                }
            }
            let targets = self.group_targets(g, n);
            if let Err(e) = self.ensure_parts(targets, want, begin.as_deref()).await {
                self.fanout_error(&e);
                failed = true;
                break;
            }
            match self.run_group(g, &unit[g.start..g.end], targets).await {
                Ok(ok) => failed = !ok,
                Err(e) => {
                    self.fanout_error(&e);
                    failed = true;
                }
            }
        }
        if wrap {
            if failed {
                self.rollback_parts().await;
            } else if let Err(e) = self.commit_parts().await {
                self.fanout_error(&e);
            }
        } else if failed && let Some(m) = self.multi.as_mut() {
            m.failed = m.explicit;
        }
        self.after_unit(unit).await
    }

    /// Answers the unit's Sync (or Query) and gives the connections back when no transaction is open.
    async fn after_unit(&mut self, unit: &[u8]) -> Step {
        let last = last_tag(unit);
        if matches!(last, Some(fe::SYNC) | Some(fe::QUERY)) {
            let status = self.multi.as_ref().map_or(be::TX_IDLE, |m| m.status());
            be::write_ready_for_query(&mut self.cout, status);
        }
        let open = self.multi.as_ref().is_some_and(|m| m.explicit);
        if !open && !self.session_mode {
            self.release_parts().await;
        }
        Ok(Flow::Continue)
    }

    /// Gives every fan-out connection back (after reading session state if it may have changed).
    pub(super) async fn release_parts(&mut self) {
        let Some(m) = self.multi.take() else {
            return;
        };
        for mut p in m.parts {
            if p.conn.tx_status != be::TX_IDLE || !p.conn.rbuf.is_empty() {
                p.conn.broken = true;
            }
            if p.conn.broken || p.conn.prepared.len() > MAX_PREPARED_PER_CONN {
                drop(Checkout::take(p.conn));
            }
        }
    }

    /// Cuts a unit into groups and routes each.
    fn groups(&self, unit: &[u8], unit_shards: Shards) -> Result<Vec<Group>, SessionError> {
        let mut groups = Vec::new();
        let mut off = 0;
        let mut start = 0;
        let mut shards = Shards::Any;
        let mut plan = None;
        let mut text = Vec::new();
        let mut parsed: Vec<(Vec<u8>, Arc<Plan>, Vec<u8>)> = Vec::new();
        while let Ok(Some(h)) = peek_header(&unit[off..], usize::MAX) {
            if unit.len() - off < h.frame_len {
                break;
            }
            let body = &unit[off + 5..off + h.frame_len];
            off += h.frame_len;
            match h.tag {
                fe::QUERY => {
                    let t = fe::query_text(body);
                    let p = self.plan_text(t);
                    if p.shards.len() > 1
                        && !matches!(p.tx, TxControl::None)
                        && unit_shards
                            .set(self.worker.shared.config.shards.len())
                            .len()
                            > 1
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
                    parsed.push((name.to_vec(), self.plan_text(t), t.to_vec()));
                }
                fe::BIND => {
                    let (_, stmt, rest) = fe::bind_statement(body)?;
                    let found = parsed
                        .iter()
                        .rev()
                        .find(|(n, _, _)| n == stmt)
                        .map(|(_, p, t)| (p.clone(), t.clone()))
                        .or_else(|| {
                            if stmt.is_empty() {
                                self.unnamed_plan
                                    .clone()
                                    .map(|p| (p, self.unnamed_sql().to_vec()))
                            } else {
                                self.statements.get(stmt).map(|s| {
                                    (s.plan.clone(), fe::query_text(&s.parse_rest).to_vec())
                                })
                            }
                        });
                    if let Some((p, t)) = found {
                        shards = self.text_shards(&p, &t, Some(rest))?;
                        plan = Some(p);
                        text = t;
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

    fn unnamed_sql(&self) -> &[u8] {
        if self.unnamed_parse.len() > 5 {
            fe::parse_name(&self.unnamed_parse[5..])
                .map(|(_, rest)| fe::query_text(rest))
                .unwrap_or_default()
        } else {
            b""
        }
    }

    /// The shards a group goes to.
    fn group_targets(&self, g: &Group, n: usize) -> ShardSet {
        let parts: ShardSet = self.multi.as_ref().map_or(ShardSet::default(), |m| {
            let mut s = ShardSet::default();
            for p in &m.parts {
                s.insert(p.shard);
            }
            s
        });
        match g.shards {
            Shards::Set(s) => s,
            Shards::All => ShardSet::all(n),
            Shards::Any => {
                let state_only = g
                    .plan
                    .as_ref()
                    .is_some_and(|p| p.shards.is_empty() && !p.read && !p.writes && !p.unparsed);
                if state_only && !parts.is_empty() {
                    // SET, SAVEPOINT, ...: every shard of the transaction.
                    parts
                } else if let Some(first) = parts.iter().next() {
                    ShardSet::one(first)
                } else {
                    ShardSet::one(self.default_shard())
                }
            }
        }
    }

    /// Takes a connection on each target shard that has none yet; `begin` opens a transaction there.
    async fn ensure_parts(
        &mut self,
        targets: ShardSet,
        want: route::Want,
        begin: Option<&str>,
    ) -> Result<(), SessionError> {
        for shard in targets.iter() {
            if self
                .multi
                .as_ref()
                .expect("set")
                .parts
                .iter()
                .any(|p| p.shard == shard)
            {
                continue;
            }
            let server = self.pick_server_on(shard, want, None);
            let mut conn = self.checkout_conn(shard, server.addr).await?;
            if let Some(sql) = begin {
                let r = conn
                    .run_internal(sql)
                    .await
                    .map_err(|e| SessionError::BackendLost {
                        server: server.addr,
                        reason: e.to_string(),
                    })?;
                if let Some(e) = r.error {
                    return Err(SessionError::CrossShard(format!(
                        "could not open the transaction on shard {}: {e}",
                        self.worker.shared.config.shards[shard].name
                    )));
                }
            }
            let busy = server.enter();
            let m = self.multi.as_mut().expect("set");
            m.parts.push(Part {
                shard,
                conn,
                _busy: busy,
                wrote: false,
                has_unnamed: false,
            });
            m.parts.sort_by_key(|p| p.shard);
        }
        Ok(())
    }

    /// Sends one group to its shards and merges their answers into the client's. Returns false
    /// when it failed (an error was sent).
    async fn run_group(
        &mut self,
        g: &Group,
        frames: &[u8],
        targets: ShardSet,
    ) -> Result<bool, SessionError> {
        let writes = g.plan.as_ref().is_none_or(|p| p.writes || p.unparsed);
        let split = match g
            .plan
            .as_ref()
            .and_then(|p| self.split_insert(p, &g.text, targets))
        {
            Some(Ok(texts)) if g.is_query => Some(texts),
            Some(Ok(_)) => {
                return Err(SessionError::CrossShard(
                    "a multi-row INSERT prepared with the extended protocol whose rows go to several shards; send one row per statement, or use a simple query".into(),
                ));
            }
            Some(Err(e)) => return Err(e),
            None => None,
        };
        // Swallowed ParseCompletes, per part, in order of the Parses sent.
        let mut expect: Vec<(usize, VecDeque<bool>)> = Vec::new();
        let mut m = self.multi.take().expect("set");
        let result = async {
            for part in m.parts.iter_mut().filter(|p| targets.contains(p.shard)) {
                let mut order = VecDeque::new();
                match &split {
                    Some(texts) => {
                        let text = &texts[&part.shard];
                        fe::write_query(&mut part.conn.wbuf, text);
                    }
                    None => self.write_group(part, frames, &mut order)?,
                }
                if !g.is_query {
                    fe::write_sync(&mut part.conn.wbuf);
                }
                if writes {
                    part.wrote = true;
                }
                expect.push((part.shard, order));
                part.conn.send().await.map_err(|e| SessionError::BackendLost {
                    server: part.conn.addr,
                    reason: e.to_string(),
                })?;
            }
            let mut answers: Vec<Answer> = Vec::new();
            for part in m.parts.iter_mut().filter(|p| targets.contains(p.shard)) {
                let order = &mut expect
                    .iter_mut()
                    .find(|(s, _)| *s == part.shard)
                    .expect("pushed above")
                    .1;
                let mut answer = Vec::new();
                loop {
                    let (tag, body) =
                        part.conn
                            .read_frame("a fan-out answer")
                            .await
                            .map_err(|e| SessionError::BackendLost {
                                server: part.conn.addr,
                                reason: e.to_string(),
                            })?;
                    match tag {
                        be::READY_FOR_QUERY => {
                            part.conn.tx_status = body.first().copied().unwrap_or(be::TX_IDLE);
                            break;
                        }
                        be::PARSE_COMPLETE if order.pop_front() == Some(true) => {}
                        be::PARAMETER_STATUS => {
                            part.conn.note_param(&body);
                            answer.push((tag, body));
                        }
                        be::COPY_IN_RESPONSE | be::COPY_OUT_RESPONSE | be::COPY_BOTH_RESPONSE => {
                            part.conn.broken = true;
                            return Err(SessionError::CrossShard(
                                "COPY over several shards is not supported in this form; COPY ... FROM STDIN into one sharded table, or name the shard".into(),
                            ));
                        }
                        _ => answer.push((tag, body)),
                    }
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
    fn write_group(
        &mut self,
        part: &mut Part,
        frames: &[u8],
        order: &mut VecDeque<bool>,
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
                                let s = shared.statements.intern(rest, &shared.classify);
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

    /// COMMIT or ROLLBACK of a transaction over several shards; answers the group's frames.
    async fn finish_multi(&mut self, commit: bool, g: &Group, frames: &[u8]) {
        let failed = self.multi.as_ref().is_some_and(|m| m.failed);
        let tag = if commit && !failed {
            match self.commit_parts().await {
                Ok(()) => "COMMIT",
                Err(e) => {
                    e.write_to(&mut self.cout);
                    if let Some(m) = self.multi.as_mut() {
                        m.explicit = false;
                    }
                    if g.is_query {
                        return;
                    }
                    // The extended protocol: the error stands for the group's answers.
                    return;
                }
            }
        } else {
            self.rollback_parts().await;
            "ROLLBACK"
        };
        if let Some(m) = self.multi.as_mut() {
            m.explicit = false;
            m.failed = false;
        }
        if g.is_query {
            be::write_command_complete(&mut self.cout, tag);
        } else {
            self.synthesize(frames, tag);
        }
    }

    /// Answers extended-protocol frames the proxy handled itself.
    fn synthesize(&mut self, frames: &[u8], tag: &str) {
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

    /// Takes connections to the primaries of `targets` (opening `begin` there).
    pub(super) async fn ensure_parts_pub(
        &mut self,
        targets: ShardSet,
        begin: Option<&str>,
    ) -> Result<(), SessionError> {
        self.ensure_parts(targets, route::Want::Primary, begin)
            .await
    }

    /// Starts a COPY on every part: the statement as a simple query, or the client's extended
    /// messages (`frames`, then a Sync). Returns what goes to the client before its data
    /// (ParseComplete and BindComplete of the first shard, one CopyInResponse).
    pub(super) async fn start_copy_on_parts(
        &mut self,
        sql: &str,
        frames: Option<&[u8]>,
    ) -> Result<BytesMut, SessionError> {
        let mut m = self.multi.take().expect("parts exist");
        let mut out = BytesMut::new();
        let mut error = None;
        for (i, part) in m.parts.iter_mut().enumerate() {
            let mut order = VecDeque::new();
            match frames {
                Some(f) => {
                    if let Err(e) = self.write_group(part, f, &mut order) {
                        error.get_or_insert(e);
                        continue;
                    }
                    // No Sync: a server in COPY ignores it; one follows CopyDone.
                    part.conn.wbuf.extend_from_slice(b"H\0\0\0\x04");
                }
                None => fe::write_query(&mut part.conn.wbuf, sql),
            }
            part.wrote = true;
            let conn = &mut part.conn;
            if let Err(e) = conn.send().await {
                error.get_or_insert(SessionError::BackendLost {
                    server: conn.addr,
                    reason: e.to_string(),
                });
                continue;
            }
            loop {
                match conn.read_frame("COPY start").await {
                    Ok((be::COPY_IN_RESPONSE, body)) => {
                        if i == 0 {
                            write_frame(&mut out, be::COPY_IN_RESPONSE, &body);
                        }
                        break;
                    }
                    Ok((be::PARSE_COMPLETE, _)) if order.pop_front() == Some(true) => {}
                    Ok((tag @ (be::PARSE_COMPLETE | be::BIND_COMPLETE), body)) => {
                        if i == 0 {
                            write_frame(&mut out, tag, &body);
                        }
                    }
                    Ok((be::ERROR_RESPONSE, body)) => {
                        error.get_or_insert(SessionError::Server(crate::errors::ServerError {
                            body,
                        }));
                    }
                    Ok((be::READY_FOR_QUERY, body)) => {
                        conn.tx_status = body.first().copied().unwrap_or(be::TX_IDLE);
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        error.get_or_insert(SessionError::BackendLost {
                            server: conn.addr,
                            reason: e.to_string(),
                        });
                        break;
                    }
                }
            }
        }
        self.multi = Some(m);
        match error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    pub(super) fn mark_multi_failed(&mut self) {
        if let Some(m) = self.multi.as_mut() {
            m.failed = m.explicit;
        }
    }

    pub(super) async fn rollback_all(&mut self) {
        self.rollback_parts().await;
    }

    /// Commits every part (two-phase when several wrote); all parts count as writers.
    pub(super) async fn commit_all(&mut self) -> Result<(), SessionError> {
        if let Some(m) = self.multi.as_mut() {
            for p in &mut m.parts {
                p.wrote = true;
            }
        }
        self.commit_parts().await
    }

    /// Rolls back every part's transaction.
    async fn rollback_parts(&mut self) {
        let Some(m) = self.multi.as_mut() else {
            return;
        };
        for p in &mut m.parts {
            if p.conn.tx_status != be::TX_IDLE && p.conn.run_internal("ROLLBACK").await.is_err() {
                p.conn.broken = true;
            }
            p.wrote = false;
        }
    }

    /// Commits every part's transaction: one writer with COMMIT, several with two-phase commit.
    async fn commit_parts(&mut self) -> Result<(), SessionError> {
        let mut m = self.multi.take().expect("a fan-out is open");
        let r = self.commit_inner(&mut m).await;
        for p in &mut m.parts {
            p.wrote = false;
        }
        self.multi = Some(m);
        r
    }

    async fn commit_inner(&mut self, m: &mut Multi) -> Result<(), SessionError> {
        let lost = |p: &Part, e: crate::errors::BackendError| SessionError::BackendLost {
            server: p.conn.addr,
            reason: e.to_string(),
        };
        // Shards that only read commit first; their outcome changes nothing.
        for p in m.parts.iter_mut().filter(|p| !p.wrote) {
            if p.conn.tx_status != be::TX_IDLE {
                p.conn
                    .run_internal("COMMIT")
                    .await
                    .map_err(|e| lost(p, e))?;
            }
        }
        let writers: Vec<usize> = (0..m.parts.len()).filter(|&i| m.parts[i].wrote).collect();
        if writers.len() <= 1 {
            for &i in &writers {
                let p = &mut m.parts[i];
                let r = p
                    .conn
                    .run_internal("COMMIT")
                    .await
                    .map_err(|e| lost(p, e))?;
                if let Some(e) = r.error {
                    return Err(SessionError::TwoPhase(e.to_string()));
                }
            }
            self.note_wal_positions(m, &writers).await;
            return Ok(());
        }
        let gid = match &self.worker.shared.decisions {
            Some(log) => log.new_gid(),
            None => crate::twophase::ephemeral_gid(),
        };
        let prepare = format!("PREPARE TRANSACTION '{gid}'");
        for &i in &writers {
            fe::write_query(&mut m.parts[i].conn.wbuf, &prepare);
        }
        let mut failure = None;
        let mut prepared = Vec::new();
        for &i in &writers {
            let p = &mut m.parts[i];
            let sent = p.conn.send().await;
            match sent {
                Ok(()) => match read_to_ready(&mut p.conn).await {
                    Ok(None) => prepared.push(i),
                    Ok(Some(e)) => {
                        failure.get_or_insert(format!(
                            "shard {}: {e}",
                            self.worker.shared.config.shards[p.shard].name
                        ));
                    }
                    Err(e) => {
                        failure.get_or_insert(e.to_string());
                    }
                },
                Err(e) => {
                    failure.get_or_insert(e.to_string());
                }
            }
        }
        if let Some(reason) = failure {
            // Presumed abort: nothing was logged, so every participant rolls back.
            for &i in &writers {
                let p = &mut m.parts[i];
                let sql = if prepared.contains(&i) {
                    format!("ROLLBACK PREPARED '{gid}'")
                } else {
                    "ROLLBACK".to_string()
                };
                if p.conn.run_internal(&sql).await.is_err() {
                    p.conn.broken = true;
                }
            }
            return Err(SessionError::TwoPhase(format!(
                "{reason}; the transaction was rolled back on every shard"
            )));
        }
        failpoint("before_decision");
        if let Some(log) = &self.worker.shared.decisions
            && let Err(e) = log.record_commit(&gid)
        {
            for &i in &writers {
                let _ = m.parts[i]
                    .conn
                    .run_internal(&format!("ROLLBACK PREPARED '{gid}'"))
                    .await;
            }
            return Err(SessionError::TwoPhase(format!(
                "could not record the commit decision ({e}); the transaction was rolled back on every shard"
            )));
        }
        failpoint("after_decision");
        let commit = format!("COMMIT PREPARED '{gid}'");
        for &i in &writers {
            let p = &mut m.parts[i];
            match p.conn.run_internal(&commit).await {
                Ok(r) if r.error.is_none() => {}
                other => {
                    // Decided: recovery commits it when shardgate starts again.
                    p.conn.broken = true;
                    warn!(gid = %gid, shard = %self.worker.shared.config.shards[p.shard].name, result = ?other.map(|r| r.error.map(|e| e.to_string())).map_err(|e| e.to_string()), "COMMIT PREPARED failed; the decision is logged and recovery will finish it");
                }
            }
        }
        self.note_wal_positions(m, &writers).await;
        Ok(())
    }

    /// Read-your-writes after a commit on these parts: their WAL positions.
    async fn note_wal_positions(&mut self, m: &mut Multi, which: &[usize]) {
        if !self.worker.shared.config.routing.read_your_writes {
            return;
        }
        for &i in which {
            let p = &mut m.parts[i];
            if self.worker.shared.topology.shards[p.shard]
                .replicas
                .is_empty()
                || p.conn.broken
            {
                continue;
            }
            if let Ok(r) = p
                .conn
                .run_internal("SELECT pg_current_wal_insert_lsn()")
                .await
                && let Some(Some(text)) = r.rows.first().and_then(|row| row.first())
                && let Some(lsn) = route::parse_lsn(text.as_bytes())
            {
                let slot = &mut self.min_lsn[p.shard];
                *slot = (*slot).max(lsn);
            }
        }
    }

    /// An error for the whole unit (no server saw it, or a connection was lost).
    fn fanout_error(&mut self, e: &SessionError) {
        debug!(error = %e, "fan-out failed");
        e.write_to(&mut self.cout);
        if let Some(m) = self.multi.as_mut() {
            m.parts.retain(|p| !p.conn.broken);
            if m.explicit {
                m.failed = true;
            }
        }
    }

    /// The shard for a request that may go anywhere: the session's pin, else the first.
    pub(super) fn default_shard(&self) -> usize {
        self.shard_pin
            .as_ref()
            .and_then(|h| h.shard_index(&self.worker.shared.config, None).ok())
            .unwrap_or(0)
    }

    /// The server a request goes to on `shard`.
    pub(super) fn pick_server_on(
        &self,
        shard: usize,
        want: route::Want,
        exclude: Option<ServerAddr>,
    ) -> Arc<ServerState> {
        let s = &self.worker.shared.topology.shards[shard];
        match want {
            route::Want::Primary => s.primary.clone(),
            route::Want::Read => {
                let routing = &self.worker.shared.config.routing;
                let ctx = crate::topology::balance::ReadContext {
                    client_ip: self.client_ip,
                    min_lsn: if routing.read_your_writes {
                        self.min_lsn[shard]
                    } else {
                        0
                    },
                    exclude,
                };
                crate::topology::balance::pick_read(
                    s,
                    routing.read_balance,
                    routing.read_from_primary,
                    &ctx,
                )
                .clone()
            }
        }
    }
}

/// Reads a simple query's answer to its ReadyForQuery: the first error, if any.
async fn read_to_ready(
    conn: &mut crate::backend::BackendConn,
) -> Result<Option<String>, crate::errors::BackendError> {
    let mut error = None;
    loop {
        let (tag, body) = conn.read_frame("two-phase commit").await?;
        match tag {
            be::ERROR_RESPONSE if error.is_none() => {
                error = Some(
                    be::error_field(&body, b'M')
                        .map(|m| String::from_utf8_lossy(m).into_owned())
                        .unwrap_or_default(),
                );
            }
            be::READY_FOR_QUERY => {
                conn.tx_status = body.first().copied().unwrap_or(be::TX_IDLE);
                return Ok(error);
            }
            _ => {}
        }
    }
}

/// The tag of the last whole frame of `unit`.
fn last_tag(unit: &[u8]) -> Option<u8> {
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

/// Merges the answers of several shards to one group into the client's answer. Returns false when
/// the group failed (the first error was sent).
fn merge(answers: &[Answer], out: &mut BytesMut, sum: bool) -> bool {
    // Each answer is a sequence of results, each ended by CommandComplete, EmptyQueryResponse,
    // PortalSuspended or ErrorResponse (an error ends the answer).
    let mut cursors = vec![0usize; answers.len()];
    let Some(first) = answers.first() else {
        return true;
    };
    let ends = |tag: u8| {
        matches!(
            tag,
            be::COMMAND_COMPLETE
                | be::EMPTY_QUERY_RESPONSE
                | be::PORTAL_SUSPENDED
                | be::ERROR_RESPONSE
        )
    };
    loop {
        // Any error among the shards at this point wins.
        for (i, a) in answers.iter().enumerate() {
            let mut c = cursors[i];
            while c < a.len() && !ends(a[c].0) {
                c += 1;
            }
            if c < a.len() && a[c].0 == be::ERROR_RESPONSE {
                // What came before the error on the first shard (descriptions, rows) still goes.
                write_frame(out, be::ERROR_RESPONSE, &a[c].1);
                return false;
            }
        }
        if cursors[0] >= first.len() {
            return true;
        }
        // Descriptions and notices from the first shard, rows from all, counts summed.
        let mut total: u64 = 0;
        let mut end: Option<&(u8, Bytes)> = None;
        for (i, a) in answers.iter().enumerate() {
            while cursors[i] < a.len() {
                let (tag, body) = &a[cursors[i]];
                cursors[i] += 1;
                if ends(*tag) {
                    if let Some(n) = be::command_count(body)
                        && (sum || i == 0)
                    {
                        total += n;
                    }
                    if i == 0 {
                        end = Some(&a[cursors[i] - 1]);
                    }
                    break;
                }
                if i == 0 || (*tag == be::DATA_ROW && sum) {
                    write_frame(out, *tag, body);
                }
            }
        }
        match end {
            Some((be::COMMAND_COMPLETE, body)) => {
                let tag = be::command_tag(body);
                match be::with_count(tag, total) {
                    Some(t) => be::write_command_complete(out, &t),
                    None => write_frame(out, be::COMMAND_COMPLETE, body),
                }
            }
            Some((tag, body)) => write_frame(out, *tag, body),
            None => return true,
        }
    }
}

fn write_frame(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
}

impl Session {
    /// A multi-row INSERT's text cut per shard, or an error when its rows go to several shards
    /// and it cannot be cut (parameters as keys). None: send the group as it is.
    fn split_insert(
        &self,
        plan: &Plan,
        text: &[u8],
        targets: ShardSet,
    ) -> Option<Result<std::collections::BTreeMap<usize, String>, SessionError>> {
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
                "a multi-row INSERT whose rows go to several shards, with keys given as parameters; send one row per statement, or the keys as literals".into(),
            ))
        };
        let Ok(sql) = std::str::from_utf8(text) else {
            return Some(refuse());
        };
        let values = crate::router::shard::literals(sql);
        let config = &self.worker.shared.config;
        let Some(rows) = crate::router::shard::key_shards(p, config, values.as_deref()) else {
            return Some(refuse());
        };
        match crate::router::shard::split_insert(sql, &rows) {
            Some(m) => Some(Ok(m)),
            None => Some(refuse()),
        }
    }
}
