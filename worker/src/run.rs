//! Top level: pick the mode, start the HTTP endpoint, load the pools, run
//! until the input ends or a signal asks to stop.

use std::path::PathBuf;
use std::sync::Arc;

use hyperlight_js_config::WorkerConfig;
use tokio::io::BufReader;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::WorkerError;
use crate::health::Health;
use crate::http::{self, HttpState};
use crate::metrics::Metrics;
use crate::process::Processor;
use crate::reload::{self, Reloader};

/// Where events come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// RabbitMQ (`[broker] url` or `AMQP_URL`).
    Broker,
    /// JSON lines from standard input, or from a file.
    Lines {
        /// The file; `None` for standard input.
        input: Option<PathBuf>,
    },
}

impl Mode {
    /// Lines mode when asked for (`--stdin`, `--input`) or when no broker is configured.
    pub fn choose(config: &WorkerConfig, stdin: bool, input: Option<PathBuf>) -> Self {
        if stdin || input.is_some() || !config.has_broker() {
            Self::Lines { input }
        } else {
            Self::Broker
        }
    }
}

/// A configured worker, before it runs.
#[derive(Debug)]
pub struct Worker {
    config: WorkerConfig,
    health: Arc<Health>,
    metrics: Metrics,
    mode: Mode,
}

impl Worker {
    /// A worker for `config` in `mode`.
    pub fn new(config: WorkerConfig, mode: Mode) -> Self {
        let health = Arc::new(Health::new(mode == Mode::Broker));
        Self {
            config,
            health,
            metrics: Metrics::new(),
            mode,
        }
    }

    /// Readiness, shared with whoever wants to watch it.
    pub fn health(&self) -> Arc<Health> {
        Arc::clone(&self.health)
    }

    /// The metrics registry.
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Runs to completion: until the input ends (lines mode) or `shutdown`
    /// is cancelled and in-flight messages are drained (broker mode).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        crate::process::check_retry_codes(&self.config)?;
        // Before the pools load: a SIGHUP meanwhile must not end the process.
        let hangup = reload::hangup_signal();
        match self.mode.clone() {
            Mode::Broker => self.run_broker(shutdown, hangup).await,
            Mode::Lines { input } => self.run_lines(input, shutdown, hangup).await,
        }
    }

    /// Reloads `processor` on SIGHUP until `stop` (see [`crate::reload`]).
    fn watch_reloads(
        &self,
        hangup: Option<tokio::signal::unix::Signal>,
        processor: &Arc<Processor>,
        stop: CancellationToken,
    ) {
        if let Some(hangup) = hangup {
            let reloader =
                Reloader::new(self.config.clone(), Arc::clone(processor), self.metrics());
            tokio::spawn(reload::watch(hangup, reloader, stop));
        }
    }

    async fn run_broker(
        self,
        shutdown: CancellationToken,
        hangup: Option<tokio::signal::unix::Signal>,
    ) -> Result<(), WorkerError> {
        let listener = http::bind(self.config.http_listen).await?;
        let processor_cell = Arc::new(tokio::sync::OnceCell::new());
        let state = HttpState {
            health: self.health(),
            metrics: self.metrics(),
            processor: Arc::clone(&processor_cell),
        };
        let http_stop = CancellationToken::new();
        let http_task = tokio::spawn(http::serve(listener, state, http_stop.clone()));
        let result = async {
            let processor = tokio::select! {
                _ = shutdown.cancelled() => {
                    info!("shutdown requested while loading the pools");
                    return Ok(());
                }
                p = Processor::load(&self.config.handlers, self.metrics()) => Arc::new(p?),
            };
            let _ = processor_cell.set(Arc::clone(&processor));
            self.health.set_pools_loaded(true);
            // No reload once a drain has begun: the pools only finish what they hold.
            self.watch_reloads(hangup, &processor, shutdown.clone());
            let health = self.health();
            let draining = shutdown.clone();
            tokio::spawn(async move {
                draining.cancelled().await;
                health.set_draining();
            });
            crate::amqp::run(
                &self.config,
                processor,
                self.health(),
                self.metrics(),
                shutdown,
            )
            .await
        }
        .await;
        http_stop.cancel();
        let _ = http_task.await;
        result
    }

    async fn run_lines(
        self,
        input: Option<PathBuf>,
        shutdown: CancellationToken,
        hangup: Option<tokio::signal::unix::Signal>,
    ) -> Result<(), WorkerError> {
        let processor = Arc::new(Processor::load(&self.config.handlers, self.metrics()).await?);
        self.health.set_pools_loaded(true);
        let reloads = shutdown.child_token();
        let _stop_reloads = reloads.clone().drop_guard();
        self.watch_reloads(hangup, &processor, reloads);
        let stdout = tokio::io::stdout();
        let summary = match input {
            Some(path) => {
                let file = tokio::fs::File::open(&path).await.map_err(|e| {
                    WorkerError::InvalidArgument(format!(
                        "cannot open --input {}: {e}",
                        path.display()
                    ))
                })?;
                crate::stdin::run(processor, BufReader::new(file), stdout, shutdown).await?
            }
            None => {
                crate::stdin::run(
                    processor,
                    BufReader::new(tokio::io::stdin()),
                    stdout,
                    shutdown,
                )
                .await?
            }
        };
        if summary.failures > 0 {
            info!(
                failures = summary.failures,
                "some events failed; see their outcome lines"
            );
        }
        Ok(())
    }
}

/// A token cancelled by the first SIGTERM or SIGINT; a second one exits at once.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "cannot watch SIGTERM");
                    return;
                }
            };
        for n in 0.. {
            tokio::select! {
                _ = term.recv() => info!(signal = "SIGTERM", "shutdown requested"),
                _ = tokio::signal::ctrl_c() => info!(signal = "SIGINT", "shutdown requested"),
            }
            if n > 0 {
                warn!("second signal: exiting without draining");
                std::process::exit(130);
            }
            t.cancel();
        }
    });
    token
}
