//! One connection to a Postgres server: connect, log in (SCRAM-SHA-256, md5 or cleartext), and what the
//! proxy must remember about it between clients (server parameters, which shared prepared statements it
//! holds, which session settings are applied, its cancel key).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{BackendConfig, ServerAddr};
use crate::errors::{BackendError, ServerError};
use crate::protocol::backend as msg;
use crate::protocol::peek_header;
use crate::session_state::Settings;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// Server parameters as reported by ParameterStatus, in arrival order, last value wins.
pub type ServerParams = Vec<(String, String)>;

pub struct BackendConn {
    /// Unique for the life of the process; tells a client whether this is the connection it used last.
    pub id: u64,
    pub addr: ServerAddr,
    pub stream: TcpStream,
    /// Bytes read from the server and not yet handled.
    pub rbuf: BytesMut,
    /// Bytes to send to the server.
    pub wbuf: BytesMut,
    /// BackendKeyData, for cancel requests.
    pub pid: i32,
    pub secret: i32,
    pub params: ServerParams,
    /// Ids of shared prepared statements (`_sg_<id>`) this server session holds.
    pub prepared: HashSet<u64>,
    /// Session settings applied to this server session (see `session_state`).
    pub settings: Arc<Settings>,
    /// Transaction status of the last ReadyForQuery.
    pub tx_status: u8,
    /// Set when the connection can no longer be trusted (I/O error, protocol surprise); never reused.
    pub broken: bool,
    /// Bytes written and read by `send` and `read_frame` not yet added to the server's
    /// statistics (the fan-out paths use them; the session loop counts its own).
    pub unreported: (u64, u64),
}

/// Rows and outcome of a query the proxy runs for itself.
#[derive(Debug, Default)]
pub struct InternalResult {
    pub rows: Vec<Vec<Option<String>>>,
    pub error: Option<ServerError>,
    /// ParameterStatus messages the server sent meanwhile.
    pub param_changes: Vec<(String, String)>,
}

impl BackendConn {
    /// Connects and logs in as `[backend]`.
    pub async fn connect(
        addr: ServerAddr,
        cfg: &BackendConfig,
        timeout: Duration,
    ) -> Result<BackendConn, BackendError> {
        match tokio::time::timeout(timeout, Self::connect_inner(addr, cfg)).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::ConnectTimeout { addr }),
        }
    }

    async fn connect_inner(
        addr: ServerAddr,
        cfg: &BackendConfig,
    ) -> Result<BackendConn, BackendError> {
        let stream = TcpStream::connect(addr.0)
            .await
            .map_err(|source| BackendError::Connect { addr, source })?;
        stream
            .set_nodelay(true)
            .map_err(|source| BackendError::Connect { addr, source })?;
        let mut conn = BackendConn {
            id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
            addr,
            stream,
            rbuf: BytesMut::with_capacity(8192),
            wbuf: BytesMut::with_capacity(8192),
            pid: 0,
            secret: 0,
            params: Vec::new(),
            prepared: HashSet::new(),
            settings: Settings::empty(),
            tx_status: msg::TX_IDLE,
            broken: false,
            unreported: (0, 0),
        };
        frontend::startup_message(
            [
                ("user", cfg.user.as_str()),
                ("database", cfg.database.as_str()),
            ],
            &mut conn.wbuf,
        )
        .map_err(|_| BackendError::Protocol {
            addr,
            during: "startup",
        })?;
        conn.send().await?;
        conn.authenticate(cfg).await?;
        // ParameterStatus, BackendKeyData, then ReadyForQuery.
        loop {
            let (tag, body) = conn.read_frame("startup").await?;
            match tag {
                msg::PARAMETER_STATUS => conn.note_param(&body),
                msg::BACKEND_KEY_DATA if body.len() >= 8 => {
                    conn.pid = i32::from_be_bytes(body[0..4].try_into().expect("len checked"));
                    conn.secret = i32::from_be_bytes(body[4..8].try_into().expect("len checked"));
                }
                msg::READY_FOR_QUERY => return Ok(conn),
                msg::ERROR_RESPONSE => {
                    return Err(BackendError::Rejected {
                        addr,
                        error: ServerError { body },
                    });
                }
                msg::NOTICE_RESPONSE => {}
                _ => {
                    return Err(BackendError::Protocol {
                        addr,
                        during: "startup",
                    });
                }
            }
        }
    }

    async fn authenticate(&mut self, cfg: &BackendConfig) -> Result<(), BackendError> {
        let addr = self.addr;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, body) = self.read_frame("authentication").await?;
            match tag {
                msg::AUTHENTICATION => {}
                msg::ERROR_RESPONSE => {
                    return Err(BackendError::Rejected {
                        addr,
                        error: ServerError { body },
                    });
                }
                _ => {
                    return Err(BackendError::Protocol {
                        addr,
                        during: "authentication",
                    });
                }
            }
            let Some(code) = body
                .get(..4)
                .map(|b| i32::from_be_bytes(b.try_into().expect("4 bytes")))
            else {
                return Err(BackendError::Protocol {
                    addr,
                    during: "authentication",
                });
            };
            let data = &body[4..];
            let need_password = || {
                if cfg.password.is_empty() {
                    Err(BackendError::NoPassword { addr })
                } else {
                    Ok(())
                }
            };
            match code {
                0 => return Ok(()),
                3 => {
                    need_password()?;
                    frontend::password_message(cfg.password.as_bytes(), &mut self.wbuf).map_err(
                        |_| BackendError::Protocol {
                            addr,
                            during: "authentication",
                        },
                    )?;
                }
                5 => {
                    need_password()?;
                    let salt: [u8; 4] = data.get(..4).and_then(|s| s.try_into().ok()).ok_or(
                        BackendError::Protocol {
                            addr,
                            during: "md5 authentication",
                        },
                    )?;
                    let hash = md5_hash(cfg.user.as_bytes(), cfg.password.as_bytes(), salt);
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf).map_err(|_| {
                        BackendError::Protocol {
                            addr,
                            during: "authentication",
                        }
                    })?;
                }
                10 => {
                    need_password()?;
                    let offers_scram = data
                        .split(|b| *b == 0)
                        .any(|m| m == SCRAM_SHA_256.as_bytes());
                    if !offers_scram {
                        return Err(BackendError::UnsupportedAuth { addr, method: 10 });
                    }
                    let s =
                        ScramSha256::new(cfg.password.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut self.wbuf)
                        .map_err(|_| BackendError::Protocol {
                            addr,
                            during: "SCRAM",
                        })?;
                    scram = Some(s);
                }
                11 => {
                    let s = scram.as_mut().ok_or(BackendError::Protocol {
                        addr,
                        during: "SCRAM",
                    })?;
                    s.update(data).map_err(|_| BackendError::Protocol {
                        addr,
                        during: "SCRAM",
                    })?;
                    frontend::sasl_response(s.message(), &mut self.wbuf).map_err(|_| {
                        BackendError::Protocol {
                            addr,
                            during: "SCRAM",
                        }
                    })?;
                }
                12 => {
                    let s = scram.as_mut().ok_or(BackendError::Protocol {
                        addr,
                        during: "SCRAM",
                    })?;
                    s.finish(data).map_err(|_| BackendError::Protocol {
                        addr,
                        during: "SCRAM final",
                    })?;
                    continue;
                }
                other => {
                    return Err(BackendError::UnsupportedAuth {
                        addr,
                        method: other,
                    });
                }
            }
            self.send().await?;
        }
    }

    /// Writes all of `wbuf`. Not cancel safe; for control work only (the session loop writes itself).
    pub async fn send(&mut self) -> Result<(), BackendError> {
        let addr = self.addr;
        let r = self.stream.write_all(&self.wbuf).await;
        self.unreported.0 += self.wbuf.len() as u64;
        self.wbuf.clear();
        r.map_err(|source| {
            self.broken = true;
            BackendError::Io { addr, source }
        })
    }

    /// Reads one whole frame: `(tag, body)`. Not cancel safe; for control work only.
    pub async fn read_frame(&mut self, during: &'static str) -> Result<(u8, Bytes), BackendError> {
        loop {
            match peek_header(&self.rbuf, usize::MAX) {
                Ok(Some(h)) if self.rbuf.len() >= h.frame_len => {
                    let mut frame = self.rbuf.split_to(h.frame_len);
                    frame.advance(5);
                    return Ok((h.tag, frame.freeze()));
                }
                Ok(_) => {}
                Err(_) => {
                    self.broken = true;
                    return Err(BackendError::Protocol {
                        addr: self.addr,
                        during,
                    });
                }
            }
            self.rbuf.reserve(8192);
            let n = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|source| {
                    self.broken = true;
                    BackendError::Io {
                        addr: self.addr,
                        source,
                    }
                })?;
            if n == 0 {
                self.broken = true;
                return Err(BackendError::Closed { addr: self.addr });
            }
            self.unreported.1 += n as u64;
        }
    }

    /// Reads an answer frame by frame, handing each to `each`, until ReadyForQuery (which sets
    /// `tx_status` and is not handed on) or until `each` returns true (it stopped at a frame it
    /// waited for, such as CopyInResponse). ParameterStatus frames are recorded as they pass.
    /// Not cancel safe; for the proxy's own exchanges.
    pub async fn read_answer(
        &mut self,
        during: &'static str,
        mut each: impl FnMut(u8, Bytes) -> bool,
    ) -> Result<(), BackendError> {
        loop {
            let (tag, body) = self.read_frame(during).await?;
            match tag {
                msg::READY_FOR_QUERY => {
                    self.tx_status = body.first().copied().unwrap_or(msg::TX_IDLE);
                    return Ok(());
                }
                msg::PARAMETER_STATUS => self.note_param(&body),
                _ => {}
            }
            if each(tag, body) {
                return Ok(());
            }
        }
    }

    /// Records a ParameterStatus body.
    pub fn note_param(&mut self, body: &[u8]) {
        if let Some((name, value)) = msg::parameter_status(body) {
            let name = String::from_utf8_lossy(name);
            let value = String::from_utf8_lossy(value).into_owned();
            match self.params.iter_mut().find(|(n, _)| *n == name) {
                Some(slot) => slot.1 = value,
                None => self.params.push((name.into_owned(), value)),
            }
        }
    }

    /// Runs `sql` as a simple query for the proxy itself and collects its text rows. The connection
    /// must be idle (nothing owed to a client). Not cancel safe.
    pub async fn run_internal(&mut self, sql: &str) -> Result<InternalResult, BackendError> {
        crate::protocol::frontend::write_query(&mut self.wbuf, sql);
        self.send().await?;
        let mut out = InternalResult::default();
        let mut malformed = false;
        self.read_answer("internal query", |tag, body| {
            match tag {
                msg::DATA_ROW => match msg::data_row_columns(&body) {
                    Some(cols) => out.rows.push(
                        cols.into_iter()
                            .map(|c| c.map(|v| String::from_utf8_lossy(v).into_owned()))
                            .collect(),
                    ),
                    None => malformed = true,
                },
                msg::ERROR_RESPONSE if out.error.is_none() => {
                    out.error = Some(ServerError { body });
                }
                msg::PARAMETER_STATUS => {
                    if let Some((n, v)) = msg::parameter_status(&body) {
                        out.param_changes.push((
                            String::from_utf8_lossy(n).into_owned(),
                            String::from_utf8_lossy(v).into_owned(),
                        ));
                    }
                }
                _ => {}
            }
            false
        })
        .await?;
        if malformed {
            self.broken = true;
            return Err(BackendError::Protocol {
                addr: self.addr,
                during: "internal query",
            });
        }
        Ok(out)
    }

    /// Makes this server session carry `settings` (replaying the difference with `set_config`/
    /// `RESET`). `Ok(Some(error))` when the server refused a setting: the connection's state is then
    /// unknown and it is marked broken, so it is never reused.
    pub async fn apply_settings(
        &mut self,
        settings: &Arc<Settings>,
    ) -> Result<Option<ServerError>, BackendError> {
        if Arc::ptr_eq(&self.settings, settings) {
            return Ok(None);
        }
        if *self.settings != **settings
            && let Some(sql) = crate::session_state::replay_sql(&self.settings, settings)
            && let Some(error) = self.run_internal(&sql).await?.error
        {
            self.broken = true;
            return Ok(Some(error));
        }
        self.settings = settings.clone();
        Ok(None)
    }

    /// True when the server has sent something while the connection sat idle in the pool: that is
    /// either end-of-file or an unsolicited FATAL error, so the connection is dead.
    pub fn is_dead_while_idle(&mut self) -> bool {
        use futures::FutureExt;
        if self.broken {
            return true;
        }
        match self.stream.readable().now_or_never() {
            None => false,
            Some(Err(_)) => true,
            Some(Ok(())) => {
                let mut probe = [0u8; 1];
                !matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// Sends a CancelRequest for `(pid, secret)` to `addr`, as `libpq`'s `PQcancel` does.
pub async fn send_cancel(addr: ServerAddr, pid: i32, secret: i32) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr.0).await?;
    let mut buf = BytesMut::with_capacity(16);
    frontend::cancel_request(pid, secret, &mut buf);
    stream.write_all(&buf).await?;
    // The server closes the connection once it has read the request.
    let mut sink = [0u8; 16];
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut sink)).await;
    Ok(())
}
