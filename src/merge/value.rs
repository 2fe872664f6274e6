//! Decoding, comparing, grouping and encoding single column values of the
//! types shardgate can merge, in Postgres's text (0) and binary (1) formats.
//!
//! Text formats are those of a Postgres 15 server with DateStyle ISO,
//! bytea_output hex and extra_float_digits > 0 (the default 1); any other
//! DateStyle gives `Malformed`. Decoding allocates nothing: text-like values
//! borrow the row's bytes.

use std::cmp::Ordering;
use std::fmt;

use super::numeric::Numeric;
use DecodeError::{Bad, Other};

pub const BOOL: u32 = 16;
pub const BYTEA: u32 = 17;
pub const CHAR: u32 = 18;
pub const NAME: u32 = 19;
pub const INT8: u32 = 20;
pub const INT2: u32 = 21;
pub const INT4: u32 = 23;
pub const TEXT: u32 = 25;
pub const OID: u32 = 26;
pub const FLOAT4: u32 = 700;
pub const FLOAT8: u32 = 701;
pub const BPCHAR: u32 = 1042;
pub const VARCHAR: u32 = 1043;
pub const DATE: u32 = 1082;
pub const TIME: u32 = 1083;
pub const TIMESTAMP: u32 = 1114;
pub const TIMESTAMPTZ: u32 = 1184;
pub const NUMERIC: u32 = 1700;
pub const UUID: u32 = 2950;

/// Text format code.
pub const FORMAT_TEXT: i16 = 0;
/// Binary format code.
pub const FORMAT_BINARY: i16 = 1;

const USECS_PER_SEC: i64 = 1_000_000;
const USECS_PER_DAY: i64 = 86_400 * USECS_PER_SEC;
/// Julian day of 2000-01-01, Postgres's epoch for date and timestamp.
const POSTGRES_EPOCH_JDATE: i64 = 2_451_545;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    #[error("values of type {} cannot be compared by shardgate", TypeLabel(*.oid))]
    Unsupported { oid: u32 },
    #[error(
        "shardgate could not decode a value of type {} (DateStyle must be ISO, bytea_output hex)",
        TypeLabel(*.oid)
    )]
    Malformed { oid: u32 },
    #[error("unknown format code {format} (expected 0 for text or 1 for binary)")]
    BadFormat { format: i16 },
    #[error("numeric value has too many digits for shardgate to merge exactly")]
    TooLarge,
    #[error("division by zero")]
    DivisionByZero,
}

/// The SQL name of a type, for messages.
pub fn type_name(oid: u32) -> Option<&'static str> {
    Some(match oid {
        BOOL => "boolean",
        BYTEA => "bytea",
        CHAR => "\"char\"",
        NAME => "name",
        INT8 => "bigint",
        INT2 => "smallint",
        INT4 => "integer",
        TEXT => "text",
        OID => "oid",
        FLOAT4 => "real",
        FLOAT8 => "double precision",
        BPCHAR => "character",
        VARCHAR => "character varying",
        DATE => "date",
        TIME => "time without time zone",
        TIMESTAMP => "timestamp without time zone",
        TIMESTAMPTZ => "timestamp with time zone",
        NUMERIC => "numeric",
        UUID => "uuid",
        114 => "json",
        142 => "xml",
        790 => "money",
        869 => "inet",
        650 => "cidr",
        829 => "macaddr",
        1186 => "interval",
        1266 => "time with time zone",
        1560 => "bit",
        1562 => "bit varying",
        3802 => "jsonb",
        _ => return None,
    })
}

struct TypeLabel(u32);

impl fmt::Display for TypeLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match type_name(self.0) {
            Some(name) => f.write_str(name),
            None => write!(f, "oid {}", self.0),
        }
    }
}

/// One decoded, non-NULL column value.
///
/// `Int` holds int2/int4/int8/oid/"char" (the latter as its unsigned byte),
/// `Float` float4 (exactly widened) and float8, `Days` a date (days since
/// 2000-01-01, `i32::MIN`/`MAX` for -infinity/infinity), `Micros` a time
/// (microseconds since midnight) or a timestamp/timestamptz (microseconds
/// since 2000-01-01 UTC, `i64::MIN`/`MAX` for the infinities). `Text` is
/// text/varchar/name, and bpchar without its trailing spaces. A bytea is
/// `Bytea` (raw bytes, binary format) or `ByteaHex` (the lowercase hex digits
/// after `\x`, text format); the two compare by the bytes they stand for.
///
/// Equality and order are Postgres's btree order for the type ([`compare`]).
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Int(i64),
    Float(f64),
    Num(Numeric),
    Bool(bool),
    Text(&'a [u8]),
    Bytea(&'a [u8]),
    ByteaHex(&'a [u8]),
    Uuid([u8; 16]),
    Days(i32),
    Micros(i64),
}

/// Whether shardgate can decode, compare and group values of this type.
pub fn supported(oid: u32) -> bool {
    matches!(
        oid,
        INT2 | INT4
            | INT8
            | OID
            | CHAR
            | FLOAT4
            | FLOAT8
            | NUMERIC
            | TEXT
            | VARCHAR
            | BPCHAR
            | NAME
            | BOOL
            | BYTEA
            | DATE
            | TIME
            | TIMESTAMP
            | TIMESTAMPTZ
            | UUID
    )
}

/// Decodes one non-NULL column value of type `oid` sent in `format`.
pub fn decode(oid: u32, format: i16, raw: &[u8]) -> Result<Value<'_>, ValueError> {
    if !supported(oid) {
        return Err(ValueError::Unsupported { oid });
    }
    let v = match format {
        FORMAT_TEXT => decode_text(oid, raw),
        FORMAT_BINARY => decode_binary(oid, raw),
        _ => return Err(ValueError::BadFormat { format }),
    };
    v.map_err(|e| match e {
        Bad => ValueError::Malformed { oid },
        Other(e) => e,
    })
}

/// Internal decode failure: `Bad` becomes `Malformed` with the column's oid.
enum DecodeError {
    Bad,
    Other(ValueError),
}

impl From<ValueError> for DecodeError {
    fn from(e: ValueError) -> DecodeError {
        match e {
            ValueError::Malformed { .. } => Bad,
            e => Other(e),
        }
    }
}

type DResult<T> = Result<T, DecodeError>;

fn ok_or_bad<T>(v: Option<T>) -> DResult<T> {
    v.ok_or(Bad)
}

fn decode_text(oid: u32, raw: &[u8]) -> DResult<Value<'_>> {
    Ok(match oid {
        INT2 => Value::Int(ok_or_bad(
            parse_int(raw).filter(|v| i16::try_from(*v).is_ok()),
        )?),
        INT4 => Value::Int(ok_or_bad(
            parse_int(raw).filter(|v| i32::try_from(*v).is_ok()),
        )?),
        INT8 => Value::Int(ok_or_bad(parse_int(raw))?),
        OID => Value::Int(ok_or_bad(
            parse_int(raw).filter(|v| u32::try_from(*v).is_ok() && raw[0] != b'-'),
        )?),
        CHAR => Value::Int(i64::from(ok_or_bad(parse_char(raw))?)),
        FLOAT4 => Value::Float(f64::from(ok_or_bad(parse_float::<f32>(raw))?)),
        FLOAT8 => Value::Float(ok_or_bad(parse_float::<f64>(raw))?),
        NUMERIC => Value::Num(Numeric::from_text(raw)?),
        TEXT | VARCHAR | NAME => Value::Text(raw),
        BPCHAR => Value::Text(trim_bpchar(raw)),
        BOOL => match raw {
            b"t" => Value::Bool(true),
            b"f" => Value::Bool(false),
            _ => return Err(Bad),
        },
        BYTEA => {
            let hex = ok_or_bad(raw.strip_prefix(b"\\x"))?;
            let lower_hex = |b: &u8| matches!(b, b'0'..=b'9' | b'a'..=b'f');
            if hex.len() % 2 != 0 || !hex.iter().all(lower_hex) {
                return Err(Bad);
            }
            Value::ByteaHex(hex)
        }
        UUID => Value::Uuid(ok_or_bad(parse_uuid(raw))?),
        DATE => Value::Days(ok_or_bad(parse_date(raw))?),
        TIME => Value::Micros(ok_or_bad(parse_time_only(raw))?),
        TIMESTAMP => Value::Micros(ok_or_bad(parse_timestamp(raw, false))?),
        TIMESTAMPTZ => Value::Micros(ok_or_bad(parse_timestamp(raw, true))?),
        _ => return Err(Other(ValueError::Unsupported { oid })),
    })
}

fn fixed<const N: usize>(raw: &[u8]) -> DResult<[u8; N]> {
    raw.try_into().map_err(|_| Bad)
}

fn decode_binary(oid: u32, raw: &[u8]) -> DResult<Value<'_>> {
    Ok(match oid {
        INT2 => Value::Int(i16::from_be_bytes(fixed(raw)?).into()),
        INT4 => Value::Int(i32::from_be_bytes(fixed(raw)?).into()),
        INT8 => Value::Int(i64::from_be_bytes(fixed(raw)?)),
        OID => Value::Int(u32::from_be_bytes(fixed(raw)?).into()),
        CHAR => Value::Int(u8::from_be_bytes(fixed(raw)?).into()),
        FLOAT4 => Value::Float(f32::from_be_bytes(fixed(raw)?).into()),
        FLOAT8 => Value::Float(f64::from_be_bytes(fixed(raw)?)),
        NUMERIC => Value::Num(Numeric::from_binary(raw)?),
        TEXT | VARCHAR | NAME => Value::Text(raw),
        BPCHAR => Value::Text(trim_bpchar(raw)),
        BOOL => Value::Bool(u8::from_be_bytes(fixed(raw)?) != 0),
        BYTEA => Value::Bytea(raw),
        UUID => Value::Uuid(fixed(raw)?),
        DATE => Value::Days(i32::from_be_bytes(fixed(raw)?)),
        TIME | TIMESTAMP | TIMESTAMPTZ => Value::Micros(i64::from_be_bytes(fixed(raw)?)),
        _ => return Err(Other(ValueError::Unsupported { oid })),
    })
}

fn trim_bpchar(raw: &[u8]) -> &[u8] {
    let end = raw.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
    &raw[..end]
}

fn parse_int(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.split_first()? {
        (b'-', r) => (true, r),
        (b'+', r) => (false, r),
        _ => (false, s),
    };
    if digits.is_empty() {
        return None;
    }
    // Accumulate negatively so that i64::MIN parses.
    let mut v: i64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_sub(i64::from(b - b'0'))?;
    }
    if neg { Some(v) } else { v.checked_neg() }
}

/// "char" as charout prints it: empty for 0, `\ooo` for bytes >= 128.
fn parse_char(s: &[u8]) -> Option<u8> {
    match s {
        [] => Some(0),
        [c] => Some(*c),
        [b'\\', a, b, c] => {
            let oct = |d: &u8| matches!(d, b'0'..=b'7').then(|| u16::from(d - b'0'));
            u8::try_from(oct(a)? * 64 + oct(b)? * 8 + oct(c)?).ok()
        }
        _ => None,
    }
}

fn parse_float<F: std::str::FromStr>(s: &[u8]) -> Option<F> {
    let s = std::str::from_utf8(s).ok()?;
    // Rust also parses "inf"/"nan" spellings; Postgres's are these.
    match s {
        "NaN" => "NaN".parse().ok(),
        "Infinity" | "-Infinity" => s.parse().ok(),
        _ if s
            .bytes()
            .any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E') =>
        {
            None
        }
        _ => s.parse().ok(),
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn parse_uuid(s: &[u8]) -> Option<[u8; 16]> {
    if s.len() != 36 || [8, 13, 18, 23].iter().any(|&i| s[i] != b'-') {
        return None;
    }
    let mut out = [0u8; 16];
    let mut hex = s.iter().filter(|&&b| b != b'-');
    for o in &mut out {
        *o = hex_val(*hex.next()?)? * 16 + hex_val(*hex.next()?)?;
    }
    Some(out)
}

/// A cursor over ASCII date/time text.
struct Cur<'a> {
    s: &'a [u8],
}

impl Cur<'_> {
    fn eat(&mut self, c: u8) -> Option<()> {
        let (&f, rest) = self.s.split_first()?;
        (f == c).then(|| self.s = rest)
    }

    /// Between `min` and `max` digits, as a number.
    fn digits(&mut self, min: usize, max: usize) -> Option<i64> {
        let n = self.s.iter().take_while(|b| b.is_ascii_digit()).count();
        if n < min || n > max {
            return None;
        }
        let v = self.s[..n]
            .iter()
            .fold(0i64, |v, &b| v * 10 + i64::from(b - b'0'));
        self.s = &self.s[n..];
        Some(v)
    }
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

/// Postgres's date2j.
fn date2j(year: i64, month: i64, day: i64) -> i64 {
    let (y, m) = if month > 2 {
        (year + 4800, month + 1)
    } else {
        (year + 4799, month + 13)
    };
    let century = y / 100;
    y * 365 - 32167 + y / 4 - century + century / 4 + 7834 * m / 256 + day
}

/// Parses `YYYY-MM-DD` (year of 4 to 7 digits); returns days since
/// 2000-01-01, given whether the value carried a " BC" suffix.
fn parse_ymd(c: &mut Cur<'_>, bc: bool) -> Option<i64> {
    let year = c.digits(4, 7)?;
    c.eat(b'-')?;
    let month = c.digits(2, 2)?;
    c.eat(b'-')?;
    let day = c.digits(2, 2)?;
    if bc && year == 0 {
        return None;
    }
    let year = if bc { 1 - year } else { year };
    let mdays = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > mdays {
        return None;
    }
    Some(date2j(year, month, day) - POSTGRES_EPOCH_JDATE)
}

/// Parses `HH:MM:SS[.ffffff]` into microseconds since midnight.
fn parse_hms(c: &mut Cur<'_>) -> Option<i64> {
    let h = c.digits(2, 2)?;
    c.eat(b':')?;
    let m = c.digits(2, 2)?;
    c.eat(b':')?;
    let s = c.digits(2, 2)?;
    let mut frac = 0;
    if c.eat(b'.').is_some() {
        let start = c.s.len();
        frac = c.digits(1, 6)?;
        for _ in 0..6 - (start - c.s.len()) {
            frac *= 10;
        }
    }
    if h > 24 || m > 59 || s > 59 || (h == 24 && (m, s, frac) != (0, 0, 0)) {
        return None;
    }
    Some(((h * 60 + m) * 60 + s) * USECS_PER_SEC + frac)
}

fn strip_bc(s: &[u8]) -> (&[u8], bool) {
    match s.strip_suffix(b" BC") {
        Some(rest) => (rest, true),
        None => (s, false),
    }
}

fn parse_date(s: &[u8]) -> Option<i32> {
    match s {
        b"infinity" => return Some(i32::MAX),
        b"-infinity" => return Some(i32::MIN),
        _ => {}
    }
    let (s, bc) = strip_bc(s);
    let mut c = Cur { s };
    let days = parse_ymd(&mut c, bc)?;
    if !c.s.is_empty() {
        return None;
    }
    i32::try_from(days)
        .ok()
        .filter(|&d| d != i32::MIN && d != i32::MAX)
}

fn parse_time_only(s: &[u8]) -> Option<i64> {
    let mut c = Cur { s };
    let t = parse_hms(&mut c)?;
    c.s.is_empty().then_some(t)
}

/// `YYYY-MM-DD HH:MM:SS[.f][+HH[:MM[:SS]]][ BC]` into microseconds since
/// 2000-01-01 (UTC when `with_tz`).
fn parse_timestamp(s: &[u8], with_tz: bool) -> Option<i64> {
    match s {
        b"infinity" => return Some(i64::MAX),
        b"-infinity" => return Some(i64::MIN),
        _ => {}
    }
    let (s, bc) = strip_bc(s);
    let mut c = Cur { s };
    let days = parse_ymd(&mut c, bc)?;
    c.eat(b' ')?;
    let time = parse_hms(&mut c)?;
    let mut offset_secs = 0;
    if with_tz {
        let sign = match c.s.first()? {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        c.s = &c.s[1..];
        let h = c.digits(2, 2)?;
        let mut m = 0;
        let mut sec = 0;
        if c.eat(b':').is_some() {
            m = c.digits(2, 2)?;
            if c.eat(b':').is_some() {
                sec = c.digits(2, 2)?;
            }
        }
        if m > 59 || sec > 59 {
            return None;
        }
        offset_secs = sign * (h * 3600 + m * 60 + sec);
    }
    if !c.s.is_empty() {
        return None;
    }
    let micros = days
        .checked_mul(USECS_PER_DAY)?
        .checked_add(time)?
        .checked_sub(offset_secs * USECS_PER_SEC)?;
    (micros != i64::MIN && micros != i64::MAX).then_some(micros)
}

fn rank(v: &Value<'_>) -> u8 {
    match v {
        Value::Int(_) => 0,
        Value::Float(_) => 1,
        Value::Num(_) => 2,
        Value::Bool(_) => 3,
        Value::Text(_) => 4,
        Value::Bytea(_) | Value::ByteaHex(_) => 5,
        Value::Uuid(_) => 6,
        Value::Days(_) => 7,
        Value::Micros(_) => 8,
    }
}

/// Postgres's float order: NaN equals NaN and sorts above everything,
/// -0 equals 0.
fn cmp_float(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// The bytes a lowercase-hex string stands for (validated by `decode`).
fn hex_bytes(hex: &[u8]) -> impl Iterator<Item = u8> + '_ {
    hex.chunks_exact(2)
        .map(|p| hex_val(p[0]).unwrap_or(0) * 16 + hex_val(p[1]).unwrap_or(0))
}

/// Postgres's btree order for two values of the same column type. Values of
/// different kinds (never both in one column) order by kind.
pub fn compare(a: &Value<'_>, b: &Value<'_>) -> Ordering {
    use Value::*;
    match (a, b) {
        (Int(x), Int(y)) => x.cmp(y),
        (Float(x), Float(y)) => cmp_float(*x, *y),
        (Num(x), Num(y)) => x.compare(y),
        (Bool(x), Bool(y)) => x.cmp(y),
        (Text(x), Text(y)) | (Bytea(x), Bytea(y)) => x.cmp(y),
        // Lowercase hex orders as the bytes it stands for.
        (ByteaHex(x), ByteaHex(y)) => x.cmp(y),
        (ByteaHex(x), Bytea(y)) => hex_bytes(x).cmp(y.iter().copied()),
        (Bytea(x), ByteaHex(y)) => x.iter().copied().cmp(hex_bytes(y)),
        (Uuid(x), Uuid(y)) => x.cmp(y),
        (Days(x), Days(y)) => x.cmp(y),
        (Micros(x), Micros(y)) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

impl PartialEq for Value<'_> {
    fn eq(&self, other: &Self) -> bool {
        compare(self, other) == Ordering::Equal
    }
}

impl Eq for Value<'_> {}

impl PartialOrd for Value<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Value<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(self, other)
    }
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    // Column values are below 1 GB; saturate rather than panic.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
}

/// Appends a key for `v`: values equal under Postgres `=` append identical
/// bytes, unequal ones differ. Keys are self-delimiting for a known column
/// type (fixed width, or a 4-byte length prefix) and do not depend on the
/// format the value came in.
pub fn append_key(v: &Value<'_>, out: &mut Vec<u8>) {
    match v {
        Value::Int(i) => out.extend_from_slice(&i.to_be_bytes()),
        Value::Float(f) => {
            let canon = if f.is_nan() {
                f64::NAN
            } else if *f == 0.0 {
                0.0
            } else {
                *f
            };
            out.extend_from_slice(&canon.to_bits().to_be_bytes());
        }
        Value::Num(n) => out.extend_from_slice(&n.normalized_key()),
        Value::Bool(b) => out.push(u8::from(*b)),
        Value::Text(s) | Value::Bytea(s) => {
            push_len(out, s.len());
            out.extend_from_slice(s);
        }
        Value::ByteaHex(h) => {
            push_len(out, h.len() / 2);
            out.extend(hex_bytes(h));
        }
        Value::Uuid(u) => out.extend_from_slice(u),
        Value::Days(d) => out.extend_from_slice(&d.to_be_bytes()),
        Value::Micros(m) => out.extend_from_slice(&m.to_be_bytes()),
    }
}

/// Appends a grouping key for one non-NULL column value (see
/// [`append_key`]). Types shardgate does not decode append their raw bytes,
/// length-prefixed: right for types whose output is canonical, as long as
/// every shard sends the column in the same format.
pub fn group_key(oid: u32, format: i16, raw: &[u8], out: &mut Vec<u8>) -> Result<(), ValueError> {
    if !supported(oid) {
        if format != FORMAT_TEXT && format != FORMAT_BINARY {
            return Err(ValueError::BadFormat { format });
        }
        push_len(out, raw.len());
        out.extend_from_slice(raw);
        return Ok(());
    }
    append_key(&decode(oid, format, raw)?, out);
    Ok(())
}

pub use super::encode::{encode_float4, encode_float8, encode_int8, encode_numeric};

#[cfg(test)]
#[path = "tests/value.rs"]
mod tests;
