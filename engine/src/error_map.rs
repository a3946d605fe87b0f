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
        GuestErrorKind::Retry => Error::Retry {
            message: f.message,
            stack: f.stack,
            delay_ms: f.detail.as_deref().map(js_number),
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

/// A JavaScript number's text (`String(n)`) as an `f64`; `NaN` for anything
/// that is not one.
fn js_number(text: &str) -> f64 {
    match text {
        "Infinity" => f64::INFINITY,
        "-Infinity" => f64::NEG_INFINITY,
        // Rust also reads "inf" or "nan"; JavaScript never writes them.
        t if t.bytes().any(|b| b.is_ascii_alphabetic() && b != b'e') => f64::NAN,
        t => t.parse().unwrap_or(f64::NAN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_read_like_javascript_numbers() {
        assert_eq!(js_number("250"), 250.0);
        assert_eq!(js_number("-5"), -5.0);
        assert_eq!(js_number("1.5e+300"), 1.5e300);
        assert_eq!(js_number("5e-324"), 5e-324);
        assert_eq!(js_number("Infinity"), f64::INFINITY);
        assert_eq!(js_number("-Infinity"), f64::NEG_INFINITY);
        for not_a_number in ["NaN", "", "soon", "inf", "nan", "0x10"] {
            assert!(js_number(not_a_number).is_nan(), "{not_a_number}");
        }
    }

    #[test]
    fn a_retry_frame_becomes_err_retry() {
        let frame = hyperlight_js_abi::encode_err_with_detail(
            GuestErrorKind::Retry,
            "later",
            "at h",
            Some("250"),
        );
        match reply("k", frame) {
            Err(Error::Retry {
                message,
                stack,
                delay_ms,
            }) => {
                assert_eq!((message.as_str(), stack.as_str()), ("later", "at h"));
                assert_eq!(delay_ms, Some(250.0));
            }
            other => panic!("{other:?}"),
        }
    }
}
