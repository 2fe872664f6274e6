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

/// Appends an int8 result (format 0 text, otherwise binary), without the
/// length prefix.
pub fn encode_int8(v: i64, format: i16, out: &mut Vec<u8>) {
    if format == FORMAT_TEXT {
        let mut buf = StackBuf::new();
        // Writing to a StackBuf of 64 bytes cannot fail for an i64.
        let _ = fmt::Write::write_fmt(&mut buf, format_args!("{v}"));
        out.extend_from_slice(buf.as_bytes());
    } else {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// Appends a numeric result (format 0 text, otherwise binary) as Postgres
/// would send it.
pub fn encode_numeric(v: &Numeric, format: i16, out: &mut Vec<u8>) {
    if format == FORMAT_TEXT {
        v.to_text(out);
    } else {
        v.to_binary(out);
    }
}

/// Appends a float8 result; text exactly as Postgres 15 prints it with
/// extra_float_digits > 0.
pub fn encode_float8(v: f64, format: i16, out: &mut Vec<u8>) {
    if format != FORMAT_TEXT {
        return out.extend_from_slice(&v.to_bits().to_be_bytes());
    }
    if let Some(special) =
        special_float_text(v.is_nan(), v.is_infinite(), v == 0.0, v.is_sign_negative())
    {
        return out.extend_from_slice(special);
    }
    let a = v.abs();
    let bits = a.to_bits();
    let (d, e) = pg_shortest(
        |buf, prec| match prec {
            None => fmt::Write::write_fmt(buf, format_args!("{a:e}")),
            Some(p) => fmt::Write::write_fmt(buf, format_args!("{a:.p$e}")),
        },
        |s| s.parse::<f64>().is_ok_and(|x| x.to_bits() == bits),
        bits & ((1 << 52) - 1),
        ((bits >> 52) & 0x7ff) as i32,
        (52, 1075, 17),
    );
    pg_float_text(d, e, v < 0.0, 15, out);
}

/// Appends a float4 result; text exactly as Postgres 15 prints it with
/// extra_float_digits > 0.
pub fn encode_float4(v: f32, format: i16, out: &mut Vec<u8>) {
    if format != FORMAT_TEXT {
        return out.extend_from_slice(&v.to_bits().to_be_bytes());
    }
    if let Some(special) =
        special_float_text(v.is_nan(), v.is_infinite(), v == 0.0, v.is_sign_negative())
    {
        return out.extend_from_slice(special);
    }
    let a = v.abs();
    let bits = a.to_bits();
    let (d, e) = pg_shortest(
        |buf, prec| match prec {
            None => fmt::Write::write_fmt(buf, format_args!("{a:e}")),
            Some(p) => fmt::Write::write_fmt(buf, format_args!("{a:.p$e}")),
        },
        |s| s.parse::<f32>().is_ok_and(|x| x.to_bits() == bits),
        u64::from(bits & ((1 << 23) - 1)),
        ((bits >> 23) & 0xff) as i32,
        (23, 150, 9),
    );
    pg_float_text(d, e, v < 0.0, 6, out);
}

/// NaN, the infinities and the zeros ("-0" keeps its sign, as in Postgres).
fn special_float_text(nan: bool, inf: bool, zero: bool, sign_neg: bool) -> Option<&'static [u8]> {
    Some(match (nan, inf, zero, sign_neg) {
        (true, ..) => b"NaN",
        (_, true, _, true) => b"-Infinity",
        (_, true, _, false) => b"Infinity",
        (_, _, true, true) => b"-0",
        (_, _, true, false) => b"0",
        _ => return None,
    })
}

/// Parses Rust's `{:e}` output (`d[.ddd]e[-]x`) into `(digits, exp10)` with
/// value `digits * 10^exp10`.
fn parse_sci(s: &[u8]) -> Option<(u64, i32)> {
    let e_pos = s.iter().position(|&b| b == b'e')?;
    let mut d: u64 = 0;
    let mut frac = 0i32;
    let mut seen_point = false;
    for &b in &s[..e_pos] {
        match b {
            b'.' => seen_point = true,
            b'0'..=b'9' => {
                d = d.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
                frac += i32::from(seen_point);
            }
            _ => return None,
        }
    }
    let exp: i32 = std::str::from_utf8(&s[e_pos + 1..]).ok()?.parse().ok()?;
    Some((d, exp - frac))
}

/// Whether the decimal `d * 10^e10` equals the binary `m * 2^f` exactly.
fn dec_eq_bin(d: u64, e10: i32, m: u64, f: i32) -> bool {
    if d == 0 || m == 0 {
        return d == m;
    }
    let mz = m.trailing_zeros();
    let (d, m, f) = (u128::from(d), u128::from(m >> mz), f + mz as i32);
    let k = e10.unsigned_abs();
    let Some(p5) = 5u128.checked_pow(k) else {
        return false;
    };
    let (odd_side, other, twos) = if e10 >= 0 {
        // d * 2^e * 5^e = m * 2^f: 5^e divides m, and d * 2^e = (m/5^e) * 2^f.
        if m % p5 != 0 {
            return false;
        }
        (m / p5, d, i64::from(f) - i64::from(e10))
    } else {
        // d = m * 5^k * 2^(f+k).
        if d % p5 != 0 {
            return false;
        }
        (m, d / p5, i64::from(f) + i64::from(k))
    };
    let tz = other.trailing_zeros();
    i64::from(tz) == twos && (other >> tz) == odd_side
}

/// The digits Postgres's Ryu (built without STRICTLY_SHORTEST, so a decimal
/// lying exactly on a rounding boundary is never chosen) prints for a
/// positive finite float: the shortest decimal strictly inside the rounding
/// interval, closest to the value. Rust's shortest output is the same except
/// that, for an even mantissa, it may pick a decimal exactly on the
/// boundary; then longer correctly rounded candidates are tried.
///
/// `fmt_val(buf, None)` writes `{:e}`, `fmt_val(buf, Some(p))` `{:.p$e}`;
/// `round_trips(s)` says whether `s` parses back to the value. `layout` is
/// (mantissa bits, exponent offset, max digits).
fn pg_shortest(
    fmt_val: impl Fn(&mut StackBuf, Option<usize>) -> fmt::Result,
    round_trips: impl Fn(&str) -> bool,
    frac: u64,
    exp_field: i32,
    layout: (u32, i32, usize),
) -> (u64, i32) {
    let (mant_bits, offset, max_digits) = layout;
    let sci = |prec: Option<usize>| {
        let mut buf = StackBuf::new();
        fmt_val(&mut buf, prec).ok()?;
        parse_sci(buf.as_bytes())
    };
    let Some((d, e)) = sci(None) else {
        return (0, 0);
    };
    let (m, e2) = if exp_field == 0 {
        (frac, 1 - offset)
    } else {
        (frac | 1 << mant_bits, exp_field - offset)
    };
    let upper = (2 * m + 1, e2 - 1);
    let lower = if frac == 0 && exp_field > 1 {
        (4 * m - 1, e2 - 2)
    } else {
        (2 * m - 1, e2 - 1)
    };
    let inside = |d: u64, e: i32| {
        let mut buf = StackBuf::new();
        d != 0
            && fmt::Write::write_fmt(&mut buf, format_args!("{d}e{e}")).is_ok()
            && std::str::from_utf8(buf.as_bytes()).is_ok_and(&round_trips)
            && !dec_eq_bin(d, e, lower.0, lower.1)
            && !dec_eq_bin(d, e, upper.0, upper.1)
    };
    let (d, e) = if inside(d, e) {
        (d, e)
    } else {
        longer_candidate(&sci, &inside, d, max_digits).unwrap_or((d, e))
    };
    // Ryu breaks an exact tie between two shortest candidates towards the
    // even one; Rust's shortest mode rounds it up.
    if d % 2 == 1 {
        let below = d.checked_mul(10).and_then(|x| x.checked_sub(5));
        let above = d.checked_mul(10).and_then(|x| x.checked_add(5));
        for (mid, other) in [(below, d - 1), (above, d + 1)] {
            if let Some(mid) = mid
                && dec_eq_bin(mid, e - 1, m, e2)
                && inside(other, e)
            {
                return (other, e);
            }
        }
    }
    (d, e)
}

/// The closest decimal strictly inside the rounding interval among the
/// shortest ones longer than `d` (see [`pg_shortest`]).
fn longer_candidate(
    sci: &impl Fn(Option<usize>) -> Option<(u64, i32)>,
    inside: &impl Fn(u64, i32) -> bool,
    d: u64,
    max_digits: usize,
) -> Option<(u64, i32)> {
    let len = d.checked_ilog10().unwrap_or(0) as usize + 1;
    for p in len + 1..=max_digits + 1 {
        let (dp, ep) = sci(Some(p - 1))?;
        // The correctly rounded candidate, else its neighbour on the other
        // side of the value (the interval may be asymmetric).
        for cand in [Some(dp), dp.checked_add(1), dp.checked_sub(1)]
            .into_iter()
            .flatten()
        {
            if inside(cand, ep) {
                return Some((cand, ep));
            }
        }
    }
    None
}

/// Lays out `d * 10^e` the way Postgres's Ryu-based output does: fixed point
/// when -4 <= decimal exponent < `sci_from` (15 for float8, 6 for float4),
/// otherwise `d.ddde+XX` with at least two exponent digits.
fn pg_float_text(mut d: u64, mut e: i32, neg: bool, sci_from: i32, out: &mut Vec<u8>) {
    while d != 0 && d.is_multiple_of(10) {
        d /= 10;
        e += 1;
    }
    let mut buf = StackBuf::new();
    let _ = fmt::Write::write_fmt(&mut buf, format_args!("{d}"));
    let digits = buf.as_bytes();
    let exp = e + digits.len() as i32 - 1;
    if neg {
        out.push(b'-');
    }
    if (-4..sci_from).contains(&exp) {
        if exp < 0 {
            out.extend_from_slice(b"0.");
            out.resize(out.len() + (-exp - 1) as usize, b'0');
            out.extend_from_slice(digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.extend_from_slice(digits);
                out.resize(out.len() + (int_len - digits.len()), b'0');
            } else {
                out.extend_from_slice(&digits[..int_len]);
                out.push(b'.');
                out.extend_from_slice(&digits[int_len..]);
            }
        }
    } else {
        out.extend_from_slice(&digits[..1]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        out.push(b'e');
        out.push(if exp < 0 { b'-' } else { b'+' });
        let x = exp.unsigned_abs();
        if x < 10 {
            out.push(b'0');
        }
        let mut ebuf = StackBuf::new();
        let _ = fmt::Write::write_fmt(&mut ebuf, format_args!("{x}"));
        out.extend_from_slice(ebuf.as_bytes());
    }
}

/// A small fixed buffer for formatting numbers without allocating.
struct StackBuf {
    buf: [u8; 64],
    len: usize,
}

impl StackBuf {
    fn new() -> StackBuf {
        StackBuf {
            buf: [0; 64],
            len: 0,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl fmt::Write for StackBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn key(oid: u32, format: i16, raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        group_key(oid, format, raw, &mut out).unwrap();
        out
    }

    /// (type, text output, send output) from a Postgres 15.18 server
    /// (DateStyle ISO, extra_float_digits 1).
    const PG_VALUES: &[(u32, &str, &str)] = &[
        (INT2, "-32768", "8000"),
        (INT2, "32767", "7fff"),
        (INT2, "0", "0000"),
        (INT2, "-1", "ffff"),
        (INT4, "-2147483648", "80000000"),
        (INT4, "2147483647", "7fffffff"),
        (INT4, "42", "0000002a"),
        (INT8, "-9223372036854775808", "8000000000000000"),
        (INT8, "9223372036854775807", "7fffffffffffffff"),
        (INT8, "-5", "fffffffffffffffb"),
        (OID, "0", "00000000"),
        (OID, "4294967295", "ffffffff"),
        (OID, "2147483648", "80000000"),
        (CHAR, "a", "61"),
        (CHAR, "\\303", "c3"),
        (CHAR, "\\", "5c"),
        (CHAR, "", "00"),
        (BOOL, "t", "01"),
        (BOOL, "f", "00"),
        (
            UUID,
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
        ),
        (
            UUID,
            "00000000-0000-0000-0000-000000000000",
            "00000000000000000000000000000000",
        ),
        (
            UUID,
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "ffffffffffffffffffffffffffffffff",
        ),
        (BYTEA, "\\x0a1bff", "0a1bff"),
        (BYTEA, "\\x", ""),
        (BYTEA, "\\x00", "00"),
        (TEXT, "héllo", "68c3a96c6c6f"),
        (VARCHAR, "a b ", "61206220"),
        (NAME, "pg_class", "70675f636c617373"),
        (BPCHAR, "ab   ", "6162202020"),
        (DATE, "2000-01-01", "00000000"),
        (DATE, "1999-12-31", "ffffffff"),
        (DATE, "2024-01-31", "0000225c"),
        (DATE, "2024-02-29", "00002279"),
        (DATE, "1900-03-01", "ffff718f"),
        (DATE, "0001-01-01", "fff4dbf9"),
        (DATE, "0001-12-31 BC", "fff4dbf8"),
        (DATE, "0044-03-15 BC", "fff49d7b"),
        (DATE, "4713-11-24 BC", "ffda9915"),
        (DATE, "5874897-12-31", "7fda970c"),
        (DATE, "10000-01-01", "002c95d4"),
        (DATE, "infinity", "7fffffff"),
        (DATE, "-infinity", "80000000"),
        (TIME, "00:00:00", "0000000000000000"),
        (TIME, "13:45:00.123456", "0000000b866ff140"),
        (TIME, "23:59:59.999999", "000000141dd75fff"),
        (TIME, "24:00:00", "000000141dd76000"),
        (TIME, "01:02:03.1", "00000000dde9ff60"),
        (TIME, "23:59:59.5", "000000141dcfbee0"),
        (TIMESTAMP, "2000-01-01 00:00:00", "0000000000000000"),
        (TIMESTAMP, "2024-01-31 13:45:00.5", "0002b33cda9c3020"),
        (TIMESTAMP, "1999-12-31 23:59:59.999999", "ffffffffffffffff"),
        (TIMESTAMP, "4713-11-24 00:00:00 BC", "fd0f9983eb0ae000"),
        (
            TIMESTAMP,
            "294276-12-31 23:59:59.999999",
            "7fffff5bb3b29fff",
        ),
        (TIMESTAMP, "0001-01-01 00:00:00 BC", "ff1fc63d1bb12000"),
        (TIMESTAMP, "0044-03-15 13:45:00 BC", "ff1af9ea72c92f00"),
        (TIMESTAMP, "infinity", "7fffffffffffffff"),
        (TIMESTAMP, "-infinity", "8000000000000000"),
        // One instant printed under TimeZone UTC, Asia/Kolkata,
        // America/St_Johns, Asia/Kathmandu, Europe/Amsterdam.
        (TIMESTAMPTZ, "2024-01-31 13:45:00.5+00", "0002b33cda9c3020"),
        (
            TIMESTAMPTZ,
            "2024-01-31 19:15:00.5+05:30",
            "0002b33cda9c3020",
        ),
        (
            TIMESTAMPTZ,
            "2024-01-31 10:15:00.5-03:30",
            "0002b33cda9c3020",
        ),
        (
            TIMESTAMPTZ,
            "2024-01-31 19:30:00.5+05:45",
            "0002b33cda9c3020",
        ),
        (TIMESTAMPTZ, "2024-01-31 14:45:00.5+01", "0002b33cda9c3020"),
        (TIMESTAMPTZ, "2024-07-31 15:45:00.5+02", "0002c18a11ba7020"),
        (TIMESTAMPTZ, "1900-01-01 00:00:00+00", "fff4c9ee7c0b8000"),
        (
            TIMESTAMPTZ,
            "1900-01-01 05:21:10+05:21:10",
            "fff4c9ee7c0b8000",
        ),
        (
            TIMESTAMPTZ,
            "1899-12-31 20:29:08-03:30:52",
            "fff4c9ee7c0b8000",
        ),
        (
            TIMESTAMPTZ,
            "1900-01-01 00:19:32+00:19:32",
            "fff4c9ee7c0b8000",
        ),
        (TIMESTAMPTZ, "0044-03-15 12:00:00+00 BC", "ff1af9e8fb46d000"),
        (
            TIMESTAMPTZ,
            "0044-03-15 17:53:28+05:53:28 BC",
            "ff1af9e8fb46d000",
        ),
        (
            TIMESTAMPTZ,
            "0044-03-15 08:29:08-03:30:52 BC",
            "ff1af9e8fb46d000",
        ),
        (TIMESTAMPTZ, "infinity", "7fffffffffffffff"),
        (NUMERIC, "0", "0000000000000000"),
        (NUMERIC, "0.00", "0000000000000002"),
        (NUMERIC, "-12.340", "0002000040000003000c0d48"),
        (NUMERIC, "NaN", "00000000c0000000"),
        (NUMERIC, "Infinity", "00000000d0000020"),
        (NUMERIC, "-Infinity", "00000000f0000020"),
        (NUMERIC, "12345.6789", "0003000100000004000109291a85"),
    ];

    /// (float8 output, float8send) from Postgres 15.
    const PG_FLOAT8: &[(&str, &str)] = &[
        ("1.5", "3ff8000000000000"),
        ("1e+21", "444b1ae4d6e2ef50"),
        ("1.2345678901234568e-05", "3ee9e409302678ba"),
        ("NaN", "7ff8000000000000"),
        ("Infinity", "7ff0000000000000"),
        ("-Infinity", "fff0000000000000"),
        ("-0", "8000000000000000"),
        ("0", "0000000000000000"),
        ("1e+15", "430c6bf526340000"),
        ("123456789012345", "42dc12218377de40"),
        ("999999999999999", "430c6bf52633fff8"),
        ("0.0001", "3f1a36e2eb1c432d"),
        ("1e-05", "3ee4f8b588e368f1"),
        ("0.00012345", "3f202e4b6ce5dc68"),
        ("1e+100", "54b249ad2594c37d"),
        ("1e-300", "01a56e1fc2f8f359"),
        ("5e-324", "0000000000000001"),
        ("1.5e-323", "0000000000000003"),
        ("1.7976931348623157e+308", "7fefffffffffffff"),
        ("9.007199254740992e+15", "4340000000000000"),
        ("0.1", "3fb999999999999a"),
        ("100", "4059000000000000"),
        ("100000000000000", "42d6bcc41e900000"),
        ("-2.5e-07", "be90c6f7a0b5ed8d"),
        // 1e23 lies exactly between two doubles: Postgres's Ryu never picks
        // a boundary, Rust's shortest output would say "1e23".
        ("9.999999999999999e+22", "44b52d02c7e14af6"),
        ("2.2250738585072014e-308", "0010000000000000"),
        ("2.225073858507201e-308", "000fffffffffffff"),
        ("1e+22", "4480f0cf064dd592"),
        ("-1234.5678", "c0934a456d5cfaad"),
        ("0.30000000000000004", "3fd3333333333334"),
        ("4.35", "4011666666666666"),
        ("1e+16", "4341c37937e08000"),
        ("123456.7", "40fe240b33333333"),
        // Exact ties between two shortest candidates go to the even one.
        ("2.2432458261549692e+15", "431fe0e17a728765"),
        ("1.8664554903040242e+15", "431a862021f46061"),
        ("6.651247666746007e+204", "6a7536d3dd3fe6c3"),
        ("-3.361955906363856e+218", "ed4e79fc21966a79"),
    ];

    /// (float4 output, float4send) from Postgres 15.
    const PG_FLOAT4: &[(&str, &str)] = &[
        ("1.5", "3fc00000"),
        ("1e+21", "6258d727"),
        ("123456", "47f12000"),
        ("1.234567e+06", "4996b438"),
        ("100000", "47c35000"),
        ("1e+06", "49742400"),
        ("999999", "497423f0"),
        ("9.999999e+06", "4b18967f"),
        ("0.1", "3dcccccd"),
        ("0.0001", "38d1b717"),
        ("1e-05", "3727c5ac"),
        ("NaN", "7fc00000"),
        ("-0", "80000000"),
        ("Infinity", "7f800000"),
        ("-Infinity", "ff800000"),
        ("3.4028235e+38", "7f7fffff"),
        ("1e-45", "00000001"),
        ("3e-45", "00000002"),
        ("1.6777216e+07", "4b800000"),
        ("0.3", "3e99999a"),
        ("1.1754942e-38", "007fffff"),
        // Boundary cases: Rust's shortest would give 6.98237e+07, 1.1998e+09.
        ("6.9823696e+07", "4c852d9a"),
        ("1.1998001e+09", "4e8f06fe"),
        ("9.922241e+09", "5013da58"),
        // Ties: Rust's shortest would round up (262504.13, -39108.813).
        ("262504.12", "48802d04"),
        ("-39108.812", "c718c4d0"),
        ("1.6528942e+06", "49c9c4f2"),
        ("2.4585797e-10", "2f87296f"),
        ("5.13989e+07", "4c44123d"),
    ];

    #[test]
    fn text_and_binary_decode_to_the_same_value() {
        let floats8 = PG_FLOAT8.iter().map(|(t, b)| (FLOAT8, *t, *b));
        let floats4 = PG_FLOAT4.iter().map(|(t, b)| (FLOAT4, *t, *b));
        for (oid, t, b) in PG_VALUES.iter().copied().chain(floats8).chain(floats4) {
            let raw = hex(b);
            let vt = decode(oid, 0, t.as_bytes()).unwrap_or_else(|e| panic!("{oid} {t}: {e}"));
            let vb = decode(oid, 1, &raw).unwrap_or_else(|e| panic!("{oid} {b}: {e}"));
            assert_eq!(vt, vb, "{oid} {t} / {b}");
            assert_eq!(key(oid, 0, t.as_bytes()), key(oid, 1, &raw), "{oid} {t}");
            if let (Value::Float(x), Value::Float(y)) = (vt, vb) {
                assert!(
                    x.to_bits() == y.to_bits() || x.is_nan() && y.is_nan(),
                    "{t}"
                );
            }
        }
    }

    #[test]
    fn decoded_values() {
        assert_eq!(decode(DATE, 0, b"2000-01-01"), Ok(Value::Days(0)));
        assert_eq!(decode(DATE, 0, b"infinity"), Ok(Value::Days(i32::MAX)));
        assert_eq!(decode(DATE, 0, b"-infinity"), Ok(Value::Days(i32::MIN)));
        assert_eq!(
            decode(TIMESTAMP, 0, b"infinity"),
            Ok(Value::Micros(i64::MAX))
        );
        assert_eq!(
            decode(TIMESTAMP, 0, b"2000-01-02 00:00:01.5"),
            Ok(Value::Micros(86_401_500_000))
        );
        assert_eq!(
            decode(TIMESTAMPTZ, 0, b"2000-01-01 02:00:00+02"),
            Ok(Value::Micros(0))
        );
        assert_eq!(
            decode(TIME, 0, b"00:00:01.000001"),
            Ok(Value::Micros(1_000_001))
        );
        assert_eq!(decode(INT4, 0, b"-7"), Ok(Value::Int(-7)));
        assert_eq!(
            decode(OID, 1, &hex("ffffffff")),
            Ok(Value::Int(4_294_967_295))
        );
        assert_eq!(decode(CHAR, 0, b"\\377"), Ok(Value::Int(255)));
        assert_eq!(decode(BOOL, 1, &[2]), Ok(Value::Bool(true)));
        assert_eq!(
            decode(FLOAT4, 0, b"0.1"),
            Ok(Value::Float(f64::from(0.1f32)))
        );
        assert_eq!(decode(BPCHAR, 0, b"ab  "), Ok(Value::Text(b"ab")));
        assert_eq!(decode(BPCHAR, 1, b"   "), Ok(Value::Text(b"")));
        assert_eq!(decode(TEXT, 0, b"ab  "), Ok(Value::Text(b"ab  ")));
        assert_eq!(decode(BYTEA, 0, b"\\x0a1b"), Ok(Value::ByteaHex(b"0a1b")));
        assert_eq!(
            decode(UUID, 0, b"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"),
            decode(UUID, 1, &hex("a0eebc999c0b4ef8bb6d6bb9bd380a11"))
        );
        assert_eq!(
            decode(NUMERIC, 0, b"1.0"),
            Ok(Value::Num(Numeric::from_i64(1)))
        );
    }

    #[test]
    fn compare_is_postgres_btree_order() {
        let ord = |oid: u32, a: &str, b: &str| {
            compare(
                &decode(oid, 0, a.as_bytes()).unwrap(),
                &decode(oid, 0, b.as_bytes()).unwrap(),
            )
        };
        use Ordering::*;
        // Floats: NaN = NaN, NaN above Infinity, -0 = 0.
        assert_eq!(ord(FLOAT8, "NaN", "NaN"), Equal);
        assert_eq!(ord(FLOAT8, "NaN", "Infinity"), Greater);
        assert_eq!(ord(FLOAT8, "-Infinity", "NaN"), Less);
        assert_eq!(ord(FLOAT8, "-0", "0"), Equal);
        assert_eq!(ord(FLOAT4, "-1.5", "1e-45"), Less);
        // Numerics by value.
        assert_eq!(ord(NUMERIC, "1.0", "1.00"), Equal);
        assert_eq!(ord(NUMERIC, "NaN", "Infinity"), Greater);
        assert_eq!(ord(NUMERIC, "-Infinity", "-99999"), Less);
        // bpchar ignores trailing spaces; text does not.
        assert_eq!(ord(BPCHAR, "ab", "ab   "), Equal);
        assert_eq!(ord(BPCHAR, "ab", "ab c"), Less);
        assert_eq!(ord(TEXT, "ab", "ab "), Less);
        // "C" collation: bytewise.
        assert_eq!(ord(TEXT, "B", "a"), Less);
        assert_eq!(ord(TEXT, "é", "z"), Greater);
        assert_eq!(ord(TEXT, "", "a"), Less);
        // "char" compares as unsigned bytes: '\303' > 'a'.
        assert_eq!(ord(CHAR, "\\303", "a"), Greater);
        assert_eq!(ord(BOOL, "f", "t"), Less);
        assert_eq!(
            ord(INT8, "-9223372036854775808", "9223372036854775807"),
            Less
        );
        assert_eq!(ord(OID, "4294967295", "1"), Greater);
        // bytea and uuid: byte order.
        assert_eq!(ord(BYTEA, "\\x0a", "\\x0a00"), Less);
        assert_eq!(ord(BYTEA, "\\x0b", "\\x0aff"), Greater);
        assert_eq!(ord(BYTEA, "\\x", "\\x00"), Less);
        assert_eq!(
            ord(
                UUID,
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                "0fffffff-ffff-ffff-ffff-ffffffffffff"
            ),
            Greater
        );
        // Dates and timestamps, with the infinities at the ends and BC.
        assert_eq!(ord(DATE, "-infinity", "4713-11-24 BC"), Less);
        assert_eq!(ord(DATE, "0044-03-15 BC", "0001-01-01"), Less);
        assert_eq!(ord(DATE, "5874897-12-31", "infinity"), Less);
        assert_eq!(
            ord(
                TIMESTAMP,
                "2024-01-31 13:45:00.5",
                "2024-01-31 13:45:00.499999"
            ),
            Greater
        );
        assert_eq!(
            ord(
                TIMESTAMPTZ,
                "2024-01-31 13:45:00+00",
                "2024-01-31 14:00:00+01"
            ),
            Greater
        );
        assert_eq!(
            ord(
                TIMESTAMPTZ,
                "2024-01-31 13:45:00+00",
                "2024-01-31 19:15:00+05:30"
            ),
            Equal
        );
        assert_eq!(ord(TIME, "24:00:00", "23:59:59.999999"), Greater);
        // Raw (binary) and hex (text) bytea compare by the bytes.
        let raw = decode(BYTEA, 1, &[0x0a, 0xff]).unwrap();
        for (h, o) in [
            ("\\x0aff", Equal),
            ("\\x0b", Less),
            ("\\x0afe", Greater),
            ("\\x0aff00", Less),
        ] {
            let v = decode(BYTEA, 0, h.as_bytes()).unwrap();
            assert_eq!(compare(&raw, &v), o, "{h}");
            assert_eq!(compare(&v, &raw), o.reverse(), "{h}");
        }
    }

    #[test]
    fn group_keys() {
        let same =
            |oid: u32, a: &str, b: &str| key(oid, 0, a.as_bytes()) == key(oid, 0, b.as_bytes());
        assert!(same(NUMERIC, "1.0", "1.00"));
        assert!(same(NUMERIC, "0", "0.000"));
        assert!(!same(NUMERIC, "1", "10"));
        assert!(same(NUMERIC, "NaN", "NaN"));
        assert!(same(FLOAT8, "-0", "0"));
        assert!(same(FLOAT8, "NaN", "NaN"));
        assert!(!same(FLOAT8, "1", "1.0000000000000002"));
        assert!(same(BPCHAR, "ab", "ab  "));
        assert!(!same(TEXT, "ab", "ab  "));
        assert!(!same(BYTEA, "\\x00", "\\x"));
        // Keys are self-delimiting: ("ab", "c") differs from ("a", "bc").
        let pair = |a: &str, b: &str| {
            let mut out = Vec::new();
            group_key(TEXT, 0, a.as_bytes(), &mut out).unwrap();
            group_key(TEXT, 0, b.as_bytes(), &mut out).unwrap();
            out
        };
        assert_ne!(pair("ab", "c"), pair("a", "bc"));
        // A NaN float with another payload still groups with NaN.
        assert_eq!(
            key(FLOAT8, 1, &hex("7ff8000000000001")),
            key(FLOAT8, 0, b"NaN")
        );
        assert_eq!(key(FLOAT4, 1, &hex("ffc00000")), key(FLOAT8, 0, b"NaN"));
        // Hex and raw bytea give one key.
        assert_eq!(key(BYTEA, 0, b"\\x0aff"), key(BYTEA, 1, &[0x0a, 0xff]));
        // Unsupported types: raw bytes, length-prefixed.
        assert_eq!(key(1186, 0, b"1 day"), b"\0\0\0\x051 day".to_vec());
        assert_eq!(
            group_key(1186, 2, b"x", &mut Vec::new()),
            Err(ValueError::BadFormat { format: 2 })
        );
    }

    #[test]
    fn errors() {
        assert_eq!(
            decode(1186, 0, b"1 day"),
            Err(ValueError::Unsupported { oid: 1186 })
        );
        assert_eq!(
            decode(INT4, 2, b"1"),
            Err(ValueError::BadFormat { format: 2 })
        );
        assert!(!supported(1186) && supported(TIMESTAMPTZ) && supported(CHAR));
        let malformed = [
            (INT2, "32768"),
            (INT4, "2147483648"),
            (INT8, "9223372036854775808"),
            (INT8, ""),
            (INT8, "-"),
            (INT8, "1.0"),
            (OID, "-1"),
            (OID, "4294967296"),
            (CHAR, "ab"),
            (CHAR, "\\400"),
            (CHAR, "\\38a"),
            (FLOAT8, "abc"),
            (FLOAT8, "inf"),
            (FLOAT8, ""),
            (FLOAT4, "1e39x"),
            (NUMERIC, "1,5"),
            (BOOL, "true"),
            (BYTEA, "abc"),
            (BYTEA, "\\x0"),
            (BYTEA, "\\x0A"),
            // bytea_output = escape.
            (BYTEA, "\\\\x"),
            (UUID, "a0eebc999c0b4ef8bb6d6bb9bd380a11"),
            (UUID, "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            // DateStyle Postgres, SQL, German.
            (DATE, "01-31-2024"),
            (DATE, "01/31/2024"),
            (DATE, "31.01.2024"),
            (TIMESTAMP, "Wed Jan 31 13:00:00 2024"),
            (TIMESTAMP, "01/31/2024 13:00:00"),
            (TIMESTAMP, "31.01.2024 13:00:00"),
            (TIMESTAMPTZ, "Wed Jan 31 13:00:00 2024 PST"),
            (TIMESTAMPTZ, "01/31/2024 13:00:00 PST"),
            (TIMESTAMPTZ, "2024-01-31 13:00:00"),
            (TIMESTAMP, "2024-01-31 13:00:00+00"),
            (DATE, "2023-02-29"),
            (DATE, "2024-13-01"),
            (DATE, "2024-00-10"),
            (DATE, "0000-01-01 BC"),
            (DATE, "2024-01-31 AD"),
            (TIME, "24:00:01"),
            (TIME, "12:60:00"),
            (TIME, "12:00:00.1234567"),
            (TIME, "12:00"),
            (TIMESTAMPTZ, "2024-01-31 13:00:00+5"),
            (TIMESTAMPTZ, "2024-01-31 13:00:00+05:60"),
        ];
        for (oid, t) in malformed {
            assert_eq!(
                decode(oid, 0, t.as_bytes()),
                Err(ValueError::Malformed { oid }),
                "{oid} {t:?}"
            );
        }
        for (oid, len) in [
            (INT2, 4),
            (INT4, 2),
            (INT8, 4),
            (FLOAT4, 8),
            (FLOAT8, 4),
            (BOOL, 0),
            (UUID, 15),
            (DATE, 8),
            (TIME, 4),
            (TIMESTAMPTZ, 0),
            (CHAR, 2),
            (NUMERIC, 3),
        ] {
            assert_eq!(
                decode(oid, 1, &vec![0u8; len]),
                Err(ValueError::Malformed { oid }),
                "{oid} {len}"
            );
        }
        assert_eq!(
            decode(NUMERIC, 0, b"1000000000000000000000000000000000000000"),
            Err(ValueError::TooLarge)
        );
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            ValueError::Unsupported { oid: 3802 }.to_string(),
            "values of type jsonb cannot be compared by shardgate"
        );
        assert_eq!(
            ValueError::Unsupported { oid: 99999 }.to_string(),
            "values of type oid 99999 cannot be compared by shardgate"
        );
        assert!(
            ValueError::Malformed { oid: DATE }
                .to_string()
                .contains("value of type date")
        );
    }

    #[test]
    fn float_encoding_matches_postgres() {
        for (t, b) in PG_FLOAT8 {
            let bits = u64::from_be_bytes(hex(b).try_into().unwrap());
            let mut out = Vec::new();
            encode_float8(f64::from_bits(bits), 0, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), *t, "{b}");
            let mut out = Vec::new();
            encode_float8(f64::from_bits(bits), 1, &mut out);
            assert_eq!(out, hex(b));
        }
        for (t, b) in PG_FLOAT4 {
            let bits = u32::from_be_bytes(hex(b).try_into().unwrap());
            let mut out = Vec::new();
            encode_float4(f32::from_bits(bits), 0, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), *t, "{b}");
            let mut out = Vec::new();
            encode_float4(f32::from_bits(bits), 1, &mut out);
            assert_eq!(out, hex(b));
        }
    }

    #[test]
    fn float_formatting_thresholds() {
        let f8 = |v: f64| {
            let mut out = Vec::new();
            encode_float8(v, 0, &mut out);
            String::from_utf8(out).unwrap()
        };
        let f4 = |v: f32| {
            let mut out = Vec::new();
            encode_float4(v, 0, &mut out);
            String::from_utf8(out).unwrap()
        };
        // float8: fixed point for decimal exponents -4..=14.
        assert_eq!(f8(123456789012345.0), "123456789012345");
        assert_eq!(f8(1e15), "1e+15");
        assert_eq!(f8(0.0001), "0.0001");
        assert_eq!(f8(0.00001), "1e-05");
        assert_eq!(f8(-1.5e300), "-1.5e+300");
        // float4: fixed point for decimal exponents -4..=5.
        assert_eq!(f4(123456.0), "123456");
        assert_eq!(f4(1234567.0), "1.234567e+06");
        assert_eq!(f4(0.00012), "0.00012");
        assert_eq!(f4(-0.000012), "-1.2e-05");
    }

    #[test]
    fn int_and_numeric_encoding() {
        let mut out = Vec::new();
        encode_int8(i64::MIN, 0, &mut out);
        assert_eq!(out, b"-9223372036854775808");
        out.clear();
        encode_int8(-5, 1, &mut out);
        assert_eq!(out, hex("fffffffffffffffb"));
        out.clear();
        let n = Numeric::from_text(b"-12.340").unwrap();
        encode_numeric(&n, 0, &mut out);
        assert_eq!(out, b"-12.340");
        out.clear();
        encode_numeric(&n, 1, &mut out);
        assert_eq!(out, hex("0002000040000003000c0d48"));
    }

    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        let mut st = 0x2545_F491_4F6C_DD1Du64;
        let mut seeds: Vec<(u32, i16, Vec<u8>)> = Vec::new();
        for &(oid, t, b) in PG_VALUES {
            seeds.push((oid, 0, t.as_bytes().to_vec()));
            seeds.push((oid, 1, hex(b)));
        }
        let mut prev: Option<Vec<u8>> = None;
        for round in 0..40_000 {
            let (oid, format, mut b) = seeds[round % seeds.len()].clone();
            for _ in 0..(xorshift(&mut st) % 4) {
                let r = xorshift(&mut st);
                match r % 4 {
                    0 if !b.is_empty() => {
                        let i = (r >> 8) as usize % b.len();
                        b[i] = (r >> 32) as u8;
                    }
                    1 if !b.is_empty() => {
                        let i = (r >> 8) as usize % b.len();
                        b[i] = b"0123456789-+:. BCe\\x"[(r >> 32) as usize % 20];
                    }
                    2 => b.push((r >> 16) as u8),
                    _ => {
                        b.pop();
                    }
                }
            }
            let format = if xorshift(&mut st).is_multiple_of(50) {
                7
            } else {
                format
            };
            let mut out = Vec::new();
            let _ = group_key(oid, format, &b, &mut out);
            if let Ok(v) = decode(oid, format, &b) {
                assert_eq!(compare(&v, &v), Ordering::Equal);
                if let Some(p) = &prev
                    && let Ok(w) = decode(oid, format, p)
                {
                    let _ = compare(&v, &w);
                }
                prev = Some(b.clone());
            }
        }
        // Every bit pattern formats and parses back.
        for _ in 0..20_000 {
            let bits = xorshift(&mut st);
            let mut out = Vec::new();
            encode_float8(f64::from_bits(bits), 0, &mut out);
            let back = decode(FLOAT8, 0, &out).unwrap();
            assert_eq!(back, Value::Float(f64::from_bits(bits)));
            out.clear();
            encode_float4(f32::from_bits(bits as u32), 0, &mut out);
            let back = decode(FLOAT4, 0, &out).unwrap();
            assert_eq!(back, Value::Float(f32::from_bits(bits as u32).into()));
        }
    }
}
