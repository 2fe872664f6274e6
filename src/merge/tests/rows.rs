//! Tests of `merge::rows`.

use super::*;
use crate::merge::plan::{Merge, merge_plan};

fn plan(sql: &str) -> MergePlan {
    match merge_plan(sql, &[]) {
        Ok(Merge::Plan(p)) => p,
        other => panic!("{other:?}"),
    }
}

fn row(values: &[Option<&str>]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u16(values.len() as u16);
    for v in values {
        match v {
            None => b.put_i32(-1),
            Some(s) => {
                b.put_i32(s.len() as i32);
                b.extend_from_slice(s.as_bytes());
            }
        }
    }
    b.freeze()
}

fn rows_of(out: &[u8]) -> Vec<Vec<Option<String>>> {
    let mut v = Vec::new();
    let mut off = 0;
    let mut cols = Cols::new();
    while off < out.len() {
        let len = u32::from_be_bytes(out[off + 1..off + 5].try_into().unwrap()) as usize;
        let body = &out[off + 5..off + 1 + len];
        split_row(body, &mut cols).unwrap();
        v.push(
            (0..cols.len())
                .map(|i| cell(body, &cols, i).map(|c| String::from_utf8_lossy(c).into()))
                .collect(),
        );
        off += 1 + len;
    }
    v
}

fn text(oids: &[u32]) -> Vec<Field> {
    oids.iter().map(|&oid| Field { oid, format: 0 }).collect()
}

#[test]
fn ordered_rows_compare_by_type_and_hidden_columns_are_dropped() {
    let p = plan("SELECT name FROM t ORDER BY n DESC NULLS LAST");
    let shape = Shape::new(&p, text(&[value::TEXT, value::INT4]), &[0]).unwrap();
    assert!(shape.streams());
    let (a, b, c) = (
        row(&[Some("a"), Some("9")]),
        row(&[Some("b"), Some("10")]),
        row(&[Some("c"), None]),
    );
    let (mut ca, mut cb, mut cc) = (Cols::new(), Cols::new(), Cols::new());
    split_row(&a, &mut ca).unwrap();
    split_row(&b, &mut cb).unwrap();
    split_row(&c, &mut cc).unwrap();
    // 10 > 9 as integers (not as text); NULL last.
    assert_eq!(shape.compare(&b, &cb, &a, &ca), Ordering::Less);
    assert_eq!(shape.compare(&c, &cc, &a, &ca), Ordering::Greater);
    let mut out = BytesMut::new();
    shape.write_visible(&b, &cb, &mut out);
    assert_eq!(rows_of(&out), vec![vec![Some("b".to_string())]]);
}

#[test]
fn groups_combine_counts_sums_avg_and_having() {
    let p = plan(
        "SELECT g, count(*), sum(x), avg(x), min(s) FROM t GROUP BY g HAVING count(*) > 2 ORDER BY g",
    );
    // g, count, sum(x) (int8 from int4), sum(x) for avg, min(s), hidden count(x)
    let fields = text(&[value::TEXT, INT8, INT8, INT8, value::TEXT, INT8]);
    let shape = Shape::new(&p, fields, &[0, 0, 0, 0, 0]).unwrap();
    assert_eq!(shape.out[3].oid, NUMERIC);
    let mut groups = Groups::new();
    let mut cols = Cols::new();
    for r in [
        row(&[
            Some("a"),
            Some("2"),
            Some("3"),
            Some("3"),
            Some("m"),
            Some("2"),
        ]),
        row(&[
            Some("b"),
            Some("1"),
            Some("5"),
            Some("5"),
            Some("z"),
            Some("1"),
        ]),
        row(&[
            Some("a"),
            Some("1"),
            Some("4"),
            Some("4"),
            Some("k"),
            Some("1"),
        ]),
        row(&[Some("b"), Some("1"), None, None, None, Some("0")]),
    ] {
        split_row(&r, &mut cols).unwrap();
        groups.add(&shape, &r, &cols).unwrap();
    }
    let mut out = BytesMut::new();
    assert_eq!(groups.finish(&shape, &mut out).unwrap(), 1);
    assert_eq!(
        rows_of(&out),
        vec![vec![
            Some("a".into()),
            Some("3".into()),
            Some("7".into()),
            Some("2.3333333333333333".into()),
            Some("k".into())
        ]]
    );
}

#[test]
fn distinct_uses_values_not_bytes() {
    let p = plan("SELECT DISTINCT x FROM t ORDER BY x");
    let shape = Shape::new(&p, text(&[NUMERIC]), &[0]).unwrap();
    let mut groups = Groups::new();
    let mut cols = Cols::new();
    for r in [
        row(&[Some("1.0")]),
        row(&[Some("1.00")]),
        row(&[Some("0.5")]),
    ] {
        split_row(&r, &mut cols).unwrap();
        groups.add(&shape, &r, &cols).unwrap();
    }
    let mut out = BytesMut::new();
    assert_eq!(groups.finish(&shape, &mut out).unwrap(), 2);
    assert_eq!(
        rows_of(&out),
        vec![vec![Some("0.5".into())], vec![Some("1.0".into())]]
    );
}

#[test]
fn unsupported_sums_are_refused() {
    let p = plan("SELECT sum(d) FROM t");
    let e = Shape::new(&p, text(&[1186]), &[0]).unwrap_err();
    assert!(e.to_string().contains("interval"), "{e}");
}
