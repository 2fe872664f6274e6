//! Finding the PostgreSQL server binaries (`initdb`, `pg_ctl`, `pg_basebackup`, `psql`).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::ClusterError;

/// Names a directory holding `initdb` and its siblings; wins over every other place.
pub const PG_BIN_ENV: &str = "SHARDGATE_PG_BIN";

/// Where Debian and Ubuntu put one directory per installed major version.
const DEBIAN_PG_ROOT: &str = "/usr/lib/postgresql";

/// A directory with the PostgreSQL server programs in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBin {
    dir: PathBuf,
}

impl PgBin {
    /// Finds the binaries: `$SHARDGATE_PG_BIN`, else the highest `/usr/lib/postgresql/<version>/bin`
    /// holding `initdb`, else `pg_config --bindir`.
    pub fn locate() -> Result<PgBin, ClusterError> {
        if let Some(dir) = std::env::var_os(PG_BIN_ENV) {
            let dir = PathBuf::from(dir);
            if has_initdb(&dir) {
                return Ok(PgBin { dir });
            }
            // The operator asked for this directory; silently using another would hide the mistake.
            return Err(ClusterError::PgBinNotFound {
                looked: format!("{PG_BIN_ENV}={} (no initdb there)", dir.display()),
            });
        }
        let mut looked = vec![format!("{DEBIAN_PG_ROOT}/*/bin")];
        if let Some(dir) = highest_versioned_bin(Path::new(DEBIAN_PG_ROOT)) {
            return Ok(PgBin { dir });
        }
        match Command::new("pg_config").arg("--bindir").output() {
            Ok(out) if out.status.success() => {
                let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if has_initdb(&dir) {
                    return Ok(PgBin { dir });
                }
                looked.push(format!(
                    "pg_config --bindir ({}, no initdb there)",
                    dir.display()
                ));
            }
            _ => looked.push("pg_config --bindir (no working pg_config on PATH)".into()),
        }
        Err(ClusterError::PgBinNotFound {
            looked: looked.join(", "),
        })
    }

    /// Uses `dir` as is, without checking it.
    pub fn at(dir: impl Into<PathBuf>) -> PgBin {
        PgBin { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of one program in the directory, such as `tool("psql")`.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn has_initdb(dir: &Path) -> bool {
    dir.join("initdb").is_file()
}

/// The `<root>/<version>/bin` with the highest version that holds `initdb`.
fn highest_versioned_bin(root: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(root).ok()?;
    let mut best: Option<((u32, u32), PathBuf)> = None;
    for entry in entries.flatten() {
        let Some(version) = entry.file_name().to_str().and_then(parse_version) else {
            continue;
        };
        let bin = entry.path().join("bin");
        if has_initdb(&bin) && best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    best.map(|(_, bin)| bin)
}

/// `"15"` → (15, 0), `"9.6"` → (9, 6); anything else is not a version directory.
fn parse_version(name: &str) -> Option<(u32, u32)> {
    let (major, minor) = name.split_once('.').unwrap_or((name, "0"));
    Some((major.parse().ok()?, minor.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_directory_names() {
        let cases = [
            ("15", Some((15, 0))),
            ("9.6", Some((9, 6))),
            ("17", Some((17, 0))),
            ("common", None),
            ("", None),
            ("15beta", None),
        ];
        for (name, want) in cases {
            assert_eq!(parse_version(name), want, "{name:?}");
        }
    }

    #[test]
    fn picks_the_highest_version_with_initdb() {
        let root = tempfile::tempdir().expect("temp dir");
        for (version, with_initdb) in [("9.6", true), ("15", true), ("16", false), ("common", true)]
        {
            let bin = root.path().join(version).join("bin");
            std::fs::create_dir_all(&bin).expect("mkdir");
            if with_initdb {
                std::fs::write(bin.join("initdb"), "").expect("write");
            }
        }
        assert_eq!(
            highest_versioned_bin(root.path()),
            Some(root.path().join("15").join("bin"))
        );
    }

    #[test]
    fn no_versions_no_bin() {
        let root = tempfile::tempdir().expect("temp dir");
        assert_eq!(highest_versioned_bin(root.path()), None);
        assert_eq!(highest_versioned_bin(&root.path().join("missing")), None);
    }
}
