//! `COPY table FROM STDIN` into a sharded table: one COPY per shard, each row sent to the shard
//! its key hashes to, all in one transaction per shard committed together (two-phase commit), or
//! in the client's own transaction block.

use super::*;
use crate::hash::{KeyType, ShardKey};
use crate::router::shard::{CopyIn, Line, RowSplitter, ShardSet};

/// Flush a shard's rows once this much is waiting.
const COPY_FLUSH: usize = 256 * 1024;

pub(super) struct CopySplit {
    splitter: RowSplitter,
    key_type: KeyType,
    /// The shards started the COPY in a transaction of shardgate's own.
    wrap: bool,
    /// Rows for each shard from the current chunk.
    out: Vec<BytesMut>,
    /// A row that cannot be placed: the COPY fails with this.
    bad: Option<String>,
    /// Started by the extended protocol: the client's own Sync, after CopyDone, gets the
    /// ReadyForQuery.
    extended: bool,
}

impl Session {
    /// Starts a COPY FROM STDIN over every shard; the client gets one CopyInResponse.
    pub(super) async fn start_copy_split(
        &mut self,
        text: &[u8],
        frames: Option<Vec<u8>>,
        c: CopyIn,
    ) -> Step {
        let n = self.worker.shared.config.shards.len();
        let Some(table) = self.worker.shared.config.table(&c.table).cloned() else {
            return Ok(Flow::Continue);
        };
        if c.binary {
            let e = SessionError::CrossShard(
                "COPY ... FROM STDIN in binary format into a sharded table cannot be split by key; use text or csv format".into(),
            );
            return self.copy_refused(&e).await;
        }
        let explicit = self.multi.as_ref().is_some_and(|m| m.is_explicit());
        let begin = if explicit {
            self.multi.as_ref().map(|m| m.begin_text().to_string())
        } else {
            Some("BEGIN".to_string())
        };
        if let Err(e) = self
            .ensure_parts_pub(ShardSet::all(n), begin.as_deref())
            .await
        {
            return self.copy_refused(&e).await;
        }
        let columns = if c.columns.is_empty() {
            let sql = format!(
                "SELECT lower(attname) FROM pg_attribute WHERE attrelid = '{}'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                c.table.replace('\'', "''")
            );
            let m = self.multi.as_mut().expect("parts exist");
            match m.first_conn().run_internal(&sql).await {
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
            return self.copy_refused(&e).await;
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
        let parts = self.multi.as_ref().map_or(0, |m| m.len());
        self.copy_split = Some(Box::new(CopySplit {
            splitter: RowSplitter::new(&c, key),
            key_type: table.key_type,
            wrap: !explicit,
            out: vec![BytesMut::new(); parts],
            bad: None,
            extended: frames.is_some(),
        }));
        Ok(Flow::Continue)
    }

    /// The COPY could not start: the error, the transaction rolled back (or failed), ReadyForQuery.
    async fn copy_refused(&mut self, e: &SessionError) -> Step {
        e.write_to(&mut self.cout);
        let explicit = self.multi.as_ref().is_some_and(|m| m.is_explicit());
        if explicit {
            self.mark_multi_failed();
        } else {
            self.rollback_all().await;
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
        for conn in m.parts_mut() {
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
            let lost = |conn: &crate::backend::BackendConn, e: crate::errors::BackendError| {
                SessionError::BackendLost {
                    server: conn.addr,
                    reason: e.to_string(),
                }
            };
            if let Err(e) = conn.send().await {
                error.get_or_insert(lost(conn, e));
                continue;
            }
            loop {
                match conn.read_frame("COPY end").await {
                    Ok((be::COMMAND_COMPLETE, body)) => {
                        total += be::command_count(&body).unwrap_or(0)
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
                        error.get_or_insert(lost(conn, e));
                        break;
                    }
                }
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    /// A client message while a split COPY runs.
    pub(super) async fn on_copy_split_frame(&mut self, tag: u8, frame: &[u8]) -> Step {
        match tag {
            fe::COPY_DATA => {
                let mut split = self.copy_split.take().expect("a split COPY");
                let shards: Vec<usize> = self.multi.as_ref().map_or(Vec::new(), |m| m.shards());
                let config = self.worker.shared.config.clone();
                let CopySplit {
                    splitter,
                    key_type,
                    out,
                    bad,
                    ..
                } = &mut *split;
                splitter.feed(&frame[5..], &mut |line| match line {
                    Line::Every(bytes) => {
                        for o in out.iter_mut() {
                            o.extend_from_slice(bytes);
                        }
                    }
                    Line::Row { key, bytes } => {
                        let placed = key
                            .ok_or_else(|| "a row's shard key is NULL or missing".to_string())
                            .and_then(|k| {
                                ShardKey::from_text(*key_type, &k).map_err(|e| e.to_string())
                            })
                            .map(|k| config.shard_index_for_hash(k.hash()));
                        match placed {
                            Ok(shard) => {
                                if let Some(i) = shards.iter().position(|s| *s == shard) {
                                    out[i].extend_from_slice(bytes);
                                }
                            }
                            Err(e) => {
                                bad.get_or_insert(format!(
                                    "{e}: {}",
                                    String::from_utf8_lossy(bytes).trim_end()
                                ));
                            }
                        }
                    }
                });
                let r = self.flush_copy_rows(&mut split, COPY_FLUSH).await;
                self.copy_split = Some(split);
                r
            }
            fe::COPY_DONE | fe::COPY_FAIL => {
                let mut split = self.copy_split.take().expect("a split COPY");
                let key_type = split.key_type;
                let CopySplit {
                    splitter, out, bad, ..
                } = &mut *split;
                let shards: Vec<usize> = self.multi.as_ref().map_or(Vec::new(), |m| m.shards());
                let config = self.worker.shared.config.clone();
                splitter.finish(&mut |line| {
                    if let Line::Row { key, bytes } = line {
                        match key.and_then(|k| ShardKey::from_text(key_type, &k).ok()) {
                            Some(k) => {
                                let shard = config.shard_index_for_hash(k.hash());
                                if let Some(i) = shards.iter().position(|s| *s == shard) {
                                    out[i].extend_from_slice(bytes);
                                }
                            }
                            None => {
                                bad.get_or_insert("a row's shard key is NULL or missing".into());
                            }
                        }
                    }
                });
                self.flush_copy_rows(&mut split, 0).await?;
                let client_fail = (tag == fe::COPY_FAIL).then(|| {
                    String::from_utf8_lossy(fe::query_text(&frame[5..])).into_owned()
                });
                let fail = client_fail.clone().or_else(|| split.bad.clone());
                let result = self.end_copy_on_parts(fail.as_deref(), split.extended).await;
                let result = match (&split.bad, client_fail, result) {
                    (Some(bad), None, _) => Err(SessionError::CrossShard(format!(
                        "COPY into a sharded table: {bad}; nothing was copied"
                    ))),
                    (_, _, r) => r,
                };
                let explicit = !split.wrap;
                match result {
                    Ok(total) => {
                        if split.wrap
                            && let Err(e) = self.commit_all().await
                        {
                            e.write_to(&mut self.cout);
                        } else {
                            be::write_command_complete(&mut self.cout, &format!("COPY {total}"));
                        }
                    }
                    Err(e) => {
                        e.write_to(&mut self.cout);
                        if explicit {
                            self.mark_multi_failed();
                        } else {
                            self.rollback_all().await;
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
        for (conn, rows) in m.parts_mut().zip(split.out.iter_mut()) {
            if !rows.is_empty() {
                conn.wbuf.extend_from_slice(&[fe::COPY_DATA]);
                conn.wbuf
                    .extend_from_slice(&((rows.len() + 4) as u32).to_be_bytes());
                conn.wbuf.extend_from_slice(rows);
                rows.clear();
            }
            if conn.wbuf.len() > limit && conn.send().await.is_err() {
                split
                    .bad
                    .get_or_insert("a shard's connection was lost".into());
            }
        }
        Ok(Flow::Continue)
    }
}
