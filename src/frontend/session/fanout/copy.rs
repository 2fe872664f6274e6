//! `COPY table FROM STDIN` into a sharded table: one COPY per shard, each row sent to the shard
//! its key hashes to, all in one transaction per shard committed together (two-phase commit), or
//! in the client's own transaction block. Into a replicated (or unlisted) table: every row to
//! every shard, the same way.

use super::merge::write_frame;
use super::*;
use crate::hash::{KeyType, ShardKey};
use crate::router::shard::{CopyIn, Line, RowSplitter, ShardSet};

/// Flush a shard's rows once this much is waiting.
const COPY_FLUSH: usize = 256 * 1024;

pub(in crate::frontend::session) struct CopySplit {
    splitter: RowSplitter,
    /// Every row to every shard: the count is each shard's, not their sum.
    every: bool,
    placer: Placer,
    /// The shards started the COPY in a transaction of shardgate's own.
    wrap: bool,
    /// Started by the extended protocol: the client's own Sync, after CopyDone, gets the
    /// ReadyForQuery.
    extended: bool,
}

/// Where each line of COPY data goes.
struct Placer {
    /// The shard key's type; None: every row goes to every shard (a replicated table).
    key_type: Option<KeyType>,
    /// Each shard's index in `Multi::parts` (fixed while the COPY runs).
    part_of_shard: Vec<usize>,
    /// Lines for each part, from the current chunk.
    out: Vec<BytesMut>,
    /// A row that cannot be placed: the COPY fails with this.
    bad: Option<String>,
}

impl Placer {
    fn place(&mut self, line: Line<'_>, config: &crate::config::Config) {
        match line {
            Line::Every(bytes) => {
                for o in &mut self.out {
                    o.extend_from_slice(bytes);
                }
            }
            Line::Row { bytes, .. } if self.key_type.is_none() => {
                for o in &mut self.out {
                    o.extend_from_slice(bytes);
                }
            }
            Line::Row { key, bytes } => {
                let key_type = self.key_type.expect("checked");
                let placed = key
                    .ok_or_else(|| "a row's shard key is NULL or missing".to_string())
                    .and_then(|k| ShardKey::from_text(key_type, &k).map_err(|e| e.to_string()))
                    .map(|k| config.shard_index_for_hash(k.hash()));
                match placed {
                    Ok(shard) => self.out[self.part_of_shard[shard]].extend_from_slice(bytes),
                    Err(e) => {
                        self.bad.get_or_insert(format!(
                            "{e}: {}",
                            String::from_utf8_lossy(bytes).trim_end()
                        ));
                    }
                }
            }
        }
    }
}

impl Session {
    /// Starts a COPY FROM STDIN over every shard; the client gets one CopyInResponse.
    pub(super) async fn start_copy_split(
        &mut self,
        text: &[u8],
        frames: Option<Vec<u8>>,
        c: CopyIn,
    ) -> Step {
        // A COPY over the shards goes at the client's pace: query_timeout does not apply.
        self.stop_watchdog();
        let n = self.live.config.shards.len();
        // None: a table every shard holds whole.
        let table = self.live.config.table(&c.table).cloned();
        if c.binary {
            let e = SessionError::CrossShard(
                "COPY ... FROM STDIN in binary format over several shards is not supported; use text or csv format".into(),
            );
            return self.copy_refused(&e).await;
        }
        let explicit = self.multi.as_ref().is_some_and(|m| m.explicit);
        let begin = if explicit {
            self.multi.as_ref().map(|m| m.begin_sql.clone())
        } else {
            Some("BEGIN".to_string())
        };
        if let Err(e) = self
            .ensure_parts(ShardSet::all(n), route::Want::Primary, begin.as_deref())
            .await
        {
            return self.copy_refused(&e).await;
        }
        let key = match &table {
            None => 0,
            Some(table) => match self.copy_key_column(&c, table).await {
                Ok(key) => key,
                Err(e) => return self.copy_refused(&e).await,
            },
        };
        // The COPY on every shard; each answers CopyInResponse (or an error).
        let sql = String::from_utf8_lossy(text).into_owned();
        let extended_frames = frames.clone();
        match self
            .start_copy_on_parts(&sql, extended_frames.as_deref())
            .await
        {
            Ok(prefix) => self.cout.extend_from_slice(&prefix),
            Err(e) => {
                // Shards that did start the COPY are told it failed.
                let _ = self
                    .end_copy_on_parts(
                        Some("shardgate: another shard refused the COPY"),
                        extended_frames.is_some(),
                    )
                    .await;
                return self.copy_refused(&e).await;
            }
        }
        let m = self.multi.as_ref().expect("parts exist");
        let mut part_of_shard = vec![0; n];
        for (i, p) in m.parts.iter().enumerate() {
            part_of_shard[p.shard] = i;
        }
        self.copy_split = Some(Box::new(CopySplit {
            splitter: RowSplitter::new(&c, key),
            every: table.is_none(),
            placer: Placer {
                key_type: table.as_ref().map(|t| t.key_type),
                part_of_shard,
                out: vec![BytesMut::new(); m.parts.len()],
                bad: None,
            },
            wrap: !explicit,
            extended: frames.is_some(),
        }));
        Ok(Flow::Continue)
    }

    /// The position of the shard key among the COPY's columns (its column list, or the table's
    /// columns read from the first shard).
    async fn copy_key_column(
        &mut self,
        c: &CopyIn,
        table: &crate::config::TableConfig,
    ) -> Result<usize, SessionError> {
        let columns = if c.columns.is_empty() {
            let sql = format!(
                "SELECT lower(attname) FROM pg_attribute WHERE attrelid = '{}'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                c.table.replace('\'', "''")
            );
            let m = self.multi.as_mut().expect("parts exist");
            match m.parts[0].conn.run_internal(&sql).await {
                Ok(r) if r.error.is_none() => r
                    .rows
                    .into_iter()
                    .filter_map(|row| row.into_iter().next().flatten())
                    .collect(),
                _ => Vec::new(),
            }
        } else {
            c.columns.clone()
        };
        let Some(key) = columns
            .iter()
            .position(|col| col.eq_ignore_ascii_case(&table.shard_key))
        else {
            let e = SessionError::Route(crate::router::shard::RouteError::KeylessInsert {
                table: table.name.clone(),
                key: table.shard_key.clone(),
            });
            return Err(e);
        };
        Ok(key)
    }

    /// The COPY could not start: the error, the transaction rolled back (or failed), ReadyForQuery.
    async fn copy_refused(&mut self, e: &SessionError) -> Step {
        e.write_to(&mut self.cout);
        let explicit = self.multi.as_ref().is_some_and(|m| m.explicit);
        if explicit {
            self.fail_multi();
        } else {
            self.rollback_parts().await;
        }
        let status = self.client_tx_status();
        be::write_ready_for_query(&mut self.cout, status);
        if !explicit {
            self.release_parts().await;
        }
        Ok(Flow::Continue)
    }

    /// Sends CopyFail (with `fail`) or CopyDone to every shard and reads each to ReadyForQuery:
    /// the summed COPY count, or the first error.
    async fn end_copy_on_parts(
        &mut self,
        fail: Option<&str>,
        extended: bool,
    ) -> Result<u64, SessionError> {
        let Some(m) = self.multi.as_mut() else {
            return Ok(0);
        };
        let mut total = 0;
        let mut error: Option<SessionError> = None;
        for part in &mut m.parts {
            let conn = &mut part.conn;
            if conn.tx_status == be::TX_FAILED {
                continue;
            }
            match fail {
                Some(msg) => {
                    let mut body = BytesMut::new();
                    body.extend_from_slice(msg.as_bytes());
                    body.extend_from_slice(b"\0");
                    conn.wbuf.extend_from_slice(&[fe::COPY_FAIL]);
                    conn.wbuf
                        .extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
                    conn.wbuf.extend_from_slice(&body);
                }
                None => conn.wbuf.extend_from_slice(b"c\0\0\0\x04"),
            }
            if extended {
                fe::write_sync(&mut conn.wbuf);
            }
            if let Err(e) = conn.send().await {
                error.get_or_insert(SessionError::lost(conn.addr, e));
                continue;
            }
            let read = conn
                .read_answer("COPY end", |tag, body| {
                    match tag {
                        be::COMMAND_COMPLETE => total += be::command_count(&body).unwrap_or(0),
                        be::ERROR_RESPONSE if error.is_none() => {
                            error = Some(SessionError::Server(crate::errors::ServerError { body }));
                        }
                        _ => {}
                    }
                    false
                })
                .await;
            if let Err(e) = read {
                error.get_or_insert(SessionError::lost(conn.addr, e));
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    /// A client message while a split COPY runs.
    pub(in crate::frontend::session) async fn on_copy_split_frame(
        &mut self,
        tag: u8,
        frame: &[u8],
    ) -> Step {
        match tag {
            fe::COPY_DATA => {
                let mut split = self.copy_split.take().expect("a split COPY");
                let config = self.live.config.clone();
                let CopySplit {
                    splitter, placer, ..
                } = &mut *split;
                splitter.feed(&frame[5..], &mut |line| placer.place(line, &config));
                let r = self.flush_copy_rows(&mut split, COPY_FLUSH).await;
                self.copy_split = Some(split);
                r
            }
            fe::COPY_DONE | fe::COPY_FAIL => {
                let mut split = self.copy_split.take().expect("a split COPY");
                let config = self.live.config.clone();
                let CopySplit {
                    splitter, placer, ..
                } = &mut *split;
                splitter.finish(&mut |line| placer.place(line, &config));
                self.flush_copy_rows(&mut split, 0).await?;
                let client_fail = (tag == fe::COPY_FAIL).then(|| {
                    String::from_utf8_lossy(fe::query_text(&frame[5..])).into_owned()
                });
                let fail = client_fail.clone().or_else(|| split.placer.bad.clone());
                let result = self.end_copy_on_parts(fail.as_deref(), split.extended).await;
                let result = match (&split.placer.bad, client_fail, result) {
                    (Some(bad), None, _) => Err(SessionError::CrossShard(format!(
                        "COPY into a sharded table: {bad}; nothing was copied"
                    ))),
                    (_, _, r) => r,
                };
                let explicit = !split.wrap;
                let shards = self.multi.as_ref().map_or(1, |m| m.parts.len().max(1)) as u64;
                let result = result.map(|total| if split.every { total / shards } else { total });
                match result {
                    Ok(total) => {
                        if split.wrap
                            && let Err(e) = self.commit_parts().await
                        {
                            e.write_to(&mut self.cout);
                        } else {
                            be::write_command_complete(&mut self.cout, &format!("COPY {total}"));
                        }
                    }
                    Err(e) => {
                        e.write_to(&mut self.cout);
                        if explicit {
                            self.fail_multi();
                        } else {
                            self.rollback_parts().await;
                        }
                    }
                }
                if !explicit {
                    self.release_parts().await;
                }
                if !split.extended {
                    let status = self.client_tx_status();
                    be::write_ready_for_query(&mut self.cout, status);
                }
                Ok(Flow::Continue)
            }
            // Sync and Flush mean nothing during COPY; anything else is out of place.
            fe::SYNC | fe::FLUSH => Ok(Flow::Continue),
            _ => Err(ProtocolError::Malformed {
                what: "COPY",
                problem: "a message other than CopyData, CopyDone or CopyFail during COPY FROM STDIN",
            }
            .into()),
        }
    }

    /// Moves each shard's gathered rows into its connection as CopyData, sending when more than
    /// `limit` bytes wait.
    async fn flush_copy_rows(&mut self, split: &mut CopySplit, limit: usize) -> Step {
        let Some(m) = self.multi.as_mut() else {
            return Ok(Flow::Continue);
        };
        for (part, rows) in m.parts.iter_mut().zip(split.placer.out.iter_mut()) {
            let conn = &mut part.conn;
            if !rows.is_empty() {
                conn.wbuf.extend_from_slice(&[fe::COPY_DATA]);
                conn.wbuf
                    .extend_from_slice(&((rows.len() + 4) as u32).to_be_bytes());
                conn.wbuf.extend_from_slice(rows);
                rows.clear();
            }
            if conn.wbuf.len() > limit && conn.send().await.is_err() {
                split
                    .placer
                    .bad
                    .get_or_insert("a shard's connection was lost".into());
            }
        }
        Ok(Flow::Continue)
    }

    /// Starts a COPY on every part: the statement as a simple query, or the client's extended
    /// messages (`frames`, then a Sync). Returns what goes to the client before its data
    /// (ParseComplete and BindComplete of the first shard, one CopyInResponse).
    async fn start_copy_on_parts(
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
                    if let Err(e) = self.write_group(part, f, &mut order, None) {
                        error.get_or_insert(e);
                        continue;
                    }
                    // No Sync: a server in COPY ignores it; one follows CopyDone.
                    part.conn.wbuf.extend_from_slice(b"H\0\0\0\x04");
                }
                None => fe::write_query(&mut part.conn.wbuf, sql),
            }
            part.wrote = true;
            let name = &self.live.config.shards[part.shard].name;
            if let Err(e) = part.settle(name).await {
                error.get_or_insert(e);
                continue;
            }
            let conn = &mut part.conn;
            let first = i == 0;
            let read = conn
                .read_answer("COPY start", |tag, body| match tag {
                    be::COPY_IN_RESPONSE => {
                        if first {
                            write_frame(&mut out, tag, &body);
                        }
                        true
                    }
                    be::PARSE_COMPLETE if order.pop_front() == Some(true) => false,
                    be::PARSE_COMPLETE | be::BIND_COMPLETE => {
                        if first {
                            write_frame(&mut out, tag, &body);
                        }
                        false
                    }
                    be::ERROR_RESPONSE => {
                        if error.is_none() {
                            error = Some(SessionError::Server(crate::errors::ServerError { body }));
                        }
                        false
                    }
                    _ => false,
                })
                .await;
            if let Err(e) = read {
                error.get_or_insert(SessionError::lost(conn.addr, e));
            }
        }
        self.multi = Some(m);
        match error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}
