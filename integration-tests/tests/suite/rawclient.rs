//! A minimal raw Postgres wire client for tests: it logs in (SCRAM-SHA-256, md5 or cleartext), then
//! sends whatever bytes a test builds and hands back the server's messages, or their exact bytes, so a
//! test can compare what a server sends directly with what the proxy sends.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, anyhow, bail, ensure};
use bytes::{BufMut, Bytes, BytesMut};
use postgres_protocol::IsNull;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

/// How long a read may wait for the server's next bytes before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One backend message: its type byte and its body (without the type byte and length).
pub type Message = (u8, Bytes);

/// The SSLRequest code (1234 << 16 | 5679).
pub const SSL_REQUEST_CODE: i32 = 80_877_103;

/// The GSSENCRequest code (1234 << 16 | 5680).
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;

/// A logged-in connection that speaks raw frames.
pub struct RawClient {
    stream: TcpStream,
    /// Bytes read from the socket but not yet handed out.
    read_buf: BytesMut,
    /// The ParameterStatus messages of the startup, in the order they came.
    pub parameters: Vec<(String, String)>,
    /// The body of BackendKeyData, if the server sent one.
    pub backend_key: Option<Bytes>,
    /// Every message after AuthenticationOk, up to and including ReadyForQuery.
    pub startup_messages: Vec<Message>,
}

impl RawClient {
    /// Connects to `addr` and logs in as `user` to `database`; `extra` are further startup
    /// parameters (`("TimeZone", "UTC")`).
    pub async fn connect(
        addr: impl ToSocketAddrs,
        user: &str,
        password: &str,
        database: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<RawClient> {
        let stream = tokio::time::timeout(READ_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connecting took over {READ_TIMEOUT:?}"))?
            .context("connecting")?;
        stream.set_nodelay(true)?;
        RawClient::startup(stream, user, password, database, extra).await
    }

    /// Runs the startup and login on a socket that is already open (after an SSLRequest, say).
    pub async fn startup(
        stream: TcpStream,
        user: &str,
        password: &str,
        database: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<RawClient> {
        let mut client = RawClient {
            stream,
            read_buf: BytesMut::new(),
            parameters: Vec::new(),
            backend_key: None,
            startup_messages: Vec::new(),
        };
        let mut params = vec![("user", user), ("database", database)];
        params.extend_from_slice(extra);
        let mut buf = BytesMut::new();
        frontend::startup_message(params, &mut buf)?;
        client.send(&buf).await?;
        client.authenticate(user, password).await?;
        loop {
            let (tag, body) = client
                .read_message()
                .await
                .context("reading the startup messages")?;
            client.startup_messages.push((tag, body.clone()));
            match tag {
                b'S' => client.parameters.push(
                    parameter_status(&body)
                        .with_context(|| format!("malformed ParameterStatus {body:?}"))?,
                ),
                b'K' => client.backend_key = Some(body),
                b'N' => {}
                b'E' => bail!("startup failed: {}", describe_error(&body)),
                b'Z' => return Ok(client),
                other => bail!("unexpected message {:?} during startup", other as char),
            }
        }
    }

    /// Answers the server's authentication requests until AuthenticationOk.
    async fn authenticate(&mut self, user: &str, password: &str) -> anyhow::Result<()> {
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, body) = self
                .read_message()
                .await
                .context("reading the authentication request")?;
            match tag {
                b'R' => {}
                b'E' => bail!("authentication failed: {}", describe_error(&body)),
                other => bail!(
                    "expected an authentication request, got {:?} {body:?}",
                    other as char
                ),
            }
            ensure!(body.len() >= 4, "short authentication request {body:?}");
            let code = i32::from_be_bytes(body[..4].try_into()?);
            let rest = &body[4..];
            let mut out = BytesMut::new();
            match code {
                0 => return Ok(()),
                3 => frontend::password_message(password.as_bytes(), &mut out)?,
                5 => {
                    let salt: [u8; 4] = rest.try_into().context("md5 salt")?;
                    let hash = md5_hash(user.as_bytes(), password.as_bytes(), salt);
                    frontend::password_message(hash.as_bytes(), &mut out)?;
                }
                10 => {
                    let mechanisms = cstrings(rest);
                    ensure!(
                        mechanisms.iter().any(|m| m == SCRAM_SHA_256),
                        "the server offers {mechanisms:?}, not {SCRAM_SHA_256}"
                    );
                    let s = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)?;
                    scram = Some(s);
                }
                11 => {
                    let s = scram.as_mut().context("SASLContinue before SASL")?;
                    s.update(rest).context("SCRAM server-first message")?;
                    frontend::sasl_response(s.message(), &mut out)?;
                }
                12 => {
                    let s = scram.as_mut().context("SASLFinal before SASL")?;
                    s.finish(rest).context("SCRAM server signature")?;
                    continue;
                }
                other => bail!("unsupported authentication request {other}"),
            }
            self.send(&out).await?;
        }
    }

    /// Writes `bytes` to the socket as they are, in one write.
    pub async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream
            .write_all(bytes)
            .await
            .context("writing to the server")?;
        self.stream.flush().await.context("flushing to the server")
    }

    /// The next complete frame (type byte, length and body), waiting at most [`READ_TIMEOUT`].
    pub async fn read_frame(&mut self) -> anyhow::Result<Bytes> {
        loop {
            if self.read_buf.len() >= 5 {
                let len = u32::from_be_bytes(self.read_buf[1..5].try_into()?) as usize;
                ensure!(
                    len >= 4,
                    "frame length {len} below 4 (tag {:?})",
                    self.read_buf[0] as char
                );
                if self.read_buf.len() > len {
                    return Ok(self.read_buf.split_to(1 + len).freeze());
                }
                self.read_buf.reserve(1 + len - self.read_buf.len());
            }
            let n = tokio::time::timeout(READ_TIMEOUT, self.stream.read_buf(&mut self.read_buf))
                .await
                .map_err(|_| {
                    anyhow!(
                        "no complete message within {READ_TIMEOUT:?} ({} bytes buffered)",
                        self.read_buf.len()
                    )
                })?
                .context("reading from the server")?;
            if n == 0 {
                bail!(
                    "the server closed the connection ({} bytes buffered: {:?})",
                    self.read_buf.len(),
                    self.read_buf
                );
            }
        }
    }

    /// The next message, waiting at most [`READ_TIMEOUT`].
    pub async fn read_message(&mut self) -> anyhow::Result<Message> {
        let frame = self.read_frame().await?;
        Ok((frame[0], frame.slice(5..)))
    }

    /// Every message up to and including the next ReadyForQuery.
    pub async fn read_until_ready(&mut self) -> anyhow::Result<Vec<Message>> {
        self.read_until_ready_n(1).await
    }

    /// Every message up to and including the `n`th ReadyForQuery.
    pub async fn read_until_ready_n(&mut self, n: usize) -> anyhow::Result<Vec<Message>> {
        let mut out = Vec::new();
        let mut seen = 0;
        while seen < n {
            let msg = self
                .read_message()
                .await
                .with_context(|| format!("after {}", show(&out)))?;
            seen += usize::from(msg.0 == b'Z');
            out.push(msg);
        }
        Ok(out)
    }

    /// The exact bytes the server sent up to and including the next ReadyForQuery.
    pub async fn raw_bytes_until_ready(&mut self) -> anyhow::Result<Bytes> {
        let mut out = BytesMut::new();
        loop {
            let frame = self
                .read_frame()
                .await
                .with_context(|| format!("after {}", show(&split_frames(&out))))?;
            out.extend_from_slice(&frame);
            if frame[0] == b'Z' {
                return Ok(out.freeze());
            }
        }
    }

    /// Sends a simple Query and returns the messages up to ReadyForQuery.
    pub async fn simple_query(&mut self, sql: &str) -> anyhow::Result<Vec<Message>> {
        self.send(&Frames::new().query(sql).finish()).await?;
        self.read_until_ready().await
    }
}

/// Sends an SSLRequest (or GSSENCRequest, by `code`) on a fresh socket and returns the one byte
/// the server answers with.
pub async fn encryption_request(stream: &mut TcpStream, code: i32) -> anyhow::Result<u8> {
    let mut req = [0u8; 8];
    req[..4].copy_from_slice(&8i32.to_be_bytes());
    req[4..].copy_from_slice(&code.to_be_bytes());
    stream.write_all(&req).await?;
    let mut answer = [0u8; 1];
    tokio::time::timeout(READ_TIMEOUT, stream.read_exact(&mut answer))
        .await
        .map_err(|_| anyhow!("no answer to the encryption request within {READ_TIMEOUT:?}"))?
        .context("reading the answer to the encryption request")?;
    Ok(answer[0])
}

/// Frontend messages built back to back, to be sent in one write.
#[derive(Default)]
pub struct Frames(BytesMut);

impl Frames {
    pub fn new() -> Frames {
        Frames::default()
    }

    /// Parse `sql` as statement `name` ("" = unnamed) with `param_types` OIDs (0 = unspecified).
    pub fn parse(mut self, name: &str, sql: &str, param_types: &[u32]) -> Frames {
        frontend::parse(name, sql, param_types.iter().copied(), &mut self.0).expect("Parse fits");
        self
    }

    /// Bind `statement` to `portal` with `params` (None = NULL) in `param_formats` (0 text, 1
    /// binary; none = all text, one = all alike) and `result_formats` likewise.
    pub fn bind(
        mut self,
        portal: &str,
        statement: &str,
        param_formats: &[i16],
        params: &[Option<&[u8]>],
        result_formats: &[i16],
    ) -> Frames {
        let written = frontend::bind(
            portal,
            statement,
            param_formats.iter().copied(),
            params.iter(),
            |param, buf| match param {
                Some(bytes) => {
                    buf.put_slice(bytes);
                    Ok(IsNull::No)
                }
                None => Ok(IsNull::Yes),
            },
            result_formats.iter().copied(),
            &mut self.0,
        );
        assert!(written.is_ok(), "Bind fits");
        self
    }

    /// Describe a statement (`b'S'`) or portal (`b'P'`).
    pub fn describe(mut self, kind: u8, name: &str) -> Frames {
        frontend::describe(kind, name, &mut self.0).expect("Describe fits");
        self
    }

    /// Execute `portal`, returning at most `max_rows` rows (0 = all).
    pub fn execute(mut self, portal: &str, max_rows: i32) -> Frames {
        frontend::execute(portal, max_rows, &mut self.0).expect("Execute fits");
        self
    }

    /// Close a statement (`b'S'`) or portal (`b'P'`).
    pub fn close(mut self, kind: u8, name: &str) -> Frames {
        frontend::close(kind, name, &mut self.0).expect("Close fits");
        self
    }

    pub fn sync(mut self) -> Frames {
        frontend::sync(&mut self.0);
        self
    }

    pub fn flush(mut self) -> Frames {
        frontend::flush(&mut self.0);
        self
    }

    /// One CopyData message carrying `data`.
    pub fn copy_data(mut self, data: &[u8]) -> Frames {
        frontend::CopyData::new(data)
            .expect("CopyData fits")
            .write(&mut self.0);
        self
    }

    pub fn copy_done(mut self) -> Frames {
        frontend::copy_done(&mut self.0);
        self
    }

    /// A simple-protocol Query.
    pub fn query(mut self, sql: &str) -> Frames {
        frontend::query(sql, &mut self.0).expect("Query fits");
        self
    }

    /// The bytes built so far.
    pub fn finish(self) -> Bytes {
        self.0.freeze()
    }
}

/// Splits a byte stream of backend frames into messages (a trailing partial frame is dropped).
pub fn split_frames(mut bytes: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    while bytes.len() >= 5 {
        let len = u32::from_be_bytes(bytes[1..5].try_into().expect("4 bytes")) as usize;
        if len < 4 || bytes.len() < 1 + len {
            break;
        }
        out.push((bytes[0], Bytes::copy_from_slice(&bytes[5..1 + len])));
        bytes = &bytes[1 + len..];
    }
    out
}

/// The type bytes of `msgs` as a string, e.g. `"12TDCZ"`.
pub fn tags(msgs: &[Message]) -> String {
    msgs.iter().map(|(t, _)| *t as char).collect()
}

/// The messages of `msgs` with `tag`.
pub fn with_tag(msgs: &[Message], tag: u8) -> Vec<Bytes> {
    msgs.iter()
        .filter(|(t, _)| *t == tag)
        .map(|(_, b)| b.clone())
        .collect()
}

/// A short readable rendering of messages, for failure output.
pub fn show(msgs: &[Message]) -> String {
    let mut out = String::new();
    for (tag, body) in msgs {
        let text = body.escape_ascii().to_string();
        let cut: String = text.chars().take(160).collect();
        let more = if cut.len() < text.len() { "…" } else { "" };
        let _ = write!(out, "\n    {}[{}] {cut}{more}", *tag as char, body.len());
    }
    out
}

/// None if the two message sequences are identical, else where and how they first differ.
pub fn first_difference(expected: &[Message], got: &[Message]) -> Option<String> {
    if expected == got {
        return None;
    }
    let at = expected
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(got.len()));
    Some(format!(
        "first difference at message {at} (direct {} messages, proxied {}):\n  direct from there:{}\n  proxied from there:{}",
        expected.len(),
        got.len(),
        show(&expected[at..expected.len().min(at + 4)]),
        show(&got[at..got.len().min(at + 4)]),
    ))
}

/// Fails with a readable report unless `proxied` equals `direct`.
pub fn ensure_same(what: &str, direct: &[Message], proxied: &[Message]) -> anyhow::Result<()> {
    match first_difference(direct, proxied) {
        None => Ok(()),
        Some(diff) => bail!("{what}: the proxy's messages differ from the server's; {diff}"),
    }
}

/// Fails with a readable report unless the byte streams are equal.
pub fn ensure_same_bytes(what: &str, direct: &[u8], proxied: &[u8]) -> anyhow::Result<()> {
    if direct == proxied {
        return Ok(());
    }
    let diff = first_difference(&split_frames(direct), &split_frames(proxied)).unwrap_or_default();
    bail!(
        "{what}: the proxy's bytes differ from the server's ({} bytes direct, {} proxied); {diff}",
        direct.len(),
        proxied.len()
    )
}

/// The NUL-terminated strings in `bytes` (a trailing empty one ends the list).
pub fn cstrings(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .take_while(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// The name and value of a ParameterStatus body (the value may be empty).
pub fn parameter_status(body: &[u8]) -> Option<(String, String)> {
    let body = body.strip_suffix(b"\0")?;
    let (name, value) = body.split_at(body.iter().position(|b| *b == 0)?);
    let value = &value[1..];
    if value.contains(&0) {
        return None;
    }
    Some((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

/// The fields of an ErrorResponse or NoticeResponse body: (field type, value).
pub fn error_fields(body: &[u8]) -> Vec<(u8, String)> {
    body.split(|b| *b == 0)
        .take_while(|s| !s.is_empty())
        .map(|s| (s[0], String::from_utf8_lossy(&s[1..]).into_owned()))
        .collect()
}

/// One field of an ErrorResponse or NoticeResponse (`b'C'` SQLSTATE, `b'M'` message).
pub fn error_field(body: &[u8], field: u8) -> Option<String> {
    error_fields(body)
        .into_iter()
        .find(|(f, _)| *f == field)
        .map(|(_, v)| v)
}

/// `SQLSTATE: message` of an ErrorResponse body.
pub fn describe_error(body: &[u8]) -> String {
    format!(
        "{}: {}",
        error_field(body, b'C').unwrap_or_default(),
        error_field(body, b'M').unwrap_or_default()
    )
}

/// The columns of a DataRow body (None = NULL).
pub fn data_row(body: &[u8]) -> anyhow::Result<Vec<Option<Bytes>>> {
    let body = Bytes::copy_from_slice(body);
    ensure!(body.len() >= 2, "short DataRow");
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2;
    let mut cols = Vec::with_capacity(n);
    for _ in 0..n {
        ensure!(body.len() >= at + 4, "DataRow cut in a length");
        let len = i32::from_be_bytes(body[at..at + 4].try_into()?);
        at += 4;
        if len < 0 {
            cols.push(None);
            continue;
        }
        let len = len as usize;
        ensure!(body.len() >= at + len, "DataRow cut in a value");
        cols.push(Some(body.slice(at..at + len)));
        at += len;
    }
    ensure!(
        at == body.len(),
        "DataRow has {} trailing bytes",
        body.len() - at
    );
    Ok(cols)
}

/// The columns of a DataRow in text format, as strings ("NULL" is None).
pub fn text_row(body: &[u8]) -> anyhow::Result<Vec<Option<String>>> {
    Ok(data_row(body)?
        .into_iter()
        .map(|c| c.map(|b| String::from_utf8_lossy(&b).into_owned()))
        .collect())
}

/// The command tag of a CommandComplete body.
pub fn command_tag(body: &[u8]) -> String {
    cstrings(body).into_iter().next().unwrap_or_default()
}
