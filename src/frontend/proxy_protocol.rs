//! The PROXY protocol (HAProxy, v1 text and v2 binary): the header a TCP load balancer sends first
//! on each connection, naming the client it relays — the Postgres analogue of X-Forwarded-For.
//!
//! Owns: parsing the header and reading it off a socket without taking a byte more, so the
//! Postgres startup that follows is untouched. Whether a header is required, and from which peers,
//! is the caller's decision (`proxy.proxy_protocol`, `proxy.proxy_protocol_from`).
//!
//! Reading: the signature is told apart from the first bytes (a Postgres client's first byte is
//! 0, neither signature's), then v1 is read a byte at a time up to its CRLF (at most 107 bytes, once
//! per connection) and v2 exactly as long as its length field says.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use thiserror::Error;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// What the header said about the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The load balancer relayed a client: its address and the address it connected to.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// v2 LOCAL (the balancer's own health check), v1 UNKNOWN, or an address family without IP
    /// addresses: the socket's own peer is the client.
    Local,
}

#[derive(Debug, Error)]
pub enum ProxyProtocolError {
    #[error(
        "the connection did not start with a PROXY protocol header; proxy.proxy_protocol = true \
         expects one from the load balancer (set it to false for clients that connect directly)"
    )]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    #[error("no complete PROXY protocol header within {0:?}")]
    Timeout(Duration),
    #[error("the connection closed in the middle of the PROXY protocol header")]
    Closed,
    #[error("reading the PROXY protocol header: {0}")]
    Io(std::io::Error),
}

const V1_PREFIX: &[u8] = b"PROXY ";
const V1_MAX: usize = 107;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fn malformed(what: impl Into<String>) -> ProxyProtocolError {
    ProxyProtocolError::Malformed(what.into())
}

/// Parses a header at the start of `buf`. `Ok(None)`: not enough bytes yet to decide;
/// `Ok(Some((header, len)))`: the header took `len` bytes; `Err(Missing)` as soon as the bytes
/// cannot start either version's signature.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyProtocolError> {
    let v1 = buf.len().min(V1_PREFIX.len());
    let v2 = buf.len().min(V2_SIGNATURE.len());
    if buf[..v1] == V1_PREFIX[..v1] && !buf.is_empty() {
        return parse_v1(buf);
    }
    if buf[..v2] == V2_SIGNATURE[..v2] && !buf.is_empty() {
        return parse_v2(buf);
    }
    if buf.is_empty() {
        return Ok(None);
    }
    Err(ProxyProtocolError::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyProtocolError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= V1_MAX {
            return Err(malformed("a v1 header must end with CRLF within 107 bytes"));
        }
        // A lone CR or LF anywhere but at the end cannot become CRLF later.
        if buf[..buf.len().saturating_sub(1)].contains(&b'\r') || buf.contains(&b'\n') {
            return Err(malformed("a v1 header holds a stray CR or LF"));
        }
        return Ok(None);
    };
    let len = end + 2;
    if len > V1_MAX {
        return Err(malformed("a v1 header must end with CRLF within 107 bytes"));
    }
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..end])
        .map_err(|_| malformed("a v1 header must be ASCII"))?;
    let parts: Vec<&str> = line.split(' ').collect();
    match parts.first().copied() {
        Some("UNKNOWN") => Ok(Some((ProxyHeader::Local, len))),
        Some(family @ ("TCP4" | "TCP6")) => {
            let [_, src, dst, sport, dport] = parts[..] else {
                return Err(malformed(format!(
                    "a v1 {family} header needs: source address, destination address, source port, destination port"
                )));
            };
            let ip = |text: &str| -> Result<IpAddr, ProxyProtocolError> {
                let ip: IpAddr = text
                    .parse()
                    .map_err(|_| malformed(format!("\"{text}\" is not an IP address")))?;
                match (family, ip) {
                    ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(ip),
                    _ => Err(malformed(format!("\"{text}\" is not a {family} address"))),
                }
            };
            let port = |text: &str| -> Result<u16, ProxyProtocolError> {
                if text.is_empty()
                    || !text.bytes().all(|b| b.is_ascii_digit())
                    || (text.len() > 1 && text.starts_with('0'))
                {
                    return Err(malformed(format!("\"{text}\" is not a port")));
                }
                text.parse()
                    .map_err(|_| malformed(format!("\"{text}\" is not a port")))
            };
            Ok(Some((
                ProxyHeader::Proxied {
                    source: SocketAddr::new(ip(src)?, port(sport)?),
                    destination: SocketAddr::new(ip(dst)?, port(dport)?),
                },
                len,
            )))
        }
        _ => Err(malformed(
            "a v1 header names TCP4, TCP6 or UNKNOWN after \"PROXY \"",
        )),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyProtocolError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(malformed(format!(
            "unsupported v2 version {}",
            ver_cmd >> 4
        )));
    }
    let family = buf[13];
    let body_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body_len;
    if buf.len() < len {
        return Ok(None);
    }
    let body = &buf[16..len];
    match ver_cmd & 0x0f {
        0 => return Ok(Some((ProxyHeader::Local, len))),
        1 => {}
        cmd => return Err(malformed(format!("unknown v2 command {cmd}"))),
    }
    let header = match family >> 4 {
        // AF_INET
        1 => {
            if body.len() < 12 {
                return Err(malformed("a v2 IPv4 address block needs 12 bytes"));
            }
            let ip = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
            let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
            ProxyHeader::Proxied {
                source: SocketAddr::new(ip(&body[0..4]), port(&body[8..10])),
                destination: SocketAddr::new(ip(&body[4..8]), port(&body[10..12])),
            }
        }
        // AF_INET6
        2 => {
            if body.len() < 36 {
                return Err(malformed("a v2 IPv6 address block needs 36 bytes"));
            }
            let ip = |b: &[u8]| {
                let octets: [u8; 16] = b.try_into().expect("16 bytes");
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
            ProxyHeader::Proxied {
                source: SocketAddr::new(ip(&body[0..16]), port(&body[32..34])),
                destination: SocketAddr::new(ip(&body[16..32]), port(&body[34..36])),
            }
        }
        // AF_UNSPEC, AF_UNIX: no IP address to use.
        0 | 3 => ProxyHeader::Local,
        f => return Err(malformed(format!("unknown v2 address family {f}"))),
    };
    Ok(Some((header, len)))
}

/// Reads the header from `stream`, taking no byte after it, within `timeout`.
pub async fn read_header(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<ProxyHeader, ProxyProtocolError> {
    tokio::time::timeout(timeout, read_header_inner(stream))
        .await
        .map_err(|_| ProxyProtocolError::Timeout(timeout))?
}

async fn read_header_inner(stream: &mut TcpStream) -> Result<ProxyHeader, ProxyProtocolError> {
    let mut buf = Vec::with_capacity(64);
    // One byte at a time until the version is known (at most 16 bytes), then exact reads.
    loop {
        let want = match parse(&buf)? {
            Some((header, _)) => return Ok(header),
            None if buf.len() >= 16 && buf.starts_with(V2_SIGNATURE) => {
                16 + usize::from(u16::from_be_bytes([buf[14], buf[15]])) - buf.len()
            }
            None => 1,
        };
        let start = buf.len();
        buf.resize(start + want, 0);
        match stream.read_exact(&mut buf[start..]).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(ProxyProtocolError::Closed);
            }
            Err(e) => return Err(ProxyProtocolError::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | cmd);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn v2_tcp4() -> Vec<u8> {
        let mut body = vec![10, 1, 2, 3, 192, 168, 0, 1];
        body.extend_from_slice(&40000u16.to_be_bytes());
        body.extend_from_slice(&6432u16.to_be_bytes());
        body.extend_from_slice(&[0x04, 0x00, 0x01, 0xaa]); // a TLV, skipped
        v2(1, 0x11, &body)
    }

    #[test]
    fn v1_headers() {
        let h = b"PROXY TCP4 10.1.2.3 192.168.0.1 40000 6432\r\nrest";
        assert_eq!(
            parse(h).unwrap(),
            Some((
                ProxyHeader::Proxied {
                    source: "10.1.2.3:40000".parse().unwrap(),
                    destination: "192.168.0.1:6432".parse().unwrap(),
                },
                h.len() - 4
            ))
        );
        let h = b"PROXY TCP6 ::1 2001:db8::2 1 65535\r\n";
        assert!(matches!(
            parse(h).unwrap(),
            Some((ProxyHeader::Proxied { source, .. }, 36)) if source == "[::1]:1".parse().unwrap()
        ));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").unwrap(),
            Some((ProxyHeader::Local, 15))
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").unwrap(),
            Some((ProxyHeader::Local, 35))
        );
    }

    #[test]
    fn bad_v1_headers() {
        for bad in [
            &b"PROXY TCP4 10.1.2.3 192.168.0.1 40000 65536\r\n"[..],
            b"PROXY TCP4 10.1.2.3 192.168.0.1 -1 6432\r\n",
            b"PROXY TCP4 10.1.2.3 192.168.0.1 +1 6432\r\n",
            b"PROXY TCP4 ::1 192.168.0.1 1 6432\r\n",
            b"PROXY TCP6 10.1.2.3 ::1 1 2\r\n",
            b"PROXY TCP4 10.1.2.300 192.168.0.1 1 2\r\n",
            b"PROXY TCP4 10.1.2.3 192.168.0.1 1\r\n",
            b"PROXY UDP4 10.1.2.3 192.168.0.1 1 2\r\n",
            b"PROXY TCP4 10.1.2.3  192.168.0.1 1 2\r\n",
            b"PROXY TCP4 10.1.2.3 192.168.0.1 1 2\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ProxyProtocolError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("PROXY TCP4 {}", "1".repeat(120));
        assert!(matches!(
            parse(long.as_bytes()),
            Err(ProxyProtocolError::Malformed(_))
        ));
    }

    #[test]
    fn v2_headers() {
        let h = v2_tcp4();
        assert_eq!(
            parse(&h).unwrap(),
            Some((
                ProxyHeader::Proxied {
                    source: "10.1.2.3:40000".parse().unwrap(),
                    destination: "192.168.0.1:6432".parse().unwrap(),
                },
                h.len()
            ))
        );
        let mut body = vec![0u8; 36];
        body[15] = 1;
        body[31] = 2;
        body[32..34].copy_from_slice(&5u16.to_be_bytes());
        let h = v2(1, 0x21, &body);
        assert!(matches!(
            parse(&h).unwrap(),
            Some((ProxyHeader::Proxied { source, .. }, 52)) if source == "[::1]:5".parse().unwrap()
        ));
        assert_eq!(
            parse(&v2(0, 0x00, &[])).unwrap(),
            Some((ProxyHeader::Local, 16))
        );
        assert_eq!(
            parse(&v2(1, 0x31, &[0u8; 216])).unwrap(),
            Some((ProxyHeader::Local, 232))
        );
        assert!(matches!(
            parse(&v2(1, 0x11, &[1, 2, 3])),
            Err(ProxyProtocolError::Malformed(_))
        ));
        let mut wrong_version = v2_tcp4();
        wrong_version[12] = 0x11;
        assert!(matches!(
            parse(&wrong_version),
            Err(ProxyProtocolError::Malformed(_))
        ));
    }

    #[test]
    fn postgres_bytes_are_not_a_header() {
        for pg in [
            &b"\x00\x00\x00\x08\x04\xd2\x16\x2f"[..],
            b"\x00\x00\x00\x54\x00\x03\x00\x00user",
            b"\x00",
            b"GET / HTTP/1.1\r\n",
        ] {
            assert!(matches!(parse(pg), Err(ProxyProtocolError::Missing)));
        }
    }

    #[test]
    fn prefixes_wait_for_more() {
        let v1 = b"PROXY TCP4 10.1.2.3 192.168.0.1 40000 6432\r\n".to_vec();
        for h in [v1, v2_tcp4()] {
            for n in 0..h.len() {
                assert!(parse(&h[..n]).unwrap().is_none(), "prefix of {n} bytes");
            }
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seeds = [b"PROXY ".to_vec(), V2_SIGNATURE.to_vec(), Vec::new()];
        for i in 0..20_000 {
            let mut buf = seeds[i % 3].clone();
            let n = (next() % 120) as usize;
            for _ in 0..n {
                let b = next() as u8;
                // Mostly printable for v1, anything for v2.
                buf.push(if i % 3 == 0 && !b.is_multiple_of(4) {
                    b' ' + b % 90
                } else {
                    b
                });
            }
            let _ = parse(&buf);
        }
    }

    #[tokio::test]
    async fn reads_exactly_the_header() {
        use tokio::io::AsyncWriteExt;
        let startup = b"\x00\x00\x00\x08\x04\xd2\x16\x2f";
        let v1 = b"PROXY TCP4 10.1.2.3 192.168.0.1 40000 6432\r\n".to_vec();
        for (i, header) in [v1, v2_tcp4()].into_iter().enumerate() {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let client = tokio::spawn(async move {
                let mut c = TcpStream::connect(addr).await.unwrap();
                if i == 0 {
                    let mut all = header.clone();
                    all.extend_from_slice(startup);
                    c.write_all(&all).await.unwrap();
                } else {
                    // In two parts: the reader must wait for the rest.
                    c.write_all(&header[..10]).await.unwrap();
                    c.flush().await.unwrap();
                    for _ in 0..10 {
                        tokio::task::yield_now().await;
                    }
                    c.write_all(&header[10..]).await.unwrap();
                    c.write_all(startup).await.unwrap();
                }
                c
            });
            let (mut server, _) = listener.accept().await.unwrap();
            let got = read_header(&mut server, Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(
                got,
                ProxyHeader::Proxied {
                    source: "10.1.2.3:40000".parse().unwrap(),
                    destination: "192.168.0.1:6432".parse().unwrap(),
                }
            );
            let mut rest = [0u8; 8];
            server.read_exact(&mut rest).await.unwrap();
            assert_eq!(&rest, startup);
            drop(client.await.unwrap());
        }
    }
}
