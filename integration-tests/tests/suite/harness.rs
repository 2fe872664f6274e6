//! The suite's infrastructure: one shared local cluster (started on first use, always torn down, also
//! on Ctrl-C), in-process proxies in front of it, clients, psql, a bounded poll, and unique names so
//! tests can run in parallel on the shared servers.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use shardgate::ProxyHandle;
use shardgate::localcluster::{
    APP_DATABASE, APP_PASSWORD, APP_USER, ClusterSpec, Instance, LocalCluster, StopHandle,
};
use tokio_postgres::{Client, NoTls};

/// A test body. It gets the shared context and builds its own runtime with [`block_on`].
pub type TestFn = fn(&Ctx) -> anyhow::Result<()>;

/// One registered test.
pub struct Test {
    /// `suite::<module>::<function>`, as `module_path!()` gives it.
    pub name: &'static str,
    pub run: TestFn,
}

impl Test {
    /// The name shown and filtered on: `<module>::<function>`.
    pub fn display_name(&self) -> &'static str {
        self.name
            .split_once("::")
            .map_or(self.name, |(_, rest)| rest)
    }
}

/// Declares a module's tests: `tests![a, b];` defines `pub const TESTS` naming `module::a`, ...
macro_rules! tests {
    ($($test:ident),* $(,)?) => {
        pub const TESTS: &[$crate::harness::Test] = &[$(
            $crate::harness::Test { name: concat!(module_path!(), "::", stringify!($test)), run: $test },
        )*];
    };
}
pub(crate) use tests;

/// The shared cluster: one shard, a primary and two streaming replicas.
const SHARED_SPEC: ClusterSpec = ClusterSpec {
    shards: 1,
    replicas_per_shard: 2,
    synchronous: false,
};

/// The longest a test's async body may run; a hung test fails instead of hanging CI.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a client gets to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What every test gets.
pub struct Ctx {
    shared: OnceLock<Result<LocalCluster, String>>,
    /// Every cluster started, for the signal handler and for teardown. Clusters start while holding
    /// this lock, so a Ctrl-C waits for a start in progress and then stops that cluster too.
    registry: Arc<Mutex<Registry>>,
    next_id: AtomicUsize,
}

impl Default for Ctx {
    fn default() -> Ctx {
        Ctx {
            shared: OnceLock::new(),
            registry: Arc::new(Mutex::new(Registry::default())),
            next_id: AtomicUsize::new(0),
        }
    }
}

impl Ctx {
    /// The shared cluster, started by the first test that asks. Tests share its servers: use
    /// [`Ctx::unique`] names, and [`Ctx::start_cluster`] for anything that stops or breaks a server.
    pub fn cluster(&self) -> anyhow::Result<&LocalCluster> {
        self.shared
            .get_or_init(|| {
                let started = Instant::now();
                let cluster = self
                    .start_registered(&SHARED_SPEC)
                    .map_err(|e| format!("{e:#}"))?;
                eprintln!(
                    "suite: shared cluster up in {:.2}s at {}",
                    started.elapsed().as_secs_f64(),
                    cluster.root().display()
                );
                Ok(cluster)
            })
            .as_ref()
            .map_err(|e| anyhow!("the shared local cluster did not start: {e}"))
    }

    /// A private cluster for one test (stop it, kill it, promote in it); stopped when dropped and on
    /// Ctrl-C.
    pub fn start_cluster(&self, spec: &ClusterSpec) -> anyhow::Result<LocalCluster> {
        self.start_registered(spec)
            .context("starting a private cluster")
    }

    /// The shared cluster's primary.
    pub fn primary(&self) -> anyhow::Result<&Instance> {
        Ok(&self.cluster()?.shards()[0].primary)
    }

    /// The shared cluster's replica.
    pub fn replica(&self) -> anyhow::Result<&Instance> {
        self.cluster()?.shards()[0]
            .replicas
            .first()
            .context("the shared cluster has no replica")
    }

    /// The shared cluster's shard map with the proxy on a free port, without the replicas: every
    /// statement goes to the primary (the wire and pooling tests are about the protocol, not routing).
    pub fn default_map(&self) -> anyhow::Result<String> {
        Ok(without_replicas(
            &self.cluster()?.shard_map_toml("127.0.0.1:0"),
        ))
    }

    /// The shared cluster's full shard map (primary and replicas), with quick health checks and
    /// `routing` (TOML lines) as the `[routing]` section.
    pub fn routed_map(&self, routing: &str) -> anyhow::Result<String> {
        Ok(routed(
            &self.cluster()?.shard_map_toml("127.0.0.1:0"),
            routing,
            "",
        ))
    }

    /// Starts an in-process proxy with the shard map `map` (environment overrides apply).
    pub fn start_proxy(&self, map: &str) -> anyhow::Result<ProxyUnderTest> {
        let config = shardgate::config::load_str(map, "test shard map")
            .context("loading the test shard map")?;
        let handle = shardgate::start(config).context("starting the proxy")?;
        Ok(ProxyUnderTest {
            handle: Some(handle),
        })
    }

    /// Starts an in-process proxy from a map file holding `map` (watched and reloadable: see
    /// [`MapFile::write`] and `ProxyHandle::reload`).
    pub fn start_proxy_from_file(&self, map: &str) -> anyhow::Result<(ProxyUnderTest, MapFile)> {
        let dir = tempfile::tempdir().context("a directory for the map file")?;
        let file = MapFile {
            path: dir.path().join("shard-map.toml"),
            _dir: dir,
        };
        file.write(map)?;
        let config = shardgate::config::load(&file.path).context("loading the test shard map")?;
        let handle = shardgate::start_with_map(config, Some(file.path.clone()))
            .context("starting the proxy")?;
        Ok((
            ProxyUnderTest {
                handle: Some(handle),
            },
            file,
        ))
    }

    /// A client straight to the shared primary, as `app`.
    pub async fn direct_client(&self) -> anyhow::Result<Client> {
        connect(&self.primary()?.app_conninfo()).await
    }

    /// A client straight to the shared primary, as the superuser, in database `app`.
    pub async fn superuser_client(&self) -> anyhow::Result<Client> {
        connect(&self.primary()?.superuser_conninfo(APP_DATABASE)).await
    }

    /// Runs the cluster's `psql` against `url` (a URL or conninfo) with `-X` and `args`, feeding it
    /// `stdin` if given. The output is returned whatever the exit status.
    pub fn run_psql(
        &self,
        url: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> anyhow::Result<Output> {
        let psql = self.psql_path()?;
        let mut child = Command::new(&psql)
            .env("PGCONNECT_TIMEOUT", "10")
            .arg("-X")
            .arg(url)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", psql.display()))?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use std::io::Write;
            // Written from a thread: psql may fill its stdout pipe before it reads all of stdin.
            let text = text.to_string();
            std::thread::spawn(move || {
                let _ = pipe.write_all(text.as_bytes());
            });
        }
        child.wait_with_output().context("waiting for psql")
    }

    /// `prefix_<n>`, unique within this run: a table or schema name no other test uses.
    pub fn unique(&self, prefix: &str) -> String {
        format!("{prefix}_{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// On SIGINT or SIGTERM, stop every cluster started so far and exit, so no postmaster outlives
    /// an interrupted run.
    pub fn stop_clusters_on_signal(&self) {
        let registry = Arc::clone(&self.registry);
        let installed = ctrlc::set_handler(move || {
            eprintln!("suite: interrupted; stopping local clusters");
            // Exits holding the lock: no test can start another cluster meanwhile.
            lock(&registry).stop_all();
            std::process::exit(130);
        });
        if let Err(e) = installed {
            eprintln!(
                "suite: cannot catch Ctrl-C ({e}); an interrupted run may leave servers running"
            );
        }
    }

    fn psql_path(&self) -> anyhow::Result<PathBuf> {
        match self.cluster() {
            Ok(c) => Ok(c.bin().tool("psql")),
            Err(_) => Ok(shardgate::localcluster::PgBin::locate()?.tool("psql")),
        }
    }

    fn start_registered(&self, spec: &ClusterSpec) -> anyhow::Result<LocalCluster> {
        let mut registry = lock(&self.registry);
        anyhow::ensure!(!registry.stopping, "the suite is stopping; no new cluster");
        let cluster = LocalCluster::start(spec, None)?;
        registry.handles.push(cluster.stop_handle());
        Ok(cluster)
    }
}

/// The clusters of this run, and whether the run is being torn down.
#[derive(Default)]
struct Registry {
    stopping: bool,
    handles: Vec<StopHandle>,
}

impl Registry {
    /// Stops every cluster still running and refuses new ones from now on.
    fn stop_all(&mut self) {
        self.stopping = true;
        for h in &self.handles {
            h.stop_now();
        }
    }
}

/// Locks `m`; a test that panicked while holding it leaves nothing half-updated here.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Stops every cluster: the shared one by dropping it (stop, wait, delete), and through the stop
/// handles whatever a test may have leaked. Call before `Conclusion::exit`, which skips destructors.
pub fn teardown(ctx: Arc<Ctx>) {
    let started = Instant::now();
    let had_cluster = matches!(ctx.shared.get(), Some(Ok(_)));
    let registry = Arc::clone(&ctx.registry);
    // Every test closure (and so every other Arc) is gone once libtest_mimic::run returns.
    drop(Arc::try_unwrap(ctx).ok());
    lock(&registry).stop_all();
    if had_cluster {
        eprintln!(
            "suite: clusters stopped in {:.2}s",
            started.elapsed().as_secs_f64()
        );
    }
}

/// A shard map file in a temp dir (removed on drop).
pub struct MapFile {
    pub path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl MapFile {
    /// Replaces the file's text in one step (write a temp file, rename), as editors and config
    /// management tools do.
    pub fn write(&self, map: &str) -> anyhow::Result<()> {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, map).context("writing the map file")?;
        std::fs::rename(&tmp, &self.path).context("replacing the map file")?;
        Ok(())
    }
}

/// A proxy running in this process; stopped on drop.
pub struct ProxyUnderTest {
    handle: Option<ProxyHandle>,
}

impl ProxyUnderTest {
    /// Where clients connect (the real port, though the map said port 0).
    pub fn addr(&self) -> SocketAddr {
        self.handle().addr()
    }

    /// `postgres://app:secret@127.0.0.1:PORT/app`.
    pub fn url(&self) -> String {
        format!(
            "postgres://{APP_USER}:{APP_PASSWORD}@{}/{APP_DATABASE}",
            self.addr()
        )
    }

    /// A tokio-postgres client through the proxy, as `app`.
    pub async fn client(&self) -> anyhow::Result<Client> {
        connect(&self.url()).await
    }

    pub fn handle(&self) -> &ProxyHandle {
        self.handle.as_ref().expect("present until drop")
    }

    /// Stops the proxy now (drop does the same).
    pub fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.stop();
        }
    }
}

impl Drop for ProxyUnderTest {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.stop();
        }
    }
}

/// Connects with tokio-postgres (a URL or a conninfo) and drives the connection on the current
/// runtime.
pub async fn connect(conninfo: &str) -> anyhow::Result<Client> {
    let (client, connection) =
        tokio::time::timeout(CONNECT_TIMEOUT, tokio_postgres::connect(conninfo, NoTls))
            .await
            .map_err(|_| anyhow!("connecting took over {CONNECT_TIMEOUT:?}"))??;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Runs a test's async body on a fresh current-thread runtime, failing it after [`TEST_TIMEOUT`].
pub fn block_on<F: Future<Output = anyhow::Result<()>>>(body: F) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the test runtime")?;
    rt.block_on(async {
        tokio::time::timeout(TEST_TIMEOUT, body)
            .await
            .map_err(|_| anyhow!("the test did not finish within {TEST_TIMEOUT:?}"))?
    })
}

/// Polls `cond` until it holds or `limit` passes. The pause is a poll interval, not a guess at timing.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        if Instant::now() >= deadline {
            return Err(anyhow!("gave up after {limit:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(())
}

/// One scrape of `/metrics` at `addr`: checked (HTTP 200, one TYPE line per family before its
/// samples, every sample a number, no series twice) and parsed into (name with labels → value).
pub async fn scrape_metrics(
    addr: std::net::SocketAddr,
) -> anyhow::Result<std::collections::HashMap<String, f64>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let mut text = String::new();
    s.read_to_string(&mut text).await?;
    let (head, body) = text.split_once("\r\n\r\n").context("an HTTP answer")?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut out = std::collections::HashMap::new();
    let mut typed = std::collections::HashSet::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_whitespace().next().unwrap_or("");
            anyhow::ensure!(typed.insert(name.to_string()), "{name} typed twice");
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').context("a sample line")?;
        let value: f64 = value
            .parse()
            .map_err(|_| anyhow!("not a number in {line:?}"))?;
        let name = series.split('{').next().unwrap_or("");
        let family = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        anyhow::ensure!(
            typed.contains(name) || typed.contains(family),
            "{name} has no TYPE line before it"
        );
        anyhow::ensure!(
            out.insert(series.to_string(), value).is_none(),
            "{series} twice"
        );
    }
    Ok(out)
}

/// `map` with every shard's replica list emptied.
pub fn without_replicas(map: &str) -> String {
    map.lines()
        .map(|l| {
            if l.trim_start().starts_with("replicas") {
                "replicas = []"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// `map` with a `[routing]` section of `routing` lines, and a `[health]` section probing every
/// 100 ms plus `health` lines.
pub fn routed(map: &str, routing: &str, health: &str) -> String {
    format!(
        "{map}\n[routing]\n{routing}\n\n[health]\ninterval = \"100ms\"\ntimeout = \"1s\"\nban_after = 2\n{health}\n"
    )
}

/// Sets `key = value` in the `[proxy]` section of a shard map (`value` is TOML: `"2s"`, `4`), replacing
/// the line if there is one.
pub fn proxy_setting(map: &str, key: &str, value: &str) -> String {
    let mut out = Vec::new();
    let mut in_proxy = false;
    let mut done = false;
    for line in map.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_proxy = trimmed == "[proxy]";
            out.push(line.to_string());
            if in_proxy && !done {
                out.push(format!("{key} = {value}"));
                done = true;
            }
            continue;
        }
        let is_key = trimmed
            .split_once('=')
            .is_some_and(|(k, _)| k.trim() == key);
        if !(in_proxy && is_key) {
            out.push(line.to_string());
        }
    }
    if !done {
        out.insert(0, format!("[proxy]\n{key} = {value}"));
    }
    out.join("\n") + "\n"
}

tests![proxy_setting_replaces_and_inserts];

/// The map editor replaces a `[proxy]` key, adds a missing one, and leaves other sections alone.
fn proxy_setting_replaces_and_inserts(_ctx: &Ctx) -> anyhow::Result<()> {
    let map =
        "# c\n[proxy]\nlisten = \"127.0.0.1:0\"\npool_size = 20\n\n[backend]\npool_size = 1\n";
    assert_eq!(
        proxy_setting(map, "pool_size", "2"),
        "# c\n[proxy]\npool_size = 2\nlisten = \"127.0.0.1:0\"\n\n[backend]\npool_size = 1\n"
    );
    assert_eq!(
        proxy_setting("[backend]\nuser = \"app\"\n", "workers", "1"),
        "[proxy]\nworkers = 1\n[backend]\nuser = \"app\"\n"
    );
    Ok(())
}
