//! The worker's own errors (start-up and infrastructure). Each has a stable
//! code; failures of a single message are [`crate::process::Failure`]s instead.

use hyperlight_js_config::ConfigError;

use crate::codes::{ErrorCode, WorkerCode};

/// Everything that stops the worker or one of its broker sessions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A handler's pool could not be loaded (names the key and file).
    #[error("handler '{key}' ({file}): {source}")]
    Pool {
        /// Routing key.
        key: String,
        /// The handler's JavaScript file.
        file: String,
        /// What the engine said.
        #[source]
        source: hyperlight_js_engine::Error,
    },
    /// A broker operation failed (the URL is never part of the message).
    #[error("broker: {0}")]
    Broker(String),
    /// The broker refused our topology (for example a queue declared elsewhere with other arguments).
    #[error("topology: {0}")]
    Topology(String),
    /// The HTTP endpoint could not be bound.
    #[error("cannot listen on {addr}: {message}")]
    HttpBind {
        /// The address.
        addr: String,
        /// What the OS said.
        message: String,
    },
    /// Logging or tracing could not be set up.
    #[error("telemetry: {0}")]
    Telemetry(String),
    /// Reading input or writing output failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// `publish --wait` got no reply in time.
    #[error("no reply within {0} s")]
    ReplyTimeout(u64),
    /// A command-line argument is invalid.
    #[error("{0}")]
    InvalidArgument(String),
}

impl WorkerError {
    /// The stable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Config(e) => e.code(),
            Self::Pool { source, .. } => source.code().as_str(),
            Self::Broker(_) => WorkerCode::Broker.as_str(),
            Self::Topology(_) => WorkerCode::Topology.as_str(),
            Self::HttpBind { .. } => WorkerCode::HttpBind.as_str(),
            Self::Telemetry(_) => WorkerCode::Telemetry.as_str(),
            Self::Io(_) => WorkerCode::Io.as_str(),
            Self::ReplyTimeout(_) => WorkerCode::ReplyTimeout.as_str(),
            Self::InvalidArgument(_) => ErrorCode::InvalidArg.as_str(),
        }
    }

    /// A broker error, with any URL in the client's message redacted.
    pub fn broker(e: impl std::fmt::Display) -> Self {
        Self::Broker(redact_urls(&e.to_string()))
    }
}

/// Redacts every `scheme://user:pass@host` in free text.
pub fn redact_urls(text: &str) -> String {
    text.split(' ')
        .map(|w| {
            if w.contains("://") {
                hyperlight_js_config::redact_url(w)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
