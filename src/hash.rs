//! The shard hash: a contract other tools can reproduce.
//!
//! `hash(key) = murmur3_x86_32(canonical bytes of key, seed 0)`, where the canonical bytes are:
//!
//! | key type | canonical bytes |
//! |---|---|
//! | `bigint` (also int2, int4) | the value as 8-byte little-endian two's complement |
//! | `text` | the UTF-8 bytes, nothing added |
//! | `uuid` | the 16 bytes, in the order of the textual form |
//!
//! A key hashes the same however it arrives: a SQL literal (`42`, `'42'`), a text-format bind
//! parameter (`"42"`), or a binary one (int2/int4/int8 big-endian, uuid 16 bytes). The 32-bit hash
//! falls in exactly one shard's `range = [start, end)`. `tests::contract_vectors` pins values so the
//! contract cannot drift.

use std::fmt;

use serde::Deserialize;

/// The type of a table's shard key, as the shard map names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyType {
    /// int2, int4 and int8 columns.
    #[default]
    Bigint,
    Text,
    Uuid,
}

impl<'de> Deserialize<'de> for KeyType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.trim().to_ascii_lowercase().as_str() {
            "bigint" | "int8" | "integer" | "int4" | "int" | "smallint" | "int2" => {
                Ok(KeyType::Bigint)
            }
            "text" | "varchar" => Ok(KeyType::Text),
            "uuid" => Ok(KeyType::Uuid),
            _ => Err(serde::de::Error::custom(format!(
                "\"{text}\" is not a shard key type; use \"bigint\" (also for int2/int4 columns), \"text\" or \"uuid\""
            ))),
        }
    }
}

impl KeyType {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Bigint => "bigint",
            KeyType::Text => "text",
            KeyType::Uuid => "uuid",
        }
    }
}

/// A shard key value, in its canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ShardKey {
    Bigint(i64),
    Text(String),
    Uuid([u8; 16]),
}

/// Why a value is not a key of the expected type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    pub key_type: KeyType,
    pub value: String,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "\"{}\" is not a valid {} shard key",
            self.value,
            self.key_type.as_str()
        )
    }
}

impl std::error::Error for KeyError {}

impl ShardKey {
    /// A key from its text form: a SQL literal's value or a text-format parameter.
    pub fn from_text(key_type: KeyType, text: &str) -> Result<ShardKey, KeyError> {
        let err = || KeyError {
            key_type,
            value: text.to_string(),
        };
        match key_type {
            KeyType::Bigint => text.trim().parse().map(ShardKey::Bigint).map_err(|_| err()),
            KeyType::Text => Ok(ShardKey::Text(text.to_string())),
            KeyType::Uuid => parse_uuid(text).map(ShardKey::Uuid).ok_or_else(err),
        }
    }

    /// A key from a binary-format parameter: int2/int4/int8 (2, 4 or 8 bytes big-endian) for
    /// bigint keys, UTF-8 bytes for text, 16 bytes for uuid.
    pub fn from_binary(key_type: KeyType, bytes: &[u8]) -> Result<ShardKey, KeyError> {
        let err = || KeyError {
            key_type,
            value: format!("binary {bytes:02x?}"),
        };
        match key_type {
            KeyType::Bigint => match bytes.len() {
                2 => Ok(ShardKey::Bigint(
                    i16::from_be_bytes([bytes[0], bytes[1]]).into(),
                )),
                4 => Ok(ShardKey::Bigint(
                    i32::from_be_bytes(bytes.try_into().expect("4 bytes")).into(),
                )),
                8 => Ok(ShardKey::Bigint(i64::from_be_bytes(
                    bytes.try_into().expect("8 bytes"),
                ))),
                _ => Err(err()),
            },
            KeyType::Text => std::str::from_utf8(bytes)
                .map(|t| ShardKey::Text(t.to_string()))
                .map_err(|_| err()),
            KeyType::Uuid => bytes.try_into().map(ShardKey::Uuid).map_err(|_| err()),
        }
    }

    /// The canonical bytes the hash is taken over.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        match self {
            ShardKey::Bigint(v) => v.to_le_bytes().to_vec(),
            ShardKey::Text(t) => t.as_bytes().to_vec(),
            ShardKey::Uuid(u) => u.to_vec(),
        }
    }

    /// The shard hash of the key.
    pub fn hash(&self) -> u32 {
        murmur3_32(&self.canonical_bytes())
    }
}

/// murmur3 x86_32 with seed 0.
pub fn murmur3_32(bytes: &[u8]) -> u32 {
    murmur3::murmur3_32(&mut &bytes[..], 0).expect("reading from a slice cannot fail")
}

/// A uuid in its textual forms: 32 hex digits, with or without the usual hyphens, optionally in
/// braces, any case (as Postgres accepts).
fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let t = text.trim();
    let t = t
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .unwrap_or(t);
    let hex: Vec<u8> = t.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 || t.len() > 36 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_reference() {
        // Published murmur3 x86_32 vectors (seed 0).
        assert_eq!(murmur3_32(b""), 0);
        assert_eq!(murmur3_32(b"hello"), 0x248b_fa47);
        assert_eq!(
            murmur3_32(b"The quick brown fox jumps over the lazy dog"),
            0x2e4f_f723
        );
    }

    /// The contract: these values must never change.
    #[test]
    fn contract_vectors() {
        let vectors: &[(KeyType, &str, u32)] = &[
            (KeyType::Bigint, "0", murmur3_32(&[0; 8])),
            (KeyType::Bigint, "1", murmur3_32(&[1, 0, 0, 0, 0, 0, 0, 0])),
            (KeyType::Bigint, "-1", murmur3_32(&[0xff; 8])),
            (KeyType::Text, "hello", 0x248b_fa47),
            (KeyType::Text, "", 0),
        ];
        for (t, v, h) in vectors {
            assert_eq!(ShardKey::from_text(*t, v).unwrap().hash(), *h, "{t:?} {v}");
        }
        // Pinned numbers, computed with an independent implementation (Python's mmh3:
        // `mmh3.hash(struct.pack('<q', 42), 0, signed=False)`, `uuid.UUID(..).bytes`).
        let pinned: &[(KeyType, &str, u32)] = &[
            (KeyType::Bigint, "42", 0x6f8f_913e),
            (KeyType::Bigint, "-42", 0xcd8f_1289),
            (KeyType::Bigint, "9223372036854775807", 0x8271_44bf),
            (KeyType::Text, "alice@example.com", 0xc10e_04e6),
            (
                KeyType::Uuid,
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                0x2845_0c9a,
            ),
        ];
        for (t, v, h) in pinned {
            let got = ShardKey::from_text(*t, v).unwrap().hash();
            assert_eq!(got, *h, "{t:?} {v}: 0x{got:08x}");
        }
    }

    #[test]
    fn same_key_however_it_arrives() {
        let text = ShardKey::from_text(KeyType::Bigint, "42").unwrap();
        for bin in [
            &42i16.to_be_bytes()[..],
            &42i32.to_be_bytes()[..],
            &42i64.to_be_bytes()[..],
        ] {
            assert_eq!(ShardKey::from_binary(KeyType::Bigint, bin).unwrap(), text);
        }
        let neg = ShardKey::from_binary(KeyType::Bigint, &(-7i32).to_be_bytes()).unwrap();
        assert_eq!(neg, ShardKey::from_text(KeyType::Bigint, "-7").unwrap());
        let u = "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11";
        let a = ShardKey::from_text(KeyType::Uuid, u).unwrap();
        let b = ShardKey::from_text(KeyType::Uuid, "{a0eebc999c0b4ef8bb6d6bb9bd380a11}").unwrap();
        assert_eq!(a, b);
        let ShardKey::Uuid(bytes) = a else {
            unreachable!()
        };
        assert_eq!(
            ShardKey::from_binary(KeyType::Uuid, &bytes).unwrap().hash(),
            b.hash()
        );
        assert_eq!(
            ShardKey::from_binary(KeyType::Text, b"x").unwrap(),
            ShardKey::from_text(KeyType::Text, "x").unwrap()
        );
    }

    #[test]
    fn bad_keys() {
        assert!(ShardKey::from_text(KeyType::Bigint, "4x").is_err());
        assert!(ShardKey::from_text(KeyType::Bigint, "99999999999999999999").is_err());
        assert!(ShardKey::from_text(KeyType::Uuid, "not-a-uuid").is_err());
        assert!(ShardKey::from_binary(KeyType::Bigint, &[1, 2, 3]).is_err());
        assert!(ShardKey::from_binary(KeyType::Uuid, &[0; 15]).is_err());
        assert!(ShardKey::from_binary(KeyType::Text, &[0xff]).is_err());
    }
}
