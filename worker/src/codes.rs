//! The worker's own error codes, in one place. A message's outcome carries
//! either one of these or one of the engine's [`ErrorCode`]s; both are
//! stable strings that consumers match on.

use std::fmt;

pub use hyperlight_js_engine::ErrorCode;

/// Codes only the worker produces (the engine's are [`ErrorCode`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkerCode {
    /// The message body is larger than the handler's `max_message_bytes`.
    MessageTooLarge,
    /// The broker refused an outcome (`basic.nack`), e.g. a full reply queue.
    PublishNacked,
    /// A message came back more often than `max_deliveries` without an
    /// outcome: it crashed or stalled the workers that took it.
    DeliveryLimit,
    /// A broker operation failed.
    Broker,
    /// The broker refused the worker's topology.
    Topology,
    /// The HTTP endpoint could not be bound.
    HttpBind,
    /// Logging or tracing could not be set up.
    Telemetry,
    /// Reading input or writing output failed.
    Io,
    /// `publish --wait` got no reply in time.
    ReplyTimeout,
}

impl WorkerCode {
    /// Every worker code.
    pub const ALL: [Self; 9] = [
        Self::MessageTooLarge,
        Self::PublishNacked,
        Self::DeliveryLimit,
        Self::Broker,
        Self::Topology,
        Self::HttpBind,
        Self::Telemetry,
        Self::Io,
        Self::ReplyTimeout,
    ];

    /// The stable string.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MessageTooLarge => "ERR_MESSAGE_TOO_LARGE",
            Self::PublishNacked => "ERR_PUBLISH_NACKED",
            Self::DeliveryLimit => "ERR_DELIVERY_LIMIT",
            Self::Broker => "ERR_BROKER",
            Self::Topology => "ERR_TOPOLOGY",
            Self::HttpBind => "ERR_HTTP_BIND",
            Self::Telemetry => "ERR_TELEMETRY",
            Self::Io => "ERR_IO",
            Self::ReplyTimeout => "ERR_REPLY_TIMEOUT",
        }
    }
}

impl fmt::Display for WorkerCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a failure with `code` comes from the worker's environment rather
/// than the message (the engine's [`ErrorCode::retryable`]); such a message
/// is handed back to its queue for another worker instead of getting a final
/// outcome, up to the delivery limit.
pub fn environment_failure(code: &str) -> bool {
    code.parse::<ErrorCode>().is_ok_and(ErrorCode::retryable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn worker_and_engine_codes_are_distinct_stable_strings() {
        let worker: BTreeSet<&str> = WorkerCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(worker.len(), WorkerCode::ALL.len());
        for c in ErrorCode::ALL {
            assert!(!worker.contains(c.as_str()), "{c} is both");
        }
        assert!(worker.iter().all(|c| c.starts_with("ERR_")));
    }

    #[test]
    fn only_environment_failures_go_back_to_the_queue() {
        for code in [
            "ERR_INTERNAL",
            "ERR_POISONED",
            "ERR_NO_HYPERVISOR",
            "ERR_CONSUMED",
        ] {
            assert!(environment_failure(code), "{code}");
        }
        for code in [
            "ERR_HANDLER_THREW",
            "ERR_CANCELLED",
            "ERR_RETRY",
            "ERR_MESSAGE_TOO_LARGE",
            "ERR_NOPE",
        ] {
            assert!(!environment_failure(code), "{code}");
        }
    }
}
