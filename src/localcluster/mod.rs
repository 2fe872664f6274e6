//! Real Postgres servers in a temp (or given) directory, for `shardgate demo` and the test suite.
//!
//! Owns: finding the server binaries, creating shards of one primary plus streaming replicas
//! (initdb, pg_basebackup -R, pg_ctl) on free loopback ports, the shard map that matches them, and
//! tearing everything down (also on drop). Every server has role `app` (password `secret`) owning
//! database `app`, and superuser `postgres` (password `postgres`).
//!
//! It never touches a server it did not start: processes are found by the PID in a data directory
//! it created, and a directory is deleted only if it made it.
//!
//! ```text
//! <root>/.shardgate-local-cluster   marker: this directory may be wiped
//! <root>/sockets/                   unix sockets of every server (or a short dir under /tmp)
//! <root>/s0-primary/                data dir; server.log inside
//! <root>/s0-replica1/
//! ```

mod instance;
mod pg_bin;
mod process;
mod server_user;

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use thiserror::Error;

pub use instance::{Instance, free_port};
pub use pg_bin::{PG_BIN_ENV, PgBin};
pub use server_user::{SERVER_USER_NAME, ServerUser};

/// The superuser of every server, and its password (TCP logins use SCRAM).
pub const SUPERUSER: &str = "postgres";
pub const SUPERUSER_PASSWORD: &str = "postgres";
/// The application role, its password, and the database it owns.
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "secret";
pub const APP_DATABASE: &str = "app";

/// The end (exclusive) of the hash space that shard ranges cover: `[0, 2^32)`.
pub use crate::config::HASH_SPACE_END;

/// Its presence says the directory was made by a local cluster, so a later run may wipe it.
const MARKER: &str = ".shardgate-local-cluster";

/// A unix socket path must fit `sockaddr_un.sun_path` (108 bytes on Linux, 104 on some systems).
const MAX_SOCKET_PATH: usize = 100;

/// How long replicas get to connect and stream after they start.
const REPLICATION_WAIT: Duration = Duration::from_secs(60);

/// What can go wrong starting a local cluster. Each message says what to do about it.
#[derive(Debug, Error)]
pub enum ClusterError {
    #[error(
        "no PostgreSQL server binaries found (looked at {looked}); install them with \
         `apt-get install -y postgresql`, or set {PG_BIN_ENV} to the directory holding initdb"
    )]
    PgBinNotFound { looked: String },
    #[error(
        "running as root, which Postgres refuses, and there is no `{SERVER_USER_NAME}` OS user to run \
         the servers as; `apt-get install -y postgresql` creates it, or run as a normal user"
    )]
    NoServerUser,
    #[error(
        "the `{SERVER_USER_NAME}` OS user cannot reach {path}: {blocker} is closed to it; \
         use a directory under /tmp or open {blocker} with chmod o+x"
    )]
    Unreachable { path: PathBuf, blocker: PathBuf },
    #[error(
        "{path} is not empty and was not made by shardgate's local cluster; refusing to use or \
         delete it: give an empty or new directory"
    )]
    DirInUse { path: PathBuf },
    #[error("invalid cluster spec: {0}")]
    InvalidSpec(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed ({status}):\n{detail}")]
    Command {
        what: String,
        status: String,
        detail: String,
    },
    #[error("gave up after {limit:?} waiting for {what}")]
    Timeout { what: String, limit: Duration },
}

impl ClusterError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        ClusterError::Io {
            what: what.into(),
            source,
        }
    }
}

/// The shape of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    pub shards: usize,
    pub replicas_per_shard: usize,
    /// Synchronous replication: every server gets `synchronous_standby_names = 'ANY 1 (*)'`, so a
    /// commit waits for one replica (also after a failover, on the new primary). Needs replicas.
    pub synchronous: bool,
}

impl ClusterSpec {
    fn validate(&self) -> Result<(), ClusterError> {
        if self.shards == 0 {
            return Err(ClusterError::InvalidSpec(
                "shards must be at least 1".into(),
            ));
        }
        if self.synchronous && self.replicas_per_shard == 0 {
            return Err(ClusterError::InvalidSpec(
                "synchronous replication needs replicas_per_shard >= 1".into(),
            ));
        }
        Ok(())
    }
}

/// One shard: a primary and its streaming replicas.
#[derive(Debug)]
pub struct Shard {
    /// `s0`, `s1`, ...
    pub name: String,
    pub primary: Instance,
    pub replicas: Vec<Instance>,
}

impl Shard {
    /// The primary, then the replicas.
    pub fn instances(&self) -> impl Iterator<Item = &Instance> {
        std::iter::once(&self.primary).chain(&self.replicas)
    }
}

/// Running servers under one root directory. Dropping it stops them and, unless kept, deletes the
/// directory.
#[derive(Debug)]
pub struct LocalCluster {
    // Field order is drop order: servers stop before their directories go.
    shards: Vec<Shard>,
    root: PathBuf,
    /// Set when the root is a temp dir we made.
    temp_root: Option<TempDir>,
    /// Set when the root path is too long for unix socket paths.
    temp_sockets: Option<TempDir>,
    keep: bool,
    bin: PgBin,
    user: Option<ServerUser>,
}

impl LocalCluster {
    /// Starts every server and returns once each replica streams from its primary.
    ///
    /// `root: None` uses a new temp dir under the system temp dir. A given `root` must be new, empty,
    /// or a previous local cluster's directory: any servers still running there are stopped and
    /// it is wiped first. Either way the directory is deleted on drop unless [`Self::set_keep`].
    pub fn start(spec: &ClusterSpec, root: Option<&Path>) -> Result<LocalCluster, ClusterError> {
        spec.validate()?;
        let bin = PgBin::locate()?;
        let user = ServerUser::detect()?;
        let (root, temp_root) = match root {
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("shardgate-")
                    .tempdir()
                    .map_err(|e| ClusterError::io("creating a temp dir", e))?;
                (dir.path().to_path_buf(), Some(dir))
            }
            Some(path) => (prepare_given_root(path, &bin, user)?, None),
        };
        // The servers run as `postgres` when we are root: they must be able to walk into the root.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| ClusterError::io(format!("chmod 0755 {}", root.display()), e))?;
        std::fs::write(
            root.join(MARKER),
            "made by shardgate's local cluster; safe to delete\n",
        )
        .map_err(|e| ClusterError::io(format!("writing {}", root.join(MARKER).display()), e))?;
        let mut cluster = LocalCluster {
            shards: Vec::new(),
            root,
            temp_root,
            temp_sockets: None,
            keep: false,
            bin,
            user,
        };
        // From here on an error drops `cluster`, which stops what started and removes the root.
        if let Some(u) = user
            && let Some(blocker) = u.blocked_at(&cluster.root)
        {
            return Err(ClusterError::Unreachable {
                path: cluster.root.clone(),
                blocker,
            });
        }
        let socket_dir = cluster.make_socket_dir()?;

        // Shards are independent: set them up side by side (initdb is most of the time).
        let results: Vec<Result<Shard, ClusterError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..spec.shards)
                .map(|i| {
                    let (root, bin, socket_dir) = (&cluster.root, &cluster.bin, &socket_dir);
                    scope.spawn(move || {
                        start_shard(
                            &format!("s{i}"),
                            spec.replicas_per_shard,
                            root,
                            socket_dir,
                            bin,
                            user,
                        )
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        let mut first_error = None;
        for result in results {
            match result {
                Ok(shard) => cluster.shards.push(shard),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if spec.synchronous {
            for shard in &cluster.shards {
                for i in shard.instances() {
                    i.psql(
                        "postgres",
                        &[
                            "ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (*)'",
                            "SELECT pg_reload_conf()",
                        ],
                    )?;
                }
            }
        }
        Ok(cluster)
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// For tests that stop, kill or promote servers.
    pub fn shards_mut(&mut self) -> &mut [Shard] {
        &mut self.shards
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory with the server binaries in use.
    pub fn bin(&self) -> &PgBin {
        &self.bin
    }

    /// Keep the root directory (data and logs) after stop and drop.
    pub fn set_keep(&mut self, keep: bool) {
        self.keep = keep;
    }

    /// A complete shard map (the proxy's config) for this cluster, with the proxy on `listen`.
    pub fn shard_map_toml(&self, listen: &str) -> String {
        let shards: Vec<(String, String, Vec<String>)> = self
            .shards
            .iter()
            .map(|s| {
                let replicas = s.replicas.iter().map(Instance::addr).collect();
                (s.name.clone(), s.primary.addr(), replicas)
            })
            .collect();
        render_shard_map(listen, &shards)
    }

    /// Something another thread (a signal handler) can use to stop the servers and delete the
    /// root, without the cluster itself.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            servers: self
                .shards
                .iter()
                .flat_map(Shard::instances)
                .map(|i| i.data_dir.clone())
                .collect(),
            remove: if self.keep {
                Vec::new()
            } else {
                std::iter::once(self.root.clone())
                    .chain(self.temp_sockets.as_ref().map(|t| t.path().to_path_buf()))
                    .collect()
            },
            bin: self.bin.clone(),
            user: self.user,
        }
    }

    /// Stops every server (`pg_ctl -m immediate`), waits for them to exit, and deletes the root unless
    /// kept. Safe to call twice; drop calls it.
    pub fn stop(&mut self) {
        // Replicas first, so none logs a lost primary on its way down.
        std::thread::scope(|scope| {
            for shard in &mut self.shards {
                scope.spawn(move || {
                    for replica in &mut shard.replicas {
                        replica.stop();
                    }
                    shard.primary.stop();
                });
            }
        });
        if let Some(dir) = self.temp_sockets.take() {
            let _ = dir.close();
        }
        match self.temp_root.take() {
            Some(dir) if self.keep => {
                let _ = dir.keep();
            }
            Some(dir) => {
                let _ = dir.close();
            }
            None if self.keep => {}
            None => {
                if self.root.join(MARKER).exists() {
                    let _ = std::fs::remove_dir_all(&self.root);
                }
            }
        }
    }

    /// The shared socket directory: `<root>/sockets`, or a short temp dir when that path would make
    /// socket paths too long.
    fn make_socket_dir(&mut self) -> Result<PathBuf, ClusterError> {
        let preferred = self.root.join("sockets");
        let dir = if socket_path_fits(&preferred) {
            std::fs::create_dir(&preferred)
                .map_err(|e| ClusterError::io(format!("creating {}", preferred.display()), e))?;
            preferred
        } else {
            let temp = tempfile::Builder::new()
                .prefix("sg-sock-")
                .tempdir_in("/tmp")
                .map_err(|e| ClusterError::io("creating a socket dir under /tmp", e))?;
            let path = temp.path().to_path_buf();
            self.temp_sockets = Some(temp);
            path
        };
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| ClusterError::io(format!("chmod 0755 {}", dir.display()), e))?;
        if let Some(u) = self.user {
            u.chown(&dir)?;
        }
        Ok(dir)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Stops a cluster's servers from anywhere (a Ctrl-C handler), by data directory.
#[derive(Debug, Clone)]
pub struct StopHandle {
    servers: Vec<PathBuf>,
    remove: Vec<PathBuf>,
    bin: PgBin,
    user: Option<ServerUser>,
}

impl StopHandle {
    /// Stops every server still running (immediate mode, SIGKILL if that fails) and deletes the
    /// cluster's directories unless it was kept.
    pub fn stop_now(&self) {
        for data_dir in &self.servers {
            let Some(pid) =
                process::pid_file_pid(data_dir).filter(|&p| process::is_live_postgres(p))
            else {
                continue;
            };
            let mut cmd = std::process::Command::new(self.bin.tool("pg_ctl"));
            cmd.current_dir("/").arg("-D").arg(data_dir).args([
                "-m",
                "immediate",
                "-w",
                "-t",
                "30",
                "stop",
            ]);
            if let Some(u) = self.user {
                u.apply(&mut cmd);
            }
            if !cmd.output().is_ok_and(|o| o.status.success()) {
                process::kill9(pid);
            }
            process::wait_gone(pid, Duration::from_secs(30));
        }
        for dir in &self.remove {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn start_shard(
    name: &str,
    replicas: usize,
    root: &Path,
    socket_dir: &Path,
    bin: &PgBin,
    user: Option<ServerUser>,
) -> Result<Shard, ClusterError> {
    let primary_name = format!("{name}-primary");
    let primary = Instance::create_primary(
        &primary_name,
        &root.join(&primary_name),
        socket_dir,
        bin,
        user,
    )?;
    let mut shard = Shard {
        name: name.to_string(),
        primary,
        replicas: Vec::with_capacity(replicas),
    };
    for n in 1..=replicas {
        let replica_name = format!("{name}-replica{n}");
        let replica =
            Instance::create_replica(&replica_name, &shard.primary, &root.join(&replica_name))?;
        shard.replicas.push(replica);
    }
    wait_for_streaming(&shard)?;
    Ok(shard)
}

/// Polls until the primary reports every replica streaming and every replica is in recovery.
fn wait_for_streaming(shard: &Shard) -> Result<(), ClusterError> {
    let want = shard.replicas.len();
    if want == 0 {
        return Ok(());
    }
    let deadline = Instant::now() + REPLICATION_WAIT;
    let sql = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'";
    loop {
        let streaming: usize = shard.primary.psql("postgres", &[sql])?.parse().unwrap_or(0);
        if streaming >= want {
            break;
        }
        if Instant::now() >= deadline {
            return Err(ClusterError::Timeout {
                what: format!(
                    "{want} replica(s) of shard {} to stream ({streaming} do; see the replicas' server.log)",
                    shard.name
                ),
                limit: REPLICATION_WAIT,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for replica in &shard.replicas {
        if !replica.is_in_recovery()? {
            return Err(ClusterError::InvalidSpec(format!(
                "{} started as a primary instead of a replica: standby.signal is missing",
                replica.name
            )));
        }
    }
    Ok(())
}

/// Makes `path` ready to be a cluster root: create it, or wipe a previous cluster there (stopping
/// its servers), or accept it empty. Returns the absolute path.
fn prepare_given_root(
    path: &Path,
    bin: &PgBin,
    user: Option<ServerUser>,
) -> Result<PathBuf, ClusterError> {
    let path = std::path::absolute(path)
        .map_err(|e| ClusterError::io(format!("resolving {}", path.display()), e))?;
    if path.join(MARKER).exists() {
        let servers = std::fs::read_dir(&path)
            .map_err(|e| ClusterError::io(format!("reading {}", path.display()), e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("PG_VERSION").exists())
            .collect();
        StopHandle {
            servers,
            remove: vec![path.clone()],
            bin: bin.clone(),
            user,
        }
        .stop_now();
    } else if path.exists() {
        let mut entries = std::fs::read_dir(&path)
            .map_err(|e| ClusterError::io(format!("reading {}", path.display()), e))?;
        if entries.next().is_some() {
            return Err(ClusterError::DirInUse { path });
        }
    }
    std::fs::create_dir_all(&path)
        .map_err(|e| ClusterError::io(format!("creating {}", path.display()), e))?;
    Ok(path)
}

fn socket_path_fits(dir: &Path) -> bool {
    // The longest file Postgres puts there: `.s.PGSQL.65535.lock`.
    dir.as_os_str().len() + "/.s.PGSQL.65535.lock".len() <= MAX_SOCKET_PATH
}

/// Splits `[0, 2^32)` into `n` contiguous ranges as even as integers allow; the last ends at 2^32.
pub fn hash_ranges(n: usize) -> Vec<[u64; 2]> {
    let n = n as u64;
    (0..n)
        .map(|i| [i * HASH_SPACE_END / n, (i + 1) * HASH_SPACE_END / n])
        .collect()
}

/// The shard map text for `(name, primary, replicas)` per shard, ranges split evenly.
fn render_shard_map(listen: &str, shards: &[(String, String, Vec<String>)]) -> String {
    let mut out = format!(
        "# shard map written by shardgate's local cluster\n\
         [proxy]\n\
         listen = \"{listen}\"\n\
         pool_mode = \"transaction\"\n\
         pool_size = 20\n\
         \n\
         [[users]]\n\
         name = \"{APP_USER}\"\n\
         password = \"{APP_PASSWORD}\"\n\
         \n\
         [backend]\n\
         user = \"{APP_USER}\"\n\
         password = \"{APP_PASSWORD}\"\n\
         database = \"{APP_DATABASE}\"\n"
    );
    for ((name, primary, replicas), [start, end]) in shards.iter().zip(hash_ranges(shards.len())) {
        let replicas: Vec<String> = replicas.iter().map(|r| format!("\"{r}\"")).collect();
        let _ = write!(
            out,
            "\n[[shards]]\n\
             name = \"{name}\"\n\
             range = [{start}, {end}]\n\
             primary = \"{primary}\"\n\
             replicas = [{}]\n",
            replicas.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_tile_the_hash_space() {
        let cases: [(usize, &[[u64; 2]]); 4] = [
            (1, &[[0, 4294967296]]),
            (2, &[[0, 2147483648], [2147483648, 4294967296]]),
            (
                3,
                &[
                    [0, 1431655765],
                    [1431655765, 2863311530],
                    [2863311530, 4294967296],
                ],
            ),
            (
                4,
                &[
                    [0, 1073741824],
                    [1073741824, 2147483648],
                    [2147483648, 3221225472],
                    [3221225472, 4294967296],
                ],
            ),
        ];
        for (n, want) in cases {
            assert_eq!(hash_ranges(n), want, "{n} shards");
        }
        for n in [5, 7, 16, 1000] {
            let ranges = hash_ranges(n);
            assert_eq!(ranges.len(), n);
            assert_eq!(ranges[0][0], 0);
            assert_eq!(ranges[n - 1][1], HASH_SPACE_END);
            assert!(
                ranges
                    .windows(2)
                    .all(|w| w[0][1] == w[1][0] && w[0][0] < w[0][1])
            );
        }
    }

    #[test]
    fn shard_map_text() {
        let text = render_shard_map(
            "127.0.0.1:6432",
            &[
                (
                    "s0".into(),
                    "127.0.0.1:5001".into(),
                    vec!["127.0.0.1:5002".into()],
                ),
                ("s1".into(), "127.0.0.1:5003".into(), vec![]),
            ],
        );
        let want = r#"# shard map written by shardgate's local cluster
[proxy]
listen = "127.0.0.1:6432"
pool_mode = "transaction"
pool_size = 20

[[users]]
name = "app"
password = "secret"

[backend]
user = "app"
password = "secret"
database = "app"

[[shards]]
name = "s0"
range = [0, 2147483648]
primary = "127.0.0.1:5001"
replicas = ["127.0.0.1:5002"]

[[shards]]
name = "s1"
range = [2147483648, 4294967296]
primary = "127.0.0.1:5003"
replicas = []
"#;
        assert_eq!(text, want);
    }

    #[test]
    fn shard_map_loads_as_config() {
        let text = render_shard_map(
            "127.0.0.1:0",
            &[(
                "s0".into(),
                "127.0.0.1:5001".into(),
                vec!["127.0.0.1:5002".into(), "127.0.0.1:5003".into()],
            )],
        );
        let config = crate::config::load_str(&text, "test").expect("a valid shard map");
        assert_eq!(config.shards.len(), 1);
        assert_eq!(config.shards[0].range, [0, HASH_SPACE_END]);
        assert_eq!(config.shards[0].replicas.len(), 2);
    }

    #[test]
    fn specs_are_checked() {
        let ok = ClusterSpec {
            shards: 1,
            replicas_per_shard: 0,
            synchronous: false,
        };
        assert!(ok.validate().is_ok());
        let no_shards = ClusterSpec {
            shards: 0,
            ..ok.clone()
        };
        assert!(matches!(
            no_shards.validate(),
            Err(ClusterError::InvalidSpec(_))
        ));
        let sync = ClusterSpec {
            synchronous: true,
            ..ok.clone()
        };
        assert!(matches!(sync.validate(), Err(ClusterError::InvalidSpec(_))));
        let sync = ClusterSpec {
            synchronous: true,
            replicas_per_shard: 1,
            ..ok
        };
        assert!(sync.validate().is_ok());
    }

    #[test]
    fn socket_paths_stay_short() {
        assert!(socket_path_fits(Path::new("/tmp/shardgate-abc123/sockets")));
        let long = format!("/home/{}/sockets", "x".repeat(80));
        assert!(!socket_path_fits(Path::new(&long)));
    }

    #[test]
    fn a_foreign_nonempty_dir_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("precious.txt"), "keep me").expect("write");
        let err =
            prepare_given_root(dir.path(), &PgBin::at("/nonexistent"), None).expect_err("refused");
        assert!(matches!(err, ClusterError::DirInUse { .. }), "{err}");
        assert!(dir.path().join("precious.txt").exists());
    }

    #[test]
    fn a_previous_cluster_dir_is_wiped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("demo");
        std::fs::create_dir(&root).expect("mkdir");
        std::fs::write(root.join(MARKER), "").expect("write");
        std::fs::write(root.join("shard-map.toml"), "old").expect("write");
        let got = prepare_given_root(&root, &PgBin::at("/nonexistent"), None).expect("prepared");
        assert_eq!(got, root);
        assert_eq!(std::fs::read_dir(&root).expect("read").count(), 0);
    }
}
