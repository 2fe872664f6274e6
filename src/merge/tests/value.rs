//! Tests of `merge::value`.

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
    let same = |oid: u32, a: &str, b: &str| key(oid, 0, a.as_bytes()) == key(oid, 0, b.as_bytes());
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
