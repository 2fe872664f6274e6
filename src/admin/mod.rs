//! The admin console: `psql -U <admin user> shardgate`, answering like PgBouncer's.
//!
//! Owns the console's commands: `SHOW SHARDS | SERVERS | POOLS | CLIENTS | STATS | CONFIG | HELP`
//! (tables built in `show`), `RELOAD`, `PAUSE [shard]` / `RESUME [shard]` (`pause`), `SHUTDOWN`.
//! Only users marked `admin = true` in `[[users]]` get in (others: FATAL 42501 at login). The
//! console speaks the simple query protocol; several commands may be sent in one query, separated
//! by semicolons. It never talks to a server.

pub mod pause;
mod show;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use crate::errors::SessionError;
use crate::frontend::Shared;
use crate::frontend::startup::Ready;
use crate::protocol::backend as be;
use crate::protocol::frontend as fe;
use crate::protocol::peek_header;

/// The database name that reaches the console.
pub const DATABASE: &str = "shardgate";

/// What the console reports at login in place of a server's ParameterStatus.
pub fn server_params() -> Arc<crate::backend::ServerParams> {
    Arc::new(
        [
            ("server_version", "15.0 (shardgate admin console)"),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("integer_datetimes", "on"),
            ("standard_conforming_strings", "on"),
            ("TimeZone", "UTC"),
            ("application_name", ""),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    )
}

/// What the console says to `SHOW HELP`.
const HELP: &[&str] = &[
    "SHOW SHARDS        shards, hash ranges, primary, replicas, writable, paused",
    "SHOW SERVERS       servers: role, health, lag, banned/fenced, connections",
    "SHOW POOLS         pooled server connections per server: active, idle, waiting clients",
    "SHOW CLIENTS       clients: address, user, state, current shard",
    "SHOW STATS         per server: queries, transactions, bytes, errors, latency",
    "SHOW CONFIG        the settings in force and the state of reloads",
    "RELOAD             read the shard map file again and apply it",
    "PAUSE [shard]      new transactions (of the shard) wait; returns once running ones ended",
    "RESUME [shard]     let them go on",
    "SHUTDOWN           graceful shutdown: no new clients, open transactions finish",
];

/// Serves one admin console client until it leaves.
pub async fn serve(shared: Arc<Shared>, ready: Ready) {
    let mut stream = ready.stream;
    let mut cin = ready.leftover;
    let mut out = BytesMut::new();
    // An extended-protocol message arrived: skip until Sync, then report it once.
    let mut skipping = false;
    let mut drain = shared.drain.subscribe();
    loop {
        let mut end = false;
        while let Ok(Some(h)) = peek_header(&cin, 1 << 20) {
            if cin.len() < h.frame_len {
                break;
            }
            let frame = cin.split_to(h.frame_len);
            match h.tag {
                fe::QUERY => {
                    let text = fe::query_text(&frame[5..]);
                    let text = String::from_utf8_lossy(text).into_owned();
                    end = run_query(&shared, &text, &mut out).await;
                    be::write_ready_for_query(&mut out, be::TX_IDLE);
                }
                fe::TERMINATE => end = true,
                fe::SYNC => {
                    if skipping {
                        SessionError::AdminSyntax(
                            "the admin console answers simple queries only (psql's \\bind and drivers' prepared statements are not supported here)".into(),
                        )
                        .write_to(&mut out);
                        skipping = false;
                    }
                    be::write_ready_for_query(&mut out, be::TX_IDLE);
                }
                _ => skipping = true,
            }
            if end {
                break;
            }
        }
        if peek_header(&cin, 1 << 20).is_err() {
            SessionError::Protocol(crate::protocol::ProtocolError::Malformed {
                what: "message",
                problem: "bad length on the admin console",
            })
            .write_to(&mut out);
            end = true;
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if end {
            return;
        }
        // A graceful shutdown closes the console too (it holds no transaction).
        tokio::select! {
            r = stream.readable() => if r.is_err() {
                return;
            },
            _ = drain.wait_for(|d| *d) => {
                SessionError::Shutdown.write_to(&mut out);
                let _ = stream.write_all(&out).await;
                return;
            }
        }
        cin.reserve(4096);
        match stream.try_read_buf(&mut cin) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
        if cin.is_empty() {
            cin = BytesMut::new();
        } else if cin.remaining() > 1 << 20 {
            return;
        }
    }
}

/// Runs the commands of one simple query; returns whether the console closes (SHUTDOWN).
async fn run_query(shared: &Arc<Shared>, text: &str, out: &mut BytesMut) -> bool {
    let commands: Vec<&str> = text
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    if commands.is_empty() {
        out.extend_from_slice(b"I\0\0\0\x04");
        return false;
    }
    for command in commands {
        match run_command(shared, command, out).await {
            Ok(close) => {
                if close {
                    return true;
                }
            }
            Err(e) => {
                e.write_to(out);
                return false;
            }
        }
    }
    false
}

/// One command; Ok(true) when the console closes after it.
async fn run_command(
    shared: &Arc<Shared>,
    command: &str,
    out: &mut BytesMut,
) -> Result<bool, SessionError> {
    let words: Vec<String> = command.split_whitespace().map(str::to_string).collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
    match upper.as_slice() {
        ["SHOW", what] => {
            show::show(shared, what, out)?;
            Ok(false)
        }
        ["RELOAD"] => {
            let Some(rx) = shared.request_reload(crate::reload::Trigger::Admin) else {
                return Err(SessionError::ReloadRefused(
                    "the reload thread does not run".into(),
                ));
            };
            match rx.await {
                Ok(Ok(summary)) => {
                    be::write_notice(out, &summary);
                    be::write_command_complete(out, "RELOAD");
                    Ok(false)
                }
                Ok(Err(why)) => Err(SessionError::ReloadRefused(why)),
                Err(_) => Err(SessionError::ReloadRefused(
                    "the reload thread stopped".into(),
                )),
            }
        }
        ["PAUSE"] | ["PAUSE", _] => {
            let shard = shard_word(shared, words.get(1))?;
            pause(shared, shard.as_deref()).await;
            be::write_command_complete(out, "PAUSE");
            Ok(false)
        }
        ["RESUME"] | ["RESUME", _] => {
            let shard = shard_word(shared, words.get(1))?;
            resume(shared, shard.as_deref());
            be::write_command_complete(out, "RESUME");
            Ok(false)
        }
        ["SHUTDOWN"] => {
            info!("SHUTDOWN from the admin console: no new clients; open transactions finish");
            shared.drain.send_replace(true);
            be::write_command_complete(out, "SHUTDOWN");
            Ok(true)
        }
        _ => Err(SessionError::AdminSyntax(format!(
            "unknown admin command \"{command}\""
        ))),
    }
}

/// The shard a PAUSE/RESUME names (unquoted, `'s1'` or `"s1"`), checked against the map.
fn shard_word(shared: &Shared, word: Option<&String>) -> Result<Option<String>, SessionError> {
    let Some(w) = word else { return Ok(None) };
    let name = w.trim_matches(|c| c == '\'' || c == '"');
    let live = shared.live();
    if live.config.shards.iter().any(|s| s.name == name) {
        Ok(Some(name.to_string()))
    } else {
        Err(SessionError::BadShardHint(format!(
            "unknown shard \"{name}\"; SHOW SHARDS lists the shards"
        )))
    }
}

/// Holds new transactions of `shard` (None: every shard), then waits until the ones running on
/// it have ended.
async fn pause(shared: &Shared, shard: Option<&str>) {
    shared.set_paused(|p| match shard {
        None => p.all = true,
        Some(s) => {
            p.shards.insert(s.to_string());
        }
    });
    info!(
        shard = shard.unwrap_or("(all)"),
        "PAUSE: new transactions wait"
    );
    let mut warned = false;
    let started = tokio::time::Instant::now();
    loop {
        let live = shared.live();
        let busy: usize = live
            .topology
            .shards
            .iter()
            .filter(|s| shard.is_none_or(|n| n == s.name))
            .flat_map(|s| s.servers())
            .map(|s| s.busy())
            .sum();
        if busy == 0 {
            return;
        }
        if !warned && started.elapsed() > Duration::from_secs(10) {
            warn!(busy, "PAUSE waits for transactions that are still running");
            warned = true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn resume(shared: &Shared, shard: Option<&str>) {
    let names: Vec<String> = shared
        .live()
        .config
        .shards
        .iter()
        .map(|s| s.name.clone())
        .collect();
    shared.set_paused(|p| match shard {
        None => *p = Default::default(),
        Some(s) => {
            if p.all {
                p.all = false;
                p.shards = names.into_iter().collect();
            }
            p.shards.remove(s);
        }
    });
    info!(shard = shard.unwrap_or("(all)"), "RESUME");
}
