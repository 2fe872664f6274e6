//! Postgres `numeric`, as far as shardgate needs it to merge aggregates
//! (`sum`, `avg`) and to compare, group and re-encode numeric columns.
//!
//! A finite value is held exactly as `mant * 10^-scale` in an `i128`, where
//! `scale` is Postgres's display scale (dscale): "1.50" is `150` at scale 2.
//! Values whose digits (including the trailing zeros of the display scale)
//! do not fit in an `i128` are refused with [`ValueError::TooLarge`]; they are
//! never approximated.

use std::cmp::Ordering;
use std::fmt;

use super::value::{NUMERIC, ValueError};

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;
/// Largest display scale Postgres can store (NUMERIC_DSCALE_MASK).
pub const NUMERIC_DSCALE_MAX: u16 = 0x3FFF;
/// Postgres's numeric_send writes the dscale bits of a special value's short
/// header: 0 for NaN, 0x20 for +Infinity and -Infinity.
const INF_SEND_DSCALE: u16 = 0x0020;
const NBASE: u128 = 10_000;
const NUMERIC_MIN_SIG_DIGITS: i32 = 16;
const DEC_DIGITS: i32 = 4;
const NUMERIC_MAX_DISPLAY_SCALE: i32 = 1000;
const NUMERIC_MIN_DISPLAY_SCALE: i32 = 0;

fn malformed() -> ValueError {
    ValueError::Malformed { oid: NUMERIC }
}

fn pow10(k: u32) -> Option<u128> {
    10u128.checked_pow(k)
}

/// A finite numeric: `mant * 10^-scale`, `scale` being the display scale.
///
/// Invariants: `mant != i128::MIN` (so negation never overflows) and
/// `scale <= NUMERIC_DSCALE_MAX`.
#[derive(Debug, Clone, Copy)]
pub struct Dec {
    mant: i128,
    scale: u16,
}

impl Dec {
    /// `mant * 10^-scale`. Fails with `TooLarge` for `i128::MIN` or a scale
    /// beyond what Postgres can store.
    pub fn new(mant: i128, scale: u16) -> Result<Dec, ValueError> {
        if mant == i128::MIN || scale > NUMERIC_DSCALE_MAX {
            return Err(ValueError::TooLarge);
        }
        Ok(Dec { mant, scale })
    }

    pub fn mant(&self) -> i128 {
        self.mant
    }

    /// The display scale (digits after the decimal point).
    pub fn scale(&self) -> u16 {
        self.scale
    }

    fn from_mag(neg: bool, mag: u128, scale: u16) -> Result<Dec, ValueError> {
        let m = i128::try_from(mag).map_err(|_| ValueError::TooLarge)?;
        Dec::new(if neg { -m } else { m }, scale)
    }

    fn checked_add(&self, other: &Dec) -> Result<Dec, ValueError> {
        let scale = self.scale.max(other.scale);
        let a = rescale_up(self.mant, scale - self.scale)?;
        let b = rescale_up(other.mant, scale - other.scale)?;
        Dec::new(a.checked_add(b).ok_or(ValueError::TooLarge)?, scale)
    }

    fn cmp_value(&self, other: &Dec) -> Ordering {
        let (sa, sb) = (self.mant.signum(), other.mant.signum());
        if sa != sb {
            return sa.cmp(&sb);
        }
        if sa == 0 {
            return Ordering::Equal;
        }
        let mag = cmp_mag(
            self.mant.unsigned_abs(),
            self.scale,
            other.mant.unsigned_abs(),
            other.scale,
        );
        if sa > 0 { mag } else { mag.reverse() }
    }

    /// The same value with the smallest scale (trailing zeros removed).
    fn normalized(&self) -> (i128, u16) {
        if self.mant == 0 {
            return (0, 0);
        }
        let (mut m, mut s) = (self.mant, self.scale);
        while s > 0 && m % 10 == 0 {
            m /= 10;
            s -= 1;
        }
        (m, s)
    }
}

fn rescale_up(mant: i128, by: u16) -> Result<i128, ValueError> {
    if mant == 0 || by == 0 {
        return Ok(mant);
    }
    let p = pow10(u32::from(by))
        .and_then(|p| i128::try_from(p).ok())
        .ok_or(ValueError::TooLarge)?;
    mant.checked_mul(p).ok_or(ValueError::TooLarge)
}

/// Compares nonzero magnitudes `a * 10^-sa` and `b * 10^-sb`.
fn cmp_mag(a: u128, sa: u16, b: u128, sb: u16) -> Ordering {
    match sa.cmp(&sb) {
        Ordering::Equal => a.cmp(&b),
        // a has fewer fractional digits: scale it up; if that overflows it
        // is certainly the larger (a >= 1, b <= u128::MAX).
        Ordering::Less => match pow10(u32::from(sb - sa)).and_then(|p| a.checked_mul(p)) {
            Some(a2) => a2.cmp(&b),
            None => Ordering::Greater,
        },
        Ordering::Greater => cmp_mag(b, sb, a, sa).reverse(),
    }
}

/// Decimal digits of `v`, most significant first, into `buf`; returns the
/// count (at least 1).
fn decimal_digits(mut v: u128, buf: &mut [u8; 40]) -> usize {
    let mut tmp = [0u8; 40];
    let mut n = 0;
    loop {
        tmp[n] = (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for i in 0..n {
        buf[i] = tmp[n - 1 - i];
    }
    n
}

/// A nonzero finite value in Postgres's base-10000 form, stripped of leading
/// and trailing zero digits, as Postgres stores it.
struct Base10000 {
    weight: i32,
    digits: [u16; 12],
    ndigits: usize,
}

fn base10000(d: &Dec) -> Base10000 {
    let mut out = Base10000 {
        weight: 0,
        digits: [0; 12],
        ndigits: 0,
    };
    let abs = d.mant.unsigned_abs();
    if abs == 0 {
        return out;
    }
    const POW: [u16; 4] = [1, 10, 100, 1000];
    let mut dec = [0u8; 40];
    let len = decimal_digits(abs, &mut dec);
    // Decimal exponent of the most significant digit.
    let p_top = len as i32 - 1 - i32::from(d.scale);
    let w_top = p_top.div_euclid(DEC_DIGITS);
    for (i, &dg) in dec[..len].iter().enumerate() {
        let p = p_top - i as i32;
        let g = (w_top - p.div_euclid(DEC_DIGITS)) as usize;
        out.digits[g] += u16::from(dg) * POW[p.rem_euclid(DEC_DIGITS) as usize];
    }
    let p_low = p_top - (len as i32 - 1);
    let mut n = (w_top - p_low.div_euclid(DEC_DIGITS) + 1) as usize;
    while n > 0 && out.digits[n - 1] == 0 {
        n -= 1;
    }
    out.weight = w_top;
    out.ndigits = n;
    out
}

/// A Postgres `numeric` value.
///
/// Equality and order are by value, as Postgres compares numerics: `1.0 ==
/// 1.00`, `-Infinity < finite < Infinity < NaN`, `NaN == NaN`. The display
/// scale is kept and used for output ([`Numeric::to_text`]).
#[derive(Debug, Clone, Copy)]
pub enum Numeric {
    NaN,
    PosInf,
    NegInf,
    Finite(Dec),
}

impl Numeric {
    pub fn from_i64(v: i64) -> Numeric {
        Numeric::Finite(Dec {
            mant: i128::from(v),
            scale: 0,
        })
    }

    /// Parses Postgres numeric output text: `-12.340`, `0`, `NaN`,
    /// `Infinity`, `-Infinity` (a leading `+` is accepted too). The display
    /// scale is the number of digits after the point.
    pub fn from_text(s: &[u8]) -> Result<Numeric, ValueError> {
        match s {
            b"NaN" => return Ok(Numeric::NaN),
            b"Infinity" | b"+Infinity" => return Ok(Numeric::PosInf),
            b"-Infinity" => return Ok(Numeric::NegInf),
            _ => {}
        }
        let (neg, rest) = match s.split_first() {
            Some((b'-', r)) => (true, r),
            Some((b'+', r)) => (false, r),
            _ => (false, s),
        };
        let mut mag: u128 = 0;
        let mut scale: usize = 0;
        let mut ndigits = 0usize;
        let mut seen_point = false;
        for &b in rest {
            match b {
                b'0'..=b'9' => {
                    mag = mag
                        .checked_mul(10)
                        .and_then(|m| m.checked_add(u128::from(b - b'0')))
                        .ok_or(ValueError::TooLarge)?;
                    ndigits += 1;
                    if seen_point {
                        scale += 1;
                    }
                }
                b'.' if !seen_point => seen_point = true,
                _ => return Err(malformed()),
            }
        }
        if ndigits == 0 {
            return Err(malformed());
        }
        let scale = u16::try_from(scale)
            .ok()
            .filter(|&s| s <= NUMERIC_DSCALE_MAX)
            .ok_or_else(malformed)?;
        Ok(Numeric::Finite(Dec::from_mag(neg, mag, scale)?))
    }

    /// Parses Postgres's numeric binary (send) format.
    pub fn from_binary(b: &[u8]) -> Result<Numeric, ValueError> {
        if b.len() < 8 {
            return Err(malformed());
        }
        let ndigits = i16::from_be_bytes([b[0], b[1]]);
        let weight = i32::from(i16::from_be_bytes([b[2], b[3]]));
        let sign = u16::from_be_bytes([b[4], b[5]]);
        let dscale = u16::from_be_bytes([b[6], b[7]]);
        let ndigits = usize::try_from(ndigits).map_err(|_| malformed())?;
        let body = &b[8..];
        if body.len() != 2 * ndigits {
            return Err(malformed());
        }
        let digit = |i: usize| u16::from_be_bytes([body[2 * i], body[2 * i + 1]]);
        if (0..ndigits).any(|i| u128::from(digit(i)) >= NBASE) {
            return Err(malformed());
        }
        let neg = match sign {
            NUMERIC_NAN => return Ok(Numeric::NaN),
            NUMERIC_PINF => return Ok(Numeric::PosInf),
            NUMERIC_NINF => return Ok(Numeric::NegInf),
            NUMERIC_POS => false,
            NUMERIC_NEG => true,
            _ => return Err(malformed()),
        };
        if dscale > NUMERIC_DSCALE_MAX {
            return Err(malformed());
        }
        let Some(first) = (0..ndigits).find(|&i| digit(i) != 0) else {
            return Ok(Numeric::Finite(Dec {
                mant: 0,
                scale: dscale,
            }));
        };
        let last = (0..ndigits).rfind(|&i| digit(i) != 0).unwrap_or(first);
        // Accumulate decimal digits down to the dscale'th fractional digit;
        // any beyond it are truncated, as numeric_recv does.
        let min_p = -i32::from(dscale);
        let mut mag: u128 = 0;
        let mut low_p = min_p;
        'groups: for i in first..=last {
            let units_p = DEC_DIGITS * (weight - i as i32);
            for (j, div) in [1000u16, 100, 10, 1].into_iter().enumerate() {
                let p = units_p + 3 - j as i32;
                if p < min_p {
                    break 'groups;
                }
                mag = mag
                    .checked_mul(10)
                    .and_then(|m| m.checked_add(u128::from(digit(i) / div % 10)))
                    .ok_or(ValueError::TooLarge)?;
                low_p = p;
            }
        }
        let mag = pow10((low_p - min_p).unsigned_abs())
            .and_then(|p| mag.checked_mul(p))
            .ok_or(ValueError::TooLarge)?;
        Ok(Numeric::Finite(Dec::from_mag(neg, mag, dscale)?))
    }

    /// Appends exactly what Postgres's numeric_send produces.
    pub fn to_binary(&self, out: &mut Vec<u8>) {
        let (sign, dscale) = match self {
            Numeric::NaN => (NUMERIC_NAN, 0),
            Numeric::PosInf => (NUMERIC_PINF, INF_SEND_DSCALE),
            Numeric::NegInf => (NUMERIC_NINF, INF_SEND_DSCALE),
            Numeric::Finite(d) => {
                let b = base10000(d);
                let sign = if d.mant < 0 { NUMERIC_NEG } else { NUMERIC_POS };
                // ndigits <= 12 and |weight| <= 4097: both fit in i16.
                out.extend_from_slice(&(b.ndigits as i16).to_be_bytes());
                out.extend_from_slice(&(b.weight as i16).to_be_bytes());
                out.extend_from_slice(&sign.to_be_bytes());
                out.extend_from_slice(&d.scale.to_be_bytes());
                for dg in &b.digits[..b.ndigits] {
                    out.extend_from_slice(&dg.to_be_bytes());
                }
                return;
            }
        };
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&sign.to_be_bytes());
        out.extend_from_slice(&dscale.to_be_bytes());
    }

    /// Appends the value as Postgres prints it (dscale digits after the point).
    pub fn to_text(&self, out: &mut Vec<u8>) {
        let d = match self {
            Numeric::NaN => return out.extend_from_slice(b"NaN"),
            Numeric::PosInf => return out.extend_from_slice(b"Infinity"),
            Numeric::NegInf => return out.extend_from_slice(b"-Infinity"),
            Numeric::Finite(d) => d,
        };
        if d.mant < 0 {
            out.push(b'-');
        }
        let mut dec = [0u8; 40];
        let len = decimal_digits(d.mant.unsigned_abs(), &mut dec);
        let digits = &dec[..len];
        let scale = usize::from(d.scale);
        let ascii = |ds: &[u8], out: &mut Vec<u8>| out.extend(ds.iter().map(|&x| b'0' + x));
        if len > scale {
            ascii(&digits[..len - scale], out);
            if scale > 0 {
                out.push(b'.');
                ascii(&digits[len - scale..], out);
            }
        } else {
            out.push(b'0');
            if scale > 0 {
                out.push(b'.');
                out.resize(out.len() + (scale - len), b'0');
                ascii(digits, out);
            }
        }
    }

    /// Addition as Postgres's numeric_add: NaN + x = NaN, Infinity +
    /// -Infinity = NaN, Infinity + finite = Infinity; the result's display
    /// scale is the larger of the two. Fails with `TooLarge` rather than
    /// losing digits.
    pub fn checked_add(&self, other: &Numeric) -> Result<Numeric, ValueError> {
        use Numeric::*;
        Ok(match (self, other) {
            (NaN, _) | (_, NaN) => NaN,
            (PosInf, NegInf) | (NegInf, PosInf) => NaN,
            (PosInf, _) | (_, PosInf) => PosInf,
            (NegInf, _) | (_, NegInf) => NegInf,
            (Finite(a), Finite(b)) => Finite(a.checked_add(b)?),
        })
    }

    /// Division by an integer exactly as Postgres's numeric_div: result scale
    /// from select_div_scale, quotient rounded half away from zero.
    pub fn div_i64(&self, divisor: i64) -> Result<Numeric, ValueError> {
        let d = match self {
            Numeric::NaN => return Ok(Numeric::NaN),
            Numeric::PosInf | Numeric::NegInf if divisor == 0 => {
                return Err(ValueError::DivisionByZero);
            }
            Numeric::PosInf | Numeric::NegInf => {
                return Ok(if (divisor < 0) == matches!(self, Numeric::PosInf) {
                    Numeric::NegInf
                } else {
                    Numeric::PosInf
                });
            }
            Numeric::Finite(d) => d,
        };
        if divisor == 0 {
            return Err(ValueError::DivisionByZero);
        }
        let c = u128::from(divisor.unsigned_abs());
        let rscale = select_div_scale(d, c);
        let m = d.mant.unsigned_abs();
        // Number of extra decimal digits to produce (negative: drop digits).
        let k = rscale - i32::from(d.scale);
        let (mut q, r, div) = if k >= 0 {
            // Long division, one digit at a time: exact as long as the
            // quotient fits (r < c <= 2^63, so r * 10 cannot overflow).
            let (mut q, mut r) = (m / c, m % c);
            for _ in 0..k {
                r *= 10;
                q = q
                    .checked_mul(10)
                    .and_then(|q| q.checked_add(r / c))
                    .ok_or(ValueError::TooLarge)?;
                r %= c;
            }
            (q, r, c)
        } else {
            match pow10(k.unsigned_abs()).and_then(|p| p.checked_mul(c)) {
                Some(div) => (m / div, m % div, div),
                // The divisor exceeds 2 * m: the quotient rounds to zero.
                None => (0, 0, 1),
            }
        };
        if r >= div - r {
            q = q.checked_add(1).ok_or(ValueError::TooLarge)?;
        }
        let neg = (d.mant < 0) != (divisor < 0);
        let scale = u16::try_from(rscale).map_err(|_| ValueError::TooLarge)?;
        Ok(Numeric::Finite(Dec::from_mag(neg && q != 0, q, scale)?))
    }

    /// Order by value: -Infinity < finite < Infinity < NaN, NaN == NaN,
    /// 1.0 == 1.00.
    pub fn compare(&self, other: &Numeric) -> Ordering {
        fn rank(n: &Numeric) -> u8 {
            match n {
                Numeric::NegInf => 0,
                Numeric::Finite(_) => 1,
                Numeric::PosInf => 2,
                Numeric::NaN => 3,
            }
        }
        match (self, other) {
            (Numeric::Finite(a), Numeric::Finite(b)) => a.cmp_value(b),
            _ => rank(self).cmp(&rank(other)),
        }
    }

    /// A fixed-size key, equal exactly for numerics that are equal under
    /// Postgres `=` (1.0 and 1.00 give the same key).
    pub fn normalized_key(&self) -> [u8; 19] {
        let mut k = [0u8; 19];
        match self {
            Numeric::Finite(d) => {
                let (m, s) = d.normalized();
                k[1..17].copy_from_slice(&m.to_be_bytes());
                k[17..].copy_from_slice(&s.to_be_bytes());
            }
            Numeric::NaN => k[0] = 1,
            Numeric::PosInf => k[0] = 2,
            Numeric::NegInf => k[0] = 3,
        }
        k
    }

    pub fn is_nan(&self) -> bool {
        matches!(self, Numeric::NaN)
    }

    /// The display scale (0 for the special values).
    pub fn dscale(&self) -> u16 {
        match self {
            Numeric::Finite(d) => d.scale,
            _ => 0,
        }
    }
}

/// Postgres's select_div_scale (numeric.c) for `d / c`, `c` a nonzero
/// integer magnitude (dscale 0).
fn select_div_scale(d: &Dec, c: u128) -> i32 {
    let b = base10000(d);
    let (weight1, first1) = if b.ndigits == 0 {
        (0, 0)
    } else {
        (b.weight, u128::from(b.digits[0]))
    };
    let (mut weight2, mut first2) = (0i32, c);
    while first2 >= NBASE {
        first2 /= NBASE;
        weight2 += 1;
    }
    let mut qweight = weight1 - weight2;
    if first1 <= first2 {
        qweight -= 1;
    }
    let rscale = NUMERIC_MIN_SIG_DIGITS - qweight * DEC_DIGITS;
    rscale
        .max(i32::from(d.scale))
        .clamp(NUMERIC_MIN_DISPLAY_SCALE, NUMERIC_MAX_DISPLAY_SCALE)
}

/// `avg()`'s final step as Postgres computes it: `numeric_div(sum, count)`.
/// A zero count is `DivisionByZero` (Postgres returns NULL there; the caller
/// handles that case).
pub fn avg(sum: &Numeric, count: i64) -> Result<Numeric, ValueError> {
    sum.div_i64(count)
}

impl PartialEq for Numeric {
    fn eq(&self, other: &Numeric) -> bool {
        self.compare(other) == Ordering::Equal
    }
}

impl Eq for Numeric {}

impl PartialOrd for Numeric {
    fn partial_cmp(&self, other: &Numeric) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Numeric {
    fn cmp(&self, other: &Numeric) -> Ordering {
        self.compare(other)
    }
}

impl fmt::Display for Numeric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = Vec::new();
        self.to_text(&mut buf);
        f.write_str(&String::from_utf8_lossy(&buf))
    }
}

#[cfg(test)]
#[path = "tests/numeric.rs"]
mod tests;
