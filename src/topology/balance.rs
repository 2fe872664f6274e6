//! Which server of a shard a read goes to (`[routing] read_balance`).
//!
//! Candidates are the replicas that take reads now (up, not lagging, weight above 0) and, with
//! `read_from_primary`, the primary. Read-your-writes narrows them to the replicas whose replayed
//! position has reached the client's last commit; a server that just failed this read is left out.
//! With no candidate the read goes to the primary, which is always current.
//!
//! - `round_robin`: a shard-wide counter walks the candidates, each taking `weight` turns.
//! - `least_connections`: the candidate with the fewest statements running per unit of weight; ties
//!   rotate.
//! - `source`: rendezvous hashing of the client's IP address with each server's address, scaled by
//!   weight. A client keeps its server while that server is a candidate, and when one fails only its
//!   own clients move (to their next-highest score), which a `hash % n` scheme cannot promise.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{ServerState, Shard};
use crate::config::{ReadBalance, ServerAddr};

/// What a read asks of its server.
#[derive(Debug, Clone, Copy)]
pub struct ReadContext {
    pub client_ip: IpAddr,
    /// The WAL position the client's last write committed at (0 = none): a replica must have
    /// replayed it.
    pub min_lsn: u64,
    /// A server that just failed this read.
    pub exclude: Option<ServerAddr>,
}

fn candidate(s: &ServerState, ctx: &ReadContext) -> bool {
    ctx.exclude != Some(s.addr) && s.takes_reads() && (ctx.min_lsn == 0 || s.lsn() >= ctx.min_lsn)
}

/// The server the read goes to.
pub fn pick_read<'a>(
    shard: &'a Shard,
    mode: ReadBalance,
    read_from_primary: bool,
    ctx: &ReadContext,
) -> &'a Arc<ServerState> {
    let primary = shard.primary();
    let primary_reads = read_from_primary
        && primary.is_some_and(|p| p.weight() > 0 && ctx.exclude != Some(p.addr) && p.is_up());
    let eligible = |s: &&Arc<ServerState>| {
        if primary.is_some_and(|p| Arc::ptr_eq(s, p)) {
            primary_reads
        } else {
            !s.is_fenced() && candidate(s, ctx)
        }
    };
    let chosen = match mode {
        ReadBalance::RoundRobin => round_robin(shard, eligible),
        ReadBalance::LeastConnections => least_connections(shard, eligible),
        ReadBalance::Source => source(shard, ctx.client_ip, eligible),
    };
    // No candidate: the primary, always current; with none (a failover runs), any server that
    // is not fenced (the read fails there as it would, or waits for nothing).
    chosen
        .or(primary)
        .or_else(|| shard.servers().find(|s| !s.is_fenced() && s.is_up()))
        .unwrap_or_else(|| shard.servers().next().expect("a shard has servers"))
}

fn round_robin(
    shard: &Shard,
    eligible: impl Fn(&&Arc<ServerState>) -> bool,
) -> Option<&Arc<ServerState>> {
    let total: u64 = shard
        .servers()
        .filter(&eligible)
        .map(|s| u64::from(s.weight()))
        .sum();
    if total == 0 {
        return None;
    }
    let mut turn = shard.rotation.fetch_add(1, Ordering::Relaxed) as u64 % total;
    for s in shard.servers().filter(&eligible) {
        let w = u64::from(s.weight());
        if turn < w {
            return Some(s);
        }
        turn -= w;
    }
    None
}

fn least_connections(
    shard: &Shard,
    eligible: impl Fn(&&Arc<ServerState>) -> bool,
) -> Option<&Arc<ServerState>> {
    let load = |s: &Arc<ServerState>| (s.busy() as u64 * 1_000_000) / u64::from(s.weight().max(1));
    let least = shard.servers().filter(&eligible).map(&load).min()?;
    let least_ones = || {
        shard
            .servers()
            .filter(&eligible)
            .filter(move |s| load(s) == least)
    };
    // Ties take turns instead of always going to the first server.
    let ties = least_ones().count().max(1);
    let turn = shard.rotation.fetch_add(1, Ordering::Relaxed) % ties;
    least_ones()
        .nth(turn)
        .or_else(|| shard.servers().filter(&eligible).min_by_key(|s| load(s)))
}

fn source(
    shard: &Shard,
    client: IpAddr,
    eligible: impl Fn(&&Arc<ServerState>) -> bool,
) -> Option<&Arc<ServerState>> {
    shard
        .servers()
        .filter(eligible)
        .map(|s| (rendezvous_score(client, s.addr, s.weight()), s))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, s)| s)
}

/// Weighted rendezvous score: `-weight / ln(u)` with `u` in (0, 1) drawn from a stable hash of the
/// pair, so the server with the highest score gets the client, in proportion to weight.
pub fn rendezvous_score(client: IpAddr, server: ServerAddr, weight: u32) -> f64 {
    let mut h = Fnv::default();
    match client {
        IpAddr::V4(ip) => h.write(&ip.octets()),
        IpAddr::V6(ip) => h.write(&ip.octets()),
    }
    h.write(&[0xff]);
    h.write(server.to_string().as_bytes());
    let x = splitmix64(h.0);
    // 53 random bits into (0, 1).
    let u = ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(weight) / u.ln()
}

/// FNV-1a: a hash that is the same in every process and build, unlike std's.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{Role, ServerState};
    use std::collections::HashMap;

    fn addr(port: u16) -> ServerAddr {
        ServerAddr(format!("127.0.0.1:{port}").parse().unwrap())
    }

    fn shard(replica_weights: &[u32]) -> Shard {
        let primary = Arc::new(ServerState::new(addr(5000), "s0", Role::Primary, 1));
        let replicas = replica_weights.iter().enumerate().map(|(i, w)| {
            Arc::new(ServerState::new(
                addr(5001 + i as u16),
                "s0",
                Role::Replica,
                *w,
            ))
        });
        Shard::new("s0", std::iter::once(primary).chain(replicas).collect())
    }

    fn replica(s: &Shard, i: usize) -> &Arc<ServerState> {
        s.replicas().nth(i).expect("a replica")
    }

    fn ctx(ip: &str) -> ReadContext {
        ReadContext {
            client_ip: ip.parse().unwrap(),
            min_lsn: 0,
            exclude: None,
        }
    }

    fn counts(s: &Shard, mode: ReadBalance, from_primary: bool, n: usize) -> HashMap<u16, usize> {
        let mut m = HashMap::new();
        for i in 0..n {
            let ip = format!("10.0.{}.{}", i / 250, i % 250 + 1);
            let picked = pick_read(s, mode, from_primary, &ctx(&ip));
            *m.entry(picked.addr.0.port()).or_default() += 1;
        }
        m
    }

    #[test]
    fn round_robin_is_even_and_weighted() {
        let s = shard(&[1, 1]);
        let c = counts(&s, ReadBalance::RoundRobin, false, 100);
        assert_eq!(c.get(&5001), Some(&50));
        assert_eq!(c.get(&5002), Some(&50));
        let c = counts(&s, ReadBalance::RoundRobin, true, 99);
        assert_eq!((c[&5000], c[&5001], c[&5002]), (33, 33, 33));
        let s = shard(&[1, 2]);
        let c = counts(&s, ReadBalance::RoundRobin, false, 300);
        assert_eq!((c[&5001], c[&5002]), (100, 200));
    }

    #[test]
    fn no_candidate_means_primary() {
        let s = shard(&[1, 1]);
        for r in s.replicas() {
            r.probe_failed(1);
        }
        for mode in [
            ReadBalance::RoundRobin,
            ReadBalance::LeastConnections,
            ReadBalance::Source,
        ] {
            assert_eq!(
                pick_read(&s, mode, false, &ctx("10.0.0.1")).addr.0.port(),
                5000
            );
        }
        replica(&s, 1).probe_passed(0);
        let c = counts(&s, ReadBalance::RoundRobin, false, 10);
        assert_eq!(
            c.get(&5002),
            Some(&10),
            "a re-admitted replica takes reads again"
        );
    }

    #[test]
    fn lagging_and_behind_replicas_are_skipped() {
        let s = shard(&[1, 1]);
        replica(&s, 0).set_lag(100, 0, true);
        let c = counts(&s, ReadBalance::RoundRobin, false, 10);
        assert_eq!(c.get(&5002), Some(&10));
        replica(&s, 0).set_lag(0, 0, false);
        replica(&s, 0).probe_passed(500);
        replica(&s, 1).probe_passed(100);
        let mut c = ctx("10.0.0.1");
        c.min_lsn = 300;
        for _ in 0..10 {
            assert_eq!(
                pick_read(&s, ReadBalance::RoundRobin, false, &c)
                    .addr
                    .0
                    .port(),
                5001
            );
        }
        c.min_lsn = 600;
        assert_eq!(
            pick_read(&s, ReadBalance::RoundRobin, false, &c)
                .addr
                .0
                .port(),
            5000
        );
        c.min_lsn = 0;
        c.exclude = Some(addr(5001));
        assert_eq!(
            pick_read(&s, ReadBalance::Source, false, &c).addr.0.port(),
            5002
        );
    }

    #[test]
    fn least_connections_avoids_the_busy_one() {
        let s = shard(&[1, 1]);
        let _long = replica(&s, 0).enter();
        let c = counts(&s, ReadBalance::LeastConnections, false, 20);
        assert_eq!(c.get(&5002), Some(&20));
        let c = counts(&s, ReadBalance::LeastConnections, true, 20);
        assert_eq!(c.get(&5001), None);
        assert_eq!((c[&5000], c[&5002]), (10, 10), "ties rotate");
        drop(_long);
        let c = counts(&s, ReadBalance::LeastConnections, false, 20);
        assert_eq!((c[&5001], c[&5002]), (10, 10));
    }

    #[test]
    fn source_is_sticky_and_only_moves_the_failed_servers_clients() {
        let s = shard(&[1, 1, 1]);
        let ips: Vec<String> = (1..=200).map(|i| format!("192.168.1.{i}")).collect();
        let before: Vec<u16> = ips
            .iter()
            .map(|ip| {
                pick_read(&s, ReadBalance::Source, false, &ctx(ip))
                    .addr
                    .0
                    .port()
            })
            .collect();
        for (ip, port) in ips.iter().zip(&before) {
            assert_eq!(
                pick_read(&s, ReadBalance::Source, false, &ctx(ip))
                    .addr
                    .0
                    .port(),
                *port
            );
        }
        for p in 5001..=5003 {
            let n = before.iter().filter(|x| **x == p).count();
            assert!((40..=95).contains(&n), "{p} got {n} of 200");
        }
        replica(&s, 1).probe_failed(1);
        for (ip, port) in ips.iter().zip(&before) {
            let now = pick_read(&s, ReadBalance::Source, false, &ctx(ip))
                .addr
                .0
                .port();
            if *port == 5002 {
                assert_ne!(now, 5002);
            } else {
                assert_eq!(now, *port, "{ip} moved though its server is healthy");
            }
        }
    }
}
