//! The `shardgate` command itself: shard-map validation and its exit codes, and `shardgate demo`
//! (a real local cluster, psql through the proxy, Ctrl-C stops everything).
//!
//! It is a test of the root package (see `[[test]] cli` in Cargo.toml) so cargo builds the binary
//! and names it in `CARGO_BIN_EXE_shardgate`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_shardgate");

fn example_map() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("shard-map.toml"))
        .expect("the example shard map")
}

fn check(map: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("map.toml");
    std::fs::write(&path, map).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .env_remove("SHARDGATE_PROXY__POOL_SIZE")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `shardgate hash TABLE VALUE` prints the contract's hash (pinned here, computed independently
/// with Python's mmh3) and the shard whose range holds it; mistakes exit 2 with one line.
#[test]
fn hash_prints_the_contract_hash_and_shard() {
    let map = example_map().replace("range = [0, 4294967296]", "range = [0, 2147483648]")
        + "\n[[shards]]\nname = \"s1\"\nrange = [2147483648, 4294967296]\nprimary = \"127.0.0.1:5435\"\n\
           \n[[tables]]\nname = \"users\"\nshard_key = \"id\"\n\
           \n[[tables]]\nname = \"events\"\nshard_key = \"email\"\nkey_type = \"text\"\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("map.toml");
    std::fs::write(&path, map).unwrap();
    let hash = |table: &str, value: &str| {
        let out = Command::new(BIN)
            .arg("hash")
            .arg("--config")
            .arg(&path)
            .args([table, value])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    };
    assert_eq!(
        hash("users", "42"),
        (
            Some(0),
            "table=users key_type=bigint key=42 hash=1871679806 shard=s0".into(),
            String::new()
        )
    );
    assert_eq!(
        hash("events", "alice@example.com").1,
        "table=events key_type=text key=alice@example.com hash=3238921446 shard=s1"
    );
    let (code, _, err) = hash("orders", "1");
    assert_eq!(code, Some(2));
    assert!(
        err.contains("\"orders\" is not in [[tables]]") && err.contains("users, events"),
        "{err}"
    );
    let (code, _, err) = hash("users", "forty-two");
    assert_eq!(code, Some(2));
    assert!(err.contains("not a valid bigint shard key"), "{err}");

    // `shardgate route` explains a statement's route with the same hash.
    let route = |sql: &str| {
        let out = Command::new(BIN)
            .arg("route")
            .arg("--config")
            .arg(&path)
            .arg(sql)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        route("SELECT * FROM users WHERE id = 42"),
        "shards=s0 role=replica why: users.id = 42 (hash 1871679806) -> s0"
    );
    assert_eq!(
        route("UPDATE users SET name = 'x' WHERE id IN (42, $2)"),
        "shards=unknown (the shard key is parameter $2, which the Bind did not supply) role=primary why: users.id = 42 (hash 1871679806) -> s0, $2 (known at Bind)"
    );
    assert_eq!(
        route("SELECT count(*) FROM users"),
        "shards=s0,s1 role=replica why: no usable condition on the shard key of users: every shard"
    );
    assert_eq!(
        route("CREATE TABLE audit (a int)"),
        "shards=s0,s1 role=primary why: no sharded table: DDL and writes go to every shard"
    );
    assert!(route("UPDATE users SET id = 1 WHERE id = 2").starts_with("refused (0A000)"));
}

#[test]
fn the_example_map_is_valid() {
    let (code, stderr) = check(&example_map());
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn an_invalid_map_gets_one_error_naming_the_key_and_exit_2() {
    let cases = [
        ("pool_size = 20", "pool_size = \"lots\"", "pool_size"),
        ("pool_size = 20", "pool_size = 0", "proxy.pool_size"),
        (
            "pool_mode = \"transaction\"",
            "pool_mode = \"statement\"",
            "statement",
        ),
        (
            "pool_wait_timeout = \"5s\"",
            "pool_wait_timeout = \"5 parsecs\"",
            "pool_wait_timeout",
        ),
        (
            "primary = \"127.0.0.1:5433\"",
            "primary = \"nowhere\"",
            "shards[0].primary",
        ),
        (
            "range = [0, 4294967296]",
            "range = [0, 100]",
            "belongs to no shard",
        ),
        (
            "listen = \"127.0.0.1:6432\"",
            "lisen = \"127.0.0.1:6432\"",
            "lisen",
        ),
    ];
    for (from, to, want) in cases {
        let map = example_map().replacen(from, to, 1);
        assert!(map.contains(to), "case {to:?} applies to the example map");
        let (code, stderr) = check(&map);
        assert_eq!(code, Some(2), "{to:?}: {stderr}");
        assert!(
            stderr.contains(want),
            "{to:?} should name {want:?}: {stderr}"
        );
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "one error line: {stderr}"
        );
    }
}

#[test]
fn a_missing_map_is_reported() {
    let out = Command::new(BIN)
        .args(["--config", "/nonexistent/shard-map.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read /nonexistent/shard-map.toml"),
        "{stderr}"
    );
}

#[test]
fn environment_overrides_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("map.toml");
    std::fs::write(&path, example_map()).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .env("SHARDGATE_PROXY__POOL_SIZE", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("proxy.pool_size"));
}

/// A running `shardgate demo`: its child process (SIGINT on drop), proxy port and shard map.
struct Demo {
    child: std::process::Child,
    _stop: StopOnDrop,
    port: u16,
    banner: String,
    ready: String,
    cluster_dir: std::path::PathBuf,
    map: String,
}

/// Starts `shardgate demo` with its data under `dir` and waits until it reports ready.
fn start_demo(dir: &Path) -> Demo {
    let cluster_dir = dir.join("cluster");
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["demo", "--dir"])
        .arg(&cluster_dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A failed assertion must not leave the demo and its servers running.
    let stop = StopOnDrop(child.id());
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut ready = None;
    let mut banner = String::new();
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) if line.starts_with("SHARDGATE_DEMO_READY") => {
                ready = Some(line);
                break;
            }
            Ok(line) => banner.push_str(&(line + "\n")),
            Err(_) => {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("demo exited early ({status}): {banner}");
                }
            }
        }
    }
    let ready = ready.unwrap_or_else(|| panic!("demo did not get ready: {banner}"));
    let map = std::fs::read_to_string(cluster_dir.join("shard-map.toml")).unwrap();
    Demo {
        child,
        _stop: stop,
        port,
        banner,
        ready,
        cluster_dir,
        map,
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Polls `cond` every 50 ms until it holds (true) or `limit` passes (false).
fn poll_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether process `pid` still runs (a zombie waiting for its reaper does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

/// `psql -XAt` against `url` with `sql` on stdin: (success, stdout, stderr).
fn psql(url: &str, sql: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new("psql")
        .arg(url)
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// `shardgate demo` starts 2 shards × (primary + replica) and the proxy; psql gets through to a
/// primary; SIGINT stops the proxy and every server.
#[test]
fn demo_runs_a_cluster_and_stops_it() {
    let dir = tempfile::Builder::new()
        .prefix("sg-demo-")
        .tempdir_in("/tmp")
        .unwrap();
    let Demo {
        child: mut demo,
        _stop,
        port,
        banner,
        ready,
        cluster_dir,
        map,
    } = start_demo(dir.path());
    assert!(
        banner.contains(&format!(
            "psql \"postgres://app:secret@127.0.0.1:{port}/app\""
        )),
        "{banner}"
    );
    assert!(
        ready.contains(&format!("listen=127.0.0.1:{port}")),
        "{ready}"
    );
    assert_eq!(map.matches("[[shards]]").count(), 2, "{map}");

    // A read is answered by a replica, a statement marked for the primary by the primary.
    for (sql, recovery_expected, role) in [
        (
            "SELECT pg_is_in_recovery(), inet_server_port()",
            "t",
            "replicas = [",
        ),
        (
            "/* shardgate: primary */ SELECT pg_is_in_recovery(), inet_server_port()",
            "f",
            "primary = ",
        ),
    ] {
        let out = Command::new("psql")
            .arg(format!("postgres://app:secret@127.0.0.1:{port}/app"))
            .args(["-X", "-At", "-c", sql])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (recovery, server_port) = stdout.trim().split_once('|').unwrap();
        assert_eq!(recovery, recovery_expected, "{sql}");
        let line = map
            .lines()
            .find(|l| l.contains(&format!("127.0.0.1:{server_port}\"")))
            .unwrap_or_else(|| panic!("port {server_port} is not in the map: {map}"));
        assert!(line.starts_with(role), "{sql}: answered by {line}");
    }

    // The postmasters the demo started, by the PIDs in their data directories.
    let pids: Vec<i32> = std::fs::read_dir(&cluster_dir)
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("postmaster.pid")).ok())
        .filter_map(|pid_file| pid_file.lines().next()?.trim().parse().ok())
        .collect();
    assert_eq!(pids.len(), 4, "2 primaries and 2 replicas");

    kill("-INT", demo.id());
    let mut status = None;
    assert!(
        poll_until(Duration::from_secs(60), || {
            status = demo.try_wait().unwrap();
            status.is_some()
        }),
        "demo did not stop after SIGINT"
    );
    let status = status.expect("polled");
    assert!(status.success(), "{status}");
    for pid in pids {
        assert!(
            poll_until(Duration::from_secs(10), || !running(pid as u32)),
            "postmaster {pid} still runs"
        );
    }
}

/// Sends SIGINT to a process that still runs when the test ends (passing or failing) and waits up
/// to a minute for it to stop its servers and exit.
struct StopOnDrop(u32);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if !running(self.0) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-INT", &self.0.to_string()])
            .status();
        poll_until(Duration::from_secs(60), || !running(self.0));
    }
}

/// Two-phase commit survives a crash of shardgate itself. A transaction writes on both shards of a
/// demo cluster; shardgate dies (a fail point aborts the process) after every shard prepared —
/// once after the commit decision was made durable, once before. Both shards then hold the
/// transaction prepared, in doubt. Restarted, shardgate resolves it from its decision log: committed
/// on both shards in the first case, rolled back on both in the second. Nothing half-applied.
#[test]
fn a_crash_between_prepare_and_commit_prepared_is_resolved_on_restart() {
    let dir = tempfile::Builder::new()
        .prefix("sg-2pc-")
        .tempdir_in("/tmp")
        .unwrap();
    let demo = start_demo(dir.path());
    let primaries: Vec<String> = demo
        .map
        .lines()
        .filter_map(|l| l.strip_prefix("primary = \""))
        .map(|rest| format!("postgres://app:secret@{}/app", rest.trim_end_matches('"')))
        .collect();
    assert_eq!(primaries.len(), 2, "{}", demo.map);
    for url in &primaries {
        let (ok, _, err) = psql(url, "CREATE TABLE users (id bigint PRIMARY KEY);");
        assert!(ok, "{err}");
    }
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let port = free_port();
    // The demo's map (it has `users` sharded by id) with another port and decision log.
    let map = demo
        .map
        .replace(
            &format!("listen = \"127.0.0.1:{}\"", demo.port),
            &format!("listen = \"127.0.0.1:{port}\""),
        )
        .lines()
        .map(|l| {
            if l.starts_with("state_dir = ") {
                format!("state_dir = {:?}", state.display().to_string())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        map.contains("state_dir = ") && map.contains("name = \"users\""),
        "{map}"
    );
    let map_path = dir.path().join("map.toml");
    std::fs::write(&map_path, &map).unwrap();
    let proxy_url = format!("postgres://app:secret@127.0.0.1:{port}/app");
    let start_proxy = |failpoint: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config"])
            .arg(&map_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(f) = failpoint {
            cmd.env("SHARDGATE_FAILPOINT", f);
        }
        let child = cmd.spawn().unwrap();
        assert!(
            poll_until(Duration::from_secs(20), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            }),
            "shardgate did not start listening"
        );
        child
    };
    let count = |url: &str, sql: &str| -> i64 {
        let (ok, out, err) = psql(url, sql);
        assert!(ok, "{sql}: {err}");
        out.parse().unwrap()
    };
    // Keys 1 and 5 hash to s0, 2 and 3 to s1 (`shardgate hash`; the demo splits the space in two).
    for (point, keys, committed) in [
        ("after_decision", (1, 2), 1),
        ("before_decision", (5, 3), 0),
    ] {
        let mut proxy = start_proxy(Some(point));
        let _stop = StopOnDrop(proxy.id());
        let (ok, _, err) = psql(
            &proxy_url,
            &format!(
                "BEGIN;\nINSERT INTO users (id) VALUES ({});\nINSERT INTO users (id) VALUES ({});\nCOMMIT;\n",
                keys.0, keys.1
            ),
        );
        assert!(!ok, "{point}: the COMMIT must not be acknowledged: {err}");
        let mut exit = None;
        assert!(
            poll_until(Duration::from_secs(10), || {
                exit = proxy.try_wait().unwrap();
                exit.is_some()
            }),
            "{point}: shardgate did not die at its fail point"
        );
        assert!(!exit.expect("polled").success(), "{point}: aborted");
        // In doubt on both shards: prepared, its row not visible yet.
        for (url, key) in primaries.iter().zip([keys.0, keys.1]) {
            assert_eq!(
                count(url, "SELECT count(*) FROM pg_prepared_xacts"),
                1,
                "{point}"
            );
            let sql = format!("SELECT count(*) FROM users WHERE id = {key}");
            assert_eq!(count(url, &sql), 0, "{point}");
        }
        // Restarted, shardgate resolves them from its decision log.
        let mut proxy = start_proxy(None);
        let _stop = StopOnDrop(proxy.id());
        for url in &primaries {
            assert!(
                poll_until(Duration::from_secs(20), || {
                    count(url, "SELECT count(*) FROM pg_prepared_xacts") == 0
                }),
                "{point}: the in-doubt transaction was not resolved"
            );
        }
        for (shard, (url, key)) in primaries.iter().zip([keys.0, keys.1]).enumerate() {
            let sql = format!("SELECT count(*) FROM users WHERE id = {key}");
            assert_eq!(count(url, &sql), committed, "{point}: shard s{shard}");
            // And the restarted proxy finds it on its shard.
            assert_eq!(
                count(&proxy_url, &sql),
                committed,
                "{point}: through shardgate"
            );
        }
        proxy.kill().unwrap();
        proxy.wait().unwrap();
    }
}

/// SIGTERM with a transaction open: shardgate stops accepting clients, the transaction goes on and
/// commits, then the process exits 0.
#[test]
fn a_shutdown_lets_the_open_transaction_commit_then_exits_0() {
    let dir = tempfile::Builder::new()
        .prefix("sg-shutdown-")
        .tempdir_in("/tmp")
        .unwrap();
    let demo = start_demo(dir.path());
    let port = free_port();
    let map = demo.map.replace(
        &format!("listen = \"127.0.0.1:{}\"", demo.port),
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    let map_path = dir.path().join("map.toml");
    std::fs::write(&map_path, &map).unwrap();
    let log_path = dir.path().join("proxy.log");
    let mut proxy = run_listening(&map_path, &log_path, port);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let _stop = StopOnDrop(proxy.id());
    let url = format!("postgres://app:secret@127.0.0.1:{port}/app");
    let (ok, _, err) = psql(&url, "CREATE TABLE shut (id int PRIMARY KEY);");
    assert!(ok, "{err}");
    // In one session: BEGIN, a row, SIGTERM, wait (polling) until a new client is refused, another
    // row, COMMIT.
    let script = format!(
        "BEGIN;\nINSERT INTO shut VALUES (1);\n\\! kill -TERM {pid}\n\\! for i in $(seq 1 200); do psql '{url}' -X -Atc 'SELECT 1' >/dev/null 2>&1 || {{ echo REFUSED; break; }}; sleep 0.05; done\nINSERT INTO shut VALUES (2);\nCOMMIT;\n",
        pid = proxy.id()
    );
    let (ok, out, err) = psql(&url, &script);
    assert!(
        ok,
        "the open transaction committed through the shutdown: {err}\n{}",
        log()
    );
    assert!(out.contains("REFUSED"), "new clients were refused: {out}");
    let mut exit = None;
    assert!(
        poll_until(Duration::from_secs(20), || {
            exit = proxy.try_wait().unwrap();
            exit.is_some()
        }),
        "shardgate did not exit after the last transaction"
    );
    assert_eq!(exit.and_then(|s| s.code()), Some(0));
    // The rows are there (on the first shard's primary: the table is on every shard).
    let primary = demo
        .map
        .lines()
        .find_map(|l| l.strip_prefix("primary = \""))
        .map(|rest| format!("postgres://app:secret@{}/app", rest.trim_end_matches('"')))
        .unwrap();
    let (ok, out, err) = psql(&primary, "SELECT count(*) FROM shut;");
    assert!(ok, "{err}");
    assert_eq!(out, "2");
}

/// `shardgate run --config MAP` (log level info, the map's own log format, stderr to `log`), once
/// it listens on `port`.
fn run_listening(map: &Path, log: &Path, port: u16) -> std::process::Child {
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(map)
        .env("SHARDGATE_LOG", "info")
        .env_remove("SHARDGATE_LOG_FORMAT")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let listening = poll_until(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    if !listening {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "shardgate did not start listening: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
    child
}

/// Sends `signal` (`-INT`, `-HUP`, `-TERM`) with the `kill` command (the suite forbids unsafe
/// code).
fn kill(signal: &str, pid: u32) {
    let ok = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {signal} {pid}");
}

/// The real binary with `log_format = "json"`: every log line is a JSON object. A broken map
/// (written, then SIGHUP) is refused with its line and key while clients go on; a fixed map is
/// applied (seen in the admin console's SHOW CONFIG); SIGHUP with nothing changed says so; the
/// console's SHUTDOWN stops shardgate with exit code 0.
#[test]
fn sighup_reloads_logs_are_json_and_admin_shutdown_exits_0() {
    let dir = tempfile::Builder::new()
        .prefix("sg-reload-")
        .tempdir_in("/tmp")
        .unwrap();
    let demo = start_demo(dir.path());
    let port = free_port();
    let map = demo
        .map
        .replace(
            &format!("listen = \"127.0.0.1:{}\"", demo.port),
            &format!("listen = \"127.0.0.1:{port}\"\nlog_format = \"json\""),
        )
        .replacen(
            "[backend]",
            "[[users]]\nname = \"ops\"\npassword = \"opspw\"\nadmin = true\n\n[backend]",
            1,
        );
    let map_path = dir.path().join("map.toml");
    std::fs::write(&map_path, &map).unwrap();
    let log_path = dir.path().join("proxy.log");
    let mut proxy = run_listening(&map_path, &log_path, port);
    let pid = proxy.id();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let _stop = StopOnDrop(pid);
    let url = format!("postgres://app:secret@127.0.0.1:{port}/app");
    let admin = format!("postgres://ops:opspw@127.0.0.1:{port}/shardgate");
    let config = |key: &str| {
        let (ok, out, err) = psql(&admin, "SHOW CONFIG;");
        assert!(ok, "SHOW CONFIG: {err}");
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}|")))
            .map(|rest| rest.split('|').next().unwrap_or("").to_string())
    };
    assert_eq!(config("map_generation").as_deref(), Some("1"));

    // A broken map: refused with its line and key; the proxy goes on with the old one.
    let broken = map.replacen("pool_size = 20", "pool_size = 0", 1);
    let line = broken
        .lines()
        .position(|l| l.starts_with("pool_size = 0"))
        .unwrap()
        + 1;
    std::fs::write(&map_path, &broken).unwrap();
    kill("-HUP", pid);
    assert!(
        poll_until(Duration::from_secs(10), || {
            let l = log();
            l.contains("shard map refused") && l.contains(&format!("line {line}: proxy.pool_size"))
        }),
        "the refusal with line {line} and key was not logged:\n{}",
        log()
    );
    let (ok, out, err) = psql(&url, "SELECT 1;");
    assert!(ok && out == "1", "a client after the refused map: {err}");
    assert!(
        config("last_reload_error").is_some_and(|e| e.contains("proxy.pool_size")),
        "SHOW CONFIG shows the refusal"
    );

    // Fixed, with a change: applied.
    std::fs::write(
        &map_path,
        map.replacen("pool_size = 20", "pool_size = 7", 1),
    )
    .unwrap();
    kill("-HUP", pid);
    assert!(
        poll_until(Duration::from_secs(10), || config("proxy.pool_size")
            .as_deref()
            == Some("7")),
        "the fixed map was not applied:\n{}",
        log()
    );
    assert_eq!(config("map_generation").as_deref(), Some("2"));
    assert_eq!(config("last_reload_error").as_deref(), Some(""));
    // SIGHUP with nothing changed.
    kill("-HUP", pid);
    assert!(
        poll_until(Duration::from_secs(10), || log()
            .contains("nothing to reload")),
        "SIGHUP with an unchanged map:\n{}",
        log()
    );

    // SHUTDOWN from the console: exit 0.
    let (ok, _, err) = psql(&admin, "SHUTDOWN;");
    assert!(ok, "SHUTDOWN: {err}");
    let mut exit = None;
    assert!(
        poll_until(Duration::from_secs(20), || {
            exit = proxy.try_wait().unwrap();
            exit.is_some()
        }),
        "shardgate did not exit after SHUTDOWN"
    );
    assert_eq!(exit.and_then(|s| s.code()), Some(0));
    // Every log line is one JSON object with a level.
    let text = log();
    assert!(text.lines().count() >= 4, "{text}");
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            l.starts_with('{') && l.ends_with('}') && l.contains("\"level\":"),
            "not a JSON log line: {l}"
        );
    }
    assert!(text.contains("\"SHUTDOWN from the admin console"), "{text}");
}
