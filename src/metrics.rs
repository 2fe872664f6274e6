//! Prometheus metrics at `[proxy] metrics_listen` `/metrics` (text exposition format 0.0.4).
//!
//! Clients, pools (`shardgate_pool_connections{shard,server,state}`, waiting clients,
//! `shardgate_pool_wait_seconds`), traffic (`shardgate_queries_total{shard,server,role,route}`,
//! transactions, bytes, `shardgate_query_duration_seconds` per server), errors by SQLSTATE class,
//! server health (`shardgate_server_up`, `_fenced`, `shardgate_replica_lag_bytes`), failovers,
//! writable and paused shards, reloads (`shardgate_reloads_total{result}`) and the map generation.
//!
//! The endpoint is a small HTTP/1.1 responder on the health checker's thread: every request
//! gets the current text and the connection is closed.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tracing::debug;

use crate::topology::stats::{RouteKind, WorkerHistograms};
use crate::topology::{Role, ServerState, Shard, Topology};

/// What the metrics are read from.
pub struct Sources {
    pub shared: Arc<crate::frontend::Shared>,
}

/// Appends a metric's HELP and TYPE lines.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Appends a histogram's series (`labels` without braces, may be empty).
fn histogram(out: &mut String, name: &str, labels: &str, h: &WorkerHistograms) {
    let (buckets, sum, count) = h.snapshot();
    let sep = if labels.is_empty() { "" } else { "," };
    for (le, n) in buckets {
        let le = le.map_or("+Inf".to_string(), |v| v.to_string());
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {n}");
    }
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {sum}");
    let _ = writeln!(out, "{name}_count{braces} {count}");
}

/// The role a server is reported with.
fn role(shard: &Shard, s: &Arc<ServerState>) -> &'static str {
    match s.role() {
        Role::Primary if shard.primary().is_some_and(|p| Arc::ptr_eq(p, s)) => "primary",
        _ => "replica",
    }
}

/// Appends a family with one sample per server and extra label set: `samples` gives each
/// server's (extra labels such as `,state="idle"`, value); an empty list leaves the server out.
fn per_server<F>(out: &mut String, topology: &Topology, family: (&str, &str, &str), samples: F)
where
    F: Fn(&Shard, &Arc<ServerState>) -> Vec<(String, u64)>,
{
    let (name, kind, help) = family;
    header(out, name, kind, help);
    for shard in &topology.shards {
        for s in shard.servers() {
            for (labels, value) in samples(shard, s) {
                let _ = writeln!(
                    out,
                    "{name}{{shard=\"{}\",server=\"{}\"{labels}}} {value}",
                    shard.name, s.addr
                );
            }
        }
    }
}

/// Appends a family with one sample per shard.
fn per_shard(
    out: &mut String,
    topology: &Topology,
    family: (&str, &str, &str),
    value: impl Fn(&Shard) -> u64,
) {
    let (name, kind, help) = family;
    header(out, name, kind, help);
    for shard in &topology.shards {
        let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", shard.name, value(shard));
    }
}

/// One sample without extra labels.
fn one(value: impl Into<u64>) -> Vec<(String, u64)> {
    vec![(String::new(), value.into())]
}

/// The metrics text now.
pub fn render(src: &Sources) -> String {
    let shared = &src.shared;
    let live = shared.live();
    let topology = &live.topology;
    let mut out = String::new();
    let out = &mut out;
    header(out, "shardgate_clients", "gauge", "Client connections now.");
    let _ = writeln!(
        out,
        "shardgate_clients {}",
        shared.clients.load(Ordering::Relaxed)
    );
    let pools = shared.pool_status();
    let pool = |s: &Arc<ServerState>| pools.get(&s.addr).copied().unwrap_or_default();
    per_server(
        out,
        topology,
        (
            "shardgate_pool_connections",
            "gauge",
            "Pooled server connections over every worker, by state (active: checked out).",
        ),
        |_, s| {
            let p = pool(s);
            vec![
                (",state=\"active\"".into(), p.active as u64),
                (",state=\"idle\"".into(), p.idle as u64),
            ]
        },
    );
    per_server(
        out,
        topology,
        (
            "shardgate_pool_waiting_clients",
            "gauge",
            "Sessions waiting for a pooled connection now.",
        ),
        |_, s| one(pool(s).waiting as u64),
    );
    header(
        out,
        "shardgate_pool_wait_seconds",
        "histogram",
        "How long sessions waited to check out a pooled connection.",
    );
    histogram(out, "shardgate_pool_wait_seconds", "", &shared.pool_wait);
    per_server(
        out,
        topology,
        (
            "shardgate_queries_total",
            "counter",
            "Answers completed by servers, by route (single: one shard; multi: some; broadcast: all).",
        ),
        |shard, s| {
            RouteKind::ALL
                .iter()
                .map(|r| {
                    (
                        format!(",role=\"{}\",route=\"{}\"", role(shard, s), r.as_str()),
                        s.stats.queries(*r),
                    )
                })
                .collect()
        },
    );
    per_server(
        out,
        topology,
        (
            "shardgate_transactions_total",
            "counter",
            "Answers that left no transaction open.",
        ),
        |_, s| one(s.stats.transactions()),
    );
    per_server(
        out,
        topology,
        (
            "shardgate_server_bytes_total",
            "counter",
            "Bytes written to (direction=\"sent\") and read from (\"received\") each server.",
        ),
        |_, s| {
            vec![
                (",direction=\"sent\"".into(), s.stats.bytes_sent()),
                (",direction=\"received\"".into(), s.stats.bytes_received()),
            ]
        },
    );
    header(
        out,
        "shardgate_errors_total",
        "counter",
        "Errors sent to clients (shardgate's and the servers'), by SQLSTATE class.",
    );
    for (class, n) in crate::errors::CLIENT_ERRORS.snapshot() {
        let _ = writeln!(out, "shardgate_errors_total{{class=\"{class}\"}} {n}");
    }
    header(
        out,
        "shardgate_query_duration_seconds",
        "histogram",
        "From a request's first byte written to a server to its ReadyForQuery, per server.",
    );
    for shard in &topology.shards {
        for s in shard.servers() {
            histogram(
                out,
                "shardgate_query_duration_seconds",
                &format!("shard=\"{}\",server=\"{}\"", shard.name, s.addr),
                &s.stats.latency,
            );
        }
    }
    per_server(
        out,
        topology,
        (
            "shardgate_server_up",
            "gauge",
            "1 when the server passes its health probes.",
        ),
        |shard, s| {
            vec![(
                format!(",role=\"{}\"", role(shard, s)),
                u64::from(s.is_up()),
            )]
        },
    );
    per_server(
        out,
        topology,
        (
            "shardgate_server_fenced",
            "gauge",
            "1 for a former primary replaced by failover: it gets no traffic and needs a rebuild.",
        ),
        |_, s| one(s.is_fenced()),
    );
    per_server(
        out,
        topology,
        (
            "shardgate_replica_lag_bytes",
            "gauge",
            "Replay lag of a replica behind its primary.",
        ),
        |shard, s| {
            if shard.replicas().any(|r| Arc::ptr_eq(r, s)) {
                one(s.lag_bytes())
            } else {
                Vec::new()
            }
        },
    );
    per_shard(
        out,
        topology,
        (
            "shardgate_failovers_total",
            "counter",
            "Primaries replaced by failover.",
        ),
        Shard::failovers,
    );
    per_shard(
        out,
        topology,
        (
            "shardgate_shard_writable",
            "gauge",
            "1 when the shard has a primary taking writes (0 during a failover or a split brain).",
        ),
        |shard| u64::from(shard.primary().is_some()),
    );
    let paused = shared.pause.borrow().clone();
    per_shard(
        out,
        topology,
        (
            "shardgate_shard_paused",
            "gauge",
            "1 while the shard's new transactions are held by PAUSE.",
        ),
        |shard| u64::from(paused.holds(&shard.name)),
    );
    header(
        out,
        "shardgate_reloads_total",
        "counter",
        "Shard map reloads, by result (applied, refused).",
    );
    let status = &shared.reload_status;
    for (result, n) in [
        ("applied", status.applied.load(Ordering::Relaxed)),
        ("refused", status.refused.load(Ordering::Relaxed)),
    ] {
        let _ = writeln!(out, "shardgate_reloads_total{{result=\"{result}\"}} {n}");
    }
    header(
        out,
        "shardgate_map_generation",
        "gauge",
        "The generation of the shard map in force (1 at start, +1 per applied reload).",
    );
    let _ = writeln!(out, "shardgate_map_generation {}", live.generation);
    std::mem::take(out)
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
