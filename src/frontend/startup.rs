//! A client's first messages: SSLRequest/GSSENCRequest (refused: TLS comes later), the startup packet or
//! a CancelRequest, authentication (pgwire's SCRAM-SHA-256 and md5 mechanisms against `[[users]]`), then
//! the ParameterStatus values a real server reports for the client's startup settings, BackendKeyData
//! and ReadyForQuery. After that the socket belongs to `session`.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use pgwire::api::auth::md5pass::Md5PasswordAuth;
use pgwire::api::auth::mechanism::AuthMechanismFactory;
use pgwire::api::auth::sasl::scram::ScramAuth;
use pgwire::api::auth::{
    AuthDriver, AuthOutcome, DefaultServerParameterProvider, save_startup_parameters_to_metadata,
};
use pgwire::messages::startup::SecretKey;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::server::{MaybeTls, PgWireMessageServerCodec, negotiate_tls};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use tracing::{Instrument, debug, info_span, warn};

use super::listener::Worker;
use super::session::Session;
use crate::backend::ServerParams;
use crate::config::AuthMethod;
use crate::errors::SessionError;
use crate::protocol::backend as msg;
use crate::session_state::{self, Settings};

/// How long a client may take from connecting to finishing authentication, as in Postgres.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

type ClientFramed = Framed<MaybeTls, PgWireMessageServerCodec<()>>;

/// What a successful startup hands to the session loop.
pub struct Ready {
    pub stream: TcpStream,
    /// Bytes the client already sent after the startup (pipelined first query).
    pub leftover: BytesMut,
    pub user: String,
    pub startup_settings: Arc<Settings>,
    /// The client's address: the socket's peer, or what a PROXY protocol header said.
    pub client_addr: Option<std::net::SocketAddr>,
    /// Connected to the admin console (database `shardgate`).
    pub admin: bool,
    pub database: String,
}

/// Serves one client connection from its first byte to its last.
pub async fn serve(worker: Rc<Worker>, stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let span = info_span!("client", %peer, user = tracing::field::Empty);
    async move {
        let shared = worker.shared.clone();
        let clients = shared.clients.fetch_add(1, Ordering::Relaxed) + 1;
        let _count = ClientCount(&shared.clients);
        let cancel = shared.cancels.register();
        let too_many = clients > shared.live().config.proxy.max_client_connections;
        let ready = match tokio::time::timeout(
            STARTUP_TIMEOUT,
            startup(&worker, stream, cancel.pid, cancel.slot.secret, too_many),
        )
        .await
        {
            Ok(Ok(Some(ready))) => ready,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                debug!(error = %e, "startup failed");
                return;
            }
            Err(_) => {
                debug!("startup timed out");
                return;
            }
        };
        tracing::Span::current().record("user", ready.user.as_str());
        let registered = shared.client_list.register(
            ready.client_addr,
            &ready.user,
            &ready.database,
            ready.admin,
        );
        if ready.admin {
            crate::admin::serve(shared.clone(), ready).await;
        } else {
            Session::new(worker, ready, cancel.slot.clone(), registered.info.clone())
                .run()
                .await;
        }
        drop(registered);
        drop(cancel);
    }
    .instrument(span)
    .await
}

struct ClientCount<'a>(&'a std::sync::atomic::AtomicUsize);
impl Drop for ClientCount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sends a FATAL error straight to the socket.
async fn fatal(framed: &mut ClientFramed, err: &SessionError) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    err.write_fatal_to(&mut out);
    let _ = framed.flush().await;
    let io = framed.get_mut();
    io.write_all(&out).await?;
    io.flush().await
}

async fn startup(
    worker: &Worker,
    stream: TcpStream,
    pid: i32,
    secret: i32,
    too_many: bool,
) -> Result<Option<Ready>, SessionError> {
    let io_err = |e: std::io::Error| SessionError::AuthFailed(format!("client connection: {e}"));
    let mut stream = stream;
    let client_addr = match client_address(worker, &mut stream).await {
        Ok(a) => a,
        Err(e) => {
            let mut out = BytesMut::new();
            e.write_fatal_to(&mut out);
            let _ = stream.write_all(&out).await;
            close_gracefully(&mut stream).await;
            return Err(e);
        }
    };
    let Some(mut framed) = negotiate_tls::<()>(stream, None).await.map_err(io_err)? else {
        return Ok(None);
    };
    let startup = match framed.next().await {
        Some(Ok(PgWireFrontendMessage::Startup(s))) => s,
        Some(Ok(PgWireFrontendMessage::CancelRequest(c))) => {
            // pgwire reads the key as bytes when it assumes protocol 3.2; ours are 4 bytes.
            let key = match c.secret_key {
                SecretKey::I32(key) => Some(key),
                SecretKey::Bytes(b) => <[u8; 4]>::try_from(&b[..]).ok().map(i32::from_be_bytes),
            };
            if let Some(key) = key {
                forward_cancel(worker, c.pid, key).await;
            }
            return Ok(None);
        }
        Some(Ok(_)) | None => return Ok(None),
        Some(Err(e)) => {
            let err = SessionError::Protocol(crate::protocol::ProtocolError::Malformed {
                what: "startup",
                problem: "the startup packet could not be read",
            });
            debug!(error = %e, "bad startup packet");
            let _ = fatal(&mut framed, &err).await;
            return Err(err);
        }
    };
    let result = authenticate(worker, &mut framed, &startup, too_many).await;
    let (user, startup_settings, database) = match result {
        Ok((user, settings, database)) => (user, Arc::new(settings), database),
        Err(e) => {
            let _ = fatal(&mut framed, &e).await;
            return Err(e);
        }
    };

    let admin = database == crate::admin::DATABASE;
    // ParameterStatus as a real server reports it for these settings (the admin console needs
    // no server).
    let params = match if admin {
        Ok(crate::admin::server_params())
    } else {
        startup_params(worker, &startup_settings).await
    } {
        Ok(p) => p,
        Err(e) => {
            let _ = fatal(&mut framed, &e).await;
            return Err(e);
        }
    };
    let mut out = BytesMut::with_capacity(512);
    msg::write_authentication_ok(&mut out);
    for (name, value) in params.iter() {
        msg::write_parameter_status(&mut out, name.as_bytes(), value.as_bytes());
    }
    msg::write_backend_key_data(&mut out, pid, secret);
    msg::write_ready_for_query(&mut out, msg::TX_IDLE);
    framed
        .flush()
        .await
        .map_err(|e| SessionError::AuthFailed(e.to_string()))?;
    framed.get_mut().write_all(&out).await.map_err(io_err)?;

    let parts = framed.into_parts();
    let MaybeTls::Plain(stream) = parts.io else {
        unreachable!("TLS is not offered, so the connection is plain TCP");
    };
    Ok(Some(Ready {
        stream,
        leftover: parts.read_buf,
        user,
        startup_settings,
        client_addr,
        admin,
        database,
    }))
}

/// Closes a connection the client may still be writing to (its startup packet) without a reset:
/// our side is shut first, then what the client sends is read and dropped for a moment, so the
/// client reads the error instead of a broken pipe.
async fn close_gracefully(stream: &mut TcpStream) {
    use tokio::io::AsyncReadExt;
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut total = 0;
        while total < 1 << 20 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

/// The client's address: the socket's peer, or, with `proxy.proxy_protocol`, the address in the
/// PROXY header the load balancer sends first.
async fn client_address(
    worker: &Worker,
    stream: &mut TcpStream,
) -> Result<Option<std::net::SocketAddr>, SessionError> {
    let peer = stream.peer_addr().ok();
    let live = worker.shared.live();
    let proxy = &live.config.proxy;
    if !proxy.proxy_protocol {
        return Ok(peer);
    }
    if !proxy.proxy_protocol_from.is_empty() {
        let allowed = peer.is_some_and(|p| {
            proxy
                .proxy_protocol_from
                .iter()
                .any(|a| a.trim().parse::<std::net::IpAddr>().ok() == Some(p.ip()))
        });
        if !allowed {
            return Err(SessionError::ProxyProtocol(format!(
                "{} is not in proxy.proxy_protocol_from; connect through the load balancer",
                peer.map(|p| p.ip().to_string()).unwrap_or_default()
            )));
        }
    }
    match super::proxy_protocol::read_header(stream, Duration::from_secs(5)).await {
        Ok(super::proxy_protocol::ProxyHeader::Proxied { source, .. }) => {
            tracing::Span::current().record("peer", source.to_string());
            Ok(Some(source))
        }
        Ok(super::proxy_protocol::ProxyHeader::Local) => Ok(peer),
        Err(e) => Err(SessionError::ProxyProtocol(e.to_string())),
    }
}

/// Checks the user and database, negotiates the protocol version and runs the auth exchange.
async fn authenticate(
    worker: &Worker,
    framed: &mut ClientFramed,
    startup: &pgwire::messages::startup::Startup,
    too_many: bool,
) -> Result<(String, Settings, String), SessionError> {
    let live = worker.shared.live();
    if too_many {
        return Err(SessionError::TooManyClients);
    }
    if startup.protocol_number_major != 3 {
        return Err(SessionError::UnsupportedProtocol {
            major: startup.protocol_number_major,
            minor: startup.protocol_number_minor,
        });
    }
    let params: &BTreeMap<String, String> = &startup.parameters;
    // Like Postgres 15: speak 3.0 and name the protocol options we do not know.
    let unknown_options: Vec<String> = params
        .keys()
        .filter(|k| k.starts_with("_pq_."))
        .cloned()
        .collect();
    if startup.protocol_number_minor > 0 || !unknown_options.is_empty() {
        let mut out = BytesMut::new();
        msg::write_negotiate_protocol_version(&mut out, 0, &unknown_options);
        framed
            .get_mut()
            .write_all(&out)
            .await
            .map_err(|e| SessionError::AuthFailed(e.to_string()))?;
    }
    let user = params.get("user").cloned().unwrap_or_default();
    if user.is_empty() {
        return Err(SessionError::NoUser);
    }
    if params.contains_key("replication") && params["replication"] != "false" {
        return Err(SessionError::Replication);
    }
    if !live.auth.knows(&user) {
        return Err(SessionError::UnknownUser(user));
    }
    save_startup_parameters_to_metadata(framed, startup);

    let source = live.auth.clone();
    let mechanism = match live.config.proxy.auth_method {
        AuthMethod::ScramSha256 => ScramAuth::new(source).create(),
        AuthMethod::Md5 => Md5PasswordAuth::new(source).create(),
    };
    let driver: AuthDriver<DefaultServerParameterProvider> =
        AuthDriver::new(DefaultServerParameterProvider::default());
    let bad_password = || SessionError::BadPassword(user.clone());
    let mut outcome = driver
        .begin_authentication(framed, mechanism)
        .await
        .map_err(|_| bad_password())?;
    loop {
        match outcome {
            AuthOutcome::Authenticated { final_message, .. } => {
                if let Some(m) = final_message {
                    framed
                        .send(PgWireBackendMessage::Authentication(m))
                        .await
                        .map_err(|e| SessionError::AuthFailed(e.to_string()))?;
                }
                break;
            }
            AuthOutcome::InProgress => match framed.next().await {
                Some(Ok(PgWireFrontendMessage::PasswordMessageFamily(m))) => {
                    outcome = driver
                        .advance_authentication(framed, m)
                        .await
                        .map_err(|_| bad_password())?;
                }
                // The client hung up (psql does, to ask the user for a password).
                None => return Err(SessionError::AuthFailed("client disconnected".into())),
                Some(_) => return Err(bad_password()),
            },
        }
    }

    let database = params
        .get("database")
        .cloned()
        .unwrap_or_else(|| user.clone());
    let admin = database == crate::admin::DATABASE;
    if admin && !live.auth.is_admin(&user) {
        return Err(SessionError::NotAdmin(user));
    }
    if !admin && database != live.config.backend.database {
        return Err(SessionError::UnknownDatabase(database));
    }
    Ok((user, session_state::from_startup(params), database))
}

/// The ParameterStatus values for `settings`: from the cache, or by applying them on a real server.
async fn startup_params(
    worker: &Worker,
    settings: &Arc<Settings>,
) -> Result<Arc<ServerParams>, SessionError> {
    let shared = &worker.shared;
    let live = shared.live();
    if let Some(p) = shared
        .startup_params
        .lock()
        .expect("startup params lock")
        .get(settings)
    {
        return Ok(p.clone());
    }
    let shard = live.config.shards[0].name.clone();
    let addr = live.config.default_primary();
    let mut conn = worker.checkout(&shard, addr).await?;
    let lost = |e: crate::errors::BackendError| SessionError::BackendUnavailable {
        shard: shard.clone(),
        source: e,
    };
    if let Some(error) = conn.apply_settings(settings).await.map_err(lost)? {
        let _ = crate::pool::Checkout::take(conn);
        return Err(SessionError::StartupSettingRejected(error));
    }
    let params = Arc::new(conn.params.clone());
    let mut cache = shared.startup_params.lock().expect("startup params lock");
    if cache.len() > 1024 {
        cache.clear();
    }
    cache.insert(Settings::clone(settings), params.clone());
    Ok(params)
}

/// Relays a client's CancelRequest to every server running its request (several for a request
/// over several shards).
async fn forward_cancel(worker: &Worker, pid: i32, secret: i32) {
    let targets = worker.shared.cancels.lookup(pid, secret);
    if targets.is_empty() {
        debug!(pid, "cancel request for no running query (or a wrong key)");
    }
    for t in targets {
        if let Err(e) = crate::backend::send_cancel(t.addr, t.pid, t.secret).await {
            warn!(server = %t.addr, error = %e, "could not forward a cancel request");
        }
    }
}
