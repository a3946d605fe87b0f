//! The engine's one error type. Every variant has a stable code (`ERR_…`):
//! the code is what callers match on, the message is for humans.

use std::fmt;
use std::time::Duration;

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
        /// Size of the serialized event.
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
}

impl Error {
    /// Every code this error type can carry, in the order of the README's table.
    pub const CODES: [&'static str; 16] = [
        "ERR_INVALID_ARG",
        "ERR_CONSUMED",
        "ERR_POISONED",
        "ERR_CANCELLED",
        "ERR_STACK_OVERFLOW",
        "ERR_GUEST_ABORT",
        "ERR_INTERNAL",
        "ERR_NO_HYPERVISOR",
        "ERR_HANDLER_THREW",
        "ERR_COMPILE",
        "ERR_UNKNOWN_HANDLER",
        "ERR_INVALID_JSON",
        "ERR_RESULT_NOT_JSON",
        "ERR_INPUT_TOO_LARGE",
        "ERR_OUTPUT_TOO_LARGE",
        "ERR_HEAP_EXHAUSTED",
    ];

    /// The stable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) => "ERR_INVALID_ARG",
            Self::Consumed(_) => "ERR_CONSUMED",
            Self::Poisoned => "ERR_POISONED",
            Self::Cancelled(_) => "ERR_CANCELLED",
            Self::StackOverflow(_) => "ERR_STACK_OVERFLOW",
            Self::GuestAbort(_) => "ERR_GUEST_ABORT",
            Self::Internal(_) => "ERR_INTERNAL",
            Self::NoHypervisor(_) => "ERR_NO_HYPERVISOR",
            Self::HandlerThrew { .. } => "ERR_HANDLER_THREW",
            Self::Compile { .. } => "ERR_COMPILE",
            Self::UnknownHandler(_) => "ERR_UNKNOWN_HANDLER",
            Self::InvalidJson(_) => "ERR_INVALID_JSON",
            Self::ResultNotJson(_) => "ERR_RESULT_NOT_JSON",
            Self::InputTooLarge { .. } => "ERR_INPUT_TOO_LARGE",
            Self::OutputTooLarge(_) => "ERR_OUTPUT_TOO_LARGE",
            Self::HeapExhausted(_) => "ERR_HEAP_EXHAUSTED",
        }
    }

    /// The JavaScript stack of a thrown error, when there is one.
    pub fn js_stack(&self) -> Option<&str> {
        match self {
            Self::HandlerThrew { stack, .. } if !stack.is_empty() => Some(stack),
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
