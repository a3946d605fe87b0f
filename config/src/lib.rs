//! Typed configuration of the hyperlight-js worker.
//!
//! A TOML file (passed with `--config PATH`) plus environment overrides with
//! the prefix `HLJS` and the separator `__` (`HLJS__HTTP__LISTEN=…` sets
//! `[http] listen`). `AMQP_URL`, when set, wins over `[broker] url`.
//! Everything is validated at load time: a bad value fails with a message
//! that names the handler key and the file, and each handler's JavaScript
//! file is read here so a missing file fails at start.
//!
//! ```toml
//! [broker]
//! # url = "amqp://..."
//! events_exchange = "hyperlight.events"
//!
//! [[handlers]]
//! key = "greet"
//! file = "handlers/greet.js"   # relative to this file's directory
//! pool_size = 2
//! ```
#![deny(missing_docs)]

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Prefix of environment overrides (`HLJS__SECTION__KEY`).
pub const ENV_PREFIX: &str = "HLJS";
/// Separator between the prefix, sections and keys of environment overrides.
pub const ENV_SEPARATOR: &str = "__";
/// Environment variable whose value wins over `[broker] url`.
pub const AMQP_URL_ENV: &str = "AMQP_URL";
/// The longest timeout a handler may be configured with.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// The largest pool a handler may ask for.
pub const MAX_POOL_SIZE: usize = 256;
/// The longest retry delay a handler may be configured with (one day).
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(86_400);
/// The longest routing key: a key's delay queues are named `<key>.delay-<ms>`,
/// and AMQP names are at most 255 bytes.
pub const MAX_KEY_BYTES: usize = 200;

/// Why the configuration could not be loaded. Each variant has a stable code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file cannot be read.
    #[error("cannot read the configuration file {path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The file (with its overrides) is not valid TOML or has a value of the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the handler key where there is one.
        message: String,
    },
    /// A handler's JavaScript file cannot be read.
    #[error("{path}: handler '{key}': cannot read {file}: {message}")]
    HandlerFile {
        /// The configuration file.
        path: PathBuf,
        /// The handler's routing key.
        key: String,
        /// The handler file, resolved against the configuration's directory.
        file: PathBuf,
        /// What went wrong.
        message: String,
    },
}

impl ConfigError {
    /// The stable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Read { .. } => "ERR_CONFIG_READ",
            Self::Parse { .. } => "ERR_CONFIG_PARSE",
            Self::Invalid { .. } => "ERR_CONFIG_INVALID",
            Self::HandlerFile { .. } => "ERR_HANDLER_FILE",
        }
    }
}

/// A secret string (the broker URL carries credentials): `Debug` and
/// `Display` print it redacted.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its credentials: pass it to the client, never to a log.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with user name and password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Replaces the user-info part of a URL (`user:password@`) with `***@` and
/// drops a query string (which may hold TLS key passwords). Text that is not
/// a URL comes back unchanged unless it holds an `@`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = match authority.rfind('@') {
        Some(i) => format!("***@{}", &authority[i + 1..]),
        None => authority.to_string(),
    };
    let tail = match tail.find('?') {
        Some(i) => format!("{}?***", &tail[..i]),
        None => tail.to_string(),
    };
    format!("{scheme}{host}{tail}")
}

/// How logs are written (to standard error).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// `[broker]`: where events come from and where outcomes go.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// `amqp://` or `amqps://` URL; `AMQP_URL` wins. None: stdin mode.
    /// After loading, the first of [`urls`](Self::urls).
    pub url: Option<SecretUrl>,
    /// Every node of a cluster: the worker connects to the first that
    /// answers and, when a connection is lost, to the next. `AMQP_URL` may
    /// list several, comma-separated. After loading: `url` (if given), then these.
    pub urls: Vec<SecretUrl>,
    /// Exchange the events are published to; each handler's queue is bound to it with its key.
    pub events_exchange: String,
    /// Exchange outcomes go to when a message has no `reply_to`.
    pub results_exchange: String,
    /// Exchange that takes messages which could not be processed after `max_deliveries`.
    pub dead_letter_exchange: String,
    /// Durable queue bound to the dead-letter exchange; defaults to its name.
    pub dead_letter_queue: Option<String>,
    /// Attempts at one message before it is dead-lettered: the default of
    /// every handler's `max_deliveries`.
    pub max_deliveries: u32,
    /// Unacknowledged messages per sandbox (the consumer prefetch of a key is
    /// this times its pool size). 2 keeps a message ready for each sandbox
    /// while the previous outcome is being confirmed; 1 is the strictest.
    pub prefetch_per_sandbox: u16,
    /// PEM file of extra CA certificates for `amqps://` (system roots are always trusted).
    pub tls_ca_file: Option<PathBuf>,
    /// First reconnect delay, doubled per failed attempt.
    pub reconnect_initial_ms: u64,
    /// Largest reconnect delay.
    pub reconnect_max_ms: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: None,
            urls: Vec::new(),
            events_exchange: "hyperlight.events".into(),
            results_exchange: "hyperlight.results".into(),
            dead_letter_exchange: "hyperlight.dead-letter".into(),
            dead_letter_queue: None,
            max_deliveries: 3,
            prefetch_per_sandbox: 2,
            tls_ca_file: None,
            reconnect_initial_ms: 250,
            reconnect_max_ms: 10_000,
        }
    }
}

impl BrokerConfig {
    /// Replaces the broker URLs with those of `list` (comma-separated, as in `AMQP_URL`).
    pub fn set_urls(&mut self, list: &str) {
        self.urls = list
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(SecretUrl::new)
            .collect();
        self.url = self.urls.first().cloned();
    }

    /// The broker URLs in the order they are tried (empty: no broker).
    pub fn endpoints(&self) -> &[SecretUrl] {
        &self.urls
    }

    /// The dead-letter queue's name.
    pub fn dead_letter_queue(&self) -> &str {
        self.dead_letter_queue
            .as_deref()
            .unwrap_or(&self.dead_letter_exchange)
    }
}

/// `[http]`: the health and metrics endpoint.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:9090".into(),
        }
    }
}

/// `[snapshots]`: the persisted-snapshot cache.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotsConfig {
    /// Directory where each key's loaded snapshot is kept between starts
    /// (relative to the configuration file's directory); `None`: no cache,
    /// every start runs the runtime init and the compile. Several workers may
    /// share it.
    pub dir: Option<PathBuf>,
}

/// `[telemetry]`: logs and traces.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `human` or `json`.
    pub log_format: LogFormat,
    /// OTLP/gRPC endpoint (`http://collector:4317`); traces are exported only when set.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported traces.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Human,
            otlp_endpoint: None,
            service_name: "hyperlight-js-worker".into(),
        }
    }
}

/// `[shutdown]`: draining on SIGTERM/SIGINT.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Time in-flight messages get to finish before the connection closes.
    pub drain_timeout_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout_secs: 30,
        }
    }
}

/// One `[[handlers]]` entry as written in the file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHandler {
    key: String,
    file: PathBuf,
    #[serde(default = "defaults::pool_size")]
    pool_size: usize,
    #[serde(default = "defaults::heap_size")]
    heap_size: u64,
    #[serde(default = "defaults::stack_size")]
    stack_size: u64,
    #[serde(default = "defaults::cpu_timeout_ms")]
    cpu_timeout_ms: u64,
    #[serde(default = "defaults::max_cpu_timeout_ms")]
    max_cpu_timeout_ms: u64,
    #[serde(default = "defaults::wall_timeout_ms")]
    wall_timeout_ms: u64,
    #[serde(default = "defaults::max_wall_timeout_ms")]
    max_wall_timeout_ms: u64,
    #[serde(default = "defaults::max_message_bytes")]
    max_message_bytes: u64,
    #[serde(default = "defaults::max_result_bytes")]
    max_result_bytes: u64,
    #[serde(default)]
    max_deliveries: Option<u32>,
    #[serde(default)]
    retry_on: Vec<String>,
    #[serde(default = "defaults::retry_delay_ms")]
    retry_delay_ms: u64,
    #[serde(default = "defaults::retry_backoff")]
    retry_backoff: f64,
    #[serde(default = "defaults::retry_max_delay_ms")]
    retry_max_delay_ms: u64,
}

mod defaults {
    pub(super) fn pool_size() -> usize {
        2
    }
    pub(super) fn heap_size() -> u64 {
        32 * 1024 * 1024
    }
    pub(super) fn stack_size() -> u64 {
        1024 * 1024
    }
    pub(super) fn cpu_timeout_ms() -> u64 {
        1000
    }
    pub(super) fn max_cpu_timeout_ms() -> u64 {
        5000
    }
    pub(super) fn wall_timeout_ms() -> u64 {
        5000
    }
    pub(super) fn max_wall_timeout_ms() -> u64 {
        30_000
    }
    pub(super) fn max_message_bytes() -> u64 {
        1024 * 1024
    }
    pub(super) fn max_result_bytes() -> u64 {
        1024 * 1024
    }
    pub(super) fn retry_delay_ms() -> u64 {
        1000
    }
    pub(super) fn retry_backoff() -> f64 {
        2.0
    }
    pub(super) fn retry_max_delay_ms() -> u64 {
        60_000
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    broker: BrokerConfig,
    #[serde(default)]
    http: HttpConfig,
    #[serde(default)]
    telemetry: TelemetryConfig,
    #[serde(default)]
    shutdown: ShutdownConfig,
    #[serde(default)]
    snapshots: SnapshotsConfig,
    #[serde(default)]
    handlers: Vec<RawHandler>,
}

/// Per-call time limits of a handler: the defaults a message gets and the
/// most it may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeLimits {
    /// CPU-time limit when the message asks for none.
    pub cpu: Duration,
    /// Largest CPU-time limit a message may ask for.
    pub max_cpu: Duration,
    /// Wall-clock limit when the message asks for none.
    pub wall: Duration,
    /// Largest wall-clock limit a message may ask for.
    pub max_wall: Duration,
}

/// One handler, validated, with its JavaScript source read. `PartialEq`
/// lets a hot reload tell which keys changed.
#[derive(Clone, Debug, PartialEq)]
pub struct HandlerConfig {
    /// Routing key: the queue name and the key the handler is registered under.
    pub key: String,
    /// The JavaScript file, resolved against the configuration's directory.
    pub file: PathBuf,
    /// The file's contents.
    pub source: String,
    /// Sandboxes kept loaded for this key (also the consumer prefetch).
    pub pool_size: usize,
    /// Guest heap in bytes.
    pub heap_size: u64,
    /// Guest stack in bytes.
    pub stack_size: u64,
    /// Time limits.
    pub limits: TimeLimits,
    /// Largest message body accepted (`ERR_MESSAGE_TOO_LARGE` past it).
    pub max_message_bytes: u64,
    /// Largest result the handler may return (`ERR_OUTPUT_TOO_LARGE` past it).
    pub max_result_bytes: u64,
    /// Attempts at one message before it is dead-lettered (`max_deliveries`
    /// of the handler, else of `[broker]`).
    pub max_deliveries: u32,
    /// When and how long to wait before another attempt.
    pub retry: RetryPolicy,
    /// `[snapshots] dir`, resolved: where this key's loaded snapshot is cached.
    pub snapshot_dir: Option<PathBuf>,
}

/// A handler's retry policy: which failures are tried again after a delay,
/// and the delays. A handler's `RetryError` always is, with the delay it
/// asks for clamped to `[0, max_delay]`.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Error codes retried after a delay (checked against the engine's codes
    /// when the worker starts).
    pub retry_on: Vec<String>,
    /// The delay after the first failed attempt.
    pub delay: Duration,
    /// Factor applied to the delay per further attempt (at least 1).
    pub backoff: f64,
    /// The longest delay (also the bound of a `RetryError`'s `delayMs`).
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// Retries only for `RetryError`, with the default delays.
    pub fn none() -> Self {
        Self {
            retry_on: Vec::new(),
            delay: Duration::from_millis(defaults::retry_delay_ms()),
            backoff: defaults::retry_backoff(),
            max_delay: Duration::from_millis(defaults::retry_max_delay_ms()),
        }
    }

    /// The delay after `attempt` (from 1) failed: `delay × backoff^(attempt-1)`, capped.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let exp = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let ms = self.delay.as_millis() as f64 * self.backoff.powi(exp);
        let cap = self.max_delay.as_millis() as f64;
        Duration::from_millis(if ms.is_finite() { ms.min(cap) } else { cap } as u64)
    }
}

/// The worker's whole configuration, validated.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The file it was loaded from.
    pub path: PathBuf,
    /// `[broker]` (with `AMQP_URL` applied).
    pub broker: BrokerConfig,
    /// `[http]`.
    pub http: HttpConfig,
    /// The parsed `[http] listen`.
    pub http_listen: SocketAddr,
    /// `[telemetry]`.
    pub telemetry: TelemetryConfig,
    /// `[shutdown]`.
    pub shutdown: ShutdownConfig,
    /// `[snapshots]`, with `dir` resolved against the file's directory.
    pub snapshots: SnapshotsConfig,
    /// `[[handlers]]`, in file order.
    pub handlers: Vec<HandlerConfig>,
}

impl WorkerConfig {
    /// Loads `path`, applies the process environment (`HLJS__…`, `AMQP_URL`),
    /// validates, and reads the handler files.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::load_with_env(path, &env)
    }

    /// Like [`load`](Self::load) with an explicit environment (for tests).
    pub fn load_with_env(path: &Path, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_toml(&text, path, &base, env)
    }

    /// Parses TOML `text` as if read from `path`; relative handler files are
    /// resolved against `base`.
    pub fn from_toml(
        text: &str,
        path: &Path,
        base: &Path,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let parse_err = |e: config::ConfigError| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let overrides: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}{ENV_SEPARATOR}")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let raw: RawConfig = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator(ENV_SEPARATOR)
                    .separator(ENV_SEPARATOR)
                    .try_parsing(true)
                    .source(Some(overrides)),
            )
            .build()
            .map_err(parse_err)?
            .try_deserialize()
            .map_err(parse_err)?;
        let amqp_url = env
            .get(AMQP_URL_ENV)
            .filter(|v| !v.trim().is_empty())
            .cloned();
        validate(raw, path, base, amqp_url)
    }

    /// Whether a broker is configured (otherwise the worker reads JSON lines).
    pub fn has_broker(&self) -> bool {
        self.broker.url.is_some()
    }

    /// The handler for `key`.
    pub fn handler(&self, key: &str) -> Option<&HandlerConfig> {
        self.handlers.iter().find(|h| h.key == key)
    }
}

fn validate(
    raw: RawConfig,
    path: &Path,
    base: &Path,
    amqp_url: Option<String>,
) -> Result<WorkerConfig, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let mut broker = raw.broker;
    match amqp_url {
        Some(list) => broker.set_urls(&list),
        None => {
            let listed: Vec<SecretUrl> = broker
                .url
                .take()
                .into_iter()
                .chain(broker.urls.drain(..))
                .collect();
            let joined: Vec<&str> = listed.iter().map(SecretUrl::expose).collect();
            broker.set_urls(&joined.join(","));
        }
    }
    for url in &broker.urls {
        let u = url.expose();
        if !(u.starts_with("amqp://") || u.starts_with("amqps://")) {
            return Err(invalid(format!(
                "[broker] url must start with amqp:// or amqps:// (got {})",
                url.redacted()
            )));
        }
    }
    for (name, value) in [
        ("events_exchange", &broker.events_exchange),
        ("results_exchange", &broker.results_exchange),
        ("dead_letter_exchange", &broker.dead_letter_exchange),
    ] {
        check_amqp_name(&format!("[broker] {name}"), value).map_err(invalid)?;
    }
    check_amqp_name("[broker] dead_letter_queue", broker.dead_letter_queue()).map_err(invalid)?;
    let exchanges: BTreeSet<&str> = [
        &broker.events_exchange,
        &broker.results_exchange,
        &broker.dead_letter_exchange,
    ]
    .into_iter()
    .map(String::as_str)
    .collect();
    if exchanges.len() != 3 {
        return Err(invalid(
            "[broker] events_exchange, results_exchange and dead_letter_exchange must differ"
                .into(),
        ));
    }
    if broker.max_deliveries == 0 {
        return Err(invalid("[broker] max_deliveries must be at least 1".into()));
    }
    if broker.prefetch_per_sandbox == 0 || broker.prefetch_per_sandbox > 100 {
        return Err(invalid(
            "[broker] prefetch_per_sandbox must be between 1 and 100".into(),
        ));
    }
    if broker.reconnect_initial_ms == 0 || broker.reconnect_max_ms < broker.reconnect_initial_ms {
        return Err(invalid(
            "[broker] reconnect_initial_ms must be > 0 and at most reconnect_max_ms".into(),
        ));
    }
    if let Some(ca) = &broker.tls_ca_file {
        broker.tls_ca_file = Some(base.join(ca));
    }

    let http_listen: SocketAddr = raw.http.listen.parse().map_err(|e| {
        invalid(format!(
            "[http] listen '{}' is not an address like 0.0.0.0:9090: {e}",
            raw.http.listen
        ))
    })?;

    let mut snapshots = raw.snapshots;
    if let Some(dir) = &snapshots.dir {
        if dir.as_os_str().is_empty() {
            return Err(invalid(
                "[snapshots] dir must not be empty (leave it out for no cache)".into(),
            ));
        }
        snapshots.dir = Some(base.join(dir));
    }

    if raw.handlers.is_empty() {
        return Err(invalid(
            "no [[handlers]]: configure at least one handler".into(),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut handlers = Vec::with_capacity(raw.handlers.len());
    for (i, h) in raw.handlers.into_iter().enumerate() {
        let file = base.join(&h.file);
        let at = |m: String| {
            invalid(format!(
                "handler '{}' (handlers[{i}], file {}): {m}",
                h.key,
                file.display()
            ))
        };
        check_amqp_name("key", &h.key).map_err(|m| invalid(format!("handlers[{i}]: {m}")))?;
        if h.key.len() > MAX_KEY_BYTES {
            return Err(at(format!(
                "the key is longer than {MAX_KEY_BYTES} bytes (room is kept for its delay queues' names)"
            )));
        }
        let max_deliveries = h.max_deliveries.unwrap_or(broker.max_deliveries);
        if max_deliveries == 0 {
            return Err(at("max_deliveries must be at least 1".into()));
        }
        let retry_ms = |name: &str, v: u64| -> Result<Duration, ConfigError> {
            let d = Duration::from_millis(v);
            if d > MAX_RETRY_DELAY {
                return Err(at(format!(
                    "{name} must be at most {} ms (got {v})",
                    MAX_RETRY_DELAY.as_millis()
                )));
            }
            Ok(d)
        };
        let retry = RetryPolicy {
            retry_on: h.retry_on.clone(),
            delay: retry_ms("retry_delay_ms", h.retry_delay_ms)?,
            backoff: h.retry_backoff,
            max_delay: retry_ms("retry_max_delay_ms", h.retry_max_delay_ms)?,
        };
        if !(retry.backoff.is_finite() && (1.0..=100.0).contains(&retry.backoff)) {
            return Err(at(format!(
                "retry_backoff must be between 1 and 100 (got {})",
                h.retry_backoff
            )));
        }
        if retry.delay > retry.max_delay {
            return Err(at(format!(
                "retry_delay_ms ({}) is over retry_max_delay_ms ({})",
                h.retry_delay_ms, h.retry_max_delay_ms
            )));
        }
        if let Some(bad) = h.retry_on.iter().find(|c| !c.starts_with("ERR_")) {
            return Err(at(format!(
                "retry_on holds {bad:?}, which is not an error code (ERR_...)"
            )));
        }
        if !seen.insert(h.key.clone()) {
            return Err(at("the key is configured twice".into()));
        }
        if h.pool_size == 0 || h.pool_size > MAX_POOL_SIZE {
            return Err(at(format!(
                "pool_size must be between 1 and {MAX_POOL_SIZE} (got {})",
                h.pool_size
            )));
        }
        for (name, v) in [
            ("heap_size", h.heap_size),
            ("stack_size", h.stack_size),
            ("max_message_bytes", h.max_message_bytes),
            ("max_result_bytes", h.max_result_bytes),
        ] {
            if v == 0 {
                return Err(at(format!("{name} must be greater than zero")));
            }
        }
        let ms = |name: &str, v: u64| -> Result<Duration, ConfigError> {
            let d = Duration::from_millis(v);
            if v == 0 || d > MAX_TIMEOUT {
                return Err(at(format!(
                    "{name} must be between 1 and {} ms (got {v})",
                    MAX_TIMEOUT.as_millis()
                )));
            }
            Ok(d)
        };
        let limits = TimeLimits {
            cpu: ms("cpu_timeout_ms", h.cpu_timeout_ms)?,
            max_cpu: ms("max_cpu_timeout_ms", h.max_cpu_timeout_ms)?,
            wall: ms("wall_timeout_ms", h.wall_timeout_ms)?,
            max_wall: ms("max_wall_timeout_ms", h.max_wall_timeout_ms)?,
        };
        if limits.cpu > limits.max_cpu {
            return Err(at(format!(
                "cpu_timeout_ms ({}) is over max_cpu_timeout_ms ({})",
                h.cpu_timeout_ms, h.max_cpu_timeout_ms
            )));
        }
        if limits.wall > limits.max_wall {
            return Err(at(format!(
                "wall_timeout_ms ({}) is over max_wall_timeout_ms ({})",
                h.wall_timeout_ms, h.max_wall_timeout_ms
            )));
        }
        let source = std::fs::read_to_string(&file).map_err(|e| ConfigError::HandlerFile {
            path: path.to_path_buf(),
            key: h.key.clone(),
            file: file.clone(),
            message: e.to_string(),
        })?;
        handlers.push(HandlerConfig {
            key: h.key,
            file,
            source,
            pool_size: h.pool_size,
            heap_size: h.heap_size,
            stack_size: h.stack_size,
            limits,
            max_message_bytes: h.max_message_bytes,
            max_result_bytes: h.max_result_bytes,
            max_deliveries,
            retry,
            snapshot_dir: snapshots.dir.clone(),
        });
    }

    Ok(WorkerConfig {
        path: path.to_path_buf(),
        broker,
        http: raw.http,
        http_listen,
        telemetry: raw.telemetry,
        shutdown: raw.shutdown,
        snapshots,
        handlers,
    })
}

/// Checks a queue, exchange or routing-key name: 1 to 255 bytes, no
/// control characters, not in the broker's reserved `amq.` namespace.
fn check_amqp_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if name.len() > 255 {
        return Err(format!("{what} '{name}' is longer than 255 bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("{what} {name:?} holds control characters"));
    }
    if name.starts_with("amq.") {
        return Err(format!(
            "{what} '{name}' is in the broker's reserved amq. namespace"
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "hljs-config-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        for (name, text) in files {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    const GOOD: &str = r#"
[broker]
events_exchange = "ev"
[http]
listen = "127.0.0.1:9191"
[[handlers]]
key = "greet"
file = "handlers/greet.js"
pool_size = 3
cpu_timeout_ms = 100
"#;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<WorkerConfig, ConfigError> {
        let dir = dir_with(&[
            ("worker.toml", toml),
            ("handlers/greet.js", "function handler(e) { return e; }"),
        ]);
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        WorkerConfig::load_with_env(&dir.join("worker.toml"), &env)
    }

    #[test]
    fn loads_defaults_and_resolves_handler_files_against_the_config_dir() {
        let c = load(GOOD, &[]).unwrap();
        assert!(!c.has_broker());
        assert_eq!(c.broker.events_exchange, "ev");
        assert_eq!(c.broker.results_exchange, "hyperlight.results");
        assert_eq!(c.broker.dead_letter_queue(), "hyperlight.dead-letter");
        assert_eq!(c.broker.max_deliveries, 3);
        assert_eq!(c.broker.prefetch_per_sandbox, 2);
        assert_eq!(c.http_listen, "127.0.0.1:9191".parse().unwrap());
        let h = c.handler("greet").unwrap();
        assert_eq!(h.pool_size, 3);
        assert_eq!(h.limits.cpu, Duration::from_millis(100));
        assert_eq!(h.limits.max_wall, Duration::from_secs(30));
        assert!(h.source.contains("function handler"));
        assert!(h.file.is_absolute() || h.file.starts_with(std::env::temp_dir()));
    }

    #[test]
    fn env_overrides_win_and_amqp_url_wins_over_the_file() {
        let toml = GOOD.replace("[broker]", "[broker]\nurl = \"amqp://a:b@file-host/%2f\"");
        let c = load(
            &toml,
            &[
                ("HLJS__HTTP__LISTEN", "127.0.0.1:7000"),
                ("HLJS__SHUTDOWN__DRAIN_TIMEOUT_SECS", "5"),
                ("HLJS__BROKER__MAX_DELIVERIES", "7"),
                ("AMQP_URL", "amqp://u:secret@env-host:5672/%2f"),
            ],
        )
        .unwrap();
        assert_eq!(c.http_listen.port(), 7000);
        assert_eq!(c.shutdown.drain_timeout_secs, 5);
        assert_eq!(c.broker.max_deliveries, 7);
        let url = c.broker.url.as_ref().unwrap();
        assert_eq!(url.expose(), "amqp://u:secret@env-host:5672/%2f");
        assert!(!format!("{url} {url:?} {c:?}").contains("secret"));
    }

    #[test]
    fn max_deliveries_per_key_and_retry_policy() {
        let toml = GOOD.replace(
            "cpu_timeout_ms = 100",
            "cpu_timeout_ms = 100\nmax_deliveries = 5\nretry_on = [\"ERR_CANCELLED\"]\nretry_delay_ms = 100\nretry_backoff = 3.0\nretry_max_delay_ms = 1000",
        );
        let c = load(&toml, &[("HLJS__BROKER__MAX_DELIVERIES", "4")]).unwrap();
        let h = c.handler("greet").unwrap();
        assert_eq!(c.broker.max_deliveries, 4);
        assert_eq!(h.max_deliveries, 5);
        assert_eq!(h.retry.retry_on, vec!["ERR_CANCELLED".to_string()]);
        let delays: Vec<u64> = (1..=4)
            .map(|a| h.retry.delay_after(a).as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 300, 900, 1000]);
        assert_eq!(h.retry.delay_after(u32::MAX), Duration::from_secs(1));
        let d = load(GOOD, &[]).unwrap();
        assert_eq!(d.handler("greet").unwrap().max_deliveries, 3);

        for (bad, needle) in [
            ("max_deliveries = 0", "max_deliveries"),
            ("retry_backoff = 0.5", "retry_backoff"),
            (
                "retry_delay_ms = 5000\nretry_max_delay_ms = 100",
                "retry_delay_ms",
            ),
            ("retry_max_delay_ms = 999999999", "retry_max_delay_ms"),
            ("retry_on = [\"cancelled\"]", "retry_on"),
        ] {
            let e = load(&GOOD.replace("cpu_timeout_ms = 100", bad), &[]).unwrap_err();
            assert_eq!(e.code(), "ERR_CONFIG_INVALID", "{bad}");
            let m = e.to_string();
            assert!(
                m.contains(needle) && m.contains("'greet'") && m.contains("greet.js"),
                "{m}"
            );
        }
    }

    #[test]
    fn several_broker_urls_from_the_file_or_a_comma_separated_amqp_url() {
        let toml = GOOD.replace(
            "[broker]",
            "[broker]\nurl = \"amqp://a/%2f\"\nurls = [\"amqp://b/%2f\", \"amqps://c/%2f\"]",
        );
        let c = load(&toml, &[]).unwrap();
        let urls: Vec<&str> = c.broker.endpoints().iter().map(SecretUrl::expose).collect();
        assert_eq!(urls, ["amqp://a/%2f", "amqp://b/%2f", "amqps://c/%2f"]);
        assert_eq!(c.broker.url.as_ref().unwrap().expose(), "amqp://a/%2f");
        let c = load(&toml, &[("AMQP_URL", " amqp://x:1/%2f, ,amqp://y:2/%2f ")]).unwrap();
        let urls: Vec<&str> = c.broker.endpoints().iter().map(SecretUrl::expose).collect();
        assert_eq!(urls, ["amqp://x:1/%2f", "amqp://y:2/%2f"], "AMQP_URL wins");
        let e = load(&toml, &[("AMQP_URL", "amqp://x/%2f,http://y")]).unwrap_err();
        assert_eq!(e.code(), "ERR_CONFIG_INVALID");
        assert!(!load(GOOD, &[("AMQP_URL", " ")]).unwrap().has_broker());
    }

    #[test]
    fn snapshots_dir_is_optional_and_resolved_against_the_config_dir() {
        let c = load(GOOD, &[]).unwrap();
        assert!(c.snapshots.dir.is_none());
        assert!(c.handler("greet").unwrap().snapshot_dir.is_none());
        let c = load(&format!("{GOOD}\n[snapshots]\ndir = \"cache\"\n"), &[]).unwrap();
        let dir = c.snapshots.dir.clone().unwrap();
        assert!(
            dir.ends_with("cache") && dir.parent() == c.path.parent(),
            "{dir:?}"
        );
        assert_eq!(
            c.handler("greet").unwrap().snapshot_dir.as_ref(),
            Some(&dir)
        );
        let c = load(GOOD, &[("HLJS__SNAPSHOTS__DIR", "/var/cache/hljs")]).unwrap();
        assert_eq!(c.snapshots.dir.unwrap(), Path::new("/var/cache/hljs"));
        let e = load(&format!("{GOOD}\n[snapshots]\ndirr = \"x\"\n"), &[]).unwrap_err();
        assert_eq!(e.code(), "ERR_CONFIG_PARSE");
    }

    #[test]
    fn redacts_credentials_and_queries() {
        assert_eq!(
            redact_url("amqps://user:pw@host:5671/vh?cert=x"),
            "amqps://***@host:5671/vh?***"
        );
        assert_eq!(redact_url("amqp://host/%2f"), "amqp://host/%2f");
        assert_eq!(redact_url("amqp://u:p@w@host"), "amqp://***@host");
    }

    #[test]
    fn invalid_values_name_the_key_and_the_file() {
        let e = load(&GOOD.replace("pool_size = 3", "pool_size = 0"), &[]).unwrap_err();
        assert_eq!(e.code(), "ERR_CONFIG_INVALID");
        let m = e.to_string();
        assert!(
            m.contains("'greet'") && m.contains("greet.js") && m.contains("worker.toml"),
            "{m}"
        );

        let e = load(
            &GOOD.replace("cpu_timeout_ms = 100", "cpu_timeout_ms = 9000"),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("max_cpu_timeout_ms"), "{e}");

        let e = load(
            &GOOD.replace("handlers/greet.js", "handlers/missing.js"),
            &[],
        )
        .unwrap_err();
        assert_eq!(e.code(), "ERR_HANDLER_FILE");
        assert!(
            e.to_string().contains("'greet'") && e.to_string().contains("missing.js"),
            "{e}"
        );

        let e = load(
            &format!("{GOOD}\n[[handlers]]\nkey = \"greet\"\nfile = \"handlers/greet.js\"\n"),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");

        let e = load(&GOOD.replace("pool_size = 3", "pool_sise = 3"), &[]).unwrap_err();
        assert_eq!(e.code(), "ERR_CONFIG_PARSE");

        let e = load(GOOD, &[("AMQP_URL", "http://x")]).unwrap_err();
        assert_eq!(e.code(), "ERR_CONFIG_INVALID");

        let e = load(GOOD, &[("HLJS__BROKER__PREFETCH_PER_SANDBOX", "0")]).unwrap_err();
        assert!(e.to_string().contains("prefetch_per_sandbox"), "{e}");

        let e = load(GOOD, &[("HLJS__HTTP__LISTEN", "nope")]).unwrap_err();
        assert!(e.to_string().contains("[http] listen"), "{e}");

        let e = WorkerConfig::load_with_env(Path::new("/nonexistent/worker.toml"), &HashMap::new())
            .unwrap_err();
        assert_eq!(e.code(), "ERR_CONFIG_READ");
    }
}
