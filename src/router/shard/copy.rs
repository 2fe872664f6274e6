//! `COPY table [(columns)] FROM STDIN` into a sharded table: what the statement says (columns,
//! format) and the rows of its data cut by key, so each row goes to its own shard.
//!
//! Text format: a row ends at an unescaped newline, fields are split at the delimiter (tab), and
//! the key field is unescaped (`\t`, `\\`, octal ...). CSV: a row ends at a newline outside quotes,
//! a quoted field has its quotes removed and `""` unescaped. With HEADER, the first line goes to
//! every shard (each server skips it). `\.` alone on a line ends the data and goes to every shard.
//! Binary COPY is not split (refused by the caller).

use crate::router::lex::{Kind, Lexer};

/// A COPY FROM STDIN statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyIn {
    pub table: String,
    /// The column list, lowercased; empty when the statement has none.
    pub columns: Vec<String>,
    pub csv: bool,
    pub binary: bool,
    pub header: bool,
    pub delimiter: u8,
    pub quote: u8,
}

/// The COPY FROM STDIN in `sql`, if that is what it is: `COPY [schema.]table [(columns)] FROM
/// STDIN [[WITH] (option [value], ...)]` or the old `[WITH] BINARY | CSV [HEADER] | DELIMITER
/// [AS] 'c' | QUOTE [AS] 'c' ...` forms. Read with the lexer rather than sqlparser, which refuses
/// some options Postgres takes (`FREEZE ON`, which pgbench sends).
pub fn copy_in(sql: &str) -> Option<CopyIn> {
    let src = sql.as_bytes();
    let toks: Vec<_> = Lexer::new(src)
        .filter(|t| !t.is_blank() && t.kind != Kind::Semicolon)
        .collect();
    let text = |i: usize| toks.get(i).map(|t| &sql[t.start..t.end]);
    let word = |i: usize, w: &str| {
        toks.get(i)
            .is_some_and(|t| t.kind == Kind::Ident && sql[t.start..t.end].eq_ignore_ascii_case(w))
    };
    let punct = |i: usize, p: &str| {
        toks.get(i)
            .is_some_and(|t| t.kind == Kind::Punct && &sql[t.start..t.end] == p)
    };
    let ident = |i: usize| -> Option<String> {
        let t = toks.get(i)?;
        let raw = &sql[t.start..t.end];
        match t.kind {
            Kind::Ident => Some(raw.to_lowercase()),
            Kind::QuotedIdent => Some(raw[1..raw.len() - 1].replace("\"\"", "\"")),
            _ => None,
        }
    };
    let char_of = |i: usize| -> Option<u8> {
        let t = toks.get(i)?;
        match t.kind {
            Kind::Str { .. } => src.get(t.end - 2).copied().filter(|_| t.end - t.start == 3),
            _ => None,
        }
    };
    if !word(0, "copy") {
        return None;
    }
    let mut i = 1;
    let mut table = ident(i)?;
    i += 1;
    while punct(i, ".") {
        table = ident(i + 1)?;
        i += 2;
    }
    let mut columns = Vec::new();
    if punct(i, "(") {
        i += 1;
        loop {
            columns.push(ident(i)?);
            i += 1;
            if punct(i, ",") {
                i += 1;
            } else if punct(i, ")") {
                i += 1;
                break;
            } else {
                return None;
            }
        }
    }
    if !(word(i, "from") && word(i + 1, "stdin")) {
        return None;
    }
    i += 2;
    let mut c = CopyIn {
        table,
        columns,
        csv: false,
        binary: false,
        header: false,
        delimiter: b'\t',
        quote: b'"',
    };
    let mut delimiter = None;
    if word(i, "with") {
        i += 1;
    }
    let truthy = |v: Option<&str>| {
        v.is_none_or(|v| {
            matches!(
                v.trim_matches('\'').to_ascii_lowercase().as_str(),
                "true" | "on" | "1" | "match"
            )
        })
    };
    if punct(i, "(") {
        // (option [value], ...)
        i += 1;
        while !punct(i, ")") {
            let name = text(i)?.to_ascii_lowercase();
            i += 1;
            let value = if punct(i, ",") || punct(i, ")") {
                None
            } else {
                i += 1;
                Some(i - 1)
            };
            match name.as_str() {
                "format" => {
                    let f = text(value?)?.trim_matches('\'').to_ascii_lowercase();
                    c.csv = f == "csv";
                    c.binary = f == "binary";
                }
                "header" => c.header = truthy(value.and_then(text)),
                "delimiter" => delimiter = Some(char_of(value?)?),
                "quote" => c.quote = char_of(value?)?,
                _ => {}
            }
            if punct(i, ",") {
                i += 1;
            }
            toks.get(i)?;
        }
    } else {
        // The pre-9.0 forms.
        while i < toks.len() {
            if word(i, "binary") {
                c.binary = true;
            } else if word(i, "csv") {
                c.csv = true;
            } else if word(i, "header") {
                c.header = true;
            } else if word(i, "delimiter") || word(i, "quote") {
                let is_delim = word(i, "delimiter");
                if word(i + 1, "as") {
                    i += 1;
                }
                let ch = char_of(i + 1)?;
                if is_delim {
                    delimiter = Some(ch);
                } else {
                    c.quote = ch;
                }
                i += 1;
            }
            i += 1;
        }
    }
    c.delimiter = delimiter.unwrap_or(if c.csv { b',' } else { b'\t' });
    Some(c)
}

/// One line of COPY data.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// The header, or the `\.` end marker: for every shard.
    Every(&'a [u8]),
    /// A row and its key field's value (None: NULL or missing).
    Row {
        key: Option<String>,
        bytes: &'a [u8],
    },
}

/// Cuts a COPY data stream into lines, whatever the chunk boundaries.
pub struct RowSplitter {
    key: usize,
    csv: bool,
    delimiter: u8,
    quote: u8,
    header_pending: bool,
    carry: Vec<u8>,
}

impl RowSplitter {
    /// `key`: the position of the shard key among the copied columns.
    pub fn new(c: &CopyIn, key: usize) -> RowSplitter {
        RowSplitter {
            key,
            csv: c.csv,
            delimiter: c.delimiter,
            quote: c.quote,
            header_pending: c.header,
            carry: Vec::new(),
        }
    }

    /// Feeds a chunk; calls `each` for every whole line (newline included).
    pub fn feed(&mut self, data: &[u8], each: &mut dyn FnMut(Line<'_>)) {
        self.carry.extend_from_slice(data);
        let buf = std::mem::take(&mut self.carry);
        let mut start = 0;
        let mut in_quotes = false;
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            if self.csv && b == self.quote {
                in_quotes = !in_quotes;
            } else if !self.csv && b == b'\\' {
                i += 2;
                continue;
            } else if b == b'\n' && !in_quotes {
                let line = &buf[start..=i];
                self.line(line, each);
                start = i + 1;
            }
            i += 1;
        }
        self.carry = buf[start..].to_vec();
    }

    /// What is left without a newline at the end of the data (a last line without one).
    pub fn finish(&mut self, each: &mut dyn FnMut(Line<'_>)) {
        let rest = std::mem::take(&mut self.carry);
        if !rest.is_empty() {
            self.line(&rest, each);
        }
    }

    fn line(&mut self, line: &[u8], each: &mut dyn FnMut(Line<'_>)) {
        if std::mem::take(&mut self.header_pending) {
            each(Line::Every(line));
            return;
        }
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if body == b"\\." {
            each(Line::Every(line));
            return;
        }
        let key = if self.csv {
            csv_field(body, self.key, self.delimiter, self.quote)
        } else {
            text_field(body, self.key, self.delimiter)
        };
        each(Line::Row { key, bytes: line });
    }
}

fn text_field(row: &[u8], n: usize, delim: u8) -> Option<String> {
    let mut field = 0;
    let mut out = Vec::new();
    let mut i = 0;
    while i < row.len() {
        let b = row[i];
        if b == delim {
            if field == n {
                break;
            }
            field += 1;
        } else if field == n {
            if b == b'\\' && i + 1 < row.len() {
                i += 1;
                let e = row[i];
                if e == b'N' && out.is_empty() {
                    return None;
                }
                out.push(match e {
                    b'n' => b'\n',
                    b't' => b'\t',
                    b'r' => b'\r',
                    b'b' => 8,
                    b'f' => 12,
                    b'v' => 11,
                    other => other,
                });
            } else {
                out.push(b);
            }
        } else if b == b'\\' {
            i += 1;
        }
        i += 1;
    }
    (field == n).then(|| String::from_utf8_lossy(&out).into_owned())
}

fn csv_field(row: &[u8], n: usize, delim: u8, quote: u8) -> Option<String> {
    let mut field = 0;
    let mut out = Vec::new();
    let mut quoted = false;
    let mut was_quoted = false;
    let mut i = 0;
    while i < row.len() {
        let b = row[i];
        if quoted {
            if b == quote {
                if row.get(i + 1) == Some(&quote) {
                    if field == n {
                        out.push(quote);
                    }
                    i += 1;
                } else {
                    quoted = false;
                }
            } else if field == n {
                out.push(b);
            }
        } else if b == quote {
            quoted = true;
            was_quoted |= field == n;
        } else if b == delim {
            if field == n {
                break;
            }
            field += 1;
        } else if field == n {
            out.push(b);
        }
        i += 1;
    }
    if field != n || (out.is_empty() && !was_quoted) {
        return None;
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(c: &CopyIn, key: usize, chunks: &[&[u8]]) -> Vec<(String, Option<String>)> {
        let mut s = RowSplitter::new(c, key);
        let mut out = Vec::new();
        for chunk in chunks {
            s.feed(chunk, &mut |l| match l {
                Line::Every(b) => out.push((String::from_utf8_lossy(b).into(), Some("*".into()))),
                Line::Row { key, bytes } => out.push((String::from_utf8_lossy(bytes).into(), key)),
            });
        }
        s.finish(&mut |l| {
            if let Line::Row { key, bytes } = l {
                out.push((String::from_utf8_lossy(bytes).into(), key))
            }
        });
        out
    }

    #[test]
    fn statements() {
        let c = copy_in("COPY users (id, Name) FROM STDIN WITH (FORMAT csv, HEADER true)").unwrap();
        assert_eq!(c.table, "users");
        assert_eq!(c.columns, vec!["id", "name"]);
        assert!(c.csv && c.header && c.delimiter == b',');
        let t = copy_in("copy users from stdin").unwrap();
        assert!(!t.csv && t.columns.is_empty() && t.delimiter == b'\t');
        assert!(copy_in("COPY users TO STDOUT").is_none());
        assert!(copy_in("COPY users FROM '/tmp/x'").is_none());
        // What pgbench -i sends, which sqlparser refuses.
        let p = copy_in("copy pgbench_accounts from stdin with (freeze on)").unwrap();
        assert_eq!(p.table, "pgbench_accounts");
        assert!(!p.csv && p.delimiter == b'\t');
        let q = copy_in("COPY public.\"Users\" (a) FROM STDIN WITH CSV HEADER DELIMITER AS ';'")
            .unwrap();
        assert_eq!(
            (q.table.as_str(), q.csv, q.header, q.delimiter),
            ("Users", true, true, b';')
        );
        let b = copy_in("COPY t FROM STDIN (FORMAT binary)").unwrap();
        assert!(b.binary);
    }

    #[test]
    fn text_rows_across_chunks() {
        let c = copy_in("COPY t (a, id) FROM STDIN").unwrap();
        let got = split(&c, 1, &[b"x\\tq\t4", b"2\nz\t7\n", b"\\N\t\\N\n\\.\n"]);
        assert_eq!(got[0], ("x\\tq\t42\n".into(), Some("42".into())));
        assert_eq!(got[1], ("z\t7\n".into(), Some("7".into())));
        assert_eq!(got[2].1, None);
        assert_eq!(got[3], ("\\.\n".into(), Some("*".into())));
    }

    #[test]
    fn csv_rows_with_quotes_and_header() {
        let c = copy_in("COPY t (name, email) FROM STDIN (FORMAT csv, HEADER)").unwrap();
        let got = split(&c, 1, &[b"name,email\n\"a,\nb\",\"x\"\"y@z\"\nc,d@e"]);
        assert_eq!(got[0].1.as_deref(), Some("*"));
        assert_eq!(
            got[1],
            ("\"a,\nb\",\"x\"\"y@z\"\n".into(), Some("x\"y@z".into()))
        );
        assert_eq!(got[2], ("c,d@e".into(), Some("d@e".into())));
    }
}
