//! Postgres wire frames: headers, tags, the few fields routing must read, and the few messages the proxy
//! writes itself. See <https://www.postgresql.org/docs/current/protocol-message-formats.html>.
//!
//! Owns: byte-level framing only. It never touches sockets, never allocates to read a frame, and never
//! decodes row values: frames are forwarded as the bytes that arrived.

pub mod backend;
pub mod frontend;

use thiserror::Error;

/// A frame's tag and total size (tag byte + 4-byte length + body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    pub frame_len: usize,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("invalid message length {len} for message type '{}'", char::from(*tag))]
    BadLength { tag: u8, len: u32 },
    #[error("message of type '{}' is {len} bytes, over proxy.max_message_size ({max} bytes)", char::from(*tag))]
    TooLarge { tag: u8, len: usize, max: usize },
    #[error("invalid frontend message type {tag} ('{}')", char::from(*tag))]
    UnknownFrontendTag { tag: u8 },
    #[error("malformed {what} message: {problem}")]
    Malformed {
        what: &'static str,
        problem: &'static str,
    },
}

/// Reads the frame header at the front of `buf` without consuming or copying anything.
/// `Ok(None)` means "wait for more bytes", which is normal and not an error.
#[inline]
pub fn peek_header(buf: &[u8], max_len: usize) -> Result<Option<Header>, ProtocolError> {
    let Some(head) = buf.get(..5) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if len < 4 {
        return Err(ProtocolError::BadLength { tag: head[0], len });
    }
    let frame_len = 1 + len as usize;
    if frame_len > max_len {
        return Err(ProtocolError::TooLarge {
            tag: head[0],
            len: frame_len,
            max: max_len,
        });
    }
    Ok(Some(Header {
        tag: head[0],
        frame_len,
    }))
}

/// Splits a NUL-terminated string off the front of `buf`: `(string, rest)`.
#[inline]
pub fn cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = memchr::memchr(0, buf)?;
    Some((&buf[..nul], &buf[nul + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_needs_five_bytes() {
        assert_eq!(peek_header(b"Q\0\0\0", 100), Ok(None));
        assert_eq!(
            peek_header(b"Q\0\0\0\x05x", 100),
            Ok(Some(Header {
                tag: b'Q',
                frame_len: 6
            }))
        );
    }

    #[test]
    fn short_length_is_an_error() {
        assert!(matches!(
            peek_header(b"Q\0\0\0\x03", 100),
            Err(ProtocolError::BadLength { .. })
        ));
    }

    #[test]
    fn oversized_is_an_error_before_reading_the_body() {
        assert!(matches!(
            peek_header(b"Q\x7f\xff\xff\xff", 1 << 20),
            Err(ProtocolError::TooLarge { .. })
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut seed = 0x1234_5678u64;
        for _ in 0..20_000 {
            let mut buf = [0u8; 12];
            for b in buf.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            let n = (seed % 13) as usize;
            let _ = peek_header(&buf[..n], 1 << 20);
            let _ = frontend::parse_name(&buf[..n]);
            let _ = frontend::bind_statement(&buf[..n]);
            let _ = frontend::target(&buf[..n]);
            let _ = backend::command_tag(&buf[..n]);
            let _ = backend::error_fields(&buf[..n]);
            let _ = backend::data_row_columns(&buf[..n]);
        }
    }
}
