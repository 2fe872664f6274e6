//! A SELECT over several shards, read from all of them side by side and merged as its rows come
//! (see `crate::merge`): never more than one row per shard held for an ordered or plain read,
//! the client written to as rows are ready.
//!
//! Each shard runs the plan's shard query (sort keys and aggregate partials added, LIMIT n+m,
//! OFFSET and HAVING removed): a Query of that text, or an unnamed Parse of it with the bound
//! statement's parameter types, a Bind of the client's parameters asking text for the columns the
//! merge computes, a Describe of the portal (the merge needs the column types) and the Execute.
//! A plain read without a plan (no ORDER BY, LIMIT, aggregate or DISTINCT) is sent as the client
//! sent it and its rows are passed on shard after shard.

use bytes::BufMut;

use super::groups::Group;
use super::*;
use crate::merge::plan::Column;
use crate::merge::rows::{Cols, Groups, MergeError, Shape, fields_of, split_row};
use crate::merge::{Merge, MergePlan, MergeResult, merge_plan};

/// Bytes of rows queued for the client before the merge waits for the client to take them.
const CLIENT_HIGH_WATER: usize = 256 * 1024;

/// Merge plans kept per worker; past this the cache starts over.
const MERGE_CACHE_SIZE: usize = 1024;

/// How a group over several shards is read.
pub(super) enum HowMerge {
    /// The client's frames as sent; rows passed on shard after shard.
    Stream,
    /// A merge plan (the cached [`MergeResult`] holds a `Merge::Plan`).
    Plan(Arc<MergeResult>),
}

impl HowMerge {
    fn plan(&self) -> Option<&MergePlan> {
        match self {
            HowMerge::Plan(m) => match m.as_ref() {
                Ok(Merge::Plan(p)) => Some(p),
                _ => None,
            },
            HowMerge::Stream => None,
        }
    }
}

/// What the client asked of a plan's Bind.
struct Request {
    /// Its result format per select-list column.
    client_formats: Vec<i16>,
    /// It asked for the portal's description (a simple Query always gets one).
    describe: bool,
}

/// One shard's answer while it is being merged.
struct Reader {
    /// Proxy-added ParseCompletes to swallow, in order of the Parses sent.
    order: VecDeque<bool>,
    /// The next row, split.
    head: Option<(Bytes, Cols)>,
    /// Its rows are over (CommandComplete, error or ReadyForQuery seen).
    over: bool,
    /// ReadyForQuery seen.
    ready: bool,
}

impl Session {
    /// Whether a group over `targets` is a single SELECT over a sharded table to read side by
    /// side and merge; an error when it needs a merge shardgate cannot do exactly.
    pub(super) fn merge_of(
        &self,
        g: &Group,
        frames: &[u8],
        targets: ShardSet,
    ) -> Result<Option<HowMerge>, SessionError> {
        let Some(p) = g.plan.as_ref() else {
            return Ok(None);
        };
        if !g.executes
            || targets.len() < 2
            || p.unparsed
            || p.local
            || p.shards.len() != 1
            || !matches!(p.tx, TxControl::None)
            || !matches!(
                p.shards[0].scope,
                crate::router::shard::ShardScope::Keys { .. }
                    | crate::router::shard::ShardScope::AllShards { .. }
            )
        {
            return Ok(None);
        }
        let merge = {
            let mut cache = self.worker.merges.borrow_mut();
            match cache.get(&g.text[..]) {
                Some(m) => m.clone(),
                None => {
                    let text = String::from_utf8_lossy(&g.text);
                    let m = Arc::new(merge_plan(&text, &self.live.config.tables));
                    if cache.len() >= MERGE_CACHE_SIZE {
                        cache.clear();
                    }
                    cache.insert(g.text.clone().into_boxed_slice(), m.clone());
                    m
                }
            }
        };
        let max_rows = if g.is_query {
            0
        } else {
            execute_of(frames).map_or(0, |(_, n)| n)
        };
        match merge.as_ref() {
            Err(refusal) => Err(SessionError::CrossShard(refusal.to_string())),
            Ok(Merge::Plan(_)) => {
                if max_rows != 0 {
                    return Err(SessionError::CrossShard(
                        "fetching the rows of a merged query over several shards in parts (Execute with a row limit, a cursor's fetch size) is not supported; fetch them at once, or add a condition on the shard key".into(),
                    ));
                }
                Ok(Some(HowMerge::Plan(merge.clone())))
            }
            // Writes and partial fetches keep the gathering path (its counts and suspensions).
            Ok(Merge::Concat) if p.read && max_rows == 0 => Ok(Some(HowMerge::Stream)),
            Ok(Merge::Concat) => Ok(None),
        }
    }

    /// Runs one group over several shards, merging the rows as they come. Returns false when it
    /// failed (an error was sent).
    pub(super) async fn run_merged(
        &mut self,
        g: &Group,
        frames: &[u8],
        targets: ShardSet,
        how: HowMerge,
    ) -> Result<bool, SessionError> {
        if session_state::text_may_change_session(&g.text)
            && let Some(m) = self.multi.as_mut()
        {
            m.dirty = true;
        }
        let mut m = self.multi.take().expect("set");
        let result = self.merge_parts(&mut m, g, frames, targets, &how).await;
        self.multi = Some(m);
        result
    }

    async fn merge_parts(
        &mut self,
        m: &mut Multi,
        g: &Group,
        frames: &[u8],
        targets: ShardSet,
        how: &HowMerge,
    ) -> Result<bool, SessionError> {
        let writes = g.plan.as_ref().is_some_and(|p| p.writes);
        if let Some(plan) = how.plan()
            && (!plan.order.is_empty() || plan.aggregate)
        {
            self.learn_collations(m, targets).await?;
        }
        // The requests, all sent before any answer is read: the shards work side by side.
        let mut readers = Vec::new();
        let mut request = Request {
            client_formats: Vec::new(),
            describe: g.is_query,
        };
        let mut parts: Vec<&mut Part> = m
            .parts
            .iter_mut()
            .filter(|p| targets.contains(p.shard))
            .collect();
        let sent: Result<(), SessionError> = async {
            for part in parts.iter_mut() {
                let mut order = VecDeque::new();
                match how.plan() {
                    None => self.write_group(part, frames, &mut order, None)?,
                    Some(plan) if g.is_query => {
                        fe::write_query(&mut part.conn.wbuf, &plan.shard_sql);
                    }
                    Some(plan) => {
                        request = self.write_plan_request(part, frames, plan, &mut order)?;
                    }
                }
                if !g.is_query {
                    fe::write_sync(&mut part.conn.wbuf);
                }
                if writes {
                    part.wrote = true;
                }
                part.conn
                    .send()
                    .await
                    .map_err(|e| SessionError::lost(part.conn.addr, e))?;
                readers.push(Reader {
                    order,
                    head: None,
                    over: false,
                    ready: false,
                });
            }
            for p in parts.iter_mut() {
                let name = &self.live.config.shards[p.shard].name;
                p.settle(name).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = sent {
            // Answers owed on these connections will not be read: they cannot be reused.
            for p in parts.iter_mut() {
                p.conn.broken = true;
            }
            return Err(e);
        }
        let outcome = self
            .merge_answers(g, how, &request, &mut parts, &mut readers)
            .await;
        let drained = drain(&mut parts, &mut readers).await;
        match outcome {
            Ok(Ok(sent)) => {
                drained?;
                be::write_command_complete(&mut self.cout, &format!("SELECT {sent}"));
                Ok(true)
            }
            Ok(Err(body)) => {
                drained?;
                merge::write_frame(&mut self.cout, be::ERROR_RESPONSE, &body);
                Ok(false)
            }
            Err(e) => {
                if drained.is_err() {
                    for p in parts.iter_mut() {
                        p.conn.broken = true;
                    }
                }
                Err(e)
            }
        }
    }

    /// Reads the shards' answers and merges them into the client's. `Ok(Ok(n))`: n rows sent;
    /// `Ok(Err(body))`: a shard's ErrorResponse, to pass on.
    async fn merge_answers(
        &mut self,
        g: &Group,
        how: &HowMerge,
        request: &Request,
        parts: &mut [&mut Part],
        readers: &mut [Reader],
    ) -> Result<Result<u64, Bytes>, SessionError> {
        // Each shard's answer up to its first row: the first shard's descriptions go to the
        // client (the plan's RowDescription fixed: hidden columns dropped, aggregate types).
        let mut error: Option<Bytes> = None;
        let mut shape: Option<Result<Shape, MergeError>> = None;
        for (i, (part, reader)) in parts.iter_mut().zip(readers.iter_mut()).enumerate() {
            let mut after_bind = g.is_query;
            loop {
                let (tag, body) = read(part).await?;
                match tag {
                    be::PARSE_COMPLETE if reader.order.pop_front() == Some(true) => {}
                    be::DATA_ROW => {
                        let mut cols = Cols::new();
                        split_row(&body, &mut cols)?;
                        reader.head = Some((body, cols));
                        break;
                    }
                    be::COMMAND_COMPLETE | be::EMPTY_QUERY_RESPONSE | be::PORTAL_SUSPENDED => {
                        reader.over = true;
                        break;
                    }
                    be::ERROR_RESPONSE => {
                        reader.over = true;
                        error.get_or_insert(body);
                        break;
                    }
                    be::READY_FOR_QUERY => {
                        reader.over = true;
                        reader.ready = true;
                        break;
                    }
                    be::ROW_DESCRIPTION if after_bind && i == 0 => match how.plan() {
                        Some(plan) => {
                            let s = fields_of(&body)
                                .and_then(|f| Shape::new(plan, f, &request.client_formats));
                            if let Ok(s) = &s
                                && request.describe
                            {
                                let fixed = s.describe(&body)?;
                                merge::write_frame(&mut self.cout, tag, &fixed);
                            }
                            shape = Some(s);
                        }
                        None => merge::write_frame(&mut self.cout, tag, &body),
                    },
                    be::BIND_COMPLETE if i == 0 => {
                        after_bind = true;
                        merge::write_frame(&mut self.cout, tag, &body);
                    }
                    _ if i == 0 => merge::write_frame(&mut self.cout, tag, &body),
                    _ => {}
                }
            }
        }
        if let Some(body) = error {
            return Ok(Err(body));
        }
        let shape = shape.transpose()?;
        if let Some(s) = &shape
            && s.compares_text()
        {
            let collations = self.worker.shared.collation_c.lock().expect("not poisoned");
            if let Some(p) = parts
                .iter()
                .find(|p| collations.get(&p.conn.addr) != Some(&true))
            {
                return Err(MergeError::Unsupported(format!(
                    "comparing text over several shards needs the \"C\" collation, and the database of server {} uses another; write ORDER BY ... COLLATE \"C\", or add a condition on the shard key",
                    p.conn.addr
                ))
                .into());
            }
        }
        match &shape {
            Some(s) if !s.streams() => self.merge_groups(s, parts, readers).await,
            s => self.merge_streams(s.as_ref(), parts, readers).await,
        }
    }

    /// The rows of every shard, least first by the plan's sort keys (in shard order without
    /// keys), OFFSET and LIMIT applied. `Ok(Err(body))`: a shard's ErrorResponse.
    async fn merge_streams(
        &mut self,
        shape: Option<&Shape>,
        parts: &mut [&mut Part],
        readers: &mut [Reader],
    ) -> Result<Result<u64, Bytes>, SessionError> {
        if let Some(s) = shape {
            for r in readers.iter() {
                if let Some((body, cols)) = &r.head {
                    s.check_keys(body, cols)?;
                }
            }
        }
        let mut skip = shape.map_or(0, |s| s.offset());
        let limit = shape.and_then(|s| s.limit());
        let mut sent = 0u64;
        loop {
            if limit.is_some_and(|l| sent >= l) {
                return Ok(Ok(sent));
            }
            let mut best: Option<usize> = None;
            for (i, r) in readers.iter().enumerate() {
                let Some((body, cols)) = &r.head else {
                    continue;
                };
                best = match (best, shape) {
                    (None, _) => Some(i),
                    (Some(b), Some(s)) => {
                        let (bb, bc) = readers[b].head.as_ref().expect("a head");
                        if s.compare(body, cols, bb, bc) == std::cmp::Ordering::Less {
                            Some(i)
                        } else {
                            Some(b)
                        }
                    }
                    (Some(b), None) => Some(b),
                };
            }
            let Some(i) = best else {
                return Ok(Ok(sent));
            };
            let (body, mut cols) = readers[i].head.take().expect("a head");
            if skip > 0 {
                skip -= 1;
            } else {
                match shape {
                    Some(s) => s.write_visible(&body, &cols, &mut self.cout),
                    None => merge::write_frame(&mut self.cout, be::DATA_ROW, &body),
                }
                sent += 1;
                if self.cout.len() >= CLIENT_HIGH_WATER {
                    self.write_client().await;
                }
            }
            match next_row(parts[i], &mut readers[i]).await? {
                Next::Row(body) => {
                    split_row(&body, &mut cols)?;
                    if let Some(s) = shape {
                        s.check_keys(&body, &cols)?;
                    }
                    readers[i].head = Some((body, cols));
                }
                Next::Over => {}
                Next::Error(body) => return Ok(Err(body)),
            }
        }
    }

    /// Every shard's rows combined per group (or de-duplicated), then HAVING, ORDER BY, OFFSET
    /// and LIMIT.
    async fn merge_groups(
        &mut self,
        shape: &Shape,
        parts: &mut [&mut Part],
        readers: &mut [Reader],
    ) -> Result<Result<u64, Bytes>, SessionError> {
        let mut groups = Groups::new();
        for (part, reader) in parts.iter_mut().zip(readers.iter_mut()) {
            if let Some((body, cols)) = reader.head.take() {
                groups.add(shape, &body, &cols)?;
            }
            let mut cols = Cols::new();
            loop {
                match next_row(part, reader).await? {
                    Next::Row(body) => {
                        split_row(&body, &mut cols)?;
                        groups.add(shape, &body, &cols)?;
                    }
                    Next::Over => break,
                    Next::Error(body) => return Ok(Err(body)),
                }
            }
        }
        let n = groups.finish(shape, &mut self.cout)?;
        Ok(Ok(n))
    }

    /// Writes a plan's request for one shard: the client's Parse/Describe/Close frames as the
    /// ordinary fan-out writes them; for its Bind, an unnamed Parse of the shard query, a Bind of
    /// the same parameters, a Describe of the portal; its Execute without a row limit. Returns
    /// the client's result formats and whether it asked for the portal's description.
    fn write_plan_request(
        &mut self,
        part: &mut Part,
        frames: &[u8],
        plan: &MergePlan,
        order: &mut VecDeque<bool>,
    ) -> Result<Request, SessionError> {
        let mut request = Request {
            client_formats: Vec::new(),
            describe: false,
        };
        let mut off = 0;
        while let Ok(Some(h)) = peek_header(&frames[off..], usize::MAX) {
            let frame = &frames[off..off + h.frame_len];
            let body = &frame[5..];
            off += h.frame_len;
            match h.tag {
                fe::BIND => {
                    let (portal, stmt_name, rest) = fe::bind_statement(body)?;
                    let malformed = || ProtocolError::Malformed {
                        what: "Bind",
                        problem: "its parameters or result formats do not add up",
                    };
                    let types = self.statement_parse_rest(stmt_name);
                    let nparams = fe::bind_param_count(rest).ok_or_else(malformed)?;
                    let (at, client) = fe::bind_results(rest, plan.items).ok_or_else(malformed)?;
                    let codes = rest
                        .get(at..at + 2)
                        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]) as usize);
                    let mut bind = BytesMut::with_capacity(rest.len() + 2 * (codes + plan.hidden));
                    bind.extend_from_slice(&rest[..at]);
                    if plan.aggregate {
                        // The columns the merge computes come as text; the rest as the client
                        // asked (min/max and group keys are passed on as they come).
                        let n = plan.items + plan.hidden;
                        bind.put_u16(n as u16);
                        for i in 0..n {
                            let passed =
                                matches!(plan.column(i), Column::Plain | Column::Min | Column::Max);
                            let asked = client.get(i).copied().unwrap_or(0);
                            bind.put_i16(if i < plan.items && passed { asked } else { 0 });
                        }
                    } else if codes <= 1 {
                        // One format (or none) for all columns, hidden sort keys included: they
                        // decode in either format.
                        bind.extend_from_slice(&rest[at..]);
                    } else {
                        // One per column: the client's, then text for the hidden ones.
                        bind.put_u16((codes + plan.hidden) as u16);
                        bind.extend_from_slice(&rest[at + 2..at + 2 + 2 * codes]);
                        for _ in 0..plan.hidden {
                            bind.put_i16(0);
                        }
                    }
                    request.client_formats = client;
                    let keep: Vec<usize> = (1..=nparams).collect();
                    let parse = fe::parse_rest_subset(&types, &plan.shard_sql, &keep);
                    let conn = &mut part.conn;
                    fe::write_parse(&mut conn.wbuf, b"", &parse);
                    order.push_back(true);
                    fe::write_bind(&mut conn.wbuf, portal, b"", &bind);
                    fe::write_target(&mut conn.wbuf, fe::DESCRIBE, b'P', portal);
                    // The server's unnamed statement is now the shard query.
                    part.has_unnamed = false;
                }
                fe::DESCRIBE if fe::target(body)?.0 == b'P' => request.describe = true,
                fe::EXECUTE => {
                    let (portal, _) = fe::execute_target(body).ok_or(ProtocolError::Malformed {
                        what: "Execute",
                        problem: "no portal name",
                    })?;
                    fe::write_execute(&mut part.conn.wbuf, portal, 0);
                }
                fe::SYNC => {}
                _ => self.write_group(part, frame, order, None)?,
            }
        }
        Ok(request)
    }

    /// Learns, once per server, whether its database sorts text in the "C" collation.
    async fn learn_collations(&self, m: &mut Multi, targets: ShardSet) -> Result<(), SessionError> {
        for part in m.parts.iter_mut().filter(|p| targets.contains(p.shard)) {
            let addr = part.conn.addr;
            if self
                .worker
                .shared
                .collation_c
                .lock()
                .expect("not poisoned")
                .contains_key(&addr)
            {
                continue;
            }
            let name = &self.live.config.shards[part.shard].name;
            part.settle(name).await?;
            let r = part
                .conn
                .run_internal(
                    "SELECT datcollate IN ('C', 'POSIX') FROM pg_database WHERE datname = current_database()",
                )
                .await
                .map_err(|e| SessionError::lost(addr, e))?;
            let c = r
                .rows
                .first()
                .and_then(|row| row.first().cloned().flatten())
                .is_some_and(|v| v == "t");
            self.worker
                .shared
                .collation_c
                .lock()
                .expect("not poisoned")
                .insert(addr, c);
        }
        Ok(())
    }

    /// Writes what the merge has for the client, waiting for it to read; a client that is gone
    /// gets nothing more (the session loop ends it).
    async fn write_client(&mut self) {
        while !self.cout.is_empty() {
            if self.client.writable().await.is_err() {
                self.cout.clear();
                return;
            }
            match self.client.try_write(&self.cout) {
                Ok(n) => self.cout.advance(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.cout.clear();
                    return;
                }
            }
        }
    }
}

/// The Execute among `frames`: `(portal, max_rows)`.
fn execute_of(frames: &[u8]) -> Option<(&[u8], i32)> {
    let mut off = 0;
    while let Ok(Some(h)) = peek_header(&frames[off..], usize::MAX) {
        let body = frames.get(off + 5..off + h.frame_len)?;
        if h.tag == fe::EXECUTE {
            return fe::execute_target(body);
        }
        off += h.frame_len;
    }
    None
}

enum Next {
    Row(Bytes),
    Over,
    Error(Bytes),
}

/// One frame of a part's answer (ParameterStatus recorded and skipped; ReadyForQuery sets the
/// transaction status and is handed on).
async fn read(part: &mut Part) -> Result<(u8, Bytes), SessionError> {
    loop {
        let (tag, body) = part
            .conn
            .read_frame("a merged answer")
            .await
            .map_err(|e| SessionError::lost(part.conn.addr, e))?;
        match tag {
            be::PARAMETER_STATUS => part.conn.note_param(&body),
            be::READY_FOR_QUERY => {
                part.conn.tx_status = body.first().copied().unwrap_or(be::TX_IDLE);
                return Ok((tag, body));
            }
            _ => return Ok((tag, body)),
        }
    }
}

/// The next row of a shard whose rows are not over.
async fn next_row(part: &mut Part, reader: &mut Reader) -> Result<Next, SessionError> {
    if reader.over {
        return Ok(Next::Over);
    }
    loop {
        let (tag, body) = read(part).await?;
        match tag {
            be::DATA_ROW => return Ok(Next::Row(body)),
            be::ERROR_RESPONSE => {
                reader.over = true;
                return Ok(Next::Error(body));
            }
            be::READY_FOR_QUERY => {
                reader.over = true;
                reader.ready = true;
                return Ok(Next::Over);
            }
            be::COMMAND_COMPLETE | be::EMPTY_QUERY_RESPONSE | be::PORTAL_SUSPENDED => {
                reader.over = true;
                return Ok(Next::Over);
            }
            // Notices of the rows' statement: dropped (one shard's are the first shard's).
            _ => {}
        }
    }
}

/// Reads every part's answer to its ReadyForQuery, dropping rows the merge did not need.
async fn drain(parts: &mut [&mut Part], readers: &mut [Reader]) -> Result<(), SessionError> {
    for (part, reader) in parts.iter_mut().zip(readers.iter_mut()) {
        reader.head = None;
        while !reader.ready {
            let (tag, _) = read(part).await?;
            if tag == be::READY_FOR_QUERY {
                reader.ready = true;
            }
        }
    }
    Ok(())
}
