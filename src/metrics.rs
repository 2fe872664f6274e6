//! Prometheus metrics at `[proxy] metrics_listen` `/metrics` (text exposition format 0.0.4).
//!
//! So far the servers' state and failovers (more series come with the admin console work):
//! `shardgate_clients`, `shardgate_server_up{shard,server,role}`,
//! `shardgate_server_fenced{shard,server}` (1: replaced by failover, needs a rebuild),
//! `shardgate_replica_lag_bytes{shard,server}`, `shardgate_failovers_total{shard}`,
//! `shardgate_shard_writable{shard}` (0 while a failover runs or on split brain).
//!
//! The endpoint is a small HTTP/1.1 responder on the health checker's thread: every request
//! gets the current text and the connection is closed.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tracing::debug;

use crate::topology::{Role, Topology};

/// What the metrics are read from.
pub struct Sources {
    pub topology: Arc<Topology>,
    pub shared: Arc<crate::frontend::Shared>,
}

/// Appends a metric's HELP and TYPE lines.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The metrics text now.
pub fn render(src: &Sources) -> String {
    let mut out = String::new();
    header(
        &mut out,
        "shardgate_clients",
        "gauge",
        "Client connections now.",
    );
    let _ = writeln!(
        out,
        "shardgate_clients {}",
        src.shared.clients.load(Ordering::Relaxed)
    );
    header(
        &mut out,
        "shardgate_server_up",
        "gauge",
        "1 when the server passes its health probes.",
    );
    for shard in &src.topology.shards {
        for s in shard.servers() {
            let role = match s.role() {
                Role::Primary if shard.primary().is_some_and(|p| Arc::ptr_eq(p, s)) => "primary",
                _ => "replica",
            };
            let _ = writeln!(
                out,
                "shardgate_server_up{{shard=\"{}\",server=\"{}\",role=\"{role}\"}} {}",
                shard.name,
                s.addr,
                u8::from(s.is_up())
            );
        }
    }
    header(
        &mut out,
        "shardgate_server_fenced",
        "gauge",
        "1 for a former primary replaced by failover: it gets no traffic and needs a rebuild.",
    );
    for shard in &src.topology.shards {
        for s in shard.servers() {
            let _ = writeln!(
                out,
                "shardgate_server_fenced{{shard=\"{}\",server=\"{}\"}} {}",
                shard.name,
                s.addr,
                u8::from(s.is_fenced())
            );
        }
    }
    header(
        &mut out,
        "shardgate_replica_lag_bytes",
        "gauge",
        "Replay lag of a replica behind its primary.",
    );
    for shard in &src.topology.shards {
        for s in shard.replicas() {
            let _ = writeln!(
                out,
                "shardgate_replica_lag_bytes{{shard=\"{}\",server=\"{}\"}} {}",
                shard.name,
                s.addr,
                s.lag_bytes()
            );
        }
    }
    header(
        &mut out,
        "shardgate_failovers_total",
        "counter",
        "Primaries replaced by failover.",
    );
    for shard in &src.topology.shards {
        let _ = writeln!(
            out,
            "shardgate_failovers_total{{shard=\"{}\"}} {}",
            shard.name,
            shard.failovers()
        );
    }
    header(
        &mut out,
        "shardgate_shard_writable",
        "gauge",
        "1 when the shard has a primary taking writes (0 during a failover or a split brain).",
    );
    for shard in &src.topology.shards {
        let _ = writeln!(
            out,
            "shardgate_shard_writable{{shard=\"{}\"}} {}",
            shard.name,
            u8::from(shard.primary().is_some())
        );
    }
    out
}

/// Serves `/metrics` on `listener` until `stop`.
pub async fn serve(listener: std::net::TcpListener, src: Sources, mut stop: watch::Receiver<bool>) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let src = Arc::new(src);
    loop {
        let (mut stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
            _ = stop.changed() => return,
        };
        let src = src.clone();
        tokio::spawn(async move {
            // The request line and headers; the path decides the answer.
            let mut buf = vec![0u8; 4096];
            let mut got = 0;
            while got < buf.len() {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    stream.read(&mut buf[got..]),
                )
                .await
                {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => got += n,
                }
                if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let request = String::from_utf8_lossy(&buf[..got]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = if path == "/metrics" || path.starts_with("/metrics?") {
                ("200 OK", render(&src))
            } else {
                ("404 Not Found", "shardgate serves /metrics\n".to_string())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = stream.write_all(response.as_bytes()).await {
                debug!(%peer, error = %e, "metrics answer not sent");
            }
            let _ = stream.shutdown().await;
        });
    }
}
