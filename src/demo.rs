//! `shardgate demo`: a local cluster (shards of a primary plus streaming replicas, real Postgres in a
//! directory) with the proxy in front of it, until Ctrl-C or SIGTERM stops both.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use shardgate::localcluster::{
    APP_DATABASE, APP_PASSWORD, APP_USER, ClusterSpec, LocalCluster, ServerUser,
};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// The directory used when none is given, under the current directory.
const DEFAULT_DIR: &str = "shardgate-demo";

/// What `shardgate demo` was asked for.
pub struct DemoOptions {
    /// Where the servers' data goes (default `./shardgate-demo`); wiped first if a previous demo
    /// left it there.
    pub dir: Option<PathBuf>,
    /// The proxy's address (default `127.0.0.1:6432`).
    pub listen: String,
    /// Shards (default 2).
    pub shards: usize,
    /// Streaming replicas per shard (default 1).
    pub replicas: usize,
}

/// `./shardgate-demo`, or `<tmp>/shardgate-demo` when the servers' OS user (running as root) could
/// not reach the current directory (a checkout under /root, say).
fn default_dir() -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let blocked = ServerUser::detect()
        .ok()
        .flatten()
        .is_some_and(|user| user.blocked_at(&cwd).is_some());
    if blocked {
        let dir = std::env::temp_dir().join(DEFAULT_DIR);
        println!(
            "the `postgres` OS user cannot reach {}; using {} instead",
            cwd.display(),
            dir.display()
        );
        return Ok(dir);
    }
    Ok(cwd.join(DEFAULT_DIR))
}

/// Starts the cluster and the proxy, prints how to connect, and waits for Ctrl-C or SIGTERM.
pub fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let dir = match opts.dir {
        Some(dir) => dir,
        None => default_dir()?,
    };
    let spec = ClusterSpec {
        shards: opts.shards,
        replicas_per_shard: opts.replicas,
        synchronous: false,
    };
    println!(
        "starting {} shard(s), each a primary and {} streaming replica(s), in {}",
        spec.shards,
        spec.replicas_per_shard,
        dir.display()
    );
    // Catch Ctrl-C and SIGTERM before any server starts, so neither can kill us while servers run.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the signal runtime")?;
    let mut signals = {
        let _guard = rt.enter();
        StopSignals::install()?
    };
    let started = Instant::now();
    let mut cluster = LocalCluster::start(&spec, Some(&dir))
        .with_context(|| format!("starting the local cluster in {}", dir.display()))?;
    let cluster_time = started.elapsed();
    if rt.block_on(signals.already_received()) {
        println!("interrupted while starting; stopping the cluster");
        cluster.stop();
        return Ok(());
    }

    let map_path = cluster.root().join("shard-map.toml");
    let state_dir = cluster.root().join("state");
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    // A sharded table and a replicated one to try (`CREATE TABLE users (id bigint PRIMARY KEY,
    // ...)` through the proxy creates it on every shard), and a decision log for transactions
    // over shards.
    let map = cluster.shard_map_toml(&opts.listen).replacen(
        "[proxy]",
        &format!("[proxy]\nstate_dir = {:?}", state_dir.display().to_string()),
        1,
    ) + "\n[[tables]]\nname = \"users\"\nshard_key = \"id\"\nkey_type = \"bigint\"\n"
        + "\n[[tables]]\nname = \"countries\"\nreplicated = true\n"
        // Promotion and repointing need a superuser.
        + "\n[failover]\nuser = \"postgres\"\npassword = \"postgres\"\n";
    std::fs::write(&map_path, map).with_context(|| format!("writing {}", map_path.display()))?;
    let config = shardgate::config::load(&map_path)
        .with_context(|| format!("loading {}", map_path.display()))?;
    let proxy = shardgate::start(config).with_context(|| {
        format!(
            "starting the proxy on {} (is the port in use? try --listen)",
            opts.listen
        )
    })?;
    let addr = proxy.addr();

    let mut banner = format!(
        "\nshardgate demo is up (cluster started in {:.1}s)\n\n",
        cluster_time.as_secs_f64()
    );
    for shard in cluster.shards() {
        let replicas: Vec<String> = shard.replicas.iter().map(|r| r.addr()).collect();
        banner.push_str(&format!(
            "  shard {:<4} primary {}   replicas {}\n",
            shard.name,
            shard.primary.addr(),
            if replicas.is_empty() {
                "none".to_string()
            } else {
                replicas.join(", ")
            }
        ));
    }
    banner.push_str(&format!(
        "\n  proxy      {addr}\n  shard map  {}\n  data, logs {} (deleted when the demo stops)\n\n\
         connect:  psql \"postgres://{APP_USER}:{APP_PASSWORD}@{addr}/{APP_DATABASE}\"\n\
         (the servers themselves also take user postgres, password postgres)\n\n\
         Ctrl-C stops everything.\n",
        map_path.display(),
        cluster.root().display()
    ));
    print!("{banner}");
    // Scripts wait for this line; keep its shape.
    println!(
        "SHARDGATE_DEMO_READY listen={addr} map={} pid={}",
        map_path.display(),
        std::process::id()
    );
    std::io::stdout().flush().context("writing to stdout")?;

    rt.block_on(signals.received());
    println!("stopping the proxy and the cluster");
    proxy.stop();
    cluster.stop();
    Ok(())
}

/// SIGINT (Ctrl-C) and SIGTERM, caught from the moment `install` returns.
struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    /// Must run inside a tokio runtime.
    fn install() -> anyhow::Result<StopSignals> {
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    /// Waits for either signal.
    async fn received(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }

    /// True if either signal came already; does not wait.
    async fn already_received(&mut self) -> bool {
        // A caught signal reaches the streams when the runtime's driver next runs; yielding lets it.
        tokio::task::yield_now().await;
        tokio::select! {
            biased;
            _ = self.interrupt.recv() => true,
            _ = self.terminate.recv() => true,
            () = std::future::ready(()) => false,
        }
    }
}
