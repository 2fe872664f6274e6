//! The OS user the servers run as. Postgres refuses to run as root, so when we are root every
//! server program (`initdb`, `pg_ctl`, `pg_basebackup`, `postgres`) runs as the `postgres` user and
//! owns its directories; otherwise they run as us.
//!
//! The crate forbids `unsafe`, so no `getpwnam`/`geteuid`: the effective uid comes from the owner of
//! `/proc/self` (proc(5): it is the process's effective uid) and the user from `/etc/passwd` or
//! `getent passwd`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::ClusterError;

/// The account the servers run under when we are root.
pub const SERVER_USER_NAME: &str = "postgres";

/// A uid and gid to drop to before running a server program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerUser {
    pub uid: u32,
    pub gid: u32,
}

impl ServerUser {
    /// `Some(postgres)` when we run as root, `None` when the servers can run as we do.
    pub fn detect() -> Result<Option<ServerUser>, ClusterError> {
        if effective_uid()? != 0 {
            return Ok(None);
        }
        lookup(SERVER_USER_NAME)
            .map(Some)
            .ok_or(ClusterError::NoServerUser)
    }

    /// Makes `cmd` run as this user.
    pub fn apply(&self, cmd: &mut Command) {
        // std clears the supplementary groups too when it drops from root.
        cmd.uid(self.uid).gid(self.gid);
    }

    /// Hands `path` over to this user.
    pub fn chown(&self, path: &Path) -> Result<(), ClusterError> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .map_err(|e| ClusterError::io(format!("chown {}", path.display()), e))
    }

    /// Checks that this user can walk down to `path`; returns the first directory that stops it.
    /// Supplementary groups are ignored, so this can refuse a path that would have worked; the
    /// error then says which directory to open up or to avoid.
    pub fn blocked_at(&self, path: &Path) -> Option<PathBuf> {
        let mut dir = PathBuf::new();
        for part in path.components() {
            dir.push(part);
            let Ok(meta) = std::fs::metadata(&dir) else {
                return Some(dir);
            };
            let mode = meta.permissions().mode();
            let searchable = if meta.uid() == self.uid {
                mode & 0o100 != 0
            } else if meta.gid() == self.gid {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            };
            if meta.is_dir() && !searchable {
                return Some(dir);
            }
        }
        None
    }
}

fn effective_uid() -> Result<u32, ClusterError> {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .map_err(|e| ClusterError::io("reading /proc/self to learn our uid", e))
}

fn lookup(name: &str) -> Option<ServerUser> {
    if let Ok(text) = std::fs::read_to_string("/etc/passwd")
        && let Some(user) = text.lines().find_map(|l| parse_passwd_line(l, name))
    {
        return Some(user);
    }
    // Users from LDAP or other NSS sources are not in /etc/passwd.
    let out = Command::new("getent")
        .args(["passwd", name])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| parse_passwd_line(l, name))
}

/// Reads `name:x:uid:gid:gecos:home:shell` if the line is for `name`.
fn parse_passwd_line(line: &str, name: &str) -> Option<ServerUser> {
    let mut fields = line.split(':');
    if fields.next()? != name {
        return None;
    }
    let _password = fields.next()?;
    let uid = fields.next()?.parse().ok()?;
    let gid = fields.next()?.parse().ok()?;
    Some(ServerUser { uid, gid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lines() {
        let cases = [
            (
                "postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash",
                Some(ServerUser { uid: 101, gid: 104 }),
            ),
            (
                "postgres:x:70:70::/var/lib/postgresql:/bin/sh",
                Some(ServerUser { uid: 70, gid: 70 }),
            ),
            ("postgresql:x:5:5::/:/bin/sh", None),
            ("root:x:0:0:root:/root:/bin/bash", None),
            ("postgres:x:notanumber:1::/:/bin/sh", None),
            ("postgres:x", None),
            ("", None),
        ];
        for (line, want) in cases {
            assert_eq!(parse_passwd_line(line, "postgres"), want, "{line:?}");
        }
    }

    #[test]
    fn blocked_at_names_the_closed_directory() {
        let root = tempfile::tempdir().expect("temp dir");
        let closed = root.path().join("closed");
        let inner = closed.join("inner");
        std::fs::create_dir_all(&inner).expect("mkdir");
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        // A uid and gid that own nothing here, so only the "other" bits count.
        let stranger = ServerUser {
            uid: 54_321,
            gid: 54_321,
        };
        assert_eq!(stranger.blocked_at(&inner), Some(closed.clone()));
        assert_eq!(stranger.blocked_at(root.path()), None);
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o711)).expect("chmod");
        assert_eq!(stranger.blocked_at(&inner), None);
    }
}
