//! One message: check → take a sandbox → call with limits → restore → outcome.
//! Shared by the broker path and the stdin path, so both give the same codes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyperlight_js_config::{ConfigError, HandlerConfig, RetryPolicy, TimeLimits, WorkerConfig};
use hyperlight_js_engine::{CallOptions, CallStats};
use serde::de::IgnoredAny;
use tracing::{debug, info};

use crate::codes::{ErrorCode, WorkerCode, environment_failure};
use crate::error::WorkerError;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::version::handler_version;

/// The message body is larger than the handler's `max_message_bytes`.
pub const ERR_MESSAGE_TOO_LARGE: &str = WorkerCode::MessageTooLarge.as_str();
/// The message body is not UTF-8 JSON.
pub const ERR_INVALID_JSON: &str = ErrorCode::InvalidJson.as_str();
/// A limit asked for in the message's headers (or an input line) is not a positive number.
pub const ERR_INVALID_ARG: &str = ErrorCode::InvalidArg.as_str();
/// No handler is configured for the routing key.
pub const ERR_UNKNOWN_HANDLER: &str = ErrorCode::UnknownHandler.as_str();

/// Limits a message asks for; each is clamped to the handler's maximum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestedLimits {
    /// CPU-time limit.
    pub cpu: Option<Duration>,
    /// Wall-clock limit.
    pub wall: Option<Duration>,
}

impl RequestedLimits {
    /// The limits for one call: the request where given, the defaults
    /// otherwise, never more than the maxima.
    pub fn resolve(&self, limits: &TimeLimits) -> (Duration, Duration) {
        let cpu = self.cpu.unwrap_or(limits.cpu).min(limits.max_cpu);
        let wall = self.wall.unwrap_or(limits.wall).min(limits.max_wall);
        (cpu, wall)
    }
}

/// One message to process.
#[derive(Debug)]
pub struct Request {
    /// Routing key.
    pub key: String,
    /// The body: the event as JSON.
    pub body: Vec<u8>,
    /// Limits asked for by the message.
    pub limits: RequestedLimits,
    /// The handler's second argument (`ctx`): key, message id, attempt, headers.
    pub context: Option<serde_json::Value>,
}

/// A failed message: a stable code and a human message.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// `ERR_…`: an [`ErrorCode`] or a [`WorkerCode`].
    pub code: &'static str,
    /// For humans.
    pub message: String,
    /// For `ERR_RETRY`: the `delayMs` the handler's `RetryError` asked for
    /// (NaN when it was not a number), before the policy's clamping.
    pub retry_delay_ms: Option<f64>,
}

impl Failure {
    /// A failure with `code`.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_delay_ms: None,
        }
    }

    /// Whether the cause is the worker's environment (see the broker path).
    pub fn retryable(&self) -> bool {
        environment_failure(self.code)
    }
}

/// What a message produced.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The handler's result, as JSON text.
    Success(String),
    /// A failure.
    Failure(Failure),
}

impl Outcome {
    /// `None` for a success, else the error code.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            Self::Success(_) => None,
            Self::Failure(f) => Some(f.code),
        }
    }

    /// The metric label: `ok` or the code.
    pub fn label(&self) -> &'static str {
        self.code().unwrap_or("ok")
    }

    /// Whether the broker path should retry rather than publish.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Failure(f) if f.retryable())
    }

    /// The published body: the handler's JSON, or
    /// `{"error":{"code":"ERR_…","message":"…"}}`.
    pub fn to_json(&self) -> String {
        match self {
            Self::Success(json) => json.clone(),
            Self::Failure(f) => error_json(f),
        }
    }
}

/// `{"error":{"code":…,"message":…}}`.
pub fn error_json(f: &Failure) -> String {
    serde_json::json!({ "error": { "code": f.code, "message": f.message } }).to_string()
}

/// What [`Processor::process_with_stats`] produced for one message.
#[derive(Debug)]
pub struct Processed {
    /// The outcome.
    pub outcome: Outcome,
    /// The engine's statistics of the call, when the event reached a sandbox.
    pub stats: Option<CallStats>,
    /// The version (see [`crate::version`]) of the handler that judged the
    /// message; `None` for a key without a handler.
    pub version: Option<Arc<str>>,
}

/// A pool per routing key and each key's limits.
///
/// The set of keys is fixed at load; what each key runs is swapped
/// atomically by a hot reload ([`crate::reload`]). A message takes its key's
/// handler once, when it starts, and finishes on that handler's pool even if
/// a newer one is swapped in meanwhile; the old pool goes away with its last
/// message.
#[derive(Debug)]
pub struct Processor {
    handlers: BTreeMap<String, ArcSwap<Handler>>,
    metrics: Metrics,
}

/// One key's handler as it is served: its pool, its settings and its version.
#[derive(Debug)]
pub(crate) struct Handler {
    pool: Arc<Pool>,
    limits: TimeLimits,
    max_message_bytes: u64,
    max_deliveries: u32,
    retry: RetryPolicy,
    version: Arc<str>,
    /// What it was built from (a reload compares the new configuration to it).
    config: HandlerConfig,
}

impl Handler {
    /// The handler `config` describes, served by `pool` (built from `config`,
    /// or one whose source and sizes are the same).
    pub(crate) fn new(config: &HandlerConfig, pool: Arc<Pool>) -> Self {
        Self {
            pool,
            limits: config.limits,
            max_message_bytes: config.max_message_bytes,
            max_deliveries: config.max_deliveries,
            retry: config.retry.clone(),
            version: handler_version(&config.source).into(),
            config: config.clone(),
        }
    }

    /// Its pool.
    pub(crate) fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Its version.
    pub(crate) fn version(&self) -> &Arc<str> {
        &self.version
    }

    /// The configuration it was built from.
    pub(crate) fn config(&self) -> &HandlerConfig {
        &self.config
    }
}

impl Processor {
    /// Loads every handler's pool, two at a time (each load is one core's
    /// work for a second or two). Fails on the first handler that does not
    /// load, naming its key and file.
    pub async fn load(handlers: &[HandlerConfig], metrics: Metrics) -> Result<Self, WorkerError> {
        let started = std::time::Instant::now();
        // Handlers with the same sandbox sizes share one runtime initialisation.
        let mut groups: BTreeMap<(u64, u64, u64, u64), Vec<HandlerConfig>> = BTreeMap::new();
        for h in handlers {
            groups
                .entry((
                    h.heap_size,
                    h.stack_size,
                    h.max_message_bytes,
                    h.max_result_bytes,
                ))
                .or_default()
                .push(h.clone());
        }
        let groups: Vec<Vec<HandlerConfig>> = groups.into_values().collect();
        let mut loaded = BTreeMap::new();
        let parallel = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .max(1);
        for chunk in groups.chunks(parallel) {
            let results = futures_util::future::join_all(
                chunk
                    .iter()
                    .map(|g| Pool::load_group(g.clone(), metrics.clone())),
            )
            .await;
            for (group, pools) in chunk.iter().zip(results) {
                for (h, pool) in group.iter().zip(pools?) {
                    let handler = Handler::new(h, pool);
                    metrics
                        .handler_version
                        .with_label_values(&[h.key.as_str(), handler.version()])
                        .set(1);
                    info!(key = %h.key, handler_version = %handler.version(), "handler loaded");
                    loaded.insert(h.key.clone(), ArcSwap::from_pointee(handler));
                }
            }
        }
        info!(
            handlers = loaded.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "all sandbox pools loaded"
        );
        Ok(Self {
            handlers: loaded,
            metrics,
        })
    }

    /// The configured routing keys.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.handlers.keys().map(String::as_str)
    }

    /// The pool `key` is served by now.
    pub fn pool(&self, key: &str) -> Option<Arc<Pool>> {
        self.handlers.get(key).map(|h| Arc::clone(&h.load().pool))
    }

    /// The version of `key`'s handler served now.
    pub fn version(&self, key: &str) -> Option<Arc<str>> {
        self.handlers
            .get(key)
            .map(|h| Arc::clone(&h.load().version))
    }

    /// Attempts at one message of `key` before it is dead-lettered, and its retry policy.
    pub fn delivery_policy(&self, key: &str) -> Option<(u32, RetryPolicy)> {
        self.handlers.get(key).map(|h| {
            let h = h.load();
            (h.max_deliveries, h.retry.clone())
        })
    }

    /// Sandboxes over all pools.
    pub fn total_pool_size(&self) -> usize {
        self.handlers.values().map(|h| h.load().pool.size()).sum()
    }

    /// A key whose pool lost every sandbox (it cannot process anything).
    pub fn dead_pool(&self) -> Option<&str> {
        self.handlers
            .iter()
            .find(|(_, h)| h.load().pool.capacity() == 0)
            .map(|(key, _)| key.as_str())
    }

    /// The handler `key` is served by now.
    pub(crate) fn handler(&self, key: &str) -> Option<Arc<Handler>> {
        self.handlers.get(key).map(ArcSwap::load_full)
    }

    /// Serves `key` with `handler` from now on: messages that already took
    /// the old one finish on it. `false` (nothing done) for a key that is not
    /// configured: the set of keys is fixed at load.
    pub(crate) fn install(&self, key: &str, handler: Handler) -> bool {
        let Some(slot) = self.handlers.get(key) else {
            return false;
        };
        let version = Arc::clone(&handler.version);
        let old = slot.swap(Arc::new(handler));
        if old.version != version {
            let gauge = &self.metrics.handler_version;
            if let Err(e) = gauge.remove_label_values(&[key, &old.version]) {
                debug!(key, error = %e, "no version gauge to remove");
            }
            gauge.with_label_values(&[key, &version]).set(1);
        }
        true
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Processes one message. Never fails: every failure is an [`Outcome::Failure`].
    pub async fn process(&self, request: Request) -> Outcome {
        self.process_with_stats(request).await.outcome
    }

    /// Like [`process`](Self::process), with the engine's statistics of the
    /// call when the event reached a sandbox and the handler's version.
    pub async fn process_with_stats(&self, request: Request) -> Processed {
        // Taken once: a reload swapping the key's handler from here on does
        // not move this message to the new pool.
        let Some(handler) = self.handler(&request.key) else {
            let key = &request.key;
            return Processed {
                outcome: Outcome::Failure(Failure::new(
                    ERR_UNKNOWN_HANDLER,
                    format!("no handler is configured for '{key}'"),
                )),
                stats: None,
                version: None,
            };
        };
        let (outcome, stats) = self.run(&handler, request).await;
        Processed {
            outcome,
            stats,
            version: Some(Arc::clone(&handler.version)),
        }
    }

    async fn run(&self, handler: &Handler, request: Request) -> (Outcome, Option<CallStats>) {
        let Request {
            key,
            body,
            limits,
            context,
        } = request;
        if body.len() as u64 > handler.max_message_bytes {
            return (
                Outcome::Failure(Failure::new(
                    ERR_MESSAGE_TOO_LARGE,
                    format!(
                        "the message is {} bytes, over the limit of {} bytes",
                        body.len(),
                        handler.max_message_bytes
                    ),
                )),
                None,
            );
        }
        let event = match String::from_utf8(body) {
            Ok(s) => s,
            Err(e) => {
                return (
                    Outcome::Failure(Failure::new(
                        ERR_INVALID_JSON,
                        format!("the message is not UTF-8: {e}"),
                    )),
                    None,
                );
            }
        };
        if let Err(e) = serde_json::from_str::<IgnoredAny>(&event) {
            return (
                Outcome::Failure(Failure::new(
                    ERR_INVALID_JSON,
                    format!("the message is not valid JSON: {e}"),
                )),
                None,
            );
        }
        let (cpu, wall) = limits.resolve(&handler.limits);
        // No garbage collection after the call: the restore that follows discards the heap anyway.
        let mut options = CallOptions::default()
            .cpu_timeout(cpu)
            .wall_clock_timeout(wall)
            .gc(false);
        if let Some(ctx) = context {
            options = options.context(ctx);
        }
        let call = handler.pool.call(event, options).await;
        self.metrics
            .handler_seconds
            .with_label_values(&[key.as_str()])
            .observe(call.call_seconds);
        let outcome = match call.result {
            Ok(json) => Outcome::Success(json),
            Err(e) => {
                debug!(key = %key, code = %e.code(), error = %e, "handler failed");
                let mut failure = Failure::new(e.code().as_str(), e.to_string());
                if let hyperlight_js_engine::Error::Retry { delay_ms, .. } = &e {
                    failure.retry_delay_ms = *delay_ms;
                }
                Outcome::Failure(failure)
            }
        };
        (outcome, call.stats)
    }
}

/// Checks every handler's `retry_on` against the engine's error codes, so a
/// typo fails at start (`ERR_CONFIG_INVALID`, naming the key and the file)
/// instead of never matching.
pub fn check_retry_codes(config: &WorkerConfig) -> Result<(), WorkerError> {
    for h in &config.handlers {
        for code in &h.retry.retry_on {
            if code.parse::<ErrorCode>().is_err() {
                let known: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
                return Err(ConfigError::Invalid {
                    path: config.path.clone(),
                    message: format!(
                        "handler '{}' (file {}): retry_on holds the unknown code {code:?}; the codes are {}",
                        h.key,
                        h.file.display(),
                        known.join(", ")
                    ),
                }
                .into());
            }
        }
    }
    Ok(())
}

/// Parses a timeout in milliseconds given by a message (`ERR_INVALID_ARG` if
/// it is not a positive integer).
pub fn parse_timeout_ms(name: &str, value: &str) -> Result<Duration, Failure> {
    match value.trim().parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        _ => Err(Failure::new(
            ERR_INVALID_ARG,
            format!("{name} must be a positive number of milliseconds (got {value:?})"),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LIMITS: TimeLimits = TimeLimits {
        cpu: Duration::from_millis(100),
        max_cpu: Duration::from_millis(500),
        wall: Duration::from_millis(1000),
        max_wall: Duration::from_millis(2000),
    };

    #[test]
    fn requested_limits_are_clamped_to_the_maximum() {
        assert_eq!(
            RequestedLimits::default().resolve(&LIMITS),
            (LIMITS.cpu, LIMITS.wall)
        );
        let shorter = RequestedLimits {
            cpu: Some(Duration::from_millis(10)),
            wall: Some(Duration::from_millis(20)),
        };
        assert_eq!(
            shorter.resolve(&LIMITS),
            (Duration::from_millis(10), Duration::from_millis(20))
        );
        let longer = RequestedLimits {
            cpu: Some(Duration::from_secs(60)),
            wall: Some(Duration::from_secs(60)),
        };
        assert_eq!(longer.resolve(&LIMITS), (LIMITS.max_cpu, LIMITS.max_wall));
    }

    #[test]
    fn failures_serialize_with_code_and_message() {
        let o = Outcome::Failure(Failure::new(ERR_INVALID_JSON, "bad \"json\""));
        let v: serde_json::Value = serde_json::from_str(&o.to_json()).unwrap();
        assert_eq!(v["error"]["code"], "ERR_INVALID_JSON");
        assert_eq!(v["error"]["message"], "bad \"json\"");
        assert_eq!(o.label(), "ERR_INVALID_JSON");
        assert!(!o.retryable());
        assert!(Outcome::Failure(Failure::new("ERR_INTERNAL", "x")).retryable());
        assert_eq!(Outcome::Success("{}".into()).label(), "ok");
    }

    #[test]
    fn timeouts_must_be_positive_integers() {
        assert_eq!(
            parse_timeout_ms("x", " 250 ").unwrap(),
            Duration::from_millis(250)
        );
        for bad in ["0", "-1", "abc", "1.5", ""] {
            assert_eq!(
                parse_timeout_ms("x", bad).unwrap_err().code,
                ERR_INVALID_ARG
            );
        }
    }
}
