//! `check-config`: everything the worker checks at start, without a broker.
//!
//! Loads the configuration exactly as the worker does ([`WorkerConfig::load`]:
//! the file, the `HLJS__…` overrides and `AMQP_URL` of the process
//! environment), checks the `retry_on` codes, then loads every handler's
//! pool through [`Processor::load`], the worker's own path: real sandboxes,
//! each handler compiled, `ERR_COMPILE` naming the key and file. Nothing is
//! connected to, the `[snapshots] dir` cache is not used; the sandboxes are
//! dropped afterwards.

use std::path::Path;
use std::time::Instant;

use hyperlight_js_config::WorkerConfig;

use crate::WorkerError;
use crate::metrics::Metrics;
use crate::process::{Processor, check_retry_codes};

/// What a successful check found.
#[derive(Clone, Debug)]
pub struct CheckSummary {
    /// The file that was checked.
    pub path: String,
    /// The handler keys, in file order.
    pub keys: Vec<String>,
    /// Sandboxes loaded over all pools.
    pub sandboxes: usize,
    /// The broker (redacted), or `None` for JSON-lines mode.
    pub broker: Option<String>,
    /// Time the check took.
    pub elapsed_ms: u128,
}

impl std::fmt::Display for CheckSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: ok: {} handler(s) compiled ({}), {} sandbox(es), broker {}, {} ms",
            self.path,
            self.keys.len(),
            self.keys.join(", "),
            self.sandboxes,
            self.broker.as_deref().unwrap_or("none (JSON-lines mode)"),
            self.elapsed_ms
        )
    }
}

/// Checks the configuration at `path` as the worker would load it at start.
pub async fn check_config(path: &Path) -> Result<CheckSummary, WorkerError> {
    let started = Instant::now();
    let config = WorkerConfig::load(path)?;
    check_retry_codes(&config)?;
    // Every handler compiled for real, and nothing written: the snapshot
    // cache is neither read nor filled.
    let handlers: Vec<_> = config
        .handlers
        .iter()
        .cloned()
        .map(|mut h| {
            h.snapshot_dir = None;
            h
        })
        .collect();
    let processor = Processor::load(&handlers, Metrics::new()).await?;
    drop(processor);
    Ok(CheckSummary {
        path: config.path.display().to_string(),
        keys: config.handlers.iter().map(|h| h.key.clone()).collect(),
        sandboxes: config.handlers.iter().map(|h| h.pool_size).sum(),
        broker: config.broker.url.as_ref().map(|u| u.redacted()),
        elapsed_ms: started.elapsed().as_millis(),
    })
}
