//! `SET`, `RESET` and `SHOW shardgate.<name>`: session settings of the proxy itself, answered by
//! the proxy in the simple and the extended protocol, never sent to a server; and
//! `SHOW shardgate.route FOR <sql>`, which explains where `<sql>` would go.

use std::collections::HashMap;

use super::route::Target;
use super::*;
use crate::router::ShardHint;
use crate::router::local::{self as sql, LocalCommand};

/// Statements and portals of `shardgate.*` commands the client prepared.
#[derive(Default)]
pub(super) struct LocalStatements {
    statements: HashMap<Bytes, Bytes>,
    unnamed: Option<Bytes>,
    portals: HashMap<Bytes, Bytes>,
    /// The text of the portal an Execute just named.
    executing: Option<Bytes>,
}

impl LocalStatements {
    pub(super) fn parse(&mut self, name: &[u8], text: &[u8]) {
        let text = Bytes::copy_from_slice(text);
        if name.is_empty() {
            self.unnamed = Some(text);
        } else {
            self.statements.insert(Bytes::copy_from_slice(name), text);
        }
    }

    pub(super) fn has_statement(&self, name: &[u8]) -> bool {
        self.statements.contains_key(name)
    }

    pub(super) fn forget_unnamed(&mut self) {
        self.unnamed = None;
    }

    fn statement(&self, name: &[u8]) -> Option<&Bytes> {
        if name.is_empty() {
            self.unnamed.as_ref()
        } else {
            self.statements.get(name)
        }
    }

    /// A Bind of a local statement makes a local portal; a Bind of anything else drops a local
    /// portal of the same name. Returns whether the proxy answers it.
    pub(super) fn bind(&mut self, portal: &[u8], statement: &[u8]) -> bool {
        match self.statement(statement).cloned() {
            Some(text) => {
                self.portals.insert(Bytes::copy_from_slice(portal), text);
                true
            }
            None => {
                if !self.portals.is_empty() {
                    self.portals.remove(portal);
                }
                false
            }
        }
    }

    /// Whether an Execute (its body) names a local portal; if so it is kept for the answer.
    pub(super) fn take_portal_execute(&mut self, body: &[u8]) -> bool {
        if self.portals.is_empty() {
            return false;
        }
        let name = body.split(|b| *b == 0).next().unwrap_or_default();
        self.executing = self.portals.get(name).cloned();
        self.executing.is_some()
    }

    /// A Close of a local statement or portal; returns whether the proxy answers it.
    pub(super) fn close(&mut self, kind: u8, name: &[u8]) -> bool {
        match kind {
            b'S' if name.is_empty() => self.unnamed.take().is_some(),
            b'S' => self.statements.remove(name).is_some(),
            _ => self.portals.remove(name).is_some(),
        }
    }
}

/// What a local command did.
enum Outcome {
    Set(&'static str),
    Show { name: String, value: String },
}

/// `SHOW shardgate.route FOR <sql>`: the SQL whose route to explain.
fn route_query(text: &str) -> Option<&str> {
    fn word<'a>(s: &'a str, w: &str) -> Option<&'a str> {
        let s = s.trim_start();
        (s.len() >= w.len() && s[..w.len()].eq_ignore_ascii_case(w)).then(|| &s[w.len()..])
    }
    let rest = word(text, "show")?;
    let rest = word(rest, "shardgate.route")?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let rest = word(rest, "for")?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let sql = rest.trim().trim_end_matches(';').trim_end();
    (!sql.is_empty()).then_some(sql)
}

impl Session {
    fn run_local(&mut self, text: &[u8]) -> Result<Outcome, SessionError> {
        let text = String::from_utf8_lossy(text);
        if let Some(sql) = route_query(&text) {
            return Ok(Outcome::Show {
                name: "shardgate.route".into(),
                value: crate::router::shard::explain(sql, &self.live.config),
            });
        }
        let command = match sql::parse(&text) {
            Some(Ok(c)) => c,
            Some(Err(message)) => return Err(SessionError::ShardgateCommand(message)),
            None => {
                return Err(SessionError::ShardgateCommand(
                    "not a shardgate command".into(),
                ));
            }
        };
        match command {
            LocalCommand::Set { name, value } => {
                let tag = if value.is_none() { "RESET" } else { "SET" };
                match name.as_str() {
                    "target" => {
                        self.target = match value {
                            None => Target::Auto,
                            Some(v) => {
                                Target::parse(&v).ok_or(SessionError::InvalidShardgateValue {
                                    name,
                                    value: v,
                                    allowed: "shardgate.target is 'primary', 'replica' or 'auto'",
                                })?
                            }
                        };
                    }
                    "shard" | "sharding_key" => {
                        let pin = value.clone().map(|v| {
                            if name == "shard" {
                                ShardHint::Shard(v)
                            } else {
                                ShardHint::Key(v)
                            }
                        });
                        if pin.is_none()
                            && !matches!(
                                (&self.shard_pin, name.as_str()),
                                (Some(ShardHint::Shard(_)), "shard")
                                    | (Some(ShardHint::Key(_)), "sharding_key")
                            )
                        {
                            // Resetting the one not set leaves the other.
                            return Ok(Outcome::Set(tag));
                        }
                        self.set_shard_pin(pin).map_err(|_| {
                            SessionError::InvalidShardgateValue {
                                name,
                                value: value.unwrap_or_default(),
                                allowed: "shardgate.shard names a shard of the map",
                            }
                        })?;
                    }
                    _ => return Err(SessionError::UnknownShardgateSetting(name)),
                }
                Ok(Outcome::Set(tag))
            }
            LocalCommand::Show { name } => {
                let value = match (name.as_str(), &self.shard_pin) {
                    ("target", _) => self.target.as_str().to_string(),
                    ("shard", Some(ShardHint::Shard(s))) => s.clone(),
                    ("sharding_key", Some(ShardHint::Key(k))) => k.clone(),
                    ("shard" | "sharding_key", _) => String::new(),
                    ("servers", _) => self.live.topology.report(),
                    _ => return Err(SessionError::UnknownShardgateSetting(name)),
                };
                Ok(Outcome::Show {
                    name: format!("shardgate.{name}"),
                    value,
                })
            }
        }
    }

    /// A local command sent as a simple query: its answer and ReadyForQuery, in order.
    pub(super) fn local_simple(&mut self, text: &[u8]) {
        let mut out = BytesMut::new();
        match self.run_local(text) {
            Ok(Outcome::Set(tag)) => be::write_command_complete(&mut out, tag),
            Ok(Outcome::Show { name, value }) => {
                be::write_text_column(&mut out, &name);
                be::write_text_row(&mut out, &value);
                be::write_command_complete(&mut out, "SHOW");
            }
            Err(e) => e.write_to(&mut out),
        }
        if self.backend.is_some() {
            self.pending.push_back(Pending::Synth(out.freeze()));
            self.pending.push_back(Pending::SynthReady);
        } else {
            self.cout.extend_from_slice(&out);
            let status = self.client_tx_status();
            be::write_ready_for_query(&mut self.cout, status);
        }
    }

    /// Describe of a local statement or portal: its answer, or None when it is not local.
    pub(super) fn local_describe(&mut self, kind: u8, name: &[u8]) -> Option<Bytes> {
        let text = match kind {
            b'S' => self.local.statement(name)?.clone(),
            _ => self.local.portals.get(name)?.clone(),
        };
        let mut out = BytesMut::new();
        if kind == b'S' {
            be::write_no_parameters(&mut out);
        }
        let text = String::from_utf8_lossy(&text);
        match sql::parse(&text) {
            _ if route_query(&text).is_some() => be::write_text_column(&mut out, "shardgate.route"),
            Some(Ok(LocalCommand::Show { name })) => {
                be::write_text_column(&mut out, &format!("shardgate.{name}"))
            }
            _ => be::write_no_data(&mut out),
        }
        Some(out.freeze())
    }

    /// Execute of a local portal: the command's answer (an error skips to Sync, as a server would).
    pub(super) fn local_execute_portal(&mut self) -> Bytes {
        let text = self.local.executing.take().unwrap_or_default();
        let mut out = BytesMut::new();
        match self.run_local(&text) {
            Ok(Outcome::Set(tag)) => be::write_command_complete(&mut out, tag),
            Ok(Outcome::Show { value, .. }) => {
                be::write_text_row(&mut out, &value);
                be::write_command_complete(&mut out, "SHOW");
            }
            Err(e) => {
                e.write_to(&mut out);
                self.local_skip = true;
            }
        }
        out.freeze()
    }
}
