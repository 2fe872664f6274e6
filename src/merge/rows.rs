//! The merge itself, on DataRow bodies as the shards sent them. Only the columns the merge needs
//! are decoded (sort keys, group keys, aggregate partials); every other value is passed on as
//! the bytes that came, in the client's format.
//!
//! - Ordered or cut reads ([`Shape::streams`]): each shard's rows already come sorted (the shard
//!   query keeps the ORDER BY), so the merge keeps one row per shard and sends the least
//!   ([`Shape::compare`]): memory stays at one row per shard, whatever the row count.
//! - Aggregates and DISTINCT ([`Groups`]): rows are combined per group (or de-duplicated), then
//!   HAVING, ORDER BY, OFFSET and LIMIT apply. Memory grows with the number of groups.

use std::cmp::Ordering;
use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use super::numeric::{self, Numeric};
use super::plan::{CmpOp, Column, MergePlan, Operand, Pred, SortKey};
use super::value::{self, FLOAT4, FLOAT8, INT8, NUMERIC, Value, ValueError};

/// Why rows could not be merged.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum MergeError {
    /// A value the merge must compare or combine (0A000 for types, 22xxx for values).
    #[error("{0}")]
    Value(#[from] ValueError),
    /// The result has a shape the plan cannot merge (0A000).
    #[error("{0}")]
    Unsupported(String),
    /// A sum past the range of its type (22003).
    #[error("bigint out of range")]
    OutOfRange,
    /// A DataRow or RowDescription that does not add up (08P01).
    #[error("a shard sent a malformed {0}")]
    Malformed(&'static str),
}

/// One column of a result: its type and the format it is sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub oid: u32,
    pub format: i16,
}

/// Text types: their order depends on the collation.
pub fn is_text(oid: u32) -> bool {
    matches!(
        oid,
        value::TEXT | value::VARCHAR | value::BPCHAR | value::NAME
    )
}

/// A plan applied to the shards' RowDescription.
#[derive(Debug, Clone)]
pub struct Shape {
    /// The shards' columns (visible, then hidden).
    pub fields: Vec<Field>,
    /// What the merge gives per column (aggregates change type and format).
    pub out: Vec<Field>,
    pub visible: usize,
    /// Sort keys with their columns resolved.
    keys: Vec<(usize, SortKey)>,
    columns: Vec<Column>,
    aggregate: bool,
    distinct: bool,
    limit: Option<u64>,
    offset: u64,
    having: Option<Pred>,
}

/// The columns of one DataRow: for each, where its value starts and its length (-1: NULL).
pub type Cols = Vec<(u32, i32)>;

/// Splits a DataRow body into its columns.
pub fn split_row(body: &[u8], cols: &mut Cols) -> Result<(), MergeError> {
    cols.clear();
    let bad = MergeError::Malformed("DataRow");
    let n = u16::from_be_bytes(body.get(..2).ok_or(bad.clone())?.try_into().expect("2")) as usize;
    let mut off = 2usize;
    for _ in 0..n {
        let len = i32::from_be_bytes(
            body.get(off..off + 4)
                .ok_or(bad.clone())?
                .try_into()
                .expect("4"),
        );
        off += 4;
        cols.push((off as u32, len));
        if len > 0 {
            off += len as usize;
        }
    }
    if off != body.len() {
        return Err(bad);
    }
    Ok(())
}

/// The columns of a RowDescription, each as `(start of its name, start of its fixed part)`.
fn description_fields(body: &[u8]) -> Result<Vec<(usize, usize)>, MergeError> {
    let bad = MergeError::Malformed("RowDescription");
    let n = u16::from_be_bytes(body.get(..2).ok_or(bad.clone())?.try_into().expect("2")) as usize;
    let mut off = 2;
    let mut fields = Vec::with_capacity(n);
    for _ in 0..n {
        let fixed = body
            .get(off..)
            .and_then(|b| b.iter().position(|&c| c == 0))
            .ok_or(bad.clone())?
            + off
            + 1;
        body.get(fixed..fixed + 18).ok_or(bad.clone())?;
        fields.push((off, fixed));
        off = fixed + 18;
    }
    Ok(fields)
}

/// The columns of a RowDescription: type OID and format of each.
pub fn fields_of(body: &[u8]) -> Result<Vec<Field>, MergeError> {
    Ok(description_fields(body)?
        .into_iter()
        .map(|(_, fixed)| Field {
            oid: u32::from_be_bytes(body[fixed + 6..fixed + 10].try_into().expect("4")),
            format: i16::from_be_bytes(body[fixed + 16..fixed + 18].try_into().expect("2")),
        })
        .collect())
}

fn cell<'a>(body: &'a [u8], cols: &Cols, i: usize) -> Option<&'a [u8]> {
    let (start, len) = *cols.get(i)?;
    (len >= 0).then(|| &body[start as usize..start as usize + len as usize])
}

impl Shape {
    /// `fields`: the shards' RowDescription; `client`: the format the client asked for each
    /// visible column.
    pub fn new(plan: &MergePlan, fields: Vec<Field>, client: &[i16]) -> Result<Shape, MergeError> {
        let visible = fields
            .len()
            .checked_sub(plan.hidden)
            .ok_or(MergeError::Malformed("RowDescription"))?;
        let keys: Vec<(usize, SortKey)> = plan
            .order
            .iter()
            .map(|k| (plan.position(k.column, fields.len()), *k))
            .collect();
        for &(at, _) in &keys {
            let f = fields
                .get(at)
                .ok_or(MergeError::Malformed("RowDescription"))?;
            if !value::supported(f.oid) {
                return Err(ValueError::Unsupported { oid: f.oid }.into());
            }
        }
        let mut out = fields.clone();
        let columns: Vec<Column> = (0..fields.len()).map(|i| plan.column(i)).collect();
        if plan.aggregate {
            for (i, c) in columns.iter().enumerate() {
                let f = fields[i];
                let format = if i < visible {
                    client.get(i).copied().unwrap_or(0)
                } else {
                    0
                };
                let oid = match c {
                    Column::Plain => continue,
                    Column::Min | Column::Max => {
                        if !value::supported(f.oid) {
                            return Err(ValueError::Unsupported { oid: f.oid }.into());
                        }
                        continue;
                    }
                    Column::Count => INT8,
                    Column::Sum => match f.oid {
                        INT8 | NUMERIC | FLOAT4 | FLOAT8 => f.oid,
                        other => return Err(unsupported_sum("sum", other)),
                    },
                    Column::Avg { .. } => match f.oid {
                        INT8 | NUMERIC => NUMERIC,
                        FLOAT8 => FLOAT8,
                        other => return Err(unsupported_sum("avg", other)),
                    },
                };
                out[i] = Field { oid, format };
            }
        }
        Ok(Shape {
            fields,
            out,
            visible,
            keys,
            columns,
            aggregate: plan.aggregate,
            distinct: plan.distinct,
            limit: plan.limit,
            offset: plan.offset,
            having: plan.having.clone(),
        })
    }

    /// Rows can be merged one per shard at a time (no grouping, no de-duplication).
    pub fn streams(&self) -> bool {
        !self.aggregate && !self.distinct
    }

    /// The merge compares text (sort keys, min/max) in the database's collation, which must then
    /// be "C" for the bytewise comparison to be right.
    pub fn compares_text(&self) -> bool {
        self.keys
            .iter()
            .any(|(at, k)| !k.c_collation && is_text(self.fields[*at].oid))
            || (self.aggregate
                && self
                    .columns
                    .iter()
                    .zip(&self.fields)
                    .any(|(c, f)| matches!(c, Column::Min | Column::Max) && is_text(f.oid)))
    }

    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Checks that a shard's row decodes where the merge will compare it.
    pub fn check_keys(&self, body: &[u8], cols: &Cols) -> Result<(), MergeError> {
        for &(at, _) in &self.keys {
            if let Some(raw) = cell(body, cols, at) {
                let f = self.fields[at];
                value::decode(f.oid, f.format, raw)?;
            }
        }
        Ok(())
    }

    /// The order of two rows of the shards (both checked with [`Self::check_keys`]).
    pub fn compare(&self, a: &[u8], a_cols: &Cols, b: &[u8], b_cols: &Cols) -> Ordering {
        let fields = &self.fields;
        for &(at, key) in &self.keys {
            let ord = compare_cells(fields[at], cell(a, a_cols, at), cell(b, b_cols, at), key);
            if ord != Ordering::Equal {
                return ord;
            }
        }
        Ordering::Equal
    }

    /// Appends a shard's row as the client sees it: hidden columns dropped.
    pub fn write_visible(&self, body: &[u8], cols: &Cols, out: &mut BytesMut) {
        if self.visible == cols.len() {
            write_frame(out, b'D', body);
            return;
        }
        let end = match self.visible {
            0 => 2,
            v => {
                let (start, len) = cols[v - 1];
                start as usize + len.max(0) as usize
            }
        };
        out.put_u8(b'D');
        out.put_u32((4 + end) as u32);
        out.put_u16(self.visible as u16);
        out.extend_from_slice(&body[2..end]);
    }

    /// The client's RowDescription: hidden columns dropped, aggregate columns with their type
    /// and every column with the client's format.
    pub fn describe(&self, body: &[u8]) -> Result<Bytes, MergeError> {
        let fields = description_fields(body)?;
        let mut out = BytesMut::with_capacity(body.len());
        out.put_u16(self.visible as u16);
        for (i, &(name, fixed)) in fields.iter().enumerate().take(self.visible) {
            out.extend_from_slice(&body[name..fixed + 6]); // name, table oid, column number
            let o = self.out[i];
            if o.oid != self.fields[i].oid {
                out.put_u32(o.oid);
                out.put_i16(if o.oid == NUMERIC { -1 } else { 8 });
                out.put_i32(-1);
            } else {
                out.extend_from_slice(&body[fixed + 6..fixed + 16]);
            }
            out.put_i16(o.format);
        }
        Ok(out.freeze())
    }
}

fn unsupported_sum(name: &str, oid: u32) -> MergeError {
    MergeError::Unsupported(format!(
        "{name}() over values of type {} cannot be merged over several shards; add a condition on the shard key so the query runs on one shard",
        value::type_name(oid).map_or_else(|| format!("oid {oid}"), str::to_string)
    ))
}

fn compare_cells(f: Field, a: Option<&[u8]>, b: Option<&[u8]>, key: SortKey) -> Ordering {
    let ord = match (a, b) {
        (None, None) => return Ordering::Equal,
        (None, Some(_)) => {
            return if key.nulls_first {
                Ordering::Less
            } else {
                Ordering::Greater
            };
        }
        (Some(_), None) => {
            return if key.nulls_first {
                Ordering::Greater
            } else {
                Ordering::Less
            };
        }
        (Some(a), Some(b)) => match (
            value::decode(f.oid, f.format, a),
            value::decode(f.oid, f.format, b),
        ) {
            (Ok(a), Ok(b)) => value::compare(&a, &b),
            // Checked when the rows came in.
            _ => Ordering::Equal,
        },
    };
    if key.desc { ord.reverse() } else { ord }
}

pub fn write_frame(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_u32((body.len() + 4) as u32);
    out.extend_from_slice(body);
}

/// One column of a group being merged.
#[derive(Debug, Clone)]
enum Cell {
    /// A group key or passed-through value: the first shard's bytes.
    Plain(Option<Bytes>),
    Count(i64),
    SumInt(Option<i128>),
    SumNum(Option<Numeric>),
    SumFloat(Option<f64>),
    SumFloat4(Option<f32>),
    /// min/max: the best value so far, as sent.
    Best(Option<Bytes>),
}

/// Rows combined per group (aggregates) or de-duplicated (DISTINCT).
pub struct Groups {
    index: HashMap<Vec<u8>, usize>,
    groups: Vec<Vec<Cell>>,
    key: Vec<u8>,
}

impl Default for Groups {
    fn default() -> Self {
        Self::new()
    }
}

impl Groups {
    pub fn new() -> Groups {
        Groups {
            index: HashMap::new(),
            groups: Vec::new(),
            key: Vec::new(),
        }
    }

    /// Adds one shard row.
    pub fn add(&mut self, shape: &Shape, body: &Bytes, cols: &Cols) -> Result<(), MergeError> {
        if cols.len() != shape.fields.len() {
            return Err(MergeError::Malformed("DataRow"));
        }
        self.key.clear();
        for (i, c) in shape.columns.iter().enumerate() {
            // Without aggregates (DISTINCT) every column is a key.
            if shape.aggregate && *c != Column::Plain {
                continue;
            }
            match cell(body, cols, i) {
                None => self.key.push(0),
                Some(raw) => {
                    self.key.push(1);
                    let f = shape.fields[i];
                    value::group_key(f.oid, f.format, raw, &mut self.key)?;
                }
            }
        }
        let at = match self.index.get(&self.key) {
            Some(&at) => at,
            None => {
                let cells = shape
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| empty_cell(shape, *c, i))
                    .collect();
                self.groups.push(cells);
                self.index.insert(self.key.clone(), self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        let group = &mut self.groups[at];
        for (i, c) in group.iter_mut().enumerate() {
            let raw = cell(body, cols, i);
            let f = shape.fields[i];
            match c {
                Cell::Plain(v) => {
                    if v.is_none()
                        && let Some(r) = raw
                    {
                        *v = Some(body.slice_ref(r));
                    }
                }
                Cell::Best(best) => {
                    let Some(r) = raw else { continue };
                    let new = value::decode(f.oid, f.format, r)?;
                    let better = match best {
                        None => true,
                        Some(b) => {
                            let old = value::decode(f.oid, f.format, b)?;
                            let ord = value::compare(&new, &old);
                            if matches!(shape.columns[i], Column::Min) {
                                ord == Ordering::Less
                            } else {
                                ord == Ordering::Greater
                            }
                        }
                    };
                    if better {
                        *best = Some(body.slice_ref(r));
                    }
                }
                Cell::Count(n) => {
                    if let Some(r) = raw {
                        *n = n.checked_add(int(f, r)?).ok_or(MergeError::OutOfRange)?;
                    }
                }
                Cell::SumInt(s) => {
                    if let Some(r) = raw {
                        let v = i128::from(int(f, r)?);
                        *s = Some(s.unwrap_or(0) + v);
                    }
                }
                Cell::SumNum(s) => {
                    if let Some(r) = raw {
                        let v = match value::decode(f.oid, f.format, r)? {
                            Value::Num(n) => n,
                            _ => return Err(MergeError::Malformed("numeric")),
                        };
                        *s = Some(match s {
                            None => v,
                            Some(old) => old.checked_add(&v)?,
                        });
                    }
                }
                Cell::SumFloat(s) => {
                    if let Some(r) = raw {
                        *s = Some(s.unwrap_or(0.0) + float(f, r)?);
                    }
                }
                Cell::SumFloat4(s) => {
                    if let Some(r) = raw {
                        *s = Some(s.unwrap_or(0.0) + float(f, r)? as f32);
                    }
                }
            }
        }
        Ok(())
    }

    /// The merged rows: HAVING, DISTINCT, ORDER BY, OFFSET and LIMIT applied, each row's
    /// visible columns written as a DataRow. Returns the number of rows.
    pub fn finish(self, shape: &Shape, out: &mut BytesMut) -> Result<u64, MergeError> {
        let mut rows: Vec<Vec<Option<Bytes>>> = Vec::with_capacity(self.groups.len());
        for g in &self.groups {
            rows.push(final_cells(shape, g)?);
        }
        if let Some(h) = &shape.having {
            let mut kept = Vec::with_capacity(rows.len());
            for r in rows {
                if eval(h, shape, &r)? == Some(true) {
                    kept.push(r);
                }
            }
            rows = kept;
        }
        if shape.aggregate && shape.distinct {
            let mut seen = std::collections::HashSet::new();
            let mut kept = Vec::with_capacity(rows.len());
            for r in rows {
                let mut key = Vec::new();
                for (i, v) in r.iter().take(shape.visible).enumerate() {
                    match v {
                        None => key.push(0),
                        Some(raw) => {
                            key.push(1);
                            let f = shape.out[i];
                            value::group_key(f.oid, f.format, raw, &mut key)?;
                        }
                    }
                }
                if seen.insert(key) {
                    kept.push(r);
                }
            }
            rows = kept;
        }
        if !shape.keys.is_empty() {
            for r in &rows {
                for &(at, _) in &shape.keys {
                    if let Some(raw) = &r[at] {
                        let f = shape.out[at];
                        value::decode(f.oid, f.format, raw)?;
                    }
                }
            }
            rows.sort_by(|a, b| {
                for &(at, key) in &shape.keys {
                    let ord = compare_cells(shape.out[at], a[at].as_deref(), b[at].as_deref(), key);
                    if ord != Ordering::Equal {
                        return ord;
                    }
                }
                Ordering::Equal
            });
        }
        let skip = usize::try_from(shape.offset).unwrap_or(usize::MAX);
        let take = shape
            .limit
            .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
        let mut n = 0;
        for r in rows.iter().skip(skip).take(take) {
            let len: usize = 2 + r
                .iter()
                .take(shape.visible)
                .map(|v| 4 + v.as_ref().map_or(0, |b| b.len()))
                .sum::<usize>();
            out.put_u8(b'D');
            out.put_u32((len + 4) as u32);
            out.put_u16(shape.visible as u16);
            for v in r.iter().take(shape.visible) {
                match v {
                    None => out.put_i32(-1),
                    Some(b) => {
                        out.put_i32(b.len() as i32);
                        out.extend_from_slice(b);
                    }
                }
            }
            n += 1;
        }
        Ok(n)
    }
}

fn empty_cell(shape: &Shape, c: Column, i: usize) -> Cell {
    if !shape.aggregate {
        return Cell::Plain(None);
    }
    match c {
        Column::Plain => Cell::Plain(None),
        Column::Min | Column::Max => Cell::Best(None),
        Column::Count => Cell::Count(0),
        Column::Sum | Column::Avg { .. } => match shape.fields[i].oid {
            INT8 => Cell::SumInt(None),
            NUMERIC => Cell::SumNum(None),
            FLOAT4 => Cell::SumFloat4(None),
            _ => Cell::SumFloat(None),
        },
    }
}

fn int(f: Field, raw: &[u8]) -> Result<i64, MergeError> {
    match value::decode(f.oid, f.format, raw)? {
        Value::Int(n) => Ok(n),
        _ => Err(MergeError::Malformed("count")),
    }
}

fn float(f: Field, raw: &[u8]) -> Result<f64, MergeError> {
    match value::decode(f.oid, f.format, raw)? {
        Value::Float(x) => Ok(x),
        _ => Err(MergeError::Malformed("float")),
    }
}

/// A group's columns as the client gets them (in the formats of [`Shape::out`]).
fn final_cells(shape: &Shape, g: &[Cell]) -> Result<Vec<Option<Bytes>>, MergeError> {
    let mut cells = Vec::with_capacity(g.len());
    for (i, c) in g.iter().enumerate() {
        let format = shape.out[i].format;
        let mut buf = Vec::new();
        let v = match (c, shape.columns[i]) {
            (Cell::Plain(v) | Cell::Best(v), _) => v.clone(),
            (Cell::Count(n), _) => {
                value::encode_int8(*n, format, &mut buf);
                Some(Bytes::from(buf))
            }
            (sum, Column::Avg { count_at }) => {
                let count = match &g[count_at] {
                    Cell::Count(n) => *n,
                    _ => return Err(MergeError::Malformed("avg count")),
                };
                if count == 0 {
                    None
                } else {
                    match sum {
                        Cell::SumInt(Some(s)) => {
                            let n = Numeric::Finite(numeric::Dec::new(*s, 0)?);
                            value::encode_numeric(&numeric::avg(&n, count)?, format, &mut buf);
                        }
                        Cell::SumNum(Some(s)) => {
                            value::encode_numeric(&numeric::avg(s, count)?, format, &mut buf)
                        }
                        Cell::SumFloat(Some(s)) => {
                            value::encode_float8(s / count as f64, format, &mut buf)
                        }
                        _ => return Err(MergeError::Malformed("avg")),
                    }
                    Some(Bytes::from(buf))
                }
            }
            (Cell::SumInt(s), _) => match s {
                None => None,
                Some(s) => {
                    let s = i64::try_from(*s).map_err(|_| MergeError::OutOfRange)?;
                    value::encode_int8(s, format, &mut buf);
                    Some(Bytes::from(buf))
                }
            },
            (Cell::SumNum(s), _) => s.as_ref().map(|s| {
                value::encode_numeric(s, format, &mut buf);
                Bytes::from(buf)
            }),
            (Cell::SumFloat(s), _) => s.map(|s| {
                value::encode_float8(s, format, &mut buf);
                Bytes::from(buf)
            }),
            (Cell::SumFloat4(s), _) => s.map(|s| {
                value::encode_float4(s, format, &mut buf);
                Bytes::from(buf)
            }),
        };
        cells.push(v);
    }
    Ok(cells)
}

/// A HAVING condition on a merged group, in SQL's three-valued logic (None: unknown).
fn eval(p: &Pred, shape: &Shape, row: &[Option<Bytes>]) -> Result<Option<bool>, MergeError> {
    Ok(match p {
        Pred::And(a, b) => match (eval(a, shape, row)?, eval(b, shape, row)?) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
        Pred::Or(a, b) => match (eval(a, shape, row)?, eval(b, shape, row)?) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
        Pred::Not(a) => eval(a, shape, row)?.map(|b| !b),
        Pred::IsNull { operand, negated } => {
            let null = match operand {
                Operand::Column(i) => row.get(*i).is_none_or(|v| v.is_none()),
                Operand::Null => true,
                _ => false,
            };
            Some(null != *negated)
        }
        Pred::Cmp { left, op, right } => {
            let ord = match (left, right) {
                (Operand::Column(i), other) => compare_operand(shape, row, *i, other)?,
                (other, Operand::Column(i)) => {
                    compare_operand(shape, row, *i, other)?.map(Ordering::reverse)
                }
                _ => {
                    return Err(MergeError::Unsupported(
                        "a HAVING comparison of two constants cannot be merged; drop it or add a condition on the shard key".into(),
                    ));
                }
            };
            ord.map(|o| match op {
                CmpOp::Eq => o == Ordering::Equal,
                CmpOp::NotEq => o != Ordering::Equal,
                CmpOp::Lt => o == Ordering::Less,
                CmpOp::LtEq => o != Ordering::Greater,
                CmpOp::Gt => o == Ordering::Greater,
                CmpOp::GtEq => o != Ordering::Less,
            })
        }
    })
}

/// Column `i` of a merged group compared with an operand.
fn compare_operand(
    shape: &Shape,
    row: &[Option<Bytes>],
    i: usize,
    other: &Operand,
) -> Result<Option<Ordering>, MergeError> {
    let f = shape.out[i];
    let Some(raw) = row.get(i).and_then(|v| v.as_deref()) else {
        return Ok(None);
    };
    let left = value::decode(f.oid, f.format, raw)?;
    let text;
    let right = match other {
        Operand::Null => return Ok(None),
        Operand::Column(j) => {
            let g = shape.out[*j];
            match row.get(*j).and_then(|v| v.as_deref()) {
                None => return Ok(None),
                Some(r) => value::decode(g.oid, g.format, r)?,
            }
        }
        Operand::Bool(b) => Value::Bool(*b),
        Operand::Number(n) => {
            return Ok(Some(compare_number(&left, n)?));
        }
        Operand::Text(s) => {
            text = s.as_bytes();
            value::decode(f.oid, 0, text)?
        }
    };
    Ok(Some(value::compare(&left, &right)))
}

/// A numeric value compared with a number literal, across integer, numeric and float.
fn compare_number(left: &Value<'_>, literal: &str) -> Result<Ordering, MergeError> {
    let lit = Numeric::from_text(literal.as_bytes())?;
    Ok(match left {
        Value::Int(n) => Numeric::from_i64(*n).compare(&lit),
        Value::Num(n) => n.compare(&lit),
        Value::Float(x) => {
            let y: f64 = literal
                .parse()
                .map_err(|_| MergeError::Malformed("number"))?;
            x.partial_cmp(&y).unwrap_or(if x.is_nan() {
                Ordering::Greater
            } else {
                Ordering::Less
            })
        }
        _ => {
            return Err(MergeError::Unsupported(
                "a HAVING comparison of a non-numeric value with a number".into(),
            ));
        }
    })
}

#[cfg(test)]
#[path = "tests/rows.rs"]
mod tests;
