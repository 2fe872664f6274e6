//! Backend (server → client) messages: tags, peekers for the ones the proxy tracks (ReadyForQuery,
//! CommandComplete, ErrorResponse, ParameterStatus, DataRow of its own control queries), and writers for
//! the ones it sends itself.

use bytes::{BufMut, BytesMut};

use super::cstr;

pub const AUTHENTICATION: u8 = b'R';
pub const BACKEND_KEY_DATA: u8 = b'K';
pub const BIND_COMPLETE: u8 = b'2';
pub const CLOSE_COMPLETE: u8 = b'3';
pub const COMMAND_COMPLETE: u8 = b'C';
pub const COPY_BOTH_RESPONSE: u8 = b'W';
pub const COPY_DATA: u8 = b'd';
pub const COPY_DONE: u8 = b'c';
pub const COPY_IN_RESPONSE: u8 = b'G';
pub const COPY_OUT_RESPONSE: u8 = b'H';
pub const DATA_ROW: u8 = b'D';
pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
pub const ERROR_RESPONSE: u8 = b'E';
pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
pub const NO_DATA: u8 = b'n';
pub const NOTICE_RESPONSE: u8 = b'N';
pub const NOTIFICATION_RESPONSE: u8 = b'A';
pub const PARAMETER_DESCRIPTION: u8 = b't';
pub const PARAMETER_STATUS: u8 = b'S';
pub const PARSE_COMPLETE: u8 = b'1';
pub const PORTAL_SUSPENDED: u8 = b's';
pub const READY_FOR_QUERY: u8 = b'Z';
pub const ROW_DESCRIPTION: u8 = b'T';

/// Transaction status carried by ReadyForQuery.
pub const TX_IDLE: u8 = b'I';
pub const TX_IN_BLOCK: u8 = b'T';
pub const TX_FAILED: u8 = b'E';

/// The command tag of a CommandComplete body, without its NUL.
#[inline]
pub fn command_tag(body: &[u8]) -> &[u8] {
    cstr(body).map(|(t, _)| t).unwrap_or(body)
}

/// `(name, value)` of a ParameterStatus body.
/// The row count at the end of a CommandComplete tag (`INSERT 0 5`, `UPDATE 3`, `SELECT 10`,
/// `COPY 7`, ...), if it has one.
pub fn command_count(body: &[u8]) -> Option<u64> {
    let tag = std::str::from_utf8(command_tag(body)).ok()?;
    let (verb, last) = tag.rsplit_once(' ')?;
    let counted = matches!(
        verb.split(' ').next()?,
        "INSERT" | "UPDATE" | "DELETE" | "SELECT" | "COPY" | "MERGE" | "FETCH" | "MOVE"
    );
    counted.then(|| last.parse().ok()).flatten()
}

/// The tag with its row count replaced by `total` (None when the tag has no count).
pub fn with_count(tag: &[u8], total: u64) -> Option<String> {
    let tag = std::str::from_utf8(tag).ok()?;
    let (verb, _) = tag.rsplit_once(' ')?;
    command_count(&[tag.as_bytes(), b"\0"].concat())?;
    Some(format!("{verb} {total}"))
}

pub fn parameter_status(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (name, rest) = cstr(body)?;
    let (value, _) = cstr(rest)?;
    Some((name, value))
}

/// The fields of an ErrorResponse or NoticeResponse body: `(code, value)` pairs.
pub fn error_fields(body: &[u8]) -> Vec<(u8, &[u8])> {
    let mut fields = Vec::new();
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let Some((value, tail)) = cstr(tail) else {
            break;
        };
        fields.push((code, value));
        rest = tail;
    }
    fields
}

/// One field of an ErrorResponse body (`b'C'` SQLSTATE, `b'M'` message, `b'V'` severity, ...).
pub fn error_field(body: &[u8], code: u8) -> Option<&[u8]> {
    error_fields(body)
        .into_iter()
        .find(|(c, _)| *c == code)
        .map(|(_, v)| v)
}

/// The columns of a DataRow body; `None` for SQL NULL. Only for the proxy's own small control queries.
pub fn data_row_columns(body: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    let count = u16::from_be_bytes(body.get(..2)?.try_into().ok()?) as usize;
    let mut rest = &body[2..];
    let mut cols = Vec::with_capacity(count);
    for _ in 0..count {
        let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        rest = &rest[4..];
        if len < 0 {
            cols.push(None);
        } else {
            let len = len as usize;
            cols.push(Some(rest.get(..len)?));
            rest = &rest[len..];
        }
    }
    Some(cols)
}

fn frame(out: &mut BytesMut, tag: u8, body_len: usize) {
    out.reserve(5 + body_len);
    out.put_u8(tag);
    out.put_u32((4 + body_len) as u32);
}

pub fn write_ready_for_query(out: &mut BytesMut, status: u8) {
    frame(out, READY_FOR_QUERY, 1);
    out.put_u8(status);
}

pub fn write_parse_complete(out: &mut BytesMut) {
    frame(out, PARSE_COMPLETE, 0);
}

pub fn write_close_complete(out: &mut BytesMut) {
    frame(out, CLOSE_COMPLETE, 0);
}

pub fn write_command_complete(out: &mut BytesMut, tag: &str) {
    frame(out, COMMAND_COMPLETE, tag.len() + 1);
    out.put_slice(tag.as_bytes());
    out.put_u8(0);
}

pub fn write_bind_complete(out: &mut BytesMut) {
    out.extend_from_slice(b"2\0\0\0\x04");
}

pub fn write_no_data(out: &mut BytesMut) {
    out.extend_from_slice(b"n\0\0\0\x04");
}

/// ParameterDescription of a statement without parameters.
pub fn write_no_parameters(out: &mut BytesMut) {
    out.extend_from_slice(b"t\0\0\0\x06\0\0");
}

/// RowDescription of one text column.
pub fn write_text_column(out: &mut BytesMut, name: &str) {
    write_text_columns(out, &[name]);
}

/// RowDescription of text columns.
pub fn write_text_columns(out: &mut BytesMut, names: &[&str]) {
    let len = 4 + 2 + names.iter().map(|n| n.len() + 1 + 18).sum::<usize>();
    out.put_u8(ROW_DESCRIPTION);
    out.put_i32(len as i32);
    out.put_i16(names.len() as i16);
    for name in names {
        out.extend_from_slice(name.as_bytes());
        out.put_u8(0);
        out.put_i32(0); // table
        out.put_i16(0); // column
        out.put_i32(25); // text
        out.put_i16(-1);
        out.put_i32(-1);
        out.put_i16(0); // text format
    }
}

/// DataRow of text values (None: NULL).
pub fn write_text_values<S: AsRef<str>>(out: &mut BytesMut, values: &[Option<S>]) {
    let len = 4
        + 2
        + values
            .iter()
            .map(|v| 4 + v.as_ref().map_or(0, |v| v.as_ref().len()))
            .sum::<usize>();
    out.put_u8(DATA_ROW);
    out.put_i32(len as i32);
    out.put_i16(values.len() as i16);
    for v in values {
        match v {
            Some(v) => {
                out.put_i32(v.as_ref().len() as i32);
                out.extend_from_slice(v.as_ref().as_bytes());
            }
            None => out.put_i32(-1),
        }
    }
}

/// NoticeResponse with a message (severity NOTICE).
pub fn write_notice(out: &mut BytesMut, message: &str) {
    let body = 2 * (6 + 2) + 5 + 2 + message.len() + 2 + 1;
    frame(out, NOTICE_RESPONSE, body);
    for (field, value) in [
        (b'S', "NOTICE"),
        (b'V', "NOTICE"),
        (b'C', "00000"),
        (b'M', message),
    ] {
        out.put_u8(field);
        out.put_slice(value.as_bytes());
        out.put_u8(0);
    }
    out.put_u8(0);
}

/// DataRow of one text value.
pub fn write_text_row(out: &mut BytesMut, value: &str) {
    write_text_values(out, &[Some(value)]);
}

pub fn write_parameter_status(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    frame(out, PARAMETER_STATUS, name.len() + value.len() + 2);
    out.put_slice(name);
    out.put_u8(0);
    out.put_slice(value);
    out.put_u8(0);
}

pub fn write_backend_key_data(out: &mut BytesMut, pid: i32, key: i32) {
    frame(out, BACKEND_KEY_DATA, 8);
    out.put_i32(pid);
    out.put_i32(key);
}

pub fn write_authentication_ok(out: &mut BytesMut) {
    frame(out, AUTHENTICATION, 4);
    out.put_i32(0);
}

/// NegotiateProtocolVersion: the newest minor version we speak (3.0) and the `_pq_.` options we ignore.
pub fn write_negotiate_protocol_version(out: &mut BytesMut, minor: i32, unrecognized: &[String]) {
    let body: usize = 8 + unrecognized.iter().map(|o| o.len() + 1).sum::<usize>();
    frame(out, NEGOTIATE_PROTOCOL_VERSION, body);
    out.put_i32(minor);
    out.put_i32(unrecognized.len() as i32);
    for o in unrecognized {
        out.put_slice(o.as_bytes());
        out.put_u8(0);
    }
}

/// Severity of an ErrorResponse the proxy writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

/// Writes an ErrorResponse with severity, SQLSTATE, message and an optional hint, the fields libpq shows.
pub fn write_error(
    out: &mut BytesMut,
    severity: Severity,
    code: &str,
    message: &str,
    hint: Option<&str>,
) {
    let sev = match severity {
        Severity::Error => "ERROR",
        Severity::Fatal => "FATAL",
    };
    let mut body = 0;
    for part in [sev, sev, code, message] {
        body += part.len() + 2;
    }
    if let Some(h) = hint {
        body += h.len() + 2;
    }
    body += 1;
    frame(out, ERROR_RESPONSE, body);
    for (field, value) in [(b'S', sev), (b'V', sev), (b'C', code), (b'M', message)] {
        out.put_u8(field);
        out.put_slice(value.as_bytes());
        out.put_u8(0);
    }
    if let Some(h) = hint {
        out.put_u8(b'H');
        out.put_slice(h.as_bytes());
        out.put_u8(0);
    }
    out.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_round_trip() {
        let mut out = BytesMut::new();
        write_error(&mut out, Severity::Error, "08006", "gone", Some("retry"));
        let body = &out[5..];
        assert_eq!(error_field(body, b'C'), Some(&b"08006"[..]));
        assert_eq!(error_field(body, b'M'), Some(&b"gone"[..]));
        assert_eq!(error_field(body, b'H'), Some(&b"retry"[..]));
        assert_eq!(error_field(body, b'S'), Some(&b"ERROR"[..]));
        assert_eq!(
            u32::from_be_bytes(out[1..5].try_into().unwrap()) as usize,
            out.len() - 1
        );
    }

    #[test]
    fn data_row_with_null() {
        let body = b"\x00\x02\x00\x00\x00\x01a\xff\xff\xff\xff";
        assert_eq!(data_row_columns(body).unwrap(), vec![Some(&b"a"[..]), None]);
        assert_eq!(data_row_columns(b"\x00\x02\x00\x00\x00\x09a"), None);
    }
}
