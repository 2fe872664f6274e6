//! The admin console's `SHOW` tables (text columns, like PgBouncer's).

use std::sync::Arc;

use bytes::BytesMut;

use crate::errors::SessionError;
use crate::frontend::Shared;
use crate::protocol::backend as be;
use crate::topology::stats::RouteKind;
use crate::topology::{ServerState, Shard};

/// Writes a result: columns, rows, `SHOW`.
fn table(out: &mut BytesMut, columns: &[&str], rows: Vec<Vec<Option<String>>>) {
    be::write_text_columns(out, columns);
    for row in &rows {
        be::write_text_values(out, row);
    }
    be::write_command_complete(out, "SHOW");
}

fn some(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

/// What a server is in its shard now.
pub fn role_of(shard: &Shard, s: &Arc<ServerState>) -> &'static str {
    if s.is_fenced() {
        "fenced"
    } else if shard.primary().is_some_and(|p| Arc::ptr_eq(p, s)) {
        "primary"
    } else if shard.is_split_brain() && s.is_writable() {
        "writable (split brain)"
    } else {
        "replica"
    }
}

pub fn show(shared: &Shared, what: &str, out: &mut BytesMut) -> Result<(), SessionError> {
    let live = shared.live();
    match what {
        "HELP" => table(
            out,
            &["command"],
            super::HELP.iter().map(|h| vec![some(h)]).collect(),
        ),
        "SHARDS" => {
            let paused = shared.pause.borrow().clone();
            let rows = live
                .topology
                .shards
                .iter()
                .zip(&live.config.shards)
                .map(|(shard, spec)| {
                    let primary = match shard.primary() {
                        Some(p) => p.addr.to_string(),
                        None if shard.is_split_brain() => "none (split brain)".into(),
                        None => "none (failover under way)".into(),
                    };
                    let replicas: Vec<String> =
                        shard.replicas().map(|r| r.addr.to_string()).collect();
                    vec![
                        some(&shard.name),
                        some(spec.range[0]),
                        some(spec.range[1]),
                        some(primary),
                        some(replicas.join(",")),
                        some(shard.primary().is_some()),
                        some(shard.failovers()),
                        some(paused.describe(&shard.name)),
                    ]
                })
                .collect();
            table(
                out,
                &[
                    "shard",
                    "hash_start",
                    "hash_end",
                    "primary",
                    "replicas",
                    "writable",
                    "failovers",
                    "state",
                ],
                rows,
            );
        }
        "SERVERS" => {
            let pools = shared.pool_status();
            let mut rows = Vec::new();
            for shard in &live.topology.shards {
                for s in shard.servers() {
                    let state = if s.is_fenced() {
                        "fenced"
                    } else if !s.is_up() {
                        "banned"
                    } else if s.is_lagging() {
                        "lagging"
                    } else {
                        "ok"
                    };
                    let p = pools.get(&s.addr).copied().unwrap_or_default();
                    rows.push(vec![
                        some(&shard.name),
                        some(s.addr),
                        some(role_of(shard, s)),
                        some(if s.is_up() { "up" } else { "down" }),
                        some(state),
                        some(s.lag_bytes()),
                        some(s.lag_ms()),
                        some(s.weight()),
                        some(s.busy()),
                        some(p.active),
                        some(p.idle),
                    ]);
                }
            }
            table(
                out,
                &[
                    "shard",
                    "server",
                    "role",
                    "health",
                    "state",
                    "lag_bytes",
                    "lag_ms",
                    "weight",
                    "busy",
                    "sv_active",
                    "sv_idle",
                ],
                rows,
            );
        }
        "POOLS" => {
            let pools = shared.pool_status();
            let clients = shared.client_list.list();
            let mode = match live.config.proxy.pool_mode {
                crate::config::PoolMode::Transaction => "transaction",
                crate::config::PoolMode::Session => "session",
            };
            let mut rows = Vec::new();
            for (index, shard) in live.topology.shards.iter().enumerate() {
                let cl_active = clients
                    .iter()
                    .filter(|c| {
                        c.state() == crate::frontend::clients::ClientState::Active
                            && c.shard() == Some(Some(index))
                    })
                    .count();
                for s in shard.servers() {
                    let p = pools.get(&s.addr).copied().unwrap_or_default();
                    rows.push(vec![
                        some(&shard.name),
                        some(s.addr),
                        some(role_of(shard, s)),
                        some(mode),
                        some(cl_active),
                        some(p.waiting),
                        some(p.active),
                        some(p.idle),
                        some(p.active + p.idle),
                        some(p.max),
                    ]);
                }
            }
            table(
                out,
                &[
                    "shard",
                    "server",
                    "role",
                    "pool_mode",
                    "cl_active",
                    "cl_waiting",
                    "sv_active",
                    "sv_idle",
                    "sv_total",
                    "max_size",
                ],
                rows,
            );
        }
        "CLIENTS" => {
            let rows = shared
                .client_list
                .list()
                .iter()
                .map(|c| {
                    let shard = match c.shard() {
                        Some(Some(i)) => live.config.shards.get(i).map(|s| s.name.clone()),
                        Some(None) => Some("(several)".into()),
                        None => None,
                    };
                    vec![
                        some(c.id),
                        some(&c.user),
                        some(&c.database),
                        c.addr.map(|a| a.ip().to_string()),
                        c.addr.map(|a| a.port().to_string()),
                        some(c.state().as_str()),
                        shard,
                        some(humantime::format_rfc3339_seconds(c.connected)),
                    ]
                })
                .collect();
            table(
                out,
                &[
                    "id",
                    "user",
                    "database",
                    "addr",
                    "port",
                    "state",
                    "shard",
                    "connect_time",
                ],
                rows,
            );
        }
        "STATS" => {
            let mut rows = Vec::new();
            for shard in &live.topology.shards {
                for s in shard.servers() {
                    let st = &s.stats;
                    let n = st.latency.count();
                    rows.push(vec![
                        some(&shard.name),
                        some(s.addr),
                        some(role_of(shard, s)),
                        some(st.total_queries()),
                        some(st.queries(RouteKind::Single)),
                        some(st.queries(RouteKind::Multi) + st.queries(RouteKind::Broadcast)),
                        some(st.transactions()),
                        some(st.bytes_sent()),
                        some(st.bytes_received()),
                        some(st.errors()),
                        some(st.latency.sum_us().checked_div(n).unwrap_or(0)),
                        some(st.latency.sum_us()),
                    ]);
                }
            }
            table(
                out,
                &[
                    "shard",
                    "server",
                    "role",
                    "queries",
                    "single_shard",
                    "multi_shard",
                    "transactions",
                    "bytes_sent",
                    "bytes_received",
                    "errors",
                    "avg_query_us",
                    "total_query_us",
                ],
                rows,
            );
        }
        "CONFIG" => {
            let c = &live.config;
            let status = &shared.reload_status;
            let d = |v: std::time::Duration| humantime::format_duration(v).to_string();
            let path = status
                .path
                .lock()
                .expect("reload status lock")
                .as_ref()
                .map(|p| p.display().to_string());
            let users: Vec<String> = c
                .users
                .iter()
                .map(|u| {
                    if u.admin {
                        format!("{} (admin)", u.name)
                    } else {
                        u.name.clone()
                    }
                })
                .collect();
            let rows: Vec<(&str, Option<String>, &str)> = vec![
                ("map_file", path, "-"),
                ("map_generation", some(live.generation), "-"),
                (
                    "reloads_applied",
                    some(status.applied.load(std::sync::atomic::Ordering::Relaxed)),
                    "-",
                ),
                (
                    "reloads_refused",
                    some(status.refused.load(std::sync::atomic::Ordering::Relaxed)),
                    "-",
                ),
                ("last_reload_error", status.last_error(), "-"),
                ("proxy.listen", some(&c.proxy.listen), "no"),
                ("proxy.workers", some(c.worker_count()), "no"),
                ("proxy.metrics_listen", some(&c.proxy.metrics_listen), "no"),
                ("proxy.state_dir", some(&c.proxy.state_dir), "no"),
                (
                    "proxy.pool_mode",
                    some(match c.proxy.pool_mode {
                        crate::config::PoolMode::Transaction => "transaction",
                        crate::config::PoolMode::Session => "session",
                    }),
                    "yes",
                ),
                ("proxy.pool_size", some(c.proxy.pool_size), "yes"),
                (
                    "proxy.max_client_connections",
                    some(c.proxy.max_client_connections),
                    "yes",
                ),
                (
                    "proxy.pool_wait_timeout",
                    some(d(c.proxy.pool_wait_timeout)),
                    "yes",
                ),
                (
                    "proxy.connect_timeout",
                    some(d(c.proxy.connect_timeout)),
                    "yes",
                ),
                (
                    "proxy.idle_client_timeout",
                    some(d(c.proxy.idle_client_timeout)),
                    "yes",
                ),
                ("proxy.query_timeout", some(d(c.proxy.query_timeout)), "yes"),
                (
                    "proxy.shutdown_timeout",
                    some(d(c.proxy.shutdown_timeout)),
                    "yes",
                ),
                (
                    "proxy.max_message_size",
                    some(c.proxy.max_message_size),
                    "yes",
                ),
                (
                    "proxy.multiplex_connections",
                    some(c.proxy.multiplex_connections),
                    "yes",
                ),
                ("users", some(users.join(",")), "yes"),
                ("backend.user", some(&c.backend.user), "yes"),
                ("backend.database", some(&c.backend.database), "yes"),
                (
                    "routing.read_balance",
                    some(format!("{:?}", c.routing.read_balance)),
                    "yes",
                ),
                (
                    "routing.read_from_primary",
                    some(c.routing.read_from_primary),
                    "yes",
                ),
                (
                    "routing.read_your_writes",
                    some(c.routing.read_your_writes),
                    "yes",
                ),
                ("health.interval", some(d(c.health.interval)), "yes"),
                ("health.timeout", some(d(c.health.timeout)), "yes"),
                ("health.ban_after", some(c.health.ban_after), "yes"),
                (
                    "health.max_replica_lag_bytes",
                    some(c.health.max_replica_lag_bytes),
                    "yes",
                ),
                (
                    "health.max_replica_lag",
                    some(d(c.health.max_replica_lag)),
                    "yes",
                ),
                (
                    "failover.mode",
                    some(format!("{:?}", c.failover.mode)),
                    "yes",
                ),
                (
                    "failover.failover_after",
                    some(c.failover.failover_after),
                    "yes",
                ),
                (
                    "failover.failover_timeout",
                    some(d(c.failover.failover_timeout)),
                    "yes",
                ),
                ("shards", some(c.shards.len()), "yes"),
                (
                    "tables",
                    some(
                        c.tables
                            .iter()
                            .map(|t| format!("{}({})", t.name, t.shard_key))
                            .chain(c.replicated.iter().map(|t| format!("{t}(replicated)")))
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                    "yes",
                ),
            ];
            table(
                out,
                &["key", "value", "reloadable"],
                rows.into_iter()
                    .map(|(k, v, r)| vec![some(k), v, some(r)])
                    .collect(),
            );
        }
        _ => {
            return Err(SessionError::AdminSyntax(format!(
                "SHOW {what} is not an admin command"
            )));
        }
    }
    Ok(())
}
