//! One Postgres server of a local cluster: create it (initdb for a primary, pg_basebackup for a
//! replica), start it, stop it, kill it, and run SQL on it through `psql` over its unix socket.

use std::fs::{OpenOptions, Permissions};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use tracing::warn;

use super::pg_bin::PgBin;
use super::process;
use super::server_user::ServerUser;
use super::{APP_DATABASE, APP_PASSWORD, APP_USER, ClusterError, SUPERUSER, SUPERUSER_PASSWORD};

/// `pg_ctl -t`: how long a start or stop may take before pg_ctl gives up.
const PG_CTL_TIMEOUT_SECS: &str = "60";

/// Tries of a fresh port when the one we picked was taken between our probe and the server's bind.
const PORT_ATTEMPTS: usize = 3;

/// How long to wait for a killed postmaster and its children to be gone.
const EXIT_WAIT: Duration = Duration::from_secs(30);

/// libpq environment variables that would redirect or change our server programs' connections.
const LIBPQ_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGTARGETSESSIONATTRS",
    "PGDATA",
];

/// Lines every server's `pg_hba.conf` needs: trust over the unix socket (setup, and `psql` as the
/// superuser), SCRAM over TCP on loopback for clients and for replication.
const REQUIRED_HBA: &[&str] = &[
    "local all all trust",
    "host all all 127.0.0.1/32 scram-sha-256",
    "host replication all 127.0.0.1/32 scram-sha-256",
];

/// A free TCP port on 127.0.0.1: bind port 0, read the port, let it go. Another process can take it
/// before the server binds it, so server start retries with a new port when the bind fails.
pub fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// One Postgres server. Dropping it stops it (`pg_ctl -m immediate`).
#[derive(Debug)]
pub struct Instance {
    /// `s0-primary`, `s0-replica1`, ...: also the name of its data directory.
    pub name: String,
    pub port: u16,
    pub data_dir: PathBuf,
    /// Where its unix socket `.s.PGSQL.<port>` lives.
    pub socket_dir: PathBuf,
    bin: PgBin,
    user: Option<ServerUser>,
}

impl Instance {
    /// Makes a new primary in `data_dir` with initdb, starts it, and creates role and database `app`.
    pub(crate) fn create_primary(
        name: &str,
        data_dir: &Path,
        socket_dir: &Path,
        bin: &PgBin,
        user: Option<ServerUser>,
    ) -> Result<Instance, ClusterError> {
        let mut inst = Instance {
            name: name.to_string(),
            port: free_port().map_err(|e| ClusterError::io("finding a free port", e))?,
            data_dir: data_dir.to_path_buf(),
            socket_dir: socket_dir.to_path_buf(),
            bin: bin.clone(),
            user,
        };
        inst.make_data_dir()?;

        // initdb reads the superuser password from a file so it never shows in `ps`.
        let pwfile = data_dir.with_extension("pwfile");
        write_file(&pwfile, &format!("{SUPERUSER_PASSWORD}\n"), 0o600)?;
        if let Some(u) = user {
            u.chown(&pwfile)?;
        }
        let initdb = run(
            inst.server_command("initdb")
                .arg("-D")
                .arg(data_dir)
                .args([
                    "-U",
                    SUPERUSER,
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ])
                .arg(format!("--pwfile={}", pwfile.display()))
                .args(["-E", "UTF8", "--locale=C", "--no-sync"]),
            format!("initdb of {name}"),
        );
        let _ = std::fs::remove_file(&pwfile);
        initdb?;

        inst.append_conf(&primary_conf(inst.port, socket_dir))?;
        inst.ensure_hba()?;
        inst.start_new()?;
        inst.psql(
            "postgres",
            &[
                &format!("CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'"),
                &format!("CREATE DATABASE {APP_DATABASE} OWNER {APP_USER}"),
            ],
        )?;
        Ok(inst)
    }

    /// Makes a streaming replica of `primary` in `data_dir` with pg_basebackup and starts it.
    pub(crate) fn create_replica(
        name: &str,
        primary: &Instance,
        data_dir: &Path,
    ) -> Result<Instance, ClusterError> {
        let mut inst = Instance {
            name: name.to_string(),
            port: free_port().map_err(|e| ClusterError::io("finding a free port", e))?,
            data_dir: data_dir.to_path_buf(),
            socket_dir: primary.socket_dir.clone(),
            bin: primary.bin.clone(),
            user: primary.user,
        };
        inst.make_data_dir()?;
        // -R writes standby.signal and a primary_conninfo that reaches the primary over its socket.
        run(
            inst.server_command("pg_basebackup")
                .arg("-h")
                .arg(&primary.socket_dir)
                .args(["-p", &primary.port.to_string(), "-U", SUPERUSER, "-D"])
                .arg(data_dir)
                .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]),
            format!("pg_basebackup of {} into {name}", primary.name),
        )?;
        // The copy brings the primary's log along; this server's log starts empty.
        let _ = std::fs::remove_file(inst.log_path());
        inst.append_conf(&replica_conf(inst.port, &inst.socket_dir))?;
        inst.start_new()?;
        Ok(inst)
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// libpq key/value conninfo for the superuser over TCP.
    pub fn superuser_conninfo(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={SUPERUSER} password={SUPERUSER_PASSWORD} dbname={db}",
            self.port
        )
    }

    /// libpq key/value conninfo for the application role over TCP.
    pub fn app_conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={APP_USER} password={APP_PASSWORD} dbname={APP_DATABASE}",
            self.port
        )
    }

    /// The server's log file (`pg_ctl -l`).
    pub fn log_path(&self) -> PathBuf {
        self.data_dir.join("server.log")
    }

    /// The postmaster's PID while it runs.
    pub fn pid(&self) -> Option<i32> {
        process::pid_file_pid(&self.data_dir).filter(|&pid| process::is_live_postgres(pid))
    }

    /// Starts the server if it is not running, and waits until it accepts connections.
    pub fn start(&mut self) -> Result<(), ClusterError> {
        if self.pid().is_some() {
            return Ok(());
        }
        // After `kill9` the postmaster may linger as a zombie that PID 1 never reaps; Postgres would
        // take its PID file for a live server and refuse to start.
        // The same goes for the lock file beside its unix socket, which names the same PID.
        if process::pid_file_pid(&self.data_dir).is_some() {
            let _ = std::fs::remove_file(self.data_dir.join("postmaster.pid"));
        }
        let socket = self.socket_dir.join(format!(".s.PGSQL.{}", self.port));
        let socket_lock = self.socket_dir.join(format!(".s.PGSQL.{}.lock", self.port));
        if process::pid_file_pid_at(&socket_lock).is_some_and(|pid| !process::is_live_postgres(pid))
        {
            let _ = std::fs::remove_file(&socket_lock);
            let _ = std::fs::remove_file(&socket);
        }
        let log_start = std::fs::metadata(self.log_path()).map_or(0, |m| m.len());
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", PG_CTL_TIMEOUT_SECS, "start"]);
        let out = spawn_output(&mut cmd, "pg_ctl")?;
        if out.status.success() {
            return Ok(());
        }
        Err(ClusterError::Command {
            what: format!("pg_ctl start of {} (port {})", self.name, self.port),
            status: out.status.to_string(),
            detail: format!(
                "{}\n--- {} ---\n{}",
                tail(&String::from_utf8_lossy(&out.stderr), 10),
                self.log_path().display(),
                tail(&self.log_since(log_start), 20)
            ),
        })
    }

    /// Stops the server at once (`pg_ctl -m immediate`: no checkpoint, crash recovery on the next
    /// start), falling back to SIGKILL, and waits for the postmaster to exit. Does nothing if it is
    /// not running.
    pub fn stop(&mut self) {
        self.stop_with("immediate");
    }

    /// Stops the server cleanly (`pg_ctl -m fast`: sessions are ended, a checkpoint is written).
    pub fn stop_fast(&mut self) {
        self.stop_with("fast");
    }

    /// SIGKILLs the postmaster, as a crash would, and waits until it and its children are gone, so
    /// that `start` can follow at once.
    pub fn kill9(&mut self) {
        let Some(pid) = self.pid() else {
            return;
        };
        let children = process::children_of(pid);
        process::kill9(pid);
        // Backends notice the postmaster's death and exit by themselves.
        let gone = process::wait_gone(pid, EXIT_WAIT)
            && children.iter().all(|&c| process::wait_gone(c, EXIT_WAIT));
        if !gone {
            warn!(server = %self.name, pid, "postmaster or a child still running after kill -9");
        }
    }

    /// Turns a replica into a primary (`pg_ctl promote -w`).
    pub fn promote(&mut self) -> Result<(), ClusterError> {
        run(
            self.server_command("pg_ctl")
                .arg("-D")
                .arg(&self.data_dir)
                .args(["-w", "-t", PG_CTL_TIMEOUT_SECS, "promote"]),
            format!("pg_ctl promote of {}", self.name),
        )
        .map(|_| ())
    }

    /// Runs each statement in `statements` (each its own transaction) as the superuser over the unix
    /// socket, with `psql -X -q -A -t -v ON_ERROR_STOP=1`, and returns what psql printed: rows one a
    /// line, columns split by `|`.
    pub fn psql(&self, db: &str, statements: &[&str]) -> Result<String, ClusterError> {
        let mut cmd = Command::new(self.bin.tool("psql"));
        clear_libpq_env(&mut cmd);
        cmd.env("PGCONNECT_TIMEOUT", "10")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", SUPERUSER, "-d", db]);
        for sql in statements {
            cmd.arg("-c").arg(sql);
        }
        let out = run(
            &mut cmd,
            format!("psql on {} (port {})", self.name, self.port),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Appends `setting = value` lines to postgresql.conf and reloads the server's configuration.
    pub fn set_conf(&self, lines: &str) -> Result<(), ClusterError> {
        self.append_conf(&format!("\n{lines}\n"))?;
        self.psql("postgres", &["SELECT pg_reload_conf()"])
            .map(|_| ())
    }

    /// `SELECT pg_is_in_recovery()`: true on a replica.
    pub fn is_in_recovery(&self) -> Result<bool, ClusterError> {
        Ok(self.psql("postgres", &["SELECT pg_is_in_recovery()"])? == "t")
    }

    fn stop_with(&mut self, mode: &str) {
        let Some(pid) = self.pid() else {
            return;
        };
        let stopped = self
            .server_command("pg_ctl")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", mode, "-w", "-t", PG_CTL_TIMEOUT_SECS, "stop"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !stopped {
            warn!(server = %self.name, pid, "pg_ctl stop failed; sending SIGKILL");
            process::kill9(pid);
        }
        if !process::wait_gone(pid, EXIT_WAIT) {
            warn!(server = %self.name, pid, "postmaster still running after stop");
        }
    }

    /// Starts a server for the first time. If the port was taken between `free_port` and the bind,
    /// moves to another port (a later `port =` line wins in postgresql.conf) and tries again.
    fn start_new(&mut self) -> Result<(), ClusterError> {
        let mut attempt = 1;
        loop {
            let log_start = std::fs::metadata(self.log_path()).map_or(0, |m| m.len());
            match self.start() {
                Ok(()) => return Ok(()),
                Err(e) if attempt < PORT_ATTEMPTS && port_was_taken(&self.log_since(log_start)) => {
                    warn!(server = %self.name, port = self.port, error = %e, "port taken; trying another");
                    self.port =
                        free_port().map_err(|e| ClusterError::io("finding a free port", e))?;
                    self.append_conf(&format!("port = {}\n", self.port))?;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn make_data_dir(&self) -> Result<(), ClusterError> {
        std::fs::create_dir_all(&self.data_dir)
            .map_err(|e| ClusterError::io(format!("creating {}", self.data_dir.display()), e))?;
        // Postgres refuses a data directory that others can read.
        std::fs::set_permissions(&self.data_dir, Permissions::from_mode(0o700))
            .map_err(|e| ClusterError::io(format!("chmod 0700 {}", self.data_dir.display()), e))?;
        if let Some(u) = self.user {
            u.chown(&self.data_dir)?;
        }
        Ok(())
    }

    fn append_conf(&self, text: &str) -> Result<(), ClusterError> {
        let path = self.data_dir.join("postgresql.conf");
        OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| ClusterError::io(format!("appending to {}", path.display()), e))
    }

    /// initdb with `--auth-local=trust --auth-host=scram-sha-256` writes every line we need; check,
    /// and add what a differently packaged initdb left out.
    fn ensure_hba(&self) -> Result<(), ClusterError> {
        let path = self.data_dir.join("pg_hba.conf");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ClusterError::io(format!("reading {}", path.display()), e))?;
        let missing = missing_hba_lines(&text);
        if missing.is_empty() {
            return Ok(());
        }
        let mut add = String::from("\n# added by shardgate's local cluster\n");
        for line in missing {
            add.push_str(line);
            add.push('\n');
        }
        OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(add.as_bytes()))
            .map_err(|e| ClusterError::io(format!("appending to {}", path.display()), e))
    }

    fn log_since(&self, offset: u64) -> String {
        let text = std::fs::read(self.log_path()).unwrap_or_default();
        let from = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(text.len());
        String::from_utf8_lossy(&text[from..]).into_owned()
    }

    /// A server program, run as the server user when we are root, from `/` (a directory every user
    /// can enter), with no libpq environment leaking in.
    fn server_command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.bin.tool(tool));
        cmd.current_dir("/");
        clear_libpq_env(&mut cmd);
        if let Some(u) = self.user {
            u.apply(&mut cmd);
        }
        cmd
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.stop();
    }
}

fn primary_conf(port: u16, socket_dir: &Path) -> String {
    format!(
        "\n# added by shardgate's local cluster\n\
         port = {port}\n\
         listen_addresses = '127.0.0.1'\n\
         unix_socket_directories = '{}'\n\
         max_connections = 200\n\
         shared_buffers = 32MB\n\
         fsync = off\n\
         full_page_writes = off\n\
         wal_level = replica\n\
         max_wal_senders = 10\n\
         max_replication_slots = 10\n\
         hot_standby = on\n\
         max_prepared_transactions = 64\n\
         wal_keep_size = 256MB\n\
         log_min_messages = warning\n\
         logging_collector = off\n",
        conf_quote(socket_dir)
    )
}

/// The replica's copy of postgresql.conf names the primary's port; a later line wins.
fn replica_conf(port: u16, socket_dir: &Path) -> String {
    format!(
        "\n# replica settings added by shardgate's local cluster\n\
         port = {port}\n\
         unix_socket_directories = '{}'\n",
        conf_quote(socket_dir)
    )
}

/// A path inside single quotes in postgresql.conf: a quote is written twice.
fn conf_quote(path: &Path) -> String {
    path.display().to_string().replace('\'', "''")
}

fn missing_hba_lines(text: &str) -> Vec<&'static str> {
    let present: Vec<Vec<&str>> = text
        .lines()
        .map(|l| {
            l.split('#')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect()
        })
        .collect();
    REQUIRED_HBA
        .iter()
        .copied()
        .filter(|req| {
            let want: Vec<&str> = req.split_whitespace().collect();
            !present.contains(&want)
        })
        .collect()
}

/// What Postgres logs when its port is in use: "could not bind IPv4 address ...: Address already in
/// use".
fn port_was_taken(log: &str) -> bool {
    log.contains("could not bind") || log.contains("Address already in use")
}

fn clear_libpq_env(cmd: &mut Command) {
    for var in LIBPQ_ENV {
        cmd.env_remove(var);
    }
}

fn spawn_output(cmd: &mut Command, program: &str) -> Result<Output, ClusterError> {
    cmd.output().map_err(|e| {
        ClusterError::io(
            format!(
                "running {program} ({})",
                cmd.get_program().to_string_lossy()
            ),
            e,
        )
    })
}

/// Runs `cmd` to completion; a non-zero exit is an error carrying the end of its stderr.
fn run(cmd: &mut Command, what: String) -> Result<Output, ClusterError> {
    let program = Path::new(cmd.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out = spawn_output(cmd, &program)?;
    if out.status.success() {
        return Ok(out);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let detail = if stderr.trim().is_empty() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        stderr.into_owned()
    };
    Err(ClusterError::Command {
        what,
        status: out.status.to_string(),
        detail: tail(&detail, 20),
    })
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), ClusterError> {
    std::fs::write(path, text)
        .and_then(|()| std::fs::set_permissions(path, Permissions::from_mode(mode)))
        .map_err(|e| ClusterError::io(format!("writing {}", path.display()), e))
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() {
        let port = free_port().expect("a free port");
        assert_ne!(port, 0);
        // Nothing holds it: we can bind it ourselves.
        TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
    }

    #[test]
    fn hba_from_initdb_has_every_line() {
        // What initdb 15 writes with --auth-local=trust --auth-host=scram-sha-256.
        let initdb = "\
# TYPE  DATABASE        USER            ADDRESS                 METHOD
local   all             all                                     trust
host    all             all             127.0.0.1/32            scram-sha-256
host    all             all             ::1/128                 scram-sha-256
local   replication     all                                     trust
host    replication     all             127.0.0.1/32            scram-sha-256
host    replication     all             ::1/128                 scram-sha-256
";
        assert!(missing_hba_lines(initdb).is_empty());
    }

    #[test]
    fn hba_gaps_are_found() {
        let cases: [(&str, &[&str]); 3] = [
            ("", REQUIRED_HBA),
            (
                "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
                &["host replication all 127.0.0.1/32 scram-sha-256"],
            ),
            (
                "# local all all trust\nhost all all 127.0.0.1/32 md5\nhost replication all 127.0.0.1/32 scram-sha-256",
                &[
                    "local all all trust",
                    "host all all 127.0.0.1/32 scram-sha-256",
                ],
            ),
        ];
        for (text, want) in cases {
            assert_eq!(missing_hba_lines(text), want, "{text:?}");
        }
    }

    #[test]
    fn conf_text() {
        let conf = primary_conf(5433, Path::new("/tmp/it's/sock"));
        assert!(conf.contains("\nport = 5433\n"));
        assert!(conf.contains("\nunix_socket_directories = '/tmp/it''s/sock'\n"));
        assert!(conf.contains("\nwal_level = replica\n"));
        assert!(conf.contains("\nlogging_collector = off\n"));
        let replica = replica_conf(5434, Path::new("/tmp/s"));
        assert!(replica.contains("\nport = 5434\n"));
        assert!(replica.contains("\nunix_socket_directories = '/tmp/s'\n"));
    }

    #[test]
    fn bind_failures_are_recognised() {
        let log =
            "2025-01-01 LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use\n";
        assert!(port_was_taken(log));
        assert!(!port_was_taken(
            "FATAL:  data directory has wrong ownership"
        ));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }
}
