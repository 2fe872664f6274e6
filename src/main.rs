//! The `shardgate` command: run the proxy, run a local demo cluster, or check a shard map.

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "shardgate",
    version,
    about = "A PostgreSQL proxy that pools, splits reads and writes, and shards by key"
)]
struct Cli {
    /// The shard map.
    #[arg(long, short, global = true, default_value = "shard-map.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Start a local cluster (2 shards × primary + streaming replica) and the proxy in front of it.
    Demo {
        /// Where the cluster's data goes (default ./shardgate-demo).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: String,
        #[arg(long, default_value_t = 2)]
        shards: usize,
        #[arg(long, default_value_t = 1)]
        replicas: usize,
    },
    /// Validate the shard map and exit.
    CheckConfig,
    /// Print where a statement would go: shards, primary or replica, and why.
    Route {
        /// The SQL text.
        sql: String,
    },
    /// Print the shard hash of a key of a sharded table, and the shard it belongs to.
    Hash {
        /// A table listed in [[tables]].
        table: String,
        /// The key, as text (`42`, `alice@example.com`, a uuid).
        value: String,
    },
}

/// Logs to stderr: level from `SHARDGATE_LOG` (else `level`), text or JSON lines from
/// `SHARDGATE_LOG_FORMAT` (else `json`).
fn init_tracing(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHARDGATE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match std::env::var("SHARDGATE_LOG_FORMAT") {
        Ok(f) => f.eq_ignore_ascii_case("json"),
        Err(_) => json,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    if !matches!(command, Command::Run) {
        init_tracing("info", false);
    }
    match command {
        Command::Run => run(&cli.config),
        Command::CheckConfig => match shardgate::config::load(&cli.config) {
            Ok(_) => {
                println!("{}: ok", cli.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("shardgate: invalid shard map: {e}");
                ExitCode::from(2)
            }
        },
        Command::Hash { table, value } => hash(&cli.config, &table, &value),
        Command::Route { sql } => match shardgate::config::load(&cli.config) {
            Ok(config) => {
                println!("{}", shardgate::router::shard::explain(&sql, &config));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("shardgate: invalid shard map: {e}");
                ExitCode::from(2)
            }
        },
        Command::Demo {
            dir,
            listen,
            shards,
            replicas,
        } => match demo::run(demo::DemoOptions {
            dir,
            listen,
            shards,
            replicas,
        }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shardgate demo: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// `shardgate hash TABLE VALUE`: the hash contract (see `shardgate::hash`) applied to one key.
fn hash(path: &std::path::Path, table: &str, value: &str) -> ExitCode {
    let config = match shardgate::config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shardgate: invalid shard map: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(t) = config.table(table) else {
        let known: Vec<&str> = config.tables.iter().map(|t| t.name.as_str()).collect();
        eprintln!(
            "shardgate hash: table \"{table}\" is not in [[tables]] of {} (sharded tables: {})",
            path.display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
        return ExitCode::from(2);
    };
    let key = match shardgate::hash::ShardKey::from_text(t.key_type, value) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("shardgate hash: {e} (column {}.{})", t.name, t.shard_key);
            return ExitCode::from(2);
        }
    };
    let h = key.hash();
    let shard = config.shard_for_hash(h);
    println!(
        "table={} key_type={} key={value} hash={h} shard={}",
        t.name,
        t.key_type.as_str(),
        shard.name
    );
    ExitCode::SUCCESS
}

fn run(path: &std::path::Path) -> ExitCode {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let config = match shardgate::config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shardgate: invalid shard map: {}", e.located(&text));
            return ExitCode::from(2);
        }
    };
    init_tracing(
        &config.proxy.log_level,
        config.proxy.log_format == shardgate::config::LogFormat::Json,
    );
    let handle = match shardgate::start_with_map(config, Some(path.to_path_buf())) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("shardgate: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let timeout = handle.shutdown_timeout();
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
        loop {
            tokio::select! {
                _ = int.recv() => break,
                _ = term.recv() => break,
                // The admin console's SHUTDOWN.
                _ = handle.drain_requested() => break,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the shard map");
                    handle.reload_soon();
                }
            }
        }
        // Graceful: no new clients, open transactions finish (up to proxy.shutdown_timeout);
        // a second signal stops at once.
        tracing::info!(
            clients = handle.clients(),
            ?timeout,
            "shutting down: waiting for open transactions"
        );
        handle.drain();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if handle.clients() == 0 {
                tracing::info!("no client left");
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
                _ = int.recv() => {
                    tracing::warn!("a second signal: stopping at once");
                    break;
                }
                _ = term.recv() => {
                    tracing::warn!("a second signal: stopping at once");
                    break;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    clients = handle.clients(),
                    "shutdown_timeout passed: closing the remaining clients"
                );
                break;
            }
        }
    });
    tracing::info!("stopping");
    handle.stop();
    ExitCode::SUCCESS
}
