//! Reading the file (and `SHARDGATE_…` environment overrides) and validating it.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

use config::{Environment, File, FileFormat};

use super::{AuthMethod, Config, ConfigError, ServerAddr};

/// The hash space the shard ranges must cover: `[0, 2^32)`.
pub const HASH_SPACE_END: u64 = 1 << 32;

/// Loads and validates the shard map at `path`, with environment overrides applied.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    load_str(&text, &path.display().to_string())
}

/// Loads and validates a shard map given as text; `origin` names it in error messages.
pub fn load_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let built = config::Config::builder()
        .add_source(File::from_str(text, FileFormat::Toml))
        .add_source(
            Environment::with_prefix("SHARDGATE")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(overrides())),
        )
        .build()
        .map_err(|e| ConfigError::Parse(format!("{origin}: {e}")))?;
    let mut config: Config = built
        .try_deserialize()
        .map_err(|e| ConfigError::Parse(format!("{origin}: {e}")))?;
    validate(&config)?;
    let (replicated, sharded) = std::mem::take(&mut config.tables)
        .into_iter()
        .partition::<Vec<_>, _>(|t| t.replicated);
    config.tables = sharded;
    config.replicated = replicated
        .into_iter()
        .map(|t| t.name.to_ascii_lowercase())
        .collect();
    Ok(config)
}

/// The line (1-based) of `text` where a key named in a validation error is written:
/// `proxy.pool_size`, `shards[1].primary`, `users[0]`, `tables`. None when it is not written
/// (a default, or an environment override).
pub fn locate(text: &str, key: &str) -> Option<usize> {
    let (section, field) = match key.split_once('.') {
        Some((s, f)) => (s, Some(f)),
        None => (key, None),
    };
    let (section, index) = match section.split_once('[') {
        Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
        None => (section, None),
    };
    // The field's own name, without an index (`replicas[0]` is on the `replicas` line).
    let field = field.map(|f| f.split(['.', '[']).next().unwrap_or(f));
    let mut seen = 0;
    let mut inside = false;
    let mut header_line = None;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            if inside {
                break;
            }
            let name = t
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim();
            if name == section {
                if index.is_none_or(|i| i == seen) {
                    inside = true;
                    header_line = Some(n + 1);
                    if field.is_none() {
                        return header_line;
                    }
                }
                seen += 1;
            }
            continue;
        }
        if let (true, Some(f)) = (inside, field)
            && let Some(rest) = t.strip_prefix(f)
            && rest.trim_start().starts_with('=')
        {
            return Some(n + 1);
        }
    }
    header_line
}

/// `SHARDGATE_<SECTION>__<KEY>` variables only: other `SHARDGATE_*` names (`SHARDGATE_LOG`,
/// `SHARDGATE_PG_BIN`) are not shard-map keys.
fn overrides() -> std::collections::HashMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("SHARDGATE_") && k["SHARDGATE_".len()..].contains("__"))
        .collect()
}

fn validate(c: &Config) -> Result<(), ConfigError> {
    resolve(&c.proxy.listen).map_err(|p| ConfigError::invalid("proxy.listen", p))?;
    if c.proxy.pool_size == 0 {
        return Err(ConfigError::invalid(
            "proxy.pool_size",
            "must be at least 1 (backend connections per server)",
        ));
    }
    if c.proxy.max_message_size < 1024 {
        return Err(ConfigError::invalid(
            "proxy.max_message_size",
            format!(
                "{} bytes is too small; Postgres clients need at least 1024",
                c.proxy.max_message_size
            ),
        ));
    }
    if c.users.is_empty() {
        return Err(ConfigError::invalid(
            "users",
            "no [[users]] entry: add at least one user who may connect",
        ));
    }
    let mut names = HashSet::new();
    for (i, u) in c.users.iter().enumerate() {
        let key = format!("users[{i}]");
        if u.name.is_empty() {
            return Err(ConfigError::invalid(format!("{key}.name"), "is empty"));
        }
        if !names.insert(u.name.as_str()) {
            return Err(ConfigError::invalid(
                format!("{key}.name"),
                format!("user \"{}\" is listed twice", u.name),
            ));
        }
        let is_verifier = u.password.starts_with("SCRAM-SHA-256$");
        if is_verifier {
            crate::frontend::auth::parse_scram_verifier(&u.password)
                .map_err(|p| ConfigError::invalid(format!("{key}.password"), p))?;
            if c.proxy.auth_method == AuthMethod::Md5 {
                return Err(ConfigError::invalid(
                    format!("{key}.password"),
                    "is a SCRAM verifier, which md5 authentication cannot use; \
                     give the cleartext password or set proxy.auth_method = \"scram-sha-256\"",
                ));
            }
        }
    }
    if c.backend.user.is_empty() {
        return Err(ConfigError::invalid("backend.user", "is empty"));
    }
    if c.backend.database.is_empty() {
        return Err(ConfigError::invalid("backend.database", "is empty"));
    }
    validate_routing(c)?;
    validate_shards(c)?;
    validate_tables(c)
}

fn validate_tables(c: &Config) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    for (i, t) in c.tables.iter().enumerate() {
        let key = format!("tables[{i}]");
        if t.name.trim().is_empty() {
            return Err(ConfigError::invalid(format!("{key}.name"), "is empty"));
        }
        if !names.insert(t.name.to_ascii_lowercase()) {
            return Err(ConfigError::invalid(
                format!("{key}.name"),
                format!("table \"{}\" is listed twice", t.name),
            ));
        }
        if t.replicated && !t.shard_key.trim().is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.shard_key"),
                format!(
                    "table \"{}\" is replicated (every shard holds all of it): remove shard_key, or remove replicated = true to shard it",
                    t.name
                ),
            ));
        }
        if !t.replicated && t.shard_key.trim().is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.shard_key"),
                format!(
                    "table \"{}\" needs the column its rows are sharded by (or replicated = true for a table every shard holds whole)",
                    t.name
                ),
            ));
        }
    }
    Ok(())
}

fn validate_routing(c: &Config) -> Result<(), ConfigError> {
    for (i, a) in c.proxy.proxy_protocol_from.iter().enumerate() {
        a.trim().parse::<std::net::IpAddr>().map_err(|_| {
            ConfigError::invalid(
                format!("proxy.proxy_protocol_from[{i}]"),
                format!("\"{a}\" is not an IP address (write the load balancer's address, like \"10.0.0.5\")"),
            )
        })?;
    }
    for (i, f) in c.routing.write_functions.iter().enumerate() {
        if f.trim().is_empty() {
            return Err(ConfigError::invalid(
                format!("routing.write_functions[{i}]"),
                "is empty: give a function name",
            ));
        }
    }
    let h = &c.health;
    if h.interval.is_zero() {
        return Err(ConfigError::invalid("health.interval", "must be above 0"));
    }
    if h.timeout.is_zero() {
        return Err(ConfigError::invalid("health.timeout", "must be above 0"));
    }
    if h.ban_after == 0 {
        return Err(ConfigError::invalid(
            "health.ban_after",
            "must be at least 1 (failed probes in a row before a server is banned)",
        ));
    }
    Ok(())
}

fn validate_shards(c: &Config) -> Result<(), ConfigError> {
    if c.shards.is_empty() {
        return Err(ConfigError::invalid(
            "shards",
            "no [[shards]] entry: add at least one shard with its primary",
        ));
    }
    if c.shards.len() > crate::router::shard::MAX_SHARDS {
        return Err(ConfigError::invalid(
            "shards",
            format!(
                "{} shards; at most {} are supported",
                c.shards.len(),
                crate::router::shard::MAX_SHARDS
            ),
        ));
    }
    let mut names = HashSet::new();
    for (i, s) in c.shards.iter().enumerate() {
        let key = format!("shards[{i}]");
        if s.name.is_empty() {
            return Err(ConfigError::invalid(format!("{key}.name"), "is empty"));
        }
        if !names.insert(s.name.as_str()) {
            return Err(ConfigError::invalid(
                format!("{key}.name"),
                format!("shard \"{}\" is listed twice", s.name),
            ));
        }
        let [start, end] = s.range;
        if start >= end || end > HASH_SPACE_END {
            return Err(ConfigError::invalid(
                format!("{key}.range"),
                format!(
                    "[{start}, {end}) is not a range within [0, {HASH_SPACE_END}): start must be below end"
                ),
            ));
        }
        resolve(s.primary.addr()).map_err(|p| ConfigError::invalid(format!("{key}.primary"), p))?;
        let mut seen = HashSet::new();
        seen.insert(resolve(s.primary.addr()).expect("checked above"));
        for (j, r) in s.replicas.iter().enumerate() {
            let addr = resolve(r.addr())
                .map_err(|p| ConfigError::invalid(format!("{key}.replicas[{j}]"), p))?;
            if !seen.insert(addr) {
                return Err(ConfigError::invalid(
                    format!("{key}.replicas[{j}]"),
                    format!("{addr} is listed twice in shard \"{}\"", s.name),
                ));
            }
        }
    }
    // The ranges must tile the hash space exactly.
    let mut ranges: Vec<(u64, u64, &str)> = c
        .shards
        .iter()
        .map(|s| (s.range[0], s.range[1], s.name.as_str()))
        .collect();
    ranges.sort();
    let mut next = 0u64;
    for (start, end, name) in ranges {
        if start > next {
            return Err(ConfigError::invalid(
                "shards",
                format!(
                    "hash range [{next}, {start}) belongs to no shard (gap before shard \"{name}\")"
                ),
            ));
        }
        if start < next {
            return Err(ConfigError::invalid(
                "shards",
                format!(
                    "shard \"{name}\" range starts at {start}, inside the previous shard's range (overlap up to {next})"
                ),
            ));
        }
        next = end;
    }
    if next != HASH_SPACE_END {
        return Err(ConfigError::invalid(
            "shards",
            format!("hash range [{next}, {HASH_SPACE_END}) belongs to no shard"),
        ));
    }
    Ok(())
}

/// Resolves `host:port` to one socket address.
pub(crate) fn resolve(text: &str) -> Result<SocketAddr, String> {
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| format!("\"{text}\" is not a reachable host:port ({e})"))?;
    addrs
        .next()
        .ok_or_else(|| format!("\"{text}\" resolves to no address"))
}

impl Config {
    /// The address clients connect to.
    pub fn listen_addr(&self) -> SocketAddr {
        resolve(&self.proxy.listen).expect("validated at load")
    }

    /// The primary of the shard every statement goes to until sharding is routed (issue 4): the first
    /// shard listed.
    pub fn default_primary(&self) -> ServerAddr {
        ServerAddr(resolve(self.shards[0].primary.addr()).expect("validated at load"))
    }

    /// The sharded table `name` (unquoted names compare case-insensitively; a schema prefix is
    /// ignored).
    pub fn table(&self, name: &str) -> Option<&super::TableConfig> {
        let bare = name.rsplit('.').next().unwrap_or(name).trim_matches('"');
        self.tables
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(bare) || t.name == bare)
    }

    /// The index of the shard whose range holds `hash`.
    pub fn shard_index_for_hash(&self, hash: u32) -> usize {
        let h = u64::from(hash);
        self.shards
            .iter()
            .position(|s| s.range[0] <= h && h < s.range[1])
            .expect("validated: the ranges cover the hash space")
    }

    /// The shard whose range holds `hash`.
    pub fn shard_for_hash(&self, hash: u32) -> &super::ShardConfig {
        let h = u64::from(hash);
        self.shards
            .iter()
            .find(|s| s.range[0] <= h && h < s.range[1])
            .expect("validated: the ranges cover the hash space")
    }

    /// The number of event-loop threads to run.
    pub fn worker_count(&self) -> usize {
        match self.proxy.workers {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn locates_keys_of_validation_errors() {
        let text = "[proxy]\npool_size = 0\n\n[[shards]]\nname = \"a\"\nprimary = \"x\"\n\n[[shards]]\nname = \"b\"\nreplicas = [\"y\"]\nprimary = \"z\"\n";
        assert_eq!(super::locate(text, "proxy.pool_size"), Some(2));
        assert_eq!(super::locate(text, "shards[0].primary"), Some(6));
        assert_eq!(super::locate(text, "shards[1].primary"), Some(11));
        assert_eq!(super::locate(text, "shards[1].replicas[0]"), Some(10));
        assert_eq!(super::locate(text, "shards[1]"), Some(8));
        // Not written: the section's header.
        assert_eq!(super::locate(text, "shards[1].range"), Some(8));
        assert_eq!(super::locate(text, "health.interval"), None);
    }

    use super::*;

    /// The example map shipped at the top of the repository.
    const GOOD: &str = include_str!("../../shard-map.toml");

    fn err(text: &str) -> String {
        load_str(text, "test.toml").unwrap_err().to_string()
    }

    #[test]
    fn good_map_loads() {
        let c = load_str(GOOD, "test.toml").unwrap();
        assert_eq!(c.proxy.pool_size, 20);
        assert!(c.users.iter().any(|u| u.name == "ops" && u.admin));
        assert_eq!(c.shards[0].replicas.len(), 1);
        assert_eq!(c.default_primary().0.port(), 5433);
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = err(&GOOD.replace("pool_size = 20", "pool_size = \"many\""));
        assert!(e.contains("pool_size"), "{e}");
    }

    #[test]
    fn unknown_key_is_refused() {
        let e = err(&GOOD.replace("pool_size = 20", "pool_sise = 20"));
        assert!(e.contains("pool_sise"), "{e}");
    }

    #[test]
    fn bad_pool_mode_names_the_key() {
        let e = err(&GOOD.replace("\"transaction\"", "\"statement\""));
        assert!(e.contains("pool_mode") || e.contains("statement"), "{e}");
    }

    #[test]
    fn zero_pool_size() {
        let e = err(&GOOD.replace("pool_size = 20", "pool_size = 0"));
        assert!(e.starts_with("proxy.pool_size:"), "{e}");
    }

    #[test]
    fn bad_primary_address() {
        let e = err(&GOOD.replace("127.0.0.1:5433", "nowhere"));
        assert!(e.starts_with("shards[0].primary:"), "{e}");
    }

    #[test]
    fn gap_in_ranges() {
        let e = err(&GOOD.replace("[0, 4294967296]", "[0, 100]"));
        assert!(e.contains("belongs to no shard"), "{e}");
    }

    #[test]
    fn no_users() {
        let text = GOOD
            .replace("[[users]]\nname = \"app\"\npassword = \"secret\"\n", "")
            .replace(
                "[[users]]\nname = \"ops\"\npassword = \"change-me\"\nadmin = true\n",
                "",
            );
        assert!(err(&text).starts_with("users:"));
    }

    #[test]
    fn tables_and_key_types() {
        let two = GOOD.replace("range = [0, 4294967296]", "range = [0, 2147483648]")
            + "\n[[shards]]\nname = \"s1\"\nrange = [2147483648, 4294967296]\nprimary = \"127.0.0.1:5435\"\n";
        let with_tables = format!(
            "{two}\n[[tables]]\nname = \"users\"\nshard_key = \"id\"\n\n[[tables]]\nname = \"events\"\nshard_key = \"user_email\"\nkey_type = \"text\"\n"
        );
        let c = load_str(&with_tables, "test").unwrap();
        assert_eq!(
            c.table("USERS").unwrap().key_type,
            crate::hash::KeyType::Bigint
        );
        assert_eq!(
            c.table("public.events").unwrap().key_type,
            crate::hash::KeyType::Text
        );
        assert!(c.table("orders").is_none());
        assert_eq!(c.shard_for_hash(0).name, "s0");
        assert_eq!(c.shard_for_hash(0x7fff_ffff).name, "s0");
        assert_eq!(c.shard_for_hash(0x8000_0000).name, "s1");
        assert_eq!(c.shard_for_hash(u32::MAX).name, "s1");
        let e = err(&format!(
            "{with_tables}\n[[tables]]\nname = \"Users\"\nshard_key = \"id\"\n"
        ));
        assert!(e.starts_with("tables[2].name:"), "{e}");
        let e = err(&format!(
            "{two}\n[[tables]]\nname = \"t\"\nshard_key = \"id\"\nkey_type = \"money\"\n"
        ));
        assert!(e.contains("money") && e.contains("bigint"), "{e}");
        // Replicated tables: no key, kept apart from the sharded ones.
        let c = load_str(
            &format!("{with_tables}\n[[tables]]\nname = \"Countries\"\nreplicated = true\n"),
            "test",
        )
        .unwrap();
        assert_eq!(c.replicated, vec!["countries".to_string()]);
        assert!(c.table("countries").is_none());
        assert_eq!(c.tables.len(), 2);
        let e = err(&format!(
            "{two}\n[[tables]]\nname = \"c\"\nreplicated = true\nshard_key = \"id\"\n"
        ));
        assert!(
            e.starts_with("tables[0].shard_key:") && e.contains("replicated"),
            "{e}"
        );
        let e = err(&format!("{two}\n[[tables]]\nname = \"c\"\n"));
        assert!(e.contains("replicated = true"), "{e}");
    }

    #[test]
    fn bad_duration() {
        let e = err(&GOOD.replace(
            "pool_size = 20",
            "pool_size = 20\npool_wait_timeout = \"5 parsecs\"",
        ));
        assert!(
            e.contains("pool_wait_timeout") || e.contains("duration"),
            "{e}"
        );
    }
}
