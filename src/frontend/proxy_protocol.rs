//! The PROXY protocol (HAProxy, v1 text and v2 binary): the header a TCP load balancer sends first
//! on each connection, naming the client it relays — the Postgres analogue of X-Forwarded-For.
//! Spec: <https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt>.
//!
//! Owns: parsing the header ([`parse`]) and reading it off a socket without taking a byte more
//! ([`read_header`]), so the Postgres startup that follows is untouched. Whether a header is
//! required, and from which peers, is the caller's decision (`proxy.proxy_protocol`,
//! `proxy.proxy_protocol_from`): a header is only trustworthy from the load balancer itself.
//!
//! Parsing is strict: v1 must end with CRLF within 107 bytes, name TCP4, TCP6 or UNKNOWN, and carry
//! addresses of the declared family and decimal ports; v2 must have version 2, a defined command
//! and address family, and an address block as long as the family needs (TLVs after it are
//! skipped). [`parse`] says `Missing` from the first byte that cannot start either signature; a
//! Postgres client's first byte is 0 (its int32 length), which neither signature starts with.
//!
//! Reading: one `peek` of what has arrived; when that holds a whole header (nearly always: the
//! balancer writes it in one go, before any client byte), exactly its length is read. Otherwise
//! (a header split across segments) the header is read, consumed, one byte at a time until its
//! length is known — v1: its CRLF, at most 107 bytes; v2: its 16-byte fixed part — and then
//! exactly the rest. No read can go past the header, and no loop waits on readiness.

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
    /// addresses (v2 UNSPEC, UNIX): the socket's own peer is the client.
    Local,
}

#[derive(Debug, Error)]
pub enum ProxyProtocolError {
    #[error(
        "the connection did not start with a PROXY protocol header; proxy.proxy_protocol = true \
         expects one from the load balancer (set it to false for clients that connect directly)"
    )]
    Missing,
    #[error(
        "malformed PROXY protocol header: {0}; the load balancer must send PROXY protocol v1 or v2 \
         (HAProxy: send-proxy or send-proxy-v2)"
    )]
    Malformed(String),
    #[error(
        "no complete PROXY protocol header within {0:?}; proxy.proxy_protocol = true expects the \
         load balancer to send one first on every connection (set it to false for direct clients)"
    )]
    Timeout(Duration),
    #[error(
        "the connection closed before its PROXY protocol header was complete (a load balancer's \
         TCP health check looks like this)"
    )]
    Closed,
    #[error("reading the PROXY protocol header: {0}")]
    Io(std::io::Error),
}

const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// The longest v1 header, CRLF included.
const V1_MAX: usize = 107;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/transport, big-endian length of what follows.
const V2_FIXED: usize = 16;
/// How much one `peek` looks at: any v1 header, and v2 headers with up to ~500 bytes of TLVs.
const PEEK: usize = 512;

fn malformed(what: impl Into<String>) -> ProxyProtocolError {
    ProxyProtocolError::Malformed(what.into())
}

/// Parses a header at the start of `buf`. `Ok(None)`: not enough bytes yet to decide;
/// `Ok(Some((header, len)))`: the header took `len` bytes; `Err(Missing)` as soon as the bytes
/// cannot start either version's signature.
///
/// Decisions are final: once a prefix gives `Err` or `Some`, every longer buffer gives the same.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyProtocolError> {
    let starts = |signature: &[u8]| {
        let n = buf.len().min(signature.len());
        buf[..n] == signature[..n]
    };
    if buf.is_empty() {
        Ok(None)
    } else if starts(V1_PREFIX) {
        parse_v1(buf)
    } else if starts(V2_SIGNATURE) {
        parse_v2(buf)
    } else {
        Err(ProxyProtocolError::Missing)
    }
}

/// `buf` is non-empty and starts with (a prefix of) `PROXY `.
fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyProtocolError> {
    let too_long = || malformed("a v1 header must end with CRLF within 107 bytes");
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= V1_MAX {
            return Err(too_long());
        }
        // With no CRLF yet, a CR before the last byte, or any LF, can never become the end.
        if buf[..buf.len() - 1].contains(&b'\r') || buf.contains(&b'\n') {
            return Err(malformed("a v1 header holds a stray CR or LF"));
        }
        return Ok(None);
    };
    // The prefix holds no CR, so a CRLF can only come after all of it.
    let len = end + 2;
    if len > V1_MAX {
        return Err(too_long());
    }
    let line = &buf[V1_PREFIX.len()..end];
    // UNKNOWN: whatever follows it up to the CRLF is to be ignored.
    if line == b"UNKNOWN" || line.starts_with(b"UNKNOWN ") {
        return Ok(Some((ProxyHeader::Local, len)));
    }
    let line = std::str::from_utf8(line)
        .ok()
        .filter(|l| l.is_ascii())
        .ok_or_else(|| malformed("a v1 header must be ASCII"))?;
    let parts: Vec<&str> = line.split(' ').collect();
    let family = parts[0];
    if family != "TCP4" && family != "TCP6" {
        return Err(malformed(format!(
            "a v1 header names TCP4, TCP6 or UNKNOWN after \"PROXY \", not \"{}\"",
            family.escape_debug()
        )));
    }
    let [_, src, dst, sport, dport] = parts[..] else {
        return Err(malformed(format!(
            "a v1 {family} header is: PROXY {family} <source address> <destination address> \
             <source port> <destination port>, single spaces between"
        )));
    };
    let ip = |text: &str| -> Result<IpAddr, ProxyProtocolError> {
        match (family, text.parse::<IpAddr>()) {
            (_, Err(_)) => Err(malformed(format!(
                "\"{}\" is not an IP address",
                text.escape_debug()
            ))),
            ("TCP4", Ok(ip @ IpAddr::V4(_))) | ("TCP6", Ok(ip @ IpAddr::V6(_))) => Ok(ip),
            (_, Ok(_)) => Err(malformed(format!("\"{text}\" is not a {family} address"))),
        }
    };
    let port = |text: &str| -> Result<u16, ProxyProtocolError> {
        // Decimal digits only (u16's own parser would take a '+'), no leading zeros.
        let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
        let canonical = text == "0" || !text.starts_with('0');
        match text.parse() {
            Ok(port) if digits && canonical => Ok(port),
            _ => Err(malformed(format!(
                "\"{}\" is not a port (0 to 65535)",
                text.escape_debug()
            ))),
        }
    };
    let header = ProxyHeader::Proxied {
        source: SocketAddr::new(ip(src)?, port(sport)?),
        destination: SocketAddr::new(ip(dst)?, port(dport)?),
    };
    Ok(Some((header, len)))
}

/// `buf` is non-empty and starts with (a prefix of) the v2 signature.
fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyProtocolError> {
    // Everything that the fixed part can get wrong is reported before waiting for the rest.
    let Some(len) = v2_total_len(buf) else {
        return Ok(None);
    };
    let (ver_cmd, family, body_len) = (buf[12], buf[13], len - V2_FIXED);
    if ver_cmd >> 4 != 2 {
        return Err(malformed(format!(
            "a v2 header has version 2, not {}",
            ver_cmd >> 4
        )));
    }
    let local = match ver_cmd & 0x0f {
        // LOCAL: the address block, family included, is to be ignored.
        0x0 => true,
        0x1 => false,
        cmd => return Err(malformed(format!("unknown v2 command {cmd:#x}"))),
    };
    // Address family (high nibble) and transport (low nibble); the spec has receivers reject any
    // other combination.
    let needs = match family {
        _ if local => 0,
        0x00 => 0,          // UNSPEC
        0x11 | 0x12 => 12,  // TCP or UDP over IPv4
        0x21 | 0x22 => 36,  // TCP or UDP over IPv6
        0x31 | 0x32 => 216, // UNIX stream or datagram
        _ => {
            return Err(malformed(format!(
                "unknown v2 address family and transport {family:#04x}"
            )));
        }
    };
    if body_len < needs {
        return Err(malformed(format!(
            "the v2 address family {family:#04x} needs {needs} address bytes, the header has {body_len}"
        )));
    }
    let Some(body) = buf.get(V2_FIXED..len) else {
        return Ok(None);
    };
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    let header = match family >> 4 {
        _ if local => ProxyHeader::Local,
        1 => {
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    body[at],
                    body[at + 1],
                    body[at + 2],
                    body[at + 3],
                ))
            };
            ProxyHeader::Proxied {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            }
        }
        2 => {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&body[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            ProxyHeader::Proxied {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            }
        }
        // UNSPEC, UNIX: no IP address to use.
        _ => ProxyHeader::Local,
    };
    Ok(Some((header, len)))
}

/// A v2 header's whole length, once `buf` holds its fixed part.
fn v2_total_len(buf: &[u8]) -> Option<usize> {
    let fixed = buf
        .get(..V2_FIXED)
        .filter(|f| f.starts_with(V2_SIGNATURE))?;
    Some(V2_FIXED + usize::from(u16::from_be_bytes([fixed[14], fixed[15]])))
}

/// Reads the header from `stream`, taking no byte after it, within `timeout`.
pub async fn read_header(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<ProxyHeader, ProxyProtocolError> {
    tokio::time::timeout(timeout, async {
        match peek_whole(stream).await? {
            Some(header) => Ok(header),
            None => read_in_parts(stream).await,
        }
    })
    .await
    .map_err(|_| ProxyProtocolError::Timeout(timeout))?
}

/// The common case: one peek at what has arrived holds the whole header, and exactly that much is
/// read. `None` when it holds only part of one (nothing has been consumed then).
async fn peek_whole(stream: &mut TcpStream) -> Result<Option<ProxyHeader>, ProxyProtocolError> {
    let mut buf = [0u8; PEEK];
    // Waits for at least one byte; returns what is there without consuming it.
    let n = stream
        .peek(&mut buf)
        .await
        .map_err(ProxyProtocolError::Io)?;
    if n == 0 {
        return Err(ProxyProtocolError::Closed);
    }
    let Some((header, len)) = parse(&buf[..n])? else {
        return Ok(None);
    };
    // These `len` bytes have arrived already: the read takes exactly them.
    read_exactly(stream, &mut buf[..len]).await?;
    Ok(Some(header))
}

/// A header split across segments: consumed one byte at a time until its length is known (v1: up
/// to its CRLF; v2: its fixed part), then exactly the rest.
async fn read_in_parts(stream: &mut TcpStream) -> Result<ProxyHeader, ProxyProtocolError> {
    let mut buf = Vec::with_capacity(V1_MAX);
    loop {
        let more = match parse(&buf)? {
            // Only ever reached with `len == buf.len()`: a v1 header is complete at the read that
            // brings its LF, a v2 one at the read of exactly its length.
            Some((header, _)) => return Ok(header),
            // v2 waits for more, after its fixed part, only while the rest is incomplete.
            None => v2_total_len(&buf).map_or(1, |total| total.saturating_sub(buf.len()).max(1)),
        };
        let start = buf.len();
        buf.resize(start + more, 0);
        read_exactly(stream, &mut buf[start..]).await?;
    }
}

async fn read_exactly(stream: &mut TcpStream, buf: &mut [u8]) -> Result<(), ProxyProtocolError> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ProxyProtocolError::Closed),
        Err(e) => Err(ProxyProtocolError::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const SSL_REQUEST: &[u8; 8] = b"\x00\x00\x00\x08\x04\xd2\x16\x2f";

    fn v2(ver_cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(ver_cmd);
        h.push(family);
        h.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
        let mut t = vec![kind];
        t.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        t.extend_from_slice(value);
        t
    }

    fn proxied(source: &str, destination: &str) -> ProxyHeader {
        ProxyHeader::Proxied {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        }
    }

    const V1_TCP4: &[u8] = b"PROXY TCP4 10.1.2.3 192.168.0.1 40000 6432\r\n";
    const V1_TCP6: &[u8] = b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n";

    /// 10.1.2.3:40000 → 192.168.0.1:6432, with a TLV after the addresses.
    fn v2_tcp4() -> Vec<u8> {
        let mut body = vec![10, 1, 2, 3, 192, 168, 0, 1];
        body.extend_from_slice(&40000u16.to_be_bytes());
        body.extend_from_slice(&6432u16.to_be_bytes());
        body.extend(tlv(0x04, &[0xaa])); // PP2_TYPE_NOOP
        v2(0x21, 0x11, &body)
    }

    /// [2001:db8::1]:5 → [::1]:6432, with two TLVs after the addresses.
    fn v2_tcp6() -> Vec<u8> {
        let mut body = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        body.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        body.extend_from_slice(&5u16.to_be_bytes());
        body.extend_from_slice(&6432u16.to_be_bytes());
        body.extend(tlv(0x02, b"db.example.com")); // PP2_TYPE_AUTHORITY
        body.extend(tlv(0xea, b"\x01vpce-0123456789")); // AWS VPC endpoint id
        v2(0x21, 0x21, &body)
    }

    /// Valid headers and what they parse to.
    fn valid() -> Vec<(Vec<u8>, ProxyHeader)> {
        vec![
            (
                V1_TCP4.to_vec(),
                proxied("10.1.2.3:40000", "192.168.0.1:6432"),
            ),
            (V1_TCP6.to_vec(), proxied("[2001:db8::1]:1", "[::1]:65535")),
            (b"PROXY UNKNOWN\r\n".to_vec(), ProxyHeader::Local),
            (
                b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n".to_vec(),
                ProxyHeader::Local,
            ),
            (
                b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n".to_vec(),
                proxied("0.0.0.0:0", "255.255.255.255:65535"),
            ),
            (v2_tcp4(), proxied("10.1.2.3:40000", "192.168.0.1:6432")),
            (v2_tcp6(), proxied("[2001:db8::1]:5", "[::1]:6432")),
            (v2(0x20, 0x00, &[]), ProxyHeader::Local),
            (v2(0x20, 0x11, &[1, 2, 3]), ProxyHeader::Local), // LOCAL: block ignored
            (v2(0x21, 0x00, &[]), ProxyHeader::Local),
            (v2(0x21, 0x31, &[b'/'; 216]), ProxyHeader::Local),
            (
                v2(0x21, 0x12, &v2_tcp4()[16..28]),
                proxied("10.1.2.3:40000", "192.168.0.1:6432"),
            ),
        ]
    }

    #[test]
    fn valid_headers() {
        for (h, want) in valid() {
            let shown = String::from_utf8_lossy(&h).into_owned();
            assert_eq!(
                parse(&h).unwrap(),
                Some((want.clone(), h.len())),
                "{shown:?}"
            );
            // What follows the header is not part of it.
            let mut more = h.clone();
            more.extend_from_slice(SSL_REQUEST);
            assert_eq!(parse(&more).unwrap(), Some((want, h.len())), "{shown:?}");
        }
    }

    #[test]
    fn longest_v1_header() {
        // Valid TCP6 headers of 107 and 108 bytes (inet_ntop never writes addresses this long).
        let a = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
        let h = format!("PROXY TCP6 {a} ffff:ffff:ffff:ffff:ffff:fff:1.2.3.4 65535 65535\r\n");
        assert_eq!(h.len(), V1_MAX);
        assert!(matches!(parse(h.as_bytes()), Ok(Some((_, V1_MAX)))));
        let h = format!("PROXY TCP6 {a} ffff:ffff:ffff:ffff:ffff:ffff:1.2.3.4 65535 65535\r\n");
        assert_eq!(h.len(), V1_MAX + 1);
        for n in 0..V1_MAX {
            assert!(matches!(parse(&h.as_bytes()[..n]), Ok(None)));
        }
        assert!(matches!(
            parse(h.as_bytes()),
            Err(ProxyProtocolError::Malformed(_))
        ));
    }

    #[test]
    fn bad_v1_headers() {
        let long = format!("PROXY TCP4 {}", "1".repeat(120));
        for bad in [
            &b"PROXY TCP4 10.1.2.3 192.168.0.1 40000 65536\r\n"[..],
            b"PROXY TCP4 10.1.2.3 192.168.0.1 -1 6432\r\n",
            b"PROXY TCP4 10.1.2.3 192.168.0.1 +1 6432\r\n",
            b"PROXY TCP4 10.1.2.3 192.168.0.1 01 6432\r\n",
            b"PROXY TCP4 10.1.2.3 192.168.0.1 0x10 6432\r\n",
            b"PROXY TCP4 10.1.2.3 192.168.0.1  6432\r\n",
            b"PROXY TCP4 10.1.2.3 192.168.0.1 99999999999999999999 1\r\n",
            b"PROXY TCP4 ::1 192.168.0.1 1 6432\r\n",
            b"PROXY TCP6 10.1.2.3 ::1 1 2\r\n",
            b"PROXY TCP4 10.1.2.300 192.168.0.1 1 2\r\n",
            b"PROXY TCP4 010.1.2.3 192.168.0.1 1 2\r\n",
            b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
            b"PROXY TCP4 host.example 192.168.0.1 1 2\r\n",
            b"PROXY TCP4 10.1.2.3 192.168.0.1 1\r\n",
            b"PROXY TCP4 10.1.2.3 192.168.0.1 1 2 3\r\n",
            b"PROXY TCP4 10.1.2.3 192.168.0.1 1 2 \r\n",
            b"PROXY TCP4 10.1.2.3  192.168.0.1 1 2\r\n",
            b"PROXY UDP4 10.1.2.3 192.168.0.1 1 2\r\n",
            b"PROXY tcp4 10.1.2.3 192.168.0.1 1 2\r\n",
            b"PROXY \xff\xfe 10.1.2.3 192.168.0.1 1 2\r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY \r\n",
            // Missing CRLF: a bare LF, a bare CR, nothing within 107 bytes.
            b"PROXY TCP4 10.1.2.3 192.168.0.1 1 2\n",
            b"PROXY TCP4 10.1.2.3 192.168.0.1 1 2\rx",
            long.as_bytes(),
        ] {
            assert!(
                matches!(parse(bad), Err(ProxyProtocolError::Malformed(_))),
                "{:?} gave {:?}",
                String::from_utf8_lossy(bad),
                parse(bad)
            );
        }
    }

    #[test]
    fn bad_v2_headers() {
        let mut wrong_version = v2_tcp4();
        wrong_version[12] = 0x11;
        let mut unknown_command = v2_tcp4();
        unknown_command[12] = 0x22;
        let mut bad = vec![
            wrong_version,
            unknown_command,
            v2(0x21, 0x11, &[1, 2, 3]),
            v2(0x21, 0x21, &[0; 12]),
            v2(0x21, 0x31, &[0; 36]),
        ];
        for family in [0x01, 0x10, 0x13, 0x20, 0x23, 0x30, 0x41, 0xff] {
            bad.push(v2(0x21, family, &[0; 216]));
        }
        for h in bad {
            assert!(
                matches!(parse(&h), Err(ProxyProtocolError::Malformed(_))),
                "{h:02x?}"
            );
            // Decided from the fixed part alone, without waiting for the rest.
            assert!(
                matches!(parse(&h[..16]), Err(ProxyProtocolError::Malformed(_))),
                "{h:02x?}"
            );
        }
    }

    #[test]
    fn postgres_bytes_are_not_a_header() {
        for pg in [
            &SSL_REQUEST[..],
            b"\x00\x00\x00\x08\x04\xd2\x16\x30", // GSSENCRequest
            b"\x00\x00\x00\x54\x00\x03\x00\x00user\x00bob\x00", // StartupMessage
            b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x00\x01", // CancelRequest
            b"\x00",
            b"\x16\x03\x01", // a TLS ClientHello
            b"GET / HTTP/1.1\r\n",
            b"PROXZ",
            b"\r\n\r\n\0\r\nQUIX",
        ] {
            assert!(
                matches!(parse(pg), Err(ProxyProtocolError::Missing)),
                "{pg:02x?}"
            );
        }
    }

    #[test]
    fn every_prefix_waits_for_more() {
        for (h, _) in valid() {
            for n in 0..h.len() {
                assert!(
                    matches!(parse(&h[..n]), Ok(None)),
                    "{n} bytes of {:?}: {:?}",
                    String::from_utf8_lossy(&h),
                    parse(&h[..n])
                );
            }
        }
    }

    /// Random bytes, and valid headers with random damage: `parse` never panics, never claims more
    /// bytes than it has, and never changes its mind as bytes are added.
    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let valid: Vec<Vec<u8>> = valid().into_iter().map(|(h, _)| h).collect();
        let alphabet = b"PROXY TCP46UNKNOWN0123456789abcdef.:\r\n \x00\x11\x21\x20";
        for i in 0..6_000 {
            let mut buf = match i % 4 {
                0 => Vec::new(),
                1 => V1_PREFIX.to_vec(),
                2 => V2_SIGNATURE.to_vec(),
                _ => valid[(next() as usize) % valid.len()].clone(),
            };
            if i % 4 == 3 {
                // Damage: overwrite, truncate or insert a few bytes.
                for _ in 0..=next() % 3 {
                    let at = (next() as usize) % (buf.len() + 1);
                    let byte = next() as u8;
                    match next() % 3 {
                        0 if at < buf.len() => buf[at] = byte,
                        1 => buf.truncate(at),
                        _ => buf.insert(at, byte),
                    }
                }
            } else {
                for _ in 0..next() % 130 {
                    let r = next();
                    buf.push(if r % 2 == 0 {
                        alphabet[(r >> 8) as usize % alphabet.len()]
                    } else {
                        (r >> 8) as u8
                    });
                }
            }
            let whole = parse(&buf);
            if let Ok(Some((_, len))) = &whole {
                assert!(*len <= buf.len());
            }
            for n in 0..buf.len() {
                match parse(&buf[..n]) {
                    Ok(None) => {}
                    Ok(Some(got)) => {
                        assert_eq!(whole.as_ref().ok(), Some(&Some(got)), "{buf:02x?}")
                    }
                    Err(ProxyProtocolError::Missing) => {
                        assert!(
                            matches!(whole, Err(ProxyProtocolError::Missing)),
                            "{buf:02x?}"
                        )
                    }
                    Err(_) => assert!(whole.is_err(), "{buf:02x?}"),
                }
            }
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        client.set_nodelay(true).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// The header, whole or in parts, then a Postgres SSLRequest: `read_header` returns the header
    /// and leaves the SSLRequest, byte for byte, to whoever reads next.
    #[tokio::test]
    async fn reads_exactly_the_header() {
        let mut big_tlvs = v2_tcp4();
        big_tlvs.truncate(28);
        big_tlvs.extend(tlv(0x04, &[7; 1000]));
        let body_len = u16::try_from(big_tlvs.len() - 16).unwrap();
        big_tlvs[14..16].copy_from_slice(&body_len.to_be_bytes());
        let headers = [V1_TCP4.to_vec(), v2_tcp4(), big_tlvs];
        for header in headers {
            for split in [None, Some(1), Some(10), Some(15), Some(header.len() - 1)] {
                let (mut client, mut server) = pair().await;
                let header = header.clone();
                let writer = tokio::spawn(async move {
                    let (first, second) = header.split_at(split.unwrap_or(header.len()));
                    client.write_all(first).await.unwrap();
                    if !second.is_empty() {
                        // Not synchronisation: only to make the reader see a partial header.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        client.write_all(second).await.unwrap();
                    }
                    client.write_all(SSL_REQUEST).await.unwrap();
                    client
                });
                let got = read_header(&mut server, Duration::from_secs(5)).await;
                assert_eq!(
                    got.unwrap(),
                    proxied("10.1.2.3:40000", "192.168.0.1:6432"),
                    "split at {split:?}"
                );
                let mut rest = [0u8; 8];
                server.read_exact(&mut rest).await.unwrap();
                assert_eq!(&rest, SSL_REQUEST, "split at {split:?}");
                drop(writer.await.unwrap());
            }
        }
    }

    /// The slow path on its own, for headers that arrived whole as well.
    #[tokio::test]
    async fn reads_in_parts_exactly_the_header() {
        for (header, want) in valid() {
            let (mut client, mut server) = pair().await;
            client.write_all(&header).await.unwrap();
            client.write_all(SSL_REQUEST).await.unwrap();
            assert_eq!(read_in_parts(&mut server).await.unwrap(), want);
            let mut rest = [0u8; 8];
            server.read_exact(&mut rest).await.unwrap();
            assert_eq!(&rest, SSL_REQUEST);
        }
    }

    #[tokio::test]
    async fn read_errors() {
        // A Postgres client, which then waits for an answer: Missing, at once.
        let (mut client, mut server) = pair().await;
        client.write_all(SSL_REQUEST).await.unwrap();
        let got = read_header(&mut server, Duration::from_secs(30)).await;
        assert!(matches!(got, Err(ProxyProtocolError::Missing)), "{got:?}");
        // Only the first byte of one, through the slow path too.
        let (mut client, mut server) = pair().await;
        client.write_all(b"\x00").await.unwrap();
        let got = read_in_parts(&mut server).await;
        assert!(matches!(got, Err(ProxyProtocolError::Missing)), "{got:?}");

        // Closed before a byte, and in the middle of a header.
        for sent in [&b""[..], b"PROXY TCP4 10.1", &v2_tcp4()[..20]] {
            let (mut client, mut server) = pair().await;
            client.write_all(sent).await.unwrap();
            drop(client);
            let got = read_header(&mut server, Duration::from_secs(30)).await;
            assert!(matches!(got, Err(ProxyProtocolError::Closed)), "{got:?}");
        }

        // Part of a header, then silence.
        let (mut client, mut server) = pair().await;
        client.write_all(b"PROXY TCP4 10.1").await.unwrap();
        let got = read_header(&mut server, Duration::from_millis(50)).await;
        assert!(
            matches!(got, Err(ProxyProtocolError::Timeout(_))),
            "{got:?}"
        );

        // A malformed header.
        let (mut client, mut server) = pair().await;
        client
            .write_all(b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n")
            .await
            .unwrap();
        let got = read_header(&mut server, Duration::from_secs(30)).await;
        assert!(
            matches!(got, Err(ProxyProtocolError::Malformed(_))),
            "{got:?}"
        );
        drop(client);
    }
}
