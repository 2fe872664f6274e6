//! Frontend (client → server) messages: tags, zero-copy peekers for the fields the proxy reads, and
//! writers for the frames it rewrites (a statement name renamed, a Parse injected).
//!
//! Peekers take the frame *body* (after the 5-byte header) and return borrowed slices.

use bytes::{BufMut, BytesMut};

use super::{ProtocolError, cstr};

pub const BIND: u8 = b'B';
pub const CLOSE: u8 = b'C';
pub const COPY_DATA: u8 = b'd';
pub const COPY_DONE: u8 = b'c';
pub const COPY_FAIL: u8 = b'f';
pub const DESCRIBE: u8 = b'D';
pub const EXECUTE: u8 = b'E';
pub const FLUSH: u8 = b'H';
pub const FUNCTION_CALL: u8 = b'F';
pub const PARSE: u8 = b'P';
pub const QUERY: u8 = b'Q';
pub const SYNC: u8 = b'S';
pub const TERMINATE: u8 = b'X';

/// The tags a client may send once the startup is over. Anything else is a protocol violation, as in
/// Postgres (`postgres.c`, "invalid frontend message type").
#[inline]
pub fn is_known_tag(tag: u8) -> bool {
    matches!(
        tag,
        BIND | CLOSE
            | COPY_DATA
            | COPY_DONE
            | COPY_FAIL
            | DESCRIBE
            | EXECUTE
            | FLUSH
            | FUNCTION_CALL
            | PARSE
            | QUERY
            | SYNC
            | TERMINATE
    )
}

const MALFORMED_NAME: ProtocolError = ProtocolError::Malformed {
    what: "frontend",
    problem: "a name is not NUL-terminated",
};

/// Parse: `(statement name, rest)` where rest is `query\0 i16 n, n × oid`.
#[inline]
pub fn parse_name(body: &[u8]) -> Result<(&[u8], &[u8]), ProtocolError> {
    cstr(body).ok_or(MALFORMED_NAME)
}

/// The query text at the front of a Parse's rest (or of a Query body), without its NUL.
#[inline]
pub fn query_text(rest: &[u8]) -> &[u8] {
    cstr(rest).map(|(q, _)| q).unwrap_or(rest)
}

/// `(portal, statement, rest)` of a Bind.
pub type BindNames<'a> = (&'a [u8], &'a [u8], &'a [u8]);

/// Bind: `(portal, statement, rest)` where rest starts at the parameter format codes.
#[inline]
pub fn bind_statement(body: &[u8]) -> Result<BindNames<'_>, ProtocolError> {
    let (portal, rest) = cstr(body).ok_or(MALFORMED_NAME)?;
    let (stmt, rest) = cstr(rest).ok_or(MALFORMED_NAME)?;
    Ok((portal, stmt, rest))
}

/// Describe / Close: `(b'S' or b'P', name)`.
#[inline]
pub fn target(body: &[u8]) -> Result<(u8, &[u8]), ProtocolError> {
    let (&kind, rest) = body.split_first().ok_or(ProtocolError::Malformed {
        what: "Describe/Close",
        problem: "empty body",
    })?;
    let (name, _) = cstr(rest).ok_or(MALFORMED_NAME)?;
    Ok((kind, name))
}

fn frame(out: &mut BytesMut, tag: u8, body_len: usize) {
    out.reserve(5 + body_len);
    out.put_u8(tag);
    out.put_u32((4 + body_len) as u32);
}

/// Writes `Parse(name, rest)`.
pub fn write_parse(out: &mut BytesMut, name: &[u8], rest: &[u8]) {
    frame(out, PARSE, name.len() + 1 + rest.len());
    out.put_slice(name);
    out.put_u8(0);
    out.put_slice(rest);
}

/// Writes `Bind(portal, statement, rest)`.
pub fn write_bind(out: &mut BytesMut, portal: &[u8], stmt: &[u8], rest: &[u8]) {
    frame(out, BIND, portal.len() + stmt.len() + 2 + rest.len());
    out.put_slice(portal);
    out.put_u8(0);
    out.put_slice(stmt);
    out.put_u8(0);
    out.put_slice(rest);
}

/// Where a Bind's result format codes start in its rest (after its names), and the format of
/// each of `columns` result columns they give (none: text; one: all). None when malformed.
pub fn bind_results(rest: &[u8], columns: usize) -> Option<(usize, Vec<i16>)> {
    let u16_at = |at: usize| -> Option<usize> {
        Some(u16::from_be_bytes([*rest.get(at)?, *rest.get(at + 1)?]) as usize)
    };
    let mut at = 2 + 2 * u16_at(0)?;
    let nparams = u16_at(at)?;
    at += 2;
    for _ in 0..nparams {
        let len = i32::from_be_bytes(rest.get(at..at + 4)?.try_into().ok()?);
        at += 4 + usize::try_from(len).unwrap_or(0);
    }
    let n = u16_at(at)?;
    let code = |i: usize| -> Option<i16> {
        Some(i16::from_be_bytes([
            *rest.get(at + 2 + 2 * i)?,
            *rest.get(at + 3 + 2 * i)?,
        ]))
    };
    let formats = match n {
        0 => vec![0; columns],
        1 => vec![code(0)?; columns],
        _ => (0..columns)
            .map(|i| code(i).or(Some(0)))
            .collect::<Option<Vec<_>>>()?,
    };
    Some((at, formats))
}

/// The number of parameter values in a Bind's rest (after its names).
pub fn bind_param_count(rest: &[u8]) -> Option<usize> {
    let nformats = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]) as usize;
    let at = 2 + 2 * nformats;
    Some(u16::from_be_bytes([*rest.get(at)?, *rest.get(at + 1)?]) as usize)
}

/// Execute: `(portal, max_rows)`.
pub fn execute_target(body: &[u8]) -> Option<(&[u8], i32)> {
    let (portal, rest) = cstr(body)?;
    Some((portal, i32::from_be_bytes(rest.get(..4)?.try_into().ok()?)))
}

/// Writes `Execute(portal, max_rows)`.
pub fn write_execute(out: &mut BytesMut, portal: &[u8], max_rows: i32) {
    frame(out, EXECUTE, portal.len() + 1 + 4);
    out.put_slice(portal);
    out.put_u8(0);
    out.put_i32(max_rows);
}

/// The rest of a Bind (after its names) keeping only parameters `keep` (1-based, in the new
/// order): their format codes and values, the result formats as they were. None when malformed.
pub fn bind_rest_subset(rest: &[u8], keep: &[usize]) -> Option<BytesMut> {
    let u16_at = |at: usize| -> Option<usize> {
        Some(u16::from_be_bytes([*rest.get(at)?, *rest.get(at + 1)?]) as usize)
    };
    let nformats = u16_at(0)?;
    let formats: Vec<&[u8]> = (0..nformats)
        .map(|i| rest.get(2 + 2 * i..4 + 2 * i))
        .collect::<Option<_>>()?;
    let mut at = 2 + 2 * nformats;
    let nparams = u16_at(at)?;
    at += 2;
    let mut params = Vec::with_capacity(nparams);
    for _ in 0..nparams {
        let len = i32::from_be_bytes(rest.get(at..at + 4)?.try_into().ok()?);
        let end = at + 4 + usize::try_from(len).unwrap_or(0);
        params.push(rest.get(at..end)?);
        at = end;
    }
    let results = rest.get(at..)?;
    let mut out = BytesMut::new();
    match nformats {
        0 | 1 => {
            out.put_u16(nformats as u16);
            for f in &formats {
                out.put_slice(f);
            }
        }
        _ => {
            out.put_u16(keep.len() as u16);
            for &k in keep {
                out.put_slice(formats.get(k - 1)?);
            }
        }
    }
    out.put_u16(keep.len() as u16);
    for &k in keep {
        out.put_slice(params.get(k.checked_sub(1)?)?);
    }
    out.put_slice(results);
    Some(out)
}

/// The rest of a Parse (`query\0`, parameter types) for `query` with the parameter types of the
/// original rest `rest` kept for parameters `keep` (1-based; unspecified where it had none).
pub fn parse_rest_subset(rest: &[u8], query: &str, keep: &[usize]) -> BytesMut {
    let after = rest
        .iter()
        .position(|&b| b == 0)
        .map_or(&[][..], |i| &rest[i + 1..]);
    let n = after
        .get(..2)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]) as usize);
    let oid = |k: usize| -> u32 {
        (k >= 1 && k <= n)
            .then(|| after.get(2 + 4 * (k - 1)..6 + 4 * (k - 1)))
            .flatten()
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut out = BytesMut::with_capacity(query.len() + 3 + 4 * keep.len());
    out.put_slice(query.as_bytes());
    out.put_u8(0);
    out.put_u16(keep.len() as u16);
    for &k in keep {
        out.put_u32(oid(k));
    }
    out
}

/// Writes a Describe or Close of `kind` (`b'S'`/`b'P'`) for `name`.
pub fn write_target(out: &mut BytesMut, tag: u8, kind: u8, name: &[u8]) {
    frame(out, tag, 1 + name.len() + 1);
    out.put_u8(kind);
    out.put_slice(name);
    out.put_u8(0);
}

/// Writes a simple `Query`.
pub fn write_query(out: &mut BytesMut, sql: &str) {
    frame(out, QUERY, sql.len() + 1);
    out.put_slice(sql.as_bytes());
    out.put_u8(0);
}

/// Writes `Sync`.
pub fn write_sync(out: &mut BytesMut) {
    frame(out, SYNC, 0);
}

/// Writes `Terminate`.
pub fn write_terminate(out: &mut BytesMut) {
    frame(out, TERMINATE, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_round_trip() {
        let mut out = BytesMut::new();
        write_bind(&mut out, b"", b"stmt1", b"\0\0\0\0\0\0");
        let (portal, stmt, rest) = bind_statement(&out[5..]).unwrap();
        assert_eq!(
            (portal, stmt, rest),
            (&b""[..], &b"stmt1"[..], &b"\0\0\0\0\0\0"[..])
        );
        assert_eq!(
            u32::from_be_bytes(out[1..5].try_into().unwrap()) as usize,
            out.len() - 1
        );
    }

    #[test]
    fn parse_round_trip() {
        let mut out = BytesMut::new();
        write_parse(&mut out, b"s", b"select 1\0\0\0");
        let (name, rest) = parse_name(&out[5..]).unwrap();
        assert_eq!(name, b"s");
        assert_eq!(query_text(rest), b"select 1");
    }

    #[test]
    fn target_needs_a_kind() {
        assert!(target(b"").is_err());
        assert_eq!(target(b"Sabc\0").unwrap(), (b'S', &b"abc"[..]));
    }
}

/// The parameter `n` (1-based) of a Bind, from the rest after its names (see [`bind_statement`]):
/// `Some((binary, value))`, value None for NULL. None when the Bind is malformed or has fewer
/// parameters.
pub fn bind_param(rest: &[u8], n: usize) -> Option<(bool, Option<&[u8]>)> {
    let u16_at = |b: &[u8], at: usize| -> Option<usize> {
        Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]) as usize)
    };
    let nformats = u16_at(rest, 0)?;
    let formats = rest.get(2..2 + 2 * nformats)?;
    let mut at = 2 + 2 * nformats;
    let nparams = u16_at(rest, at)?;
    at += 2;
    if n == 0 || n > nparams {
        return None;
    }
    let binary = match nformats {
        0 => false,
        1 => u16_at(formats, 0)? == 1,
        _ => u16_at(formats, 2 * (n - 1))? == 1,
    };
    for i in 1..=n {
        let len = i32::from_be_bytes(rest.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        let value = if len < 0 {
            None
        } else {
            let v = rest.get(at..at + len as usize)?;
            at += len as usize;
            Some(v)
        };
        if i == n {
            return Some((binary, value));
        }
    }
    None
}

#[cfg(test)]
mod bind_tests {
    #[test]
    fn params() {
        // 2 format codes (text, binary), 2 params: "42", 8-byte 7.
        let mut rest = vec![0, 2, 0, 0, 0, 1, 0, 2];
        rest.extend_from_slice(&2i32.to_be_bytes());
        rest.extend_from_slice(b"42");
        rest.extend_from_slice(&8i32.to_be_bytes());
        rest.extend_from_slice(&7i64.to_be_bytes());
        rest.extend_from_slice(&[0, 0]);
        assert_eq!(super::bind_param(&rest, 1), Some((false, Some(&b"42"[..]))));
        assert_eq!(
            super::bind_param(&rest, 2),
            Some((true, Some(&7i64.to_be_bytes()[..])))
        );
        assert_eq!(super::bind_param(&rest, 3), None);
        let null = [0u8, 0, 0, 1, 255, 255, 255, 255, 0, 0];
        assert_eq!(super::bind_param(&null, 1), Some((false, None)));
        // Keep parameter 2 only: its format code and value.
        let sub = super::bind_rest_subset(&rest, &[2]).unwrap();
        assert_eq!(
            super::bind_param(&sub, 1),
            Some((true, Some(&7i64.to_be_bytes()[..])))
        );
        assert_eq!(super::bind_param(&sub, 2), None);
        let parse = super::parse_rest_subset(b"q\0\0\x02\0\0\0\x14\0\0\0\x19", "x", &[2, 3]);
        assert_eq!(&parse[..], b"x\0\0\x02\0\0\0\x19\0\0\0\0");
    }
}
