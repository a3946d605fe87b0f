//! Hot reload: on SIGHUP the worker reads its configuration and every
//! handler file again, builds a new pool for each key whose code (or sandbox
//! sizes) changed beside the old one, and swaps it in once it is loaded.
//!
//! - Messages already taken finish on the pool they started on; the AMQP
//!   consumers never stop, so nothing is lost or processed twice: only the
//!   pool a message is dispatched to changes.
//! - A key whose new code does not load keeps serving its current version;
//!   the error is logged and counted in `hljs_reload_failures_total`, and
//!   readiness does not change.
//! - What is reloadable ([`plan`]): per handler, the file's contents, `file`,
//!   `heap_size`, `stack_size`, `max_message_bytes`, `max_result_bytes` (a new
//!   pool), and the time limits and retry policy (the same pool, new
//!   settings). Everything else needs a restart and is logged and ignored:
//!   `pool_size` (the consumer prefetch is sized to it), `max_deliveries`
//!   (a queue argument: redeclaring the queue with another would fail),
//!   handlers added or removed (queues and consumers are declared per
//!   session), and the `[broker]`, `[http]`, `[telemetry]` and `[shutdown]`
//!   sections.
//! - A configuration that does not load as a whole (a parse error, a missing
//!   handler file, an unknown `retry_on` code) changes nothing.

use std::sync::Arc;
use std::time::Instant;

use hyperlight_js_config::{ConfigError, HandlerConfig, WorkerConfig};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::codes::ErrorCode;
use crate::error::WorkerError;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::process::{Handler, Processor, check_retry_codes};
use crate::version::handler_version;

/// The `key` label of a reload failure that concerns no single key.
pub const WHOLE_CONFIG: &str = "*";

/// Why a reload (or one key of it) was refused. Each variant has a stable code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The configuration, or a key's new pool, did not load.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// The blocking task reading the configuration failed.
    #[error("the configuration reader failed: {0}")]
    Task(String),
}

impl ReloadError {
    /// The stable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Worker(e) => e.code(),
            Self::Task(_) => ErrorCode::Internal.as_str(),
        }
    }

    /// The key it concerns, or [`WHOLE_CONFIG`].
    pub fn key(&self) -> &str {
        match self {
            Self::Worker(WorkerError::Pool { key, .. })
            | Self::Worker(WorkerError::Config(ConfigError::HandlerFile { key, .. })) => key,
            _ => WHOLE_CONFIG,
        }
    }
}

/// What a reload should do, from the running configuration and the new one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Keys whose code or sandbox sizes changed: a new pool is built from
    /// each of these (restart-only settings kept at their running values).
    pub rebuild: Vec<HandlerConfig>,
    /// Keys whose time limits or retry policy changed: the same pool, new settings.
    pub settings: Vec<HandlerConfig>,
    /// Keys that stay exactly as they are (and keep their pool).
    pub unchanged: Vec<String>,
    /// Changes ignored until a restart, one line each for the log.
    pub needs_restart: Vec<String>,
}

/// Compares `running` with `new` (see the module documentation for what is
/// reloadable). Pure: nothing is loaded or swapped.
pub fn plan(running: &WorkerConfig, new: &WorkerConfig) -> Plan {
    let mut plan = Plan::default();
    let sections = [
        ("[broker]", running.broker == new.broker),
        (
            "[http]",
            running.http == new.http && running.http_listen == new.http_listen,
        ),
        ("[telemetry]", running.telemetry == new.telemetry),
        ("[shutdown]", running.shutdown == new.shutdown),
    ];
    for (section, same) in sections {
        if !same {
            plan.needs_restart
                .push(format!("{section} changed: needs a restart"));
        }
    }
    for h in &new.handlers {
        if !running.handlers.iter().any(|r| r.key == h.key) {
            plan.needs_restart.push(format!(
                "handler '{}' added: needs a restart (its queue and consumer are declared at start)",
                h.key
            ));
        }
    }
    for old in &running.handlers {
        let Some(h) = new.handlers.iter().find(|h| h.key == old.key) else {
            plan.needs_restart.push(format!(
                "handler '{}' removed: needs a restart; it keeps serving",
                old.key
            ));
            plan.unchanged.push(old.key.clone());
            continue;
        };
        let mut next = h.clone();
        if next.pool_size != old.pool_size {
            plan.needs_restart.push(format!(
                "handler '{}': pool_size {} -> {} needs a restart (the consumer prefetch is sized to it)",
                old.key, old.pool_size, next.pool_size
            ));
            next.pool_size = old.pool_size;
        }
        if next.max_deliveries != old.max_deliveries {
            plan.needs_restart.push(format!(
                "handler '{}': max_deliveries {} -> {} needs a restart and a new queue (it is a queue argument)",
                old.key, old.max_deliveries, next.max_deliveries
            ));
            next.max_deliveries = old.max_deliveries;
        }
        if next == *old {
            plan.unchanged.push(old.key.clone());
        } else if needs_new_pool(old, &next) {
            plan.rebuild.push(next);
        } else {
            plan.settings.push(next);
        }
    }
    plan
}

/// Whether `next` can be served only by a pool built from it: its code or a
/// size the sandboxes are made with differs.
fn needs_new_pool(old: &HandlerConfig, next: &HandlerConfig) -> bool {
    old.source != next.source
        || old.heap_size != next.heap_size
        || old.stack_size != next.stack_size
        || old.max_message_bytes != next.max_message_bytes
        || old.max_result_bytes != next.max_result_bytes
}

/// What one reload did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Keys now served by a new pool, with the new version.
    pub reloaded: Vec<(String, String)>,
    /// Keys with new settings on the same pool.
    pub updated: Vec<String>,
    /// Keys left as they were.
    pub unchanged: Vec<String>,
    /// Refusals: (key or [`WHOLE_CONFIG`], code); those keys keep serving.
    pub failed: Vec<(String, &'static str)>,
    /// Changes ignored until a restart.
    pub needs_restart: Vec<String>,
}

/// Applies reloads to a running [`Processor`].
#[derive(Debug)]
pub struct Reloader {
    /// What runs: the sections as at start, the handlers as served now.
    running: WorkerConfig,
    processor: Arc<Processor>,
    metrics: Metrics,
}

impl Reloader {
    /// A reloader for `processor`, loaded from `running`.
    pub fn new(running: WorkerConfig, processor: Arc<Processor>, metrics: Metrics) -> Self {
        Self {
            running,
            processor,
            metrics,
        }
    }

    /// Reads the configuration file again (as at start: `HLJS__…` and
    /// `AMQP_URL` from the environment) and applies what is reloadable.
    pub async fn reload(&mut self) -> ReloadReport {
        let started = Instant::now();
        let path = self.running.path.clone();
        // Reads every handler file: off the async threads.
        let loaded = tokio::task::spawn_blocking(move || {
            let config = WorkerConfig::load(&path).map_err(WorkerError::from)?;
            check_retry_codes(&config)?;
            Ok::<_, WorkerError>(config)
        })
        .await
        .map_err(|e| ReloadError::Task(e.to_string()))
        .and_then(|r| r.map_err(ReloadError::from));
        let new = match loaded {
            Ok(c) => c,
            Err(e) => {
                self.count_failure(&e);
                error!(code = e.code(), error = %e, "reload refused: the configuration does not load; everything keeps serving");
                return ReloadReport {
                    failed: vec![(e.key().to_string(), e.code())],
                    ..ReloadReport::default()
                };
            }
        };
        let plan = plan(&self.running, &new);
        for line in &plan.needs_restart {
            warn!("reload: {line}; ignored");
        }
        let mut report = ReloadReport {
            unchanged: plan.unchanged,
            needs_restart: plan.needs_restart,
            ..ReloadReport::default()
        };
        for h in plan.settings {
            let Some(current) = self.processor.handler(&h.key) else {
                continue;
            };
            self.install(Handler::new(&h, Arc::clone(current.pool())));
            info!(key = %h.key, handler_version = %current.version(), "handler settings reloaded; same pool");
            report.updated.push(h.key);
        }
        for h in plan.rebuild {
            match self.rebuild(&h).await {
                Ok(version) => report.reloaded.push((h.key, version)),
                Err(e) => report.failed.push((h.key, e.code())),
            }
        }
        info!(
            reloaded = ?report.reloaded,
            updated = ?report.updated,
            unchanged = ?report.unchanged,
            failed = ?report.failed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "reload done"
        );
        report
    }

    /// Builds `h`'s new pool beside the old one and swaps it in; on failure
    /// the key keeps serving what it serves.
    async fn rebuild(&mut self, h: &HandlerConfig) -> Result<String, ReloadError> {
        let version = handler_version(&h.source);
        let old = self
            .processor
            .version(&h.key)
            .map(|v| v.to_string())
            .unwrap_or_default();
        let span = info_span!("reload.build", key = %h.key, from = %old, to = %version);
        match Pool::build(h, self.metrics.clone()).instrument(span).await {
            Ok(pool) => {
                self.install(Handler::new(h, pool));
                info!(key = %h.key, from = %old, to = %version, "handler reloaded: new pool swapped in");
                Ok(version)
            }
            Err(e) => {
                let e = ReloadError::from(e);
                self.count_failure(&e);
                error!(key = %h.key, code = e.code(), error = %e, handler_version = %old, "handler reload failed; the key keeps serving its current version");
                Err(e)
            }
        }
    }

    fn install(&mut self, handler: Handler) {
        let config = handler.config().clone();
        if self.processor.install(&config.key, handler) {
            self.metrics
                .reloads
                .with_label_values(&[config.key.as_str()])
                .inc();
            if let Some(slot) = self
                .running
                .handlers
                .iter_mut()
                .find(|r| r.key == config.key)
            {
                *slot = config;
            }
        }
    }

    fn count_failure(&self, e: &ReloadError) {
        self.metrics
            .reload_failures
            .with_label_values(&[e.key(), e.code()])
            .inc();
    }
}

/// Starts watching SIGHUP. Call it before loading the pools: from here on a
/// SIGHUP no longer ends the process (its default), and one that arrives while
/// the pools load is served once they are. `None` (logged) if it cannot be watched.
pub fn hangup_signal() -> Option<Signal> {
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot watch SIGHUP: hot reload is off");
            None
        }
    }
}

/// Reloads on every SIGHUP until `stop`. Signals that arrive during a reload
/// are coalesced into one more reload after it. Cancellation-safe: a reload
/// cut short has swapped in each key it finished, and nothing else.
pub async fn watch(mut hangup: Signal, mut reloader: Reloader, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            got = hangup.recv() => if got.is_none() { return },
        }
        info!(
            signal = "SIGHUP",
            "reloading the configuration and the handlers"
        );
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = reloader.reload().instrument(info_span!("reload")) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;

    fn config(handlers: &[(&str, &str)]) -> WorkerConfig {
        let mut toml = String::new();
        let dir = std::env::temp_dir().join(format!("hljs-plan-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        for (key, extra) in handlers {
            let file = dir.join(format!("{key}.js"));
            std::fs::write(&file, format!("function handler(e) {{ return '{key}'; }}")).unwrap();
            toml.push_str(&format!(
                "[[handlers]]\nkey = \"{key}\"\nfile = {:?}\n{extra}\n",
                file.display().to_string()
            ));
        }
        WorkerConfig::from_toml(
            &toml,
            &PathBuf::from("/w/worker.toml"),
            &PathBuf::from("/w"),
            &Default::default(),
        )
        .unwrap()
    }

    #[test]
    fn an_identical_configuration_changes_nothing() {
        let c = config(&[("a", ""), ("b", "pool_size = 3")]);
        let p = plan(&c, &c.clone());
        assert_eq!(p.unchanged, ["a", "b"]);
        assert!(p.rebuild.is_empty() && p.settings.is_empty() && p.needs_restart.is_empty());
    }

    #[test]
    fn new_code_or_sizes_rebuild_only_that_key_and_limits_keep_the_pool() {
        let running = config(&[("a", ""), ("b", ""), ("c", "")]);
        let mut new = running.clone();
        new.handlers[0].source.push_str("\n// v2");
        new.handlers[1].heap_size *= 2;
        new.handlers[2].limits.cpu = Duration::from_millis(5);
        let p = plan(&running, &new);
        let keys = |hs: &[HandlerConfig]| hs.iter().map(|h| h.key.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&p.rebuild), ["a", "b"]);
        assert_eq!(keys(&p.settings), ["c"]);
        assert!(p.unchanged.is_empty() && p.needs_restart.is_empty());
    }

    #[test]
    fn restart_only_changes_are_reported_and_kept_at_their_running_values() {
        let running = config(&[("a", "pool_size = 2"), ("gone", "")]);
        let mut new = config(&[("a", "pool_size = 4\nmax_deliveries = 9"), ("added", "")]);
        new.broker.prefetch_per_sandbox = 7;
        new.handlers[0].source = running.handlers[0].source.clone();
        new.handlers[0].file = running.handlers[0].file.clone();
        let p = plan(&running, &new);
        // Only restart-only settings differ for "a": they are ignored, so nothing changes.
        assert_eq!(p.unchanged, ["a", "gone"]);
        assert!(p.rebuild.is_empty() && p.settings.is_empty());
        let all = p.needs_restart.join("\n");
        for part in [
            "[broker]",
            "'added' added",
            "'gone' removed",
            "pool_size 2 -> 4",
            "max_deliveries 3 -> 9",
        ] {
            assert!(all.contains(part), "{part} missing from {all}");
        }
        // With new code as well, the rebuild keeps the running pool size.
        new.handlers[0].source.push(' ');
        let p = plan(&running, &new);
        assert_eq!(p.rebuild.len(), 1);
        assert_eq!(p.rebuild[0].pool_size, 2);
        assert_eq!(p.rebuild[0].max_deliveries, 3);
    }

    #[test]
    fn a_reload_error_names_its_key_or_the_whole_configuration() {
        let file = ReloadError::from(WorkerError::from(ConfigError::HandlerFile {
            path: "/w/worker.toml".into(),
            key: "a".into(),
            file: "/w/a.js".into(),
            message: "gone".into(),
        }));
        assert_eq!((file.key(), file.code()), ("a", "ERR_HANDLER_FILE"));
        let parse = ReloadError::from(WorkerError::from(ConfigError::Parse {
            path: "/w/worker.toml".into(),
            message: "bad".into(),
        }));
        assert_eq!(
            (parse.key(), parse.code()),
            (WHOLE_CONFIG, "ERR_CONFIG_PARSE")
        );
        let compile = ReloadError::from(WorkerError::Pool {
            key: "b".into(),
            file: "/w/b.js".into(),
            source: hyperlight_js_engine::Error::Internal("x".into()),
        });
        assert_eq!((compile.key(), compile.code()), ("b", "ERR_INTERNAL"));
        assert_eq!(ReloadError::Task("x".into()).code(), "ERR_INTERNAL");
    }
}
