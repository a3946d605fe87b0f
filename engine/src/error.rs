//! The engine's one error type. Every variant has a stable code (`ERR_…`):
//! the code is what callers match on, the message is for humans.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The stable code of an [`Error`]: what callers match on. Its string form
/// (`ERR_…`, from [`as_str`](Self::as_str), `Display` and `FromStr`) is what
/// crosses process boundaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ErrorCode {
    /// `ERR_INVALID_ARG`
    InvalidArg,
    /// `ERR_CONSUMED`
    Consumed,
    /// `ERR_POISONED`
    Poisoned,
    /// `ERR_CANCELLED`
    Cancelled,
    /// `ERR_STACK_OVERFLOW`
    StackOverflow,
    /// `ERR_GUEST_ABORT`
    GuestAbort,
    /// `ERR_INTERNAL`
    Internal,
    /// `ERR_NO_HYPERVISOR`
    NoHypervisor,
    /// `ERR_HANDLER_THREW`
    HandlerThrew,
    /// `ERR_RETRY`
    Retry,
    /// `ERR_COMPILE`
    Compile,
    /// `ERR_UNKNOWN_HANDLER`
    UnknownHandler,
    /// `ERR_INVALID_JSON`
    InvalidJson,
    /// `ERR_RESULT_NOT_JSON`
    ResultNotJson,
    /// `ERR_INPUT_TOO_LARGE`
    InputTooLarge,
    /// `ERR_OUTPUT_TOO_LARGE`
    OutputTooLarge,
    /// `ERR_HEAP_EXHAUSTED`
    HeapExhausted,
    /// `ERR_SNAPSHOT_NOT_FOUND`
    SnapshotNotFound,
    /// `ERR_SNAPSHOT_CORRUPT`
    SnapshotCorrupt,
    /// `ERR_SNAPSHOT_INCOMPATIBLE`
    SnapshotIncompatible,
}

impl ErrorCode {
    /// Every code, in the order of the README's table.
    pub const ALL: [ErrorCode; 20] = [
        Self::InvalidArg,
        Self::Consumed,
        Self::Poisoned,
        Self::Cancelled,
        Self::StackOverflow,
        Self::GuestAbort,
        Self::Internal,
        Self::NoHypervisor,
        Self::HandlerThrew,
        Self::Retry,
        Self::Compile,
        Self::UnknownHandler,
        Self::InvalidJson,
        Self::ResultNotJson,
        Self::InputTooLarge,
        Self::OutputTooLarge,
        Self::HeapExhausted,
        Self::SnapshotNotFound,
        Self::SnapshotCorrupt,
        Self::SnapshotIncompatible,
    ];

    /// The stable string, `ERR_…`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArg => "ERR_INVALID_ARG",
            Self::Consumed => "ERR_CONSUMED",
            Self::Poisoned => "ERR_POISONED",
            Self::Cancelled => "ERR_CANCELLED",
            Self::StackOverflow => "ERR_STACK_OVERFLOW",
            Self::GuestAbort => "ERR_GUEST_ABORT",
            Self::Internal => "ERR_INTERNAL",
            Self::NoHypervisor => "ERR_NO_HYPERVISOR",
            Self::HandlerThrew => "ERR_HANDLER_THREW",
            Self::Retry => "ERR_RETRY",
            Self::Compile => "ERR_COMPILE",
            Self::UnknownHandler => "ERR_UNKNOWN_HANDLER",
            Self::InvalidJson => "ERR_INVALID_JSON",
            Self::ResultNotJson => "ERR_RESULT_NOT_JSON",
            Self::InputTooLarge => "ERR_INPUT_TOO_LARGE",
            Self::OutputTooLarge => "ERR_OUTPUT_TOO_LARGE",
            Self::HeapExhausted => "ERR_HEAP_EXHAUSTED",
            Self::SnapshotNotFound => "ERR_SNAPSHOT_NOT_FOUND",
            Self::SnapshotCorrupt => "ERR_SNAPSHOT_CORRUPT",
            Self::SnapshotIncompatible => "ERR_SNAPSHOT_INCOMPATIBLE",
        }
    }

    /// Whether the failure comes from the environment (the engine, the
    /// hypervisor, the caller's use of an object) rather than from the event,
    /// so that the same event may succeed elsewhere. `ERR_RETRY` is not one:
    /// the handler asked for it, with its own delay.
    pub const fn retryable(self) -> bool {
        matches!(
            self,
            Self::Internal | Self::Poisoned | Self::NoHypervisor | Self::Consumed
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for ErrorCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A string that is no [`ErrorCode`]; holds the string.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an engine error code (ERR_…)")]
pub struct UnknownErrorCode(pub String);

impl FromStr for ErrorCode {
    type Err = UnknownErrorCode;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownErrorCode(s.to_string()))
    }
}

/// Why a running handler was stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelReason {
    /// The per-call wall-clock limit fired.
    WallClock(Duration),
    /// The per-call CPU-time limit fired.
    CpuTime(Duration),
    /// [`crate::InterruptHandle::kill`] was called.
    Killed,
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WallClock(d) => write!(f, "wall-clock timeout of {} ms exceeded", d.as_millis()),
            Self::CpuTime(d) => write!(f, "CPU-time timeout of {} ms exceeded", d.as_millis()),
            Self::Killed => f.write_str("killed through the interrupt handle"),
        }
    }
}

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A bad argument: an empty routing key, a zero size, a zero or too-long timeout.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The object was already consumed (used by bindings that cannot move values).
    #[error("{0} has already been consumed")]
    Consumed(&'static str),
    /// The sandbox is poisoned by an earlier failure; restore a snapshot or unload.
    #[error("the sandbox is poisoned by an earlier failure; restore a snapshot or unload it")]
    Poisoned,
    /// The call was stopped by a monitor or a kill.
    #[error("execution cancelled: {0}")]
    Cancelled(CancelReason),
    /// JavaScript recursion exceeded the stack limit.
    #[error("stack overflow: {0}")]
    StackOverflow(String),
    /// The guest aborted (a panic or a fatal fault inside the VM).
    #[error("guest aborted: {0}")]
    GuestAbort(String),
    /// An unexpected failure inside the engine or the hypervisor layer.
    #[error("internal error: {0}")]
    Internal(String),
    /// No usable hypervisor (for example `/dev/kvm` is missing or not accessible).
    #[error("no usable hypervisor: {0}")]
    NoHypervisor(String),
    /// The handler threw, or the promise it returned was rejected.
    #[error("handler threw: {message}")]
    HandlerThrew {
        /// The thrown error's `name: message`.
        message: String,
        /// The JavaScript stack, empty when there is none.
        stack: String,
    },
    /// The handler threw a `RetryError` (or its promise rejected with one):
    /// it asks for the event to be delivered again later.
    #[error("handler asked for a retry: {message}")]
    Retry {
        /// The `RetryError`'s message.
        message: String,
        /// The JavaScript stack, empty when there is none.
        stack: String,
        /// The `delayMs` it gave, as a number (`NaN` when it was not one);
        /// `None` when it gave none. Not validated: may be negative or infinite.
        delay_ms: Option<f64>,
    },
    /// A handler's code does not compile or does not define `handler`.
    #[error("handler '{key}' does not compile: {message}")]
    Compile {
        /// The routing key of the handler.
        key: String,
        /// What the compiler said.
        message: String,
    },
    /// No handler is registered under the routing key.
    #[error("no handler is registered under '{0}'")]
    UnknownHandler(String),
    /// The event is not valid JSON.
    #[error("the event is not valid JSON: {0}")]
    InvalidJson(String),
    /// The handler's result cannot be represented as JSON.
    #[error("{0}")]
    ResultNotJson(String),
    /// The event is larger than the sandbox's input buffer.
    #[error("the event is {size} bytes, over the input buffer size of {limit} bytes")]
    InputTooLarge {
        /// Size of the serialized event (plus its context, if any).
        size: usize,
        /// The input buffer size.
        limit: usize,
    },
    /// The result is larger than the sandbox's output buffer.
    #[error("{0}")]
    OutputTooLarge(String),
    /// The JavaScript heap limit was reached.
    #[error("heap exhausted: {0}")]
    HeapExhausted(String),
    /// No persisted snapshot under that tag or digest (or no snapshot layout
    /// in that directory).
    #[error("snapshot not found: {0}")]
    SnapshotNotFound(String),
    /// A persisted snapshot's files are damaged: a blob does not match its
    /// digest (checked load), or a file is truncated or unreadable.
    #[error("snapshot corrupt: {0}")]
    SnapshotCorrupt(String),
    /// A persisted snapshot cannot run here: it was made by another guest
    /// build or hyperlight version, on another hypervisor or CPU, or needs
    /// host functions that are not registered.
    #[error("snapshot incompatible: {0}")]
    SnapshotIncompatible(String),
}

impl Error {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidArgument(_) => ErrorCode::InvalidArg,
            Self::Consumed(_) => ErrorCode::Consumed,
            Self::Poisoned => ErrorCode::Poisoned,
            Self::Cancelled(_) => ErrorCode::Cancelled,
            Self::StackOverflow(_) => ErrorCode::StackOverflow,
            Self::GuestAbort(_) => ErrorCode::GuestAbort,
            Self::Internal(_) => ErrorCode::Internal,
            Self::NoHypervisor(_) => ErrorCode::NoHypervisor,
            Self::HandlerThrew { .. } => ErrorCode::HandlerThrew,
            Self::Retry { .. } => ErrorCode::Retry,
            Self::Compile { .. } => ErrorCode::Compile,
            Self::UnknownHandler(_) => ErrorCode::UnknownHandler,
            Self::InvalidJson(_) => ErrorCode::InvalidJson,
            Self::ResultNotJson(_) => ErrorCode::ResultNotJson,
            Self::InputTooLarge { .. } => ErrorCode::InputTooLarge,
            Self::OutputTooLarge(_) => ErrorCode::OutputTooLarge,
            Self::HeapExhausted(_) => ErrorCode::HeapExhausted,
            Self::SnapshotNotFound(_) => ErrorCode::SnapshotNotFound,
            Self::SnapshotCorrupt(_) => ErrorCode::SnapshotCorrupt,
            Self::SnapshotIncompatible(_) => ErrorCode::SnapshotIncompatible,
        }
    }

    /// The JavaScript stack of a thrown error, when there is one.
    pub fn js_stack(&self) -> Option<&str> {
        match self {
            Self::HandlerThrew { stack, .. } | Self::Retry { stack, .. } if !stack.is_empty() => {
                Some(stack)
            }
            _ => None,
        }
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failed state transition that hands the unconsumed state back, so that a
/// caller can fix the cause (say, a handler that does not compile) and retry.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct TransitionError<T> {
    /// What went wrong.
    #[source]
    pub error: Error,
    /// The state the transition started from, still usable.
    pub state: T,
}

impl<T> From<TransitionError<T>> for Error {
    fn from(e: TransitionError<T>) -> Self {
        e.error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_unique_and_round_trips_through_from_str() {
        let strings: std::collections::BTreeSet<&str> =
            ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(strings.len(), ErrorCode::ALL.len());
        for code in ErrorCode::ALL {
            assert!(code.as_str().starts_with("ERR_"), "{code}");
            assert_eq!(code.to_string(), code.as_str());
            assert_eq!(code.as_str().parse::<ErrorCode>(), Ok(code));
        }
    }

    #[test]
    fn unknown_strings_are_refused_with_the_string() {
        let e = "ERR_NOPE".parse::<ErrorCode>().unwrap_err();
        assert_eq!(e, UnknownErrorCode("ERR_NOPE".into()));
        assert!(e.to_string().contains("'ERR_NOPE'"), "{e}");
        assert!("err_retry".parse::<ErrorCode>().is_err());
    }

    #[test]
    fn retry_has_its_code_display_and_stack() {
        let e = Error::Retry {
            message: "busy".into(),
            stack: "at handler".into(),
            delay_ms: Some(250.0),
        };
        assert_eq!(e.code(), ErrorCode::Retry);
        assert_eq!(e.to_string(), "handler asked for a retry: busy");
        assert_eq!(e.js_stack(), Some("at handler"));
    }
}
