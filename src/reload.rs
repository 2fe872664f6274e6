//! Live reload of the shard map.
//!
//! Owns the map generations: [`Live`] is one applied map and what was built from it (users,
//! topology, classification options). Sessions take the current one when they start a transaction
//! and keep it until the transaction ends, so a transaction finishes on the topology it started on;
//! workers bring their pools in line when a new one is installed.
//!
//! A reload is asked for by a change to the map file (read once a second), SIGHUP, the admin
//! console's `RELOAD`, or [`crate::ProxyHandle::reload`]; one thread ([`Reloader`]) does them one at a
//! time. The new text is validated like at start; an invalid map is refused with the line and key
//! logged and kept for the admin console, and the old map keeps serving. A valid one gets a new
//! topology that keeps what is known of the servers it shares with the old (health, lag, fencing,
//! the primary failover chose when the shard's entry did not change); then the health checker is
//! restarted on it. Settings read only at start (`proxy.listen`, `proxy.workers`,
//! `proxy.metrics_listen`, `proxy.state_dir`) keep their running value and are reported.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime};

use tracing::{error, info, warn};

use crate::config::Config;
use crate::frontend::Shared;
use crate::frontend::auth::Credentials;
use crate::router::ClassifyOptions;
use crate::topology::Topology;

/// One applied shard map and what was built from it.
#[derive(Debug)]
pub struct Live {
    /// 1 for the map shardgate started with, then one more per applied reload.
    pub generation: u64,
    pub config: Arc<Config>,
    pub auth: Arc<Credentials>,
    pub topology: Arc<Topology>,
    pub classify: Arc<ClassifyOptions>,
}

impl Live {
    /// The map shardgate starts with.
    pub fn first(config: Config) -> Live {
        Live {
            generation: 1,
            auth: Arc::new(Credentials::new(&config)),
            topology: Arc::new(Topology::new(&config)),
            classify: Arc::new(ClassifyOptions::from_config(&config)),
            config: Arc::new(config),
        }
    }

    /// The generation after this one, for `config`.
    fn next(&self, config: Config) -> Live {
        let classify = ClassifyOptions::from_config(&config);
        Live {
            generation: self.generation + 1,
            auth: Arc::new(Credentials::new(&config)),
            topology: Arc::new(Topology::rebuild(
                &config,
                Some((&self.topology, &self.config)),
            )),
            classify: if classify == *self.classify {
                self.classify.clone()
            } else {
                Arc::new(classify)
            },
            config: Arc::new(config),
        }
    }
}

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The map file changed.
    File,
    /// SIGHUP.
    Signal,
    /// The admin console's `RELOAD`.
    Admin,
    /// [`crate::ProxyHandle::reload`].
    Api,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::File => "file change",
            Trigger::Signal => "SIGHUP",
            Trigger::Admin => "admin RELOAD",
            Trigger::Api => "reload call",
        }
    }
}

/// Reloads done and refused, and the last refusal (shown by the admin console).
#[derive(Debug, Default)]
pub struct ReloadStatus {
    pub applied: AtomicU64,
    pub refused: AtomicU64,
    /// Why the last reload was refused, with when; cleared by a reload that applies.
    pub last_error: Mutex<Option<(SystemTime, String)>>,
    /// The map file, when shardgate was started from one.
    pub path: Mutex<Option<PathBuf>>,
}

impl ReloadStatus {
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .expect("reload status lock")
            .as_ref()
            .map(|(at, e)| format!("{} ({})", e, humantime::format_rfc3339_seconds(*at)))
    }
}

/// The answer to a reload request: what changed, or why the map was refused.
pub type ReloadResult = Result<String, String>;

enum Request {
    Reload {
        trigger: Trigger,
        reply: Option<tokio::sync::oneshot::Sender<ReloadResult>>,
    },
    Stop,
}

/// Where reload requests go (cloned into `Shared`).
#[derive(Clone)]
pub struct ReloadSender(mpsc::Sender<Request>);

impl ReloadSender {
    /// Asks for a reload; the answer comes on the returned channel.
    pub fn request(&self, trigger: Trigger) -> tokio::sync::oneshot::Receiver<ReloadResult> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.0.send(Request::Reload {
            trigger,
            reply: Some(tx),
        });
        rx
    }

    /// Asks for a reload without waiting for it.
    pub fn nudge(&self, trigger: Trigger) {
        let _ = self.0.send(Request::Reload {
            trigger,
            reply: None,
        });
    }
}

/// The reload thread; it owns the health checker (restarted on every applied map). Dropping it
/// stops both.
pub struct Reloader {
    tx: mpsc::Sender<Request>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Reloader {
    fn drop(&mut self) {
        let _ = self.tx.send(Request::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How often the map file is read for changes.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Starts the reload thread: it watches `map` (when given) and serves requests sent through
/// `Shared::reload_sender`.
pub fn start(
    shared: Arc<Shared>,
    map: Option<PathBuf>,
    health: crate::health::HealthChecker,
    fenced: Arc<crate::failover::Fenced>,
) -> std::io::Result<Reloader> {
    let (tx, rx) = mpsc::channel();
    *shared
        .reload_status
        .path
        .lock()
        .expect("reload status lock") = map.clone();
    *shared.reload_tx.lock().expect("reload sender lock") = Some(ReloadSender(tx.clone()));
    let thread = std::thread::Builder::new()
        .name("shardgate-reload".into())
        .spawn(move || {
            let mut state = State {
                last_text: map.as_ref().and_then(|p| std::fs::read_to_string(p).ok()),
                last_refusal: None,
                shared,
                map,
                health: Some(health),
                fenced,
            };
            loop {
                match rx.recv_timeout(WATCH_EVERY) {
                    Ok(Request::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    Ok(Request::Reload { trigger, reply }) => {
                        let result = state.reload(trigger, true);
                        if let Some(reply) = reply {
                            let _ = reply.send(result);
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        let _ = state.reload(Trigger::File, false);
                    }
                }
            }
            *state.shared.reload_tx.lock().expect("reload sender lock") = None;
        })?;
    Ok(Reloader {
        tx,
        thread: Some(thread),
    })
}

struct State {
    shared: Arc<Shared>,
    map: Option<PathBuf>,
    /// The map text last seen (applied or refused), so an unchanged file is not reloaded.
    last_text: Option<String>,
    /// Why that text was refused, if it was.
    last_refusal: Option<String>,
    health: Option<crate::health::HealthChecker>,
    fenced: Arc<crate::failover::Fenced>,
}

impl State {
    /// Reads the map and applies it if it changed (`always`: also when the text did not change,
    /// answering "no change").
    fn reload(&mut self, trigger: Trigger, always: bool) -> ReloadResult {
        let Some(path) = self.map.clone() else {
            return if always {
                Err("shardgate was started without a map file: nothing to reload".into())
            } else {
                Ok(String::new())
            };
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                if !always {
                    // A file being replaced can be missing for an instant: look again next time.
                    return Ok(String::new());
                }
                return self.refuse(trigger, format!("cannot read {}: {e}", path.display()));
            }
        };
        if self.last_text.as_deref() == Some(text.as_str()) {
            if !always {
                return Ok(String::new());
            }
            return match &self.last_refusal {
                // Still the map that was refused: refused again, for the same reason.
                Some(why) => self.refuse(trigger, why.clone()),
                None => {
                    info!(
                        trigger = trigger.as_str(),
                        "shard map unchanged: nothing to reload"
                    );
                    Ok("no change".into())
                }
            };
        }
        self.last_text = Some(text.clone());
        let outcome = match crate::config::load_str(&text, &path.display().to_string()) {
            Ok(config) => self.apply(trigger, config),
            Err(e) => self.refuse(trigger, e.located(&text)),
        };
        self.last_refusal = outcome.as_ref().err().cloned();
        outcome
    }

    fn refuse(&self, trigger: Trigger, why: String) -> ReloadResult {
        error!(trigger = trigger.as_str(), error = %why, "shard map refused; the previous one keeps serving");
        self.shared
            .reload_status
            .refused
            .fetch_add(1, Ordering::Relaxed);
        *self
            .shared
            .reload_status
            .last_error
            .lock()
            .expect("reload status lock") = Some((SystemTime::now(), why.clone()));
        Err(why)
    }

    fn apply(&mut self, trigger: Trigger, mut config: Config) -> ReloadResult {
        let old = self.shared.live();
        let restart = keep_start_settings(&old.config, &mut config);
        // The failover tasks stop with the health checker: not in the middle of a promotion.
        if let Some(s) = old.topology.shards.iter().find(|s| s.failing_over()) {
            // Seen again at the next look, as if changed.
            self.last_text = None;
            return self.refuse(
                trigger,
                format!(
                    "a failover is under way on shard {}; the reload is retried once it is done",
                    s.name
                ),
            );
        }
        self.health = None;
        let live = Arc::new(old.next(config));
        let summary = describe_changes(&old, &live, &restart);
        self.fenced.keep_only(&live.topology);
        self.shared.install(live.clone());
        match crate::health::start(
            live.topology.clone(),
            live.config.backend.clone(),
            live.config.health.clone(),
            live.config.failover.clone(),
            self.fenced.clone(),
            // Recovery resolves only what an earlier run of shardgate left in doubt, so it may
            // run again; it also covers shards the map adds and primaries that were unreachable.
            self.shared.decisions.clone(),
        ) {
            Ok(h) => self.health = Some(h),
            Err(e) => error!(error = %e, "cannot restart the health checker"),
        }
        self.shared
            .reload_status
            .applied
            .fetch_add(1, Ordering::Relaxed);
        *self
            .shared
            .reload_status
            .last_error
            .lock()
            .expect("reload status lock") = None;
        for key in &restart {
            warn!(
                key,
                "changed in the shard map; takes effect at the next restart"
            );
        }
        info!(trigger = trigger.as_str(), generation = live.generation, changes = %summary, "shard map reloaded");
        Ok(summary)
    }
}

/// Settings only read at start keep their running values; returns the keys that differed.
fn keep_start_settings(old: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let (o, n) = (&old.proxy, &mut new.proxy);
    if o.listen != n.listen {
        n.listen = o.listen.clone();
        changed.push("proxy.listen");
    }
    if o.workers != n.workers {
        n.workers = o.workers;
        changed.push("proxy.workers");
    }
    if o.metrics_listen != n.metrics_listen {
        n.metrics_listen = o.metrics_listen.clone();
        changed.push("proxy.metrics_listen");
    }
    if o.state_dir != n.state_dir {
        n.state_dir = o.state_dir.clone();
        changed.push("proxy.state_dir");
    }
    changed
}

/// One line saying what a reload changed.
fn describe_changes(old: &Live, new: &Live, restart: &[&str]) -> String {
    let mut parts = Vec::new();
    let names = |l: &Live| -> Vec<String> {
        l.topology
            .servers()
            .map(|s| format!("{} {}", s.shard, s.addr))
            .collect()
    };
    let (before, after) = (names(old), names(new));
    let added: Vec<&String> = after.iter().filter(|s| !before.contains(s)).collect();
    let removed: Vec<&String> = before.iter().filter(|s| !after.contains(s)).collect();
    if !added.is_empty() {
        parts.push(format!(
            "servers added: {}",
            added
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !removed.is_empty() {
        parts.push(format!(
            "servers removed (drained): {}",
            removed
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for (o, n) in old.config.shards.iter().zip(&new.config.shards) {
        if o.name == n.name && o.primary.addr() != n.primary.addr() {
            parts.push(format!(
                "shard {} primary {} -> {}",
                n.name,
                o.primary.addr(),
                n.primary.addr()
            ));
        }
    }
    let ranges = |l: &Live| -> Vec<(String, [u64; 2])> {
        l.config
            .shards
            .iter()
            .map(|s| (s.name.clone(), s.range))
            .collect()
    };
    if ranges(old) != ranges(new) {
        warn!(
            "the shards or their hash ranges changed: new transactions route by the new ranges; shardgate does not move rows, so move them before such a change"
        );
        parts.push(format!(
            "shards or hash ranges changed ({} -> {} shards; rows are not moved)",
            old.config.shards.len(),
            new.config.shards.len()
        ));
    }
    if old.config.tables != new.config.tables || old.config.replicated != new.config.replicated {
        parts.push("tables changed".into());
    }
    if !restart.is_empty() {
        parts.push(format!("needs a restart: {}", restart.join(", ")));
    }
    if parts.is_empty() {
        parts.push("settings only".into());
    }
    format!("generation {}: {}", new.generation, parts.join("; "))
}
