//! Translation of hyperlight and guest failures into [`Error`].

use hyperlight_host::HyperlightError;
use hyperlight_js_abi::{GuestErrorKind, GuestFailure};

use crate::error::{CancelReason, Error};

/// Maps a hyperlight error that is not a cancellation.
pub(crate) fn from_hyperlight(e: HyperlightError) -> Error {
    match e {
        HyperlightError::NoHypervisorFound() => Error::NoHypervisor(e.to_string()),
        HyperlightError::PoisonedSandbox | HyperlightError::UnrecoverableSandbox => Error::Poisoned,
        HyperlightError::ExecutionCanceledByHost() => Error::Cancelled(CancelReason::Killed),
        HyperlightError::GuestAborted(code, message) if message.is_empty() => {
            Error::GuestAbort(format!("the guest aborted with code {code}"))
        }
        HyperlightError::GuestAborted(_, message) => Error::GuestAbort(message),
        other => Error::Internal(other.to_string()),
    }
}

/// Maps a failure the guest reported in its reply.
pub(crate) fn from_guest(key: &str, f: GuestFailure) -> Error {
    match f.kind {
        GuestErrorKind::HandlerThrew => Error::HandlerThrew {
            message: f.message,
            stack: f.stack,
        },
        GuestErrorKind::Compile => Error::Compile {
            key: key.to_string(),
            message: f.message,
        },
        GuestErrorKind::UnknownHandler => Error::UnknownHandler(key.to_string()),
        GuestErrorKind::ResultNotJson => Error::ResultNotJson(f.message),
        GuestErrorKind::OutputTooLarge => Error::OutputTooLarge(f.message),
        GuestErrorKind::StackOverflow | GuestErrorKind::UserStackOverflow => {
            Error::StackOverflow(f.message)
        }
        GuestErrorKind::UserFault => Error::GuestAbort(f.message),
        GuestErrorKind::OutOfMemory => Error::HeapExhausted(f.message),
        GuestErrorKind::RuntimeState | GuestErrorKind::Internal => Error::Internal(f.message),
    }
}

/// Decodes a framed guest reply.
pub(crate) fn reply(key: &str, frame: String) -> Result<String, Error> {
    reply_checked(key, frame).map_err(|(e, _)| e)
}

/// Decodes a framed guest reply; an error also says whether it left the
/// guest inconsistent (a user-mode run abandoned by a fault), so that the
/// sandbox must be restored before its next call.
pub(crate) fn reply_checked(key: &str, frame: String) -> Result<String, (Error, bool)> {
    match hyperlight_js_abi::decode(frame) {
        Some(Ok(json)) => Ok(json),
        Some(Err(f)) => {
            let fatal = matches!(
                f.kind,
                GuestErrorKind::UserStackOverflow | GuestErrorKind::UserFault
            );
            Err((from_guest(key, f), fatal))
        }
        None => Err((
            Error::Internal("the guest sent a malformed reply".into()),
            false,
        )),
    }
}
