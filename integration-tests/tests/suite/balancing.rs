//! How reads spread over a shard's servers (`[routing] read_balance`), counted from the server
//! side (`inet_server_port()`), and the client address a PROXY protocol header gives.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use tokio_postgres::{Client, NoTls};

use shardgate::config::ServerAddr;
use shardgate::topology::balance::rendezvous_score;

use crate::harness::{Ctx, block_on, connect, proxy_setting, tests, wait_until};
use crate::routing::simple_value;

tests![
    round_robin_spreads_evenly,
    least_connections_avoids_the_busy_server,
    source_keeps_each_client_on_one_server,
    proxy_protocol_addresses_are_honoured,
];

/// The port that answered `SELECT inet_server_port()`, `n` times, counted.
async fn ports(c: &Client, n: usize, extended: bool) -> anyhow::Result<HashMap<u16, usize>> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let port: u16 = if extended {
            let p: i32 = c.query_one("SELECT inet_server_port()", &[]).await?.get(0);
            p as u16
        } else {
            simple_value(c, "SELECT inet_server_port()")
                .await?
                .parse()?
        };
        *counts.entry(port).or_default() += 1;
    }
    Ok(counts)
}

/// The shared cluster's ports: primary, then replicas.
fn cluster_ports(ctx: &Ctx) -> anyhow::Result<(u16, Vec<u16>)> {
    let shard = &ctx.cluster()?.shards()[0];
    Ok((
        shard.primary.port,
        shard.replicas.iter().map(|r| r.port).collect(),
    ))
}

/// `round_robin` with `read_from_primary`: the two replicas and the primary take exactly one read
/// in three each.
fn round_robin_spreads_evenly(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let map = ctx.routed_map("read_from_primary = true\nread_your_writes = false")?;
        let proxy = ctx.start_proxy(&map)?;
        let c = proxy.client().await?;
        let (primary, replicas) = cluster_ports(ctx)?;
        for extended in [false, true] {
            let counts = ports(&c, 30, extended).await?;
            for port in std::iter::once(primary).chain(replicas.iter().copied()) {
                assert_eq!(
                    counts.get(&port),
                    Some(&10),
                    "extended={extended}: {counts:?}"
                );
            }
        }
        // Without read_from_primary the replicas share the reads.
        let map = ctx.routed_map("read_your_writes = false")?;
        let proxy = ctx.start_proxy(&map)?;
        let c = proxy.client().await?;
        let counts = ports(&c, 20, false).await?;
        assert_eq!(counts.get(&replicas[0]), Some(&10), "{counts:?}");
        assert_eq!(counts.get(&replicas[1]), Some(&10), "{counts:?}");
        Ok(())
    })
}

/// `least_connections`: while a long query runs on one server, reads go to the others; when it
/// ends, all three share again.
fn least_connections_avoids_the_busy_server(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let map = ctx.routed_map(
            "read_balance = \"least_connections\"\nread_from_primary = true\nread_your_writes = false",
        )?;
        let proxy = ctx.start_proxy(&map)?;
        let (primary, replicas) = cluster_ports(ctx)?;
        let all: Vec<u16> = std::iter::once(primary).chain(replicas).collect();
        let marker = ctx.unique("long_read");
        let long = proxy.client().await?;
        let sql = format!("SELECT inet_server_port(), pg_sleep(2) AS {marker}");
        let running = tokio::spawn(async move { long.query_one(&sql, &[]).await });
        // Which server runs it, from the servers' own view.
        let busy = std::rc::Rc::new(std::cell::Cell::new(None));
        wait_until("the long query to start", Duration::from_secs(10), || {
            let marker = marker.clone();
            let busy = busy.clone();
            let cluster = ctx.cluster();
            async move {
                let Ok(cluster) = cluster else { return false };
                for server in cluster.shards()[0].instances() {
                    let Ok(s) = connect(&server.superuser_conninfo("app")).await else {
                        continue;
                    };
                    let n: i64 = s
                        .query_one(
                            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
                             AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
                            &[&marker],
                        )
                        .await
                        .map(|r| r.get(0))
                        .unwrap_or(0);
                    if n > 0 {
                        busy.set(Some(server.port));
                        return true;
                    }
                }
                false
            }
        })
        .await?;
        let busy = busy.get().context("no busy server")?;
        let c = proxy.client().await?;
        let counts = ports(&c, 10, false).await?;
        assert_eq!(
            counts.get(&busy),
            None,
            "reads went to the busy server: {counts:?}"
        );
        for port in all.iter().filter(|p| **p != busy) {
            assert_eq!(counts.get(port), Some(&5), "{counts:?}");
        }
        let row = running.await??;
        assert_eq!(row.get::<_, i32>(0) as u16, busy);
        let counts = ports(&c, 9, false).await?;
        for port in &all {
            assert_eq!(
                counts.get(port),
                Some(&3),
                "after the long query: {counts:?}"
            );
        }
        Ok(())
    })
}

/// Where `source` balancing should put a client address: the replica with the highest
/// rendezvous score.
fn expected_replica(ip: IpAddr, replicas: &[u16]) -> u16 {
    *replicas
        .iter()
        .max_by(|a, b| {
            let score =
                |p: u16| rendezvous_score(ip, ServerAddr(SocketAddr::from(([127, 0, 0, 1], p))), 1);
            score(**a).total_cmp(&score(**b))
        })
        .expect("replicas")
}

/// A client from `local_ip` (a loopback address of its own), through the proxy at `proxy`.
async fn client_from(local_ip: &str, url: &str, proxy: SocketAddr) -> anyhow::Result<Client> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{local_ip}:0").parse()?)?;
    let stream = socket.connect(proxy).await?;
    raw_client(stream, url).await
}

async fn raw_client(stream: tokio::net::TcpStream, url: &str) -> anyhow::Result<Client> {
    let config: tokio_postgres::Config = url.parse()?;
    let (client, connection) = config.connect_raw(stream, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// `source`: every connection from one address reads from one replica, the one its address
/// hashes to; different addresses use both replicas.
fn source_keeps_each_client_on_one_server(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let map = ctx.routed_map("read_balance = \"source\"\nread_your_writes = false")?;
        let proxy = ctx.start_proxy(&map)?;
        let (_, replicas) = cluster_ports(ctx)?;
        let mut used = HashMap::new();
        for i in 10..26 {
            let ip = format!("127.0.0.{i}");
            let expected = expected_replica(ip.parse()?, &replicas);
            for _ in 0..2 {
                let c = client_from(&ip, &proxy.url(), proxy.addr()).await?;
                let counts = ports(&c, 3, i % 2 == 0).await?;
                assert_eq!(
                    counts.get(&expected),
                    Some(&3),
                    "client {ip} should stay on {expected}: {counts:?}"
                );
            }
            *used.entry(expected).or_insert(0) += 1;
        }
        assert_eq!(used.len(), 2, "16 addresses over 2 replicas: {used:?}");
        Ok(())
    })
}

/// A PROXY protocol v1 header.
fn proxy_v1(src: &str) -> Vec<u8> {
    format!("PROXY TCP4 {src} 127.0.0.1 40000 6432\r\n").into_bytes()
}

/// A PROXY protocol v2 header with a TLV after the addresses.
fn proxy_v2(src: [u8; 4]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21);
    h.push(0x11);
    let tlv = [0x04u8, 0x00, 0x02, 0xab, 0xcd];
    h.extend_from_slice(&((12 + tlv.len()) as u16).to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&40000u16.to_be_bytes());
    h.extend_from_slice(&6432u16.to_be_bytes());
    h.extend_from_slice(&tlv);
    h
}

async fn client_with_header(
    header: &[u8],
    proxy: &crate::harness::ProxyUnderTest,
) -> anyhow::Result<Client> {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await?;
    stream.write_all(header).await?;
    raw_client(stream, &proxy.url()).await
}

/// With `proxy.proxy_protocol`, balancing uses the address in the header (v1 and v2), a
/// connection without one is refused with 08P01, and `proxy_protocol_from` limits who may send it.
fn proxy_protocol_addresses_are_honoured(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let map = ctx.routed_map("read_balance = \"source\"\nread_your_writes = false")?;
        let map = proxy_setting(&map, "proxy_protocol", "true");
        let proxy = ctx.start_proxy(&map)?;
        let (_, replicas) = cluster_ports(ctx)?;
        let mut used = HashMap::new();
        for i in 1..17u8 {
            let ip = [10, 20, 30, i];
            let expected = expected_replica(IpAddr::from(ip), &replicas);
            let v1 = client_with_header(&proxy_v1(&format!("10.20.30.{i}")), &proxy).await?;
            let v2 = client_with_header(&proxy_v2(ip), &proxy).await?;
            for (name, c) in [("v1", &v1), ("v2", &v2)] {
                let counts = ports(c, 2, false).await?;
                assert_eq!(
                    counts.get(&expected),
                    Some(&2),
                    "{name} client 10.20.30.{i} should read from {expected}: {counts:?}"
                );
            }
            *used.entry(expected).or_insert(0) += 1;
        }
        assert_eq!(used.len(), 2, "{used:?}");
        // No header: refused, with a message that says why.
        let err = connect(&proxy.url())
            .await
            .expect_err("a connection without a PROXY header is refused");
        let text = format!("{err:#}");
        assert!(text.contains("PROXY"), "{text}");
        // Headers only from the listed load balancer.
        let map = proxy_setting(&map, "proxy_protocol_from", "[\"127.0.0.2\"]");
        let proxy = ctx.start_proxy(&map)?;
        let err = client_with_header(&proxy_v1("10.20.30.1"), &proxy)
            .await
            .err()
            .context("a header from an unlisted peer is refused")?;
        assert!(
            format!("{err:#}").contains("proxy_protocol_from"),
            "{err:#}"
        );
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind("127.0.0.2:0".parse()?)?;
        let mut stream = socket.connect(proxy.addr()).await?;
        tokio::io::AsyncWriteExt::write_all(&mut stream, &proxy_v1("10.20.30.1")).await?;
        let c = raw_client(stream, &proxy.url()).await?;
        assert_eq!(simple_value(&c, "SELECT 1").await?, "1");
        Ok(())
    })
}
