//! Tests of `merge::numeric`.

use super::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn num(s: &str) -> Numeric {
    Numeric::from_text(s.as_bytes()).unwrap()
}

fn text(n: &Numeric) -> String {
    let mut out = Vec::new();
    n.to_text(&mut out);
    String::from_utf8(out).unwrap()
}

fn binary(n: &Numeric) -> Vec<u8> {
    let mut out = Vec::new();
    n.to_binary(&mut out);
    out
}

/// (sum, numeric_send(sum), count, sum / count, numeric_send(sum / count))
/// from a Postgres 15.18 server: `SELECT s::numeric / c` is the
/// numeric_div that avg() ends with.
const PG_DIVISIONS: &[(&str, &str, i64, &str, &str)] = &[
    (
        "3",
        "00010000000000000003",
        2,
        "1.5000000000000000",
        "000200000000001000011388",
    ),
    (
        "5",
        "00010000000000000005",
        3,
        "1.6666666666666667",
        "000500000000001000011a0a1a0a1a0a1a0b",
    ),
    (
        "300000",
        "0001000100000000001e",
        2,
        "150000.000000000000",
        "000100010000000c000f",
    ),
    (
        "0.004",
        "0001ffff000000030028",
        3,
        "0.00133333333333333333",
        "0005ffff00000014000d0d050d050d050d05",
    ),
    (
        "0",
        "0000000000000000",
        2,
        "0.00000000000000000000",
        "0000000000000014",
    ),
    (
        "0.00",
        "0000000000000002",
        7,
        "0.00000000000000000000",
        "0000000000000014",
    ),
    (
        "-1",
        "00010000400000000001",
        3,
        "-0.33333333333333333333",
        "0005ffff400000140d050d050d050d050d05",
    ),
    (
        "-7",
        "00010000400000000007",
        2,
        "-3.5000000000000000",
        "000200004000001000031388",
    ),
    (
        "-0.0000000000000000001",
        "0001fffb40000013000a",
        3,
        "-0.000000000000000000033333333333333333",
        "0005fffb4000002400030d050d050d050d05",
    ),
    (
        "123456789012345678",
        "0005000400000000000c0d801ed204d2162e",
        7,
        "17636684144620811",
        "000500040000000000011dd41ab9116e032b",
    ),
    (
        "123456789012345675",
        "0005000400000000000c0d801ed204d2162b",
        10,
        "12345678901234568",
        "0005000400000000000109291a85007b11d8",
    ),
    (
        "-123456789012345675",
        "0005000440000000000c0d801ed204d2162b",
        10,
        "-12345678901234568",
        "0005000440000000000109291a85007b11d8",
    ),
    (
        "1",
        "00010000000000000001",
        8,
        "0.12500000000000000000",
        "0001ffff0000001404e2",
    ),
    (
        "1",
        "00010000000000000001",
        131072,
        "0.000007629394531250000000",
        "0004fffe0000001802fa24b214c01388",
    ),
    (
        "99999999999999999999999999999999999999",
        "000a0009000000000063270f270f270f270f270f270f270f270f270f",
        3,
        "33333333333333333333333333333333333333",
        "000a00090000000000210d050d050d050d050d050d050d050d050d05",
    ),
    (
        "-99999999999999999999999999999999999999",
        "000a0009400000000063270f270f270f270f270f270f270f270f270f",
        7,
        "-14285714285714285714285714285714285714",
        "000a000940000000000e0b29059416520b29059416520b2905941652",
    ),
    (
        "12345.6789",
        "0003000100000004000109291a85",
        10000,
        "1.23456789000000000000",
        "0003000000000014000109291a85",
    ),
    (
        "12345.6789",
        "0003000100000004000109291a85",
        10001,
        "1.23444444555544445555",
        "000600000000001400010928115c15b3115c15b3",
    ),
    (
        "12345.6789",
        "0003000100000004000109291a85",
        9999,
        "1.2346913591359136",
        "00050000000000100001092a23af23af23b0",
    ),
    (
        "0.001",
        "0001ffff00000003000a",
        3,
        "0.00033333333333333333",
        "0005ffff0000001400030d050d050d050d05",
    ),
    (
        "1.000",
        "00010000000000030001",
        3,
        "0.33333333333333333333",
        "0005ffff000000140d050d050d050d050d05",
    ),
    (
        "100",
        "00010000000000000064",
        -3,
        "-33.3333333333333333",
        "000500004000001000210d050d050d050d05",
    ),
    (
        "7",
        "00010000000000000007",
        9223372036854775807,
        "0.000000000000000000758941520739853104",
        "0005fffb00000024004b22ed14570f910c20",
    ),
    (
        "-9223372036854775808",
        "0005000440000000039a0d2c0170156516b0",
        1,
        "-9223372036854775808",
        "0005000440000000039a0d2c0170156516b0",
    ),
    (
        "9999",
        "0001000000000000270f",
        1,
        "9999.0000000000000000",
        "0001000000000010270f",
    ),
    (
        "10000",
        "00010001000000000001",
        10000,
        "1.00000000000000000000",
        "00010000000000140001",
    ),
    (
        "10001",
        "000200010000000000010001",
        10000,
        "1.00010000000000000000",
        "000200000000001400010001",
    ),
    (
        "9998",
        "0001000000000000270e",
        9999,
        "0.99989998999899989999",
        "0005ffff00000014270e270e270e270e270f",
    ),
    (
        "0.00009999",
        "0001fffe00000008270f",
        9999,
        "0.0000000100000000000000000000",
        "0001fffe0000001c0001",
    ),
    (
        "0.0001",
        "0001ffff000000040001",
        10000,
        "0.0000000100000000000000000000",
        "0001fffe0000001c0001",
    ),
    (
        "5",
        "00010000000000000005",
        100000000,
        "0.000000050000000000000000",
        "0001fffe000000180005",
    ),
    (
        "0.000000000000000000000000000001",
        "0001fff80000001e0064",
        7,
        "0.000000000000000000000000000000142857142857142857",
        "0005fff800000030000e0b29059416520b29",
    ),
    (
        "-9600003.567098381606770000000000",
        "000600014000001803c000031626266e06461e14",
        7,
        "-1371429.081014054515252857142857",
        "000800014000001800890595032a057d11a309e016520b29",
    ),
    (
        "603912630740.241228000000000",
        "000500020000000f179704ef02e4096c0af0",
        1000000007,
        "603.9126265128528424",
        "0005000000000010025b23a60a5b0b2420e8",
    ),
    (
        "-15328141.255231190000000000000000",
        "000400014000001805fc1fcd09f80c2f",
        6,
        "-2554690.209205198333333333333333",
        "000800014000001800ff1252082c0207208d0d050d050d05",
    ),
    (
        "-0.009099991971544010000000",
        "0005ffff40000018005a270f07b3154003e8",
        6,
        "-0.001516665328590668333333",
        "0006ffff40000018000f068214d017121ab10d05",
    ),
    (
        "-40531400.0068153405937173000000",
        "00060001400000160fd50578004405fe02511c05",
        123456789,
        "-0.3283043430427737804984",
        "0006ffff400000160cd301b20be21e391f7120d0",
    ),
    (
        "-0.00007000754205737",
        "0004fffe400000111b581d76023d1b58",
        10001,
        "-0.0000000070000542003169683032",
        "0005fffd4000001c1b58021e001f1b380bd8",
    ),
    (
        "15359438189.28616000000000000000",
        "0005000200000014009917371ffd0b2d1770",
        11,
        "1396312562.66237818181818181818",
        "0008000200000014000d259f0a0219df1e8a071a071a071a",
    ),
    (
        "-556044815.7580943416",
        "000600024000000a000515e412cf1d9c24da0640",
        3000000000,
        "-0.18534827191936478053",
        "0005ffff40000014073d12db077f0e3f1f75",
    ),
    (
        "0.0009974359615",
        "0004ffff0000000d0009260f17491388",
        6,
        "0.00016623932691666667",
        "0005ffff00000014000119df246e23ce1a0b",
    ),
    (
        "-7753895181.94982389603200000",
        "0006000240000011004d150d143d251a09551790",
        123456789,
        "-62.80655154533319262",
        "0006000040000011003e1f81142214d5078607d0",
    ),
    (
        "273891242039378000026723649.0447091",
        "0009000600000007011122d0106b24a200000a700e4101bf038e",
        -3,
        "-91297080679792666675574549.6815697",
        "0009000640000007005b0b9a1f8326401a0a1d8511c51a9f1b3a",
    ),
    (
        "-63105635.197",
        "000300014000000318a6160307b2",
        11,
        "-5736875.927000000000",
        "000300014000000c023d1adb2436",
    ),
    (
        "-912973966.542223",
        "0005000240000006000905110f7e152e08fc",
        10,
        "-91297396.654222300000",
        "000400014000000c23a91ce4198e08b6",
    ),
    (
        "2334.40750871400",
        "000400000000000b091e0feb03670fa0",
        9223372036854775807,
        "0.00000000000000025309696924141929",
        "0005fffc00000020000214bd1b39096e0789",
    ),
];

#[test]
fn avg_matches_postgres() {
    for &(sum, sum_bin, count, quot, quot_bin) in PG_DIVISIONS {
        let s = num(sum);
        assert_eq!(text(&s), sum, "text round trip of {sum}");
        assert_eq!(binary(&s), hex(sum_bin), "numeric_send of {sum}");
        let from_bin = Numeric::from_binary(&hex(sum_bin)).unwrap();
        assert_eq!(text(&from_bin), sum, "numeric_recv of {sum}");
        let q = avg(&s, count).unwrap();
        assert_eq!(text(&q), quot, "{sum} / {count}");
        assert_eq!(binary(&q), hex(quot_bin), "binary of {sum} / {count}");
        let q_bin = Numeric::from_binary(&hex(quot_bin)).unwrap();
        assert_eq!(text(&q_bin), quot);
        assert_eq!(q_bin.dscale(), q.dscale());
    }
}

#[test]
fn avg_examples_from_postgres() {
    // SELECT avg(x) FROM (VALUES ...) v(x)
    let avg_of = |xs: &[&str]| {
        let mut sum = Numeric::from_i64(0);
        for x in xs {
            sum = sum.checked_add(&num(x)).unwrap();
        }
        text(&avg(&sum, xs.len() as i64).unwrap())
    };
    assert_eq!(avg_of(&["1", "2"]), "1.5000000000000000");
    assert_eq!(avg_of(&["1", "2", "2"]), "1.6666666666666667");
    assert_eq!(avg_of(&["100000", "200000"]), "150000.000000000000");
    assert_eq!(avg_of(&["0", "0"]), "0.00000000000000000000");
    assert_eq!(
        avg_of(&["0.001", "0.001", "0.002"]),
        "0.00133333333333333333"
    );
}

#[test]
fn div_result_scale_capped_at_1000() {
    // 1e-1005 / 3: rscale = min(1005, 1000) = 1000, rounds to zero;
    // Postgres sends 0000 0000 0000 03e8.
    let tiny = format!("0.{}1", "0".repeat(1004));
    let s = num(&tiny);
    assert_eq!(binary(&s), hex("0001ff04000003ed03e8"));
    let q = avg(&s, 3).unwrap();
    assert_eq!(text(&q), format!("0.{}", "0".repeat(1000)));
    assert_eq!(binary(&q), hex("00000000000003e8"));
    // 2e-1000 at dscale 1004, / 3 rounds up to 1e-1000.
    let s = num(&format!("0.{}20000", "0".repeat(999)));
    assert_eq!(binary(&s), hex("0001ff06000003ec0002"));
    let q = avg(&s, 3).unwrap();
    assert_eq!(text(&q), format!("0.{}1", "0".repeat(999)));
    assert_eq!(binary(&q), hex("0001ff06000003e80001"));
}

#[test]
fn div_special_values_and_errors() {
    assert!(avg(&Numeric::NaN, 3).unwrap().is_nan());
    assert!(avg(&Numeric::NaN, 0).unwrap().is_nan());
    assert_eq!(avg(&Numeric::PosInf, 3).unwrap(), Numeric::PosInf);
    assert_eq!(avg(&Numeric::PosInf, -3).unwrap(), Numeric::NegInf);
    assert_eq!(avg(&Numeric::NegInf, -3).unwrap(), Numeric::PosInf);
    assert_eq!(avg(&Numeric::NegInf, 3).unwrap(), Numeric::NegInf);
    assert_eq!(avg(&Numeric::PosInf, 0), Err(ValueError::DivisionByZero));
    assert_eq!(avg(&num("1"), 0), Err(ValueError::DivisionByZero));
    // 0 / -3 is a positive zero (Postgres: 0.00000000000000000000).
    let z = avg(&num("0"), -3).unwrap();
    assert_eq!(text(&z), "0.00000000000000000000");
    assert_eq!(binary(&z), hex("0000000000000014"));
    // rscale >= dscale, and rscale only exceeds dscale for quotients of
    // about 20 digits, so a sum that fits always gives a quotient that
    // fits.
    let big = num("9999999999999999999999.9999999999999999");
    assert_eq!(
        text(&avg(&big, 1).unwrap()),
        "9999999999999999999999.9999999999999999"
    );
    let max = num("170141183460469231731687303715884105727");
    assert_eq!(
        text(&avg(&max, -1).unwrap()),
        "-170141183460469231731687303715884105727"
    );
}

#[test]
fn text_and_binary_as_postgres() {
    // (numeric_out, numeric_send) from Postgres 15.
    let cases = [
        ("0", "0000000000000000"),
        ("0.00", "0000000000000002"),
        ("1.0", "00010000000000010001"),
        ("-12.340", "0002000040000003000c0d48"),
        ("NaN", "00000000c0000000"),
        ("Infinity", "00000000d0000020"),
        ("-Infinity", "00000000f0000020"),
        ("10000", "00010001000000000001"),
        ("0.0001", "0001ffff000000040001"),
        ("0.001", "0001ffff00000003000a"),
        ("12345.6789", "0003000100000004000109291a85"),
        ("123456789012345678", "0005000400000000000c0d801ed204d2162e"),
        ("100000000000000000000", "00010005000000000001"),
        ("0.00000000000000000001", "0001fffb000000140001"),
        (
            "-99999999999999999999999999999999999999",
            "000a0009400000000063270f270f270f270f270f270f270f270f270f",
        ),
    ];
    for (t, b) in cases {
        let n = num(t);
        assert_eq!(text(&n), t);
        assert_eq!(binary(&n), hex(b), "{t}");
        let back = Numeric::from_binary(&hex(b)).unwrap();
        assert_eq!(text(&back), t);
        assert_eq!(back, n);
    }
    // Postgres prints -0.00 as 0.00 and sends it positive.
    let z = num("-0.00");
    assert_eq!(text(&z), "0.00");
    assert_eq!(binary(&z), hex("0000000000000002"));
    assert_eq!(text(&num("+1.5")), "1.5");
    assert_eq!(text(&num("00012.50")), "12.50");
}

#[test]
fn from_binary_accepts_unstripped_and_truncates_to_dscale() {
    // 1.0 with a trailing zero digit and a leading zero digit.
    let n = Numeric::from_binary(&hex("0003000100000001000000010000")).unwrap();
    assert_eq!(text(&n), "1.0");
    // Digits beyond dscale are truncated (numeric_recv's trunc_var):
    // 1.2345 sent with dscale 2.
    let n = Numeric::from_binary(&hex("00020000000000020001092900")).unwrap_err();
    assert_eq!(n, ValueError::Malformed { oid: NUMERIC });
    let n = Numeric::from_binary(&hex("000200000000000200010929")).unwrap();
    assert_eq!(text(&n), "1.23");
    let n = Numeric::from_binary(&hex("000200004000000200010929")).unwrap();
    assert_eq!(text(&n), "-1.23");
    // -0.00001 truncated at dscale 2 is zero, sent positive.
    let n = Numeric::from_binary(&hex("0001fffe400000020064")).unwrap();
    assert_eq!(text(&n), "0.00");
    assert_eq!(binary(&n), hex("0000000000000002"));
}

#[test]
fn malformed_and_too_large() {
    let bad = ValueError::Malformed { oid: NUMERIC };
    for t in [
        "", "-", ".", "1.2.3", "1e5", "abc", "nan", " 1", "1 ", "--1",
    ] {
        assert_eq!(Numeric::from_text(t.as_bytes()), Err(bad.clone()), "{t:?}");
    }
    assert_eq!(Numeric::from_text(&[0xff, b'1']), Err(bad.clone()));
    assert_eq!(
        Numeric::from_text(b"999999999999999999999999999999999999999"),
        Err(ValueError::TooLarge)
    );
    assert_eq!(
        Numeric::from_text(b"-170141183460469231731687303715884105728"),
        Err(ValueError::TooLarge)
    );
    let max = "170141183460469231731687303715884105727";
    assert_eq!(text(&num(max)), max);
    assert_eq!(text(&num(&format!("-{max}"))), format!("-{max}"));
    for b in [
        "",
        "0000000000",
        "00010000000000000001ff",
        "0001000000000000",
        "ffff000000000000",
        "00010000000000002710",
        "0000000012340000",
        "000000000000ffff",
    ] {
        assert_eq!(Numeric::from_binary(&hex(b)), Err(bad.clone()), "{b}");
    }
    // 1e100 does not fit.
    assert_eq!(
        Numeric::from_binary(&hex("00010019000000000001")),
        Err(ValueError::TooLarge)
    );
}

#[test]
fn add_follows_postgres() {
    // SELECT 1.5::numeric + 2.250 = 3.750
    assert_eq!(
        text(&num("1.5").checked_add(&num("2.250")).unwrap()),
        "3.750"
    );
    assert_eq!(
        text(&num("-1.5").checked_add(&num("1.50")).unwrap()),
        "0.00"
    );
    let inf = Numeric::PosInf;
    let ninf = Numeric::NegInf;
    assert!(inf.checked_add(&ninf).unwrap().is_nan());
    assert!(ninf.checked_add(&inf).unwrap().is_nan());
    assert_eq!(inf.checked_add(&num("1")).unwrap(), inf);
    assert_eq!(num("1").checked_add(&ninf).unwrap(), ninf);
    assert!(Numeric::NaN.checked_add(&inf).unwrap().is_nan());
    assert!(num("1").checked_add(&Numeric::NaN).unwrap().is_nan());
    let max = num("170141183460469231731687303715884105727");
    assert_eq!(max.checked_add(&num("1")), Err(ValueError::TooLarge));
    assert_eq!(max.checked_add(&num("0.1")), Err(ValueError::TooLarge));
    let min = num("-170141183460469231731687303715884105727");
    assert_eq!(min.checked_add(&num("-1")), Err(ValueError::TooLarge));
    assert_eq!(text(&max.checked_add(&min).unwrap()), "0");
    assert_eq!(text(&Numeric::from_i64(i64::MIN)), "-9223372036854775808");
}

#[test]
fn compare_by_value() {
    let order = [
        "-Infinity",
        "-100000000000000000000",
        "-1.5",
        "-1",
        "-0.0000001",
        "0",
        "0.00000000000000000000000000000000000001",
        "0.5",
        "1",
        "1.0000000000000000000000000000000000001",
        "2",
        "170141183460469231731687303715884105727",
        "Infinity",
        "NaN",
    ];
    for (i, a) in order.iter().enumerate() {
        for (j, b) in order.iter().enumerate() {
            assert_eq!(num(a).compare(&num(b)), i.cmp(&j), "{a} vs {b}");
        }
    }
    assert_eq!(num("1.0").compare(&num("1.00")), Ordering::Equal);
    assert_eq!(num("0").compare(&num("0.000")), Ordering::Equal);
    assert_eq!(num("-2.50").compare(&num("-2.5")), Ordering::Equal);
    assert_eq!(Numeric::NaN, Numeric::NaN);
    // Scaling 1e20 up to 40 digits overflows; it is still the larger.
    let small_scale = num("100000000000000000000");
    let deep = num("0.0000000000000000000000000000000000000001");
    assert_eq!(small_scale.compare(&deep), Ordering::Greater);
    assert_eq!(deep.compare(&small_scale), Ordering::Less);
}

#[test]
fn normalized_key_equal_iff_equal() {
    let vals = [
        "1",
        "1.0",
        "1.00",
        "10",
        "10.0",
        "0.1",
        "0",
        "0.000",
        "-0.00",
        "-1",
        "-1.0",
        "NaN",
        "Infinity",
        "-Infinity",
        "100",
        "0.01",
    ];
    for a in vals {
        for b in vals {
            let (x, y) = (num(a), num(b));
            assert_eq!(
                x.normalized_key() == y.normalized_key(),
                x == y,
                "{a} vs {b}"
            );
        }
    }
    let zero_deep = Numeric::from_binary(&hex("0000000000003fff")).unwrap();
    assert_eq!(zero_deep.normalized_key(), num("0").normalized_key());
}

/// A small deterministic generator for the no-panic checks.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn never_panics_on_arbitrary_bytes() {
    let mut st = 0x9E37_79B9_7F4A_7C15u64;
    let seeds: Vec<Vec<u8>> = PG_DIVISIONS
        .iter()
        .flat_map(|c| [hex(c.1), hex(c.4)])
        .collect();
    for round in 0..20_000 {
        let mut b = seeds[round % seeds.len()].clone();
        let n = (xorshift(&mut st) % 4) as usize;
        for _ in 0..n {
            let r = xorshift(&mut st);
            match r % 3 {
                0 if !b.is_empty() => {
                    let i = (r >> 8) as usize % b.len();
                    b[i] = (r >> 32) as u8;
                }
                1 => b.push((r >> 16) as u8),
                _ => {
                    b.pop();
                }
            }
        }
        if let Ok(v) = Numeric::from_binary(&b) {
            let mut out = Vec::new();
            v.to_binary(&mut out);
            v.to_text(&mut out);
            let _ = v.checked_add(&v);
            let _ = avg(&v, r_count(&mut st));
            let _ = v.normalized_key();
        }
        let _ = Numeric::from_text(&b);
    }
}

fn r_count(st: &mut u64) -> i64 {
    match xorshift(st) % 4 {
        0 => i64::MIN,
        1 => i64::MAX,
        2 => -7,
        _ => (xorshift(st) % 100_000) as i64,
    }
}
