//! A small byte-level SQL lexer shared by the hint, local-command and cache-key code.
//!
//! It only finds token boundaries the way PostgreSQL's scanner does (whitespace, `--` and nested `/* */`
//! comments, identifiers, `"quoted identifiers"`, `'strings'`, `$tag$dollar strings$tag$`, `$1`
//! parameters, numbers, `;`, other single bytes); it never interprets a token. Anything it cannot close
//! (a quote or comment left open) becomes one [`Kind::Unterminated`] token running to the end of the
//! text, so callers can refuse to reason about it.

/// What a [`Tok`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Spaces, tabs, newlines, form feeds, vertical tabs.
    Space,
    /// `-- ...` up to (not including) the next `\n` or `\r`.
    LineComment,
    /// `/* ... */`; `nested` when another `/*` opens inside it.
    BlockComment { nested: bool },
    /// An unquoted identifier or keyword: `[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*`.
    Ident,
    /// `"..."` with `""` inside.
    QuotedIdent,
    /// `'...'` with `''` inside. `prefixed` when the quote directly follows an identifier character,
    /// a digit or `&` (`E'..'`, `U&'..'`, `B'..'`, `X'..'`, `N'..'`); `escapes` for `E'..'`, where a
    /// backslash escapes the next character.
    Str { prefixed: bool, escapes: bool },
    /// `$$...$$` or `$tag$...$tag$`.
    DollarStr,
    /// A run of `[0-9A-Za-z_.]` starting at a digit. `free` unless it directly follows `"`, `:` or
    /// `@` (then it is kept verbatim by the cache key).
    Number { free: bool },
    /// `$` followed by digits.
    Param,
    /// `;`
    Semicolon,
    /// Any other single byte (operators, punctuation, a lone `$`).
    Punct,
    /// An unterminated quote, dollar string or block comment: the rest of the text.
    Unterminated,
}

/// One token: its kind and its byte range in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tok {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
}

impl Tok {
    pub fn text<'a>(&self, src: &'a [u8]) -> &'a [u8] {
        &src[self.start..self.end]
    }

    /// Whitespace or a comment.
    pub fn is_blank(&self) -> bool {
        matches!(
            self.kind,
            Kind::Space | Kind::LineComment | Kind::BlockComment { .. }
        )
    }
}

pub(crate) fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

pub(crate) fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

pub(crate) fn is_ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

fn is_number_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'.'
}

fn is_tag_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_tag_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// Iterates over the tokens of `src`.
pub(crate) struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
}

impl<'a> Lexer<'a> {
    pub fn new(src: &'a [u8]) -> Lexer<'a> {
        Lexer { src, pos: 0 }
    }

    fn at(&self, i: usize) -> Option<u8> {
        self.src.get(i).copied()
    }

    /// End of the block comment opening at `start` (`/*`), and whether it nests; None if unterminated.
    fn block_comment(&self, start: usize) -> Option<(usize, bool)> {
        let mut depth = 1usize;
        let mut nested = false;
        let mut i = start + 2;
        while i + 1 < self.src.len() {
            match (self.src[i], self.src[i + 1]) {
                (b'/', b'*') => {
                    depth += 1;
                    nested = true;
                    i += 2;
                }
                (b'*', b'/') => {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        return Some((i, nested));
                    }
                }
                _ => i += 1,
            }
        }
        None
    }

    /// End of a quoted run opened at `start` by `quote`, where a doubled quote stands for itself and,
    /// with `escapes`, a backslash escapes the next byte; None if unterminated.
    fn quoted(&self, start: usize, quote: u8, escapes: bool) -> Option<usize> {
        let mut i = start + 1;
        while i < self.src.len() {
            let b = self.src[i];
            if escapes && b == b'\\' {
                i += 2;
            } else if b == quote {
                if self.at(i + 1) == Some(quote) {
                    i += 2;
                } else {
                    return Some(i + 1);
                }
            } else {
                i += 1;
            }
        }
        None
    }

    /// At a `$` that is not part of an identifier: a parameter, a dollar string, or a lone `$`.
    fn dollar(&self, start: usize) -> (Kind, usize) {
        let src = self.src;
        let mut i = start + 1;
        if self.at(i).is_some_and(|b| b.is_ascii_digit()) {
            while self.at(i).is_some_and(|b| b.is_ascii_digit()) {
                i += 1;
            }
            return (Kind::Param, i);
        }
        if self.at(i).is_some_and(is_tag_start) {
            while self.at(i).is_some_and(is_tag_char) {
                i += 1;
            }
        }
        if self.at(i) != Some(b'$') {
            return (Kind::Punct, start + 1);
        }
        let delim = &src[start..=i];
        let body = i + 1;
        match memchr::memmem::find(&src[body..], delim) {
            Some(off) => (Kind::DollarStr, body + off + delim.len()),
            None => (Kind::Unterminated, src.len()),
        }
    }
}

impl Iterator for Lexer<'_> {
    type Item = Tok;

    fn next(&mut self) -> Option<Tok> {
        let src = self.src;
        let start = self.pos;
        let b = *src.get(start)?;
        let prev = start.checked_sub(1).map(|i| src[i]);
        let (kind, end) = if is_space(b) {
            let mut i = start + 1;
            while self.at(i).is_some_and(is_space) {
                i += 1;
            }
            (Kind::Space, i)
        } else if b == b'-' && self.at(start + 1) == Some(b'-') {
            // PostgreSQL (and sqlparser's PostgreSqlDialect) end it at \n or \r.
            let end =
                memchr::memchr2(b'\n', b'\r', &src[start..]).map_or(src.len(), |off| start + off);
            (Kind::LineComment, end)
        } else if b == b'/' && self.at(start + 1) == Some(b'*') {
            match self.block_comment(start) {
                Some((end, nested)) => (Kind::BlockComment { nested }, end),
                None => (Kind::Unterminated, src.len()),
            }
        } else if is_ident_start(b) {
            let mut i = start + 1;
            while self.at(i).is_some_and(is_ident_char) {
                i += 1;
            }
            (Kind::Ident, i)
        } else if b == b'"' {
            match self.quoted(start, b'"', false) {
                Some(end) => (Kind::QuotedIdent, end),
                None => (Kind::Unterminated, src.len()),
            }
        } else if b == b'\'' {
            let prefixed = prev.is_some_and(|p| is_ident_char(p) || p == b'&');
            // E'...' / e'...': the letter alone, directly before the quote.
            let escapes =
                matches!(prev, Some(b'e' | b'E')) && (start < 2 || !is_ident_char(src[start - 2]));
            match self.quoted(start, b'\'', escapes) {
                Some(end) => (Kind::Str { prefixed, escapes }, end),
                None => (Kind::Unterminated, src.len()),
            }
        } else if b.is_ascii_digit() {
            let mut i = start + 1;
            while self.at(i).is_some_and(is_number_char) {
                i += 1;
            }
            let free = !matches!(prev, Some(b'"' | b':' | b'@'));
            (Kind::Number { free }, i)
        } else if b == b'$' {
            self.dollar(start)
        } else if b == b';' {
            (Kind::Semicolon, start + 1)
        } else {
            (Kind::Punct, start + 1)
        };
        self.pos = end;
        Some(Tok { kind, start, end })
    }
}

/// Whether `hay` contains `needle` (lowercase ASCII), ignoring ASCII case.
pub(crate) fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.len() >= needle.len()
        && hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<(Kind, &str)> {
        Lexer::new(sql.as_bytes())
            .map(|t| (t.kind, &sql[t.start..t.end]))
            .filter(|(k, _)| *k != Kind::Space)
            .collect()
    }

    #[test]
    fn tokens() {
        use Kind::*;
        assert_eq!(
            kinds("SELECT t1.a, \"x\"\"1\", 'it''s', $1, 1.5e3 -- c\n/* a /* b */ c */;"),
            vec![
                (Ident, "SELECT"),
                (Ident, "t1"),
                (Punct, "."),
                (Ident, "a"),
                (Punct, ","),
                (QuotedIdent, "\"x\"\"1\""),
                (Punct, ","),
                (
                    Str {
                        prefixed: false,
                        escapes: false
                    },
                    "'it''s'"
                ),
                (Punct, ","),
                (Param, "$1"),
                (Punct, ","),
                (Number { free: true }, "1.5e3"),
                (LineComment, "-- c"),
                (BlockComment { nested: true }, "/* a /* b */ c */"),
                (Semicolon, ";"),
            ]
        );
    }

    #[test]
    fn strings_dollars_and_unterminated() {
        use Kind::*;
        assert_eq!(
            kinds(r"E'a\'b' $x$ '; $x$ $$;$$ a$b $"),
            vec![
                (Ident, "E"),
                (
                    Str {
                        prefixed: true,
                        escapes: true
                    },
                    r"'a\'b'"
                ),
                (DollarStr, "$x$ '; $x$"),
                (DollarStr, "$$;$$"),
                (Ident, "a$b"),
                (Punct, "$"),
            ]
        );
        assert_eq!(
            kinds("1 --x\r, 2"),
            vec![
                (Number { free: true }, "1"),
                (LineComment, "--x"),
                (Punct, ","),
                (Number { free: true }, "2"),
            ]
        );
        assert_eq!(kinds("'abc"), vec![(Unterminated, "'abc")]);
        assert_eq!(kinds("\"abc"), vec![(Unterminated, "\"abc")]);
        assert_eq!(kinds("a /* b"), vec![(Ident, "a"), (Unterminated, "/* b")]);
        assert_eq!(kinds("$q$ b"), vec![(Unterminated, "$q$ b")]);
        assert_eq!(
            kinds("\"a\"1 x::2"),
            vec![
                (QuotedIdent, "\"a\""),
                (Number { free: false }, "1"),
                (Ident, "x"),
                (Punct, ":"),
                (Punct, ":"),
                (Number { free: false }, "2"),
            ]
        );
    }
}
