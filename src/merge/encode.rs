//! Encoding the values the merge computes (counts, sums, averages) in the client's format, text
//! exactly as Postgres 15 prints them (floats: the shortest text that reads back to the same
//! value, Postgres's layout and tie rules) or binary.

use std::fmt;

use super::numeric::Numeric;
use super::value::FORMAT_TEXT;

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
