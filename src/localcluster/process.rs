//! Server processes by PID, read from `/proc`: is it a live Postgres process, what are its children,
//! `kill -9` it, wait for it to go. Only PIDs read from a data directory we made reach here, and a
//! PID whose process is not named `postgres` is treated as gone, so a recycled PID is never killed.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How often the waits look again; a poll interval, not a guess at timing.
const POLL: Duration = Duration::from_millis(20);

/// The fields of `/proc/<pid>/stat` we use.
#[derive(Debug, PartialEq, Eq)]
struct Stat<'a> {
    comm: &'a str,
    state: char,
    ppid: i32,
}

/// Parses `pid (comm) S ppid ...`. `comm` may itself hold spaces and parentheses, so it runs to
/// the last `)`.
fn parse_stat(text: &str) -> Option<Stat<'_>> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?;
    let mut rest = text.get(close + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some(Stat { comm, state, ppid })
}

fn read_stat(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()
}

/// True while `pid` is a running (not zombie) process named `postgres`. A zombie has exited and
/// only waits to be reaped: PID 1 in a container may never reap it.
pub fn is_live_postgres(pid: i32) -> bool {
    let Some(text) = read_stat(pid) else {
        return false;
    };
    match parse_stat(&text) {
        Some(s) => s.state != 'Z' && s.state != 'X' && s.comm.starts_with("postgres"),
        None => false,
    }
}

/// The live children of `pid` (a postmaster's backends and auxiliary processes).
pub fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&child| {
            read_stat(child)
                .as_deref()
                .and_then(parse_stat)
                .is_some_and(|s| s.ppid == pid && s.state != 'Z')
        })
        .collect()
}

/// Sends SIGKILL to `pid` if it is a live Postgres process. Uses kill(1) because the crate forbids
/// the `unsafe` that `libc::kill` needs.
pub fn kill9(pid: i32) {
    if !is_live_postgres(pid) {
        return;
    }
    let _ = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits until `pid` is no longer a live Postgres process; false if `limit` passed first.
pub fn wait_gone(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !is_live_postgres(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// The postmaster PID from `<data_dir>/postmaster.pid` (its first line), if the file is there.
pub fn pid_file_pid(data_dir: &Path) -> Option<i32> {
    pid_file_pid_at(&data_dir.join("postmaster.pid"))
}

/// The PID on the first line of a Postgres lock file (`postmaster.pid`, `.s.PGSQL.<port>.lock`).
pub fn pid_file_pid_at(lock_file: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(lock_file).ok()?;
    text.lines().next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines() {
        let cases = [
            (
                "4242 (postgres) S 1 4242 4242 0 -1 4194560 1 0 0 0",
                Some(Stat {
                    comm: "postgres",
                    state: 'S',
                    ppid: 1,
                }),
            ),
            (
                "77 (odd) name)) Z 4242 77 77 0",
                Some(Stat {
                    comm: "odd) name)",
                    state: 'Z',
                    ppid: 4242,
                }),
            ),
            ("77 (postgres) S", None),
            ("garbage", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_stat(text), want, "{text:?}");
        }
    }

    #[test]
    fn our_own_process_is_not_postgres() {
        let me = std::process::id() as i32;
        assert!(
            !is_live_postgres(me),
            "the test binary is not named postgres"
        );
        assert!(wait_gone(me, Duration::ZERO));
        assert!(!is_live_postgres(i32::MAX), "no such pid");
    }

    #[test]
    fn pid_file_first_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(pid_file_pid(dir.path()), None);
        std::fs::write(
            dir.path().join("postmaster.pid"),
            "12345\n/tmp/x/s0-primary\n1700000000\n5432\n",
        )
        .expect("write");
        assert_eq!(pid_file_pid(dir.path()), Some(12345));
    }
}
