//! Who may connect: the `[[users]]` of the shard map as credentials pgwire's SCRAM-SHA-256 and md5
//! mechanisms can check. SCRAM secrets are derived once at load (PBKDF2 is slow on purpose), never per
//! connection.

use std::collections::HashMap;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use pgwire::api::auth::sasl::scram::{ScramSecret, gen_salted_password};
use pgwire::api::auth::{AuthSource, LoginInfo, Password};
use pgwire::error::{PgWireError, PgWireResult};

use crate::config::Config;

/// A SCRAM-SHA-256 verifier as Postgres stores it in `pg_authid.rolpassword`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: usize,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64 fields).
pub fn parse_scram_verifier(text: &str) -> Result<ScramVerifier, String> {
    let bad = |what: &str| {
        format!(
            "is not a SCRAM-SHA-256 verifier ({what}); expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>"
        )
    };
    let rest = text
        .strip_prefix("SCRAM-SHA-256$")
        .ok_or_else(|| bad("prefix"))?;
    let (iter_salt, keys) = rest.split_once('$').ok_or_else(|| bad("missing '$'"))?;
    let (iterations, salt) = iter_salt
        .split_once(':')
        .ok_or_else(|| bad("missing ':'"))?;
    let (stored, server) = keys.split_once(':').ok_or_else(|| bad("missing ':'"))?;
    let decode = |s: &str, what: &str| STANDARD.decode(s).map_err(|_| bad(what));
    let v = ScramVerifier {
        iterations: iterations
            .parse()
            .map_err(|_| bad("iterations is not a number"))?,
        salt: decode(salt, "salt is not base64")?,
        stored_key: decode(stored, "StoredKey is not base64")?,
        server_key: decode(server, "ServerKey is not base64")?,
    };
    if v.stored_key.len() != 32 || v.server_key.len() != 32 {
        return Err(bad("keys must be 32 bytes"));
    }
    Ok(v)
}

const SCRAM_ITERATIONS: usize = 4096;

#[derive(Debug)]
struct UserSecret {
    /// Cleartext password, or a Postgres md5 hash (`md5` + 32 hex); empty when only a verifier is known.
    password: String,
    scram: ScramVerifier,
    /// May use the admin console.
    admin: bool,
}

/// The users who may connect, with precomputed SCRAM secrets.
#[derive(Debug, Default)]
pub struct Credentials {
    users: HashMap<String, UserSecret>,
}

impl Credentials {
    pub fn new(config: &Config) -> Credentials {
        let users = config
            .users
            .iter()
            .map(|u| {
                let scram = if u.password.starts_with("SCRAM-SHA-256$") {
                    parse_scram_verifier(&u.password).expect("validated at load")
                } else {
                    let salt: [u8; 16] = rand::random();
                    let salted = gen_salted_password(&u.password, &salt, SCRAM_ITERATIONS);
                    match ScramSecret::verifier_from_salted_password(
                        salt.to_vec(),
                        salted,
                        SCRAM_ITERATIONS,
                    ) {
                        ScramSecret::Verifier {
                            salt,
                            iterations,
                            stored_key,
                            server_key,
                        } => ScramVerifier {
                            iterations,
                            salt,
                            stored_key,
                            server_key,
                        },
                        ScramSecret::SaltedPassword { .. } => unreachable!("asked for a verifier"),
                    }
                };
                let password = if u.password.starts_with("SCRAM-SHA-256$") {
                    String::new()
                } else {
                    u.password.clone()
                };
                (
                    u.name.clone(),
                    UserSecret {
                        password,
                        scram,
                        admin: u.admin,
                    },
                )
            })
            .collect();
        Credentials { users }
    }

    pub fn knows(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Marked `admin = true` in `[[users]]`: may use the admin console.
    pub fn is_admin(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.admin)
    }

    fn secret(&self, login: &LoginInfo) -> PgWireResult<&UserSecret> {
        let user = login.user().unwrap_or_default();
        self.users
            .get(user)
            .ok_or_else(|| PgWireError::InvalidPassword(user.to_owned()))
    }
}

/// The md5 answer a client must give for `user` and `salt`, from a cleartext password or a stored
/// Postgres md5 hash.
fn md5_expected(user: &str, password: &str, salt: [u8; 4]) -> String {
    let stored = password
        .strip_prefix("md5")
        .filter(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    match stored {
        Some(hex) => {
            let mut bytes = hex.as_bytes().to_vec();
            bytes.extend_from_slice(&salt);
            format!("md5{:x}", md5::compute(bytes))
        }
        None => {
            postgres_protocol::authentication::md5_hash(user.as_bytes(), password.as_bytes(), salt)
        }
    }
}

#[async_trait]
impl AuthSource for Credentials {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let secret = self.secret(login)?;
        let salt: [u8; 4] = rand::random();
        let expected = md5_expected(login.user().unwrap_or_default(), &secret.password, salt);
        Ok(Password::new(Some(salt.to_vec()), expected.into_bytes()))
    }

    async fn get_scram_secret(&self, login: &LoginInfo) -> PgWireResult<(ScramSecret, Option<()>)> {
        let v = &self.secret(login)?.scram;
        Ok((
            ScramSecret::Verifier {
                salt: v.salt.clone(),
                iterations: v.iterations,
                stored_key: v.stored_key.clone(),
                server_key: v.server_key.clone(),
            },
            None,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_postgres_verifier() {
        // SELECT rolpassword FROM pg_authid after CREATE ROLE ... PASSWORD 'secret' (PG 15).
        let v = parse_scram_verifier(
            "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$h9EbZfV0fzwq0PxMWc7eexcszkkBo9hFtfg5gLDC/5o=:wiV2UqQM8ve2yk2Tp0AYn7fHGAQTKMw7kiDXt8jrGOU=",
        )
        .unwrap();
        assert_eq!(v.iterations, 4096);
        assert_eq!(v.salt, b"saltsaltsaltsalt");
        assert!(parse_scram_verifier("SCRAM-SHA-256$x:y$z").is_err());
        assert!(parse_scram_verifier("md5abc").is_err());
    }

    #[test]
    fn md5_from_cleartext_and_from_stored_hash_agree() {
        let salt = [1, 2, 3, 4];
        let stored = format!("md5{:x}", md5::compute("secretapp"));
        assert_eq!(
            md5_expected("app", "secret", salt),
            md5_expected("app", &stored, salt)
        );
    }
}
