//! Engine errors as JavaScript `Error`s with a stable `code` property.

use hyperlight_js_engine::Error as EngineError;
use napi::bindgen_prelude::{JsObjectValue, Object};
use napi::{Env, JsError, JsValue};

/// A failure on its way to JavaScript: the code, the message and, for a
/// handler that threw, the guest's JavaScript stack.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) guest_stack: Option<String>,
}

impl Failure {
    /// `ERR_INVALID_ARG` with the engine's wording.
    pub(crate) fn invalid_arg(message: impl Into<String>) -> Self {
        EngineError::InvalidArgument(message.into()).into()
    }

    /// `ERR_CONSUMED` for the named object.
    pub(crate) fn consumed(what: &'static str) -> Self {
        EngineError::Consumed(what).into()
    }

    /// `ERR_INTERNAL`.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        EngineError::Internal(message.into()).into()
    }

    /// Builds the JavaScript `Error` object (`message`, `code`, and
    /// `guestStack` when the guest gave one).
    pub(crate) fn to_js<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        let err = napi::Error::new(self.code.to_string(), self.message.clone());
        let unknown = JsError::from(err).into_unknown(*env);
        let mut obj = unknown.coerce_to_object()?;
        if let Some(stack) = &self.guest_stack {
            obj.set_named_property("guestStack", stack.as_str())?;
        }
        Ok(obj)
    }

    /// The error for a rejected promise or a throw: a reference to the
    /// JavaScript `Error` built by [`Self::to_js`], so that its `code`
    /// survives.
    pub(crate) fn into_napi(self, env: &Env) -> napi::Error {
        match self.to_js(env) {
            Ok(obj) => napi::Error::from(obj.to_unknown()),
            Err(e) => e,
        }
    }
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        Self {
            code: e.code().as_str(),
            message: e.to_string(),
            guest_stack: e.js_stack().map(str::to_string),
        }
    }
}

/// Synchronous methods return `napi::Result<T, String>`: the error is thrown
/// as an `Error` whose `code` is the status string.
impl From<Failure> for napi::Error<String> {
    fn from(f: Failure) -> Self {
        napi::Error::new(f.code.to_string(), f.message)
    }
}

/// Converts a JavaScript number argument to a byte count or millisecond count:
/// it must be a finite, positive integer no larger than 2^53 - 1.
pub(crate) fn positive_integer(name: &str, value: &napi::Unknown<'_>) -> Result<u64, Failure> {
    use napi::bindgen_prelude::FromNapiValue;
    let ty = value
        .get_type()
        .map_err(|e| Failure::internal(e.to_string()))?;
    if ty != napi::ValueType::Number {
        return Err(Failure::invalid_arg(format!(
            "{name} must be a number, got {ty}"
        )));
    }
    // SAFETY: the value's type was checked to be a JavaScript number above.
    let n = unsafe { f64::from_napi_value(value.value().env, value.value().value) }
        .map_err(|e| Failure::internal(e.to_string()))?;
    const MAX_SAFE: f64 = 9_007_199_254_740_991.0;
    if !n.is_finite() || n.fract() != 0.0 {
        return Err(Failure::invalid_arg(format!(
            "{name} must be an integer, got {n}"
        )));
    }
    if n <= 0.0 {
        return Err(Failure::invalid_arg(format!(
            "{name} must be greater than zero, got {n}"
        )));
    }
    if n > MAX_SAFE {
        return Err(Failure::invalid_arg(format!("{name} of {n} is too large")));
    }
    // Exact: `n` is a positive integer below 2^53.
    Ok(n as u64)
}

/// An engine error for `code`, for the test of the error translation (the
/// codes that no handler can provoke on purpose, like `ERR_GUEST_ABORT`).
fn sample(code: &str) -> Option<EngineError> {
    use hyperlight_js_engine::CancelReason;
    let e = match code {
        "ERR_INVALID_ARG" => EngineError::InvalidArgument("sample".into()),
        "ERR_CONSUMED" => EngineError::Consumed("Sample"),
        "ERR_POISONED" => EngineError::Poisoned,
        "ERR_CANCELLED" => EngineError::Cancelled(CancelReason::Killed),
        "ERR_STACK_OVERFLOW" => EngineError::StackOverflow("sample".into()),
        "ERR_GUEST_ABORT" => EngineError::GuestAbort("sample".into()),
        "ERR_INTERNAL" => EngineError::Internal("sample".into()),
        "ERR_NO_HYPERVISOR" => EngineError::NoHypervisor("sample".into()),
        "ERR_HANDLER_THREW" => EngineError::HandlerThrew {
            message: "Error: sample".into(),
            stack: "at handler".into(),
        },
        "ERR_RETRY" => EngineError::Retry {
            message: "sample".into(),
            stack: "at handler".into(),
            delay_ms: Some(250.0),
        },
        "ERR_COMPILE" => EngineError::Compile {
            key: "sample".into(),
            message: "sample".into(),
        },
        "ERR_UNKNOWN_HANDLER" => EngineError::UnknownHandler("sample".into()),
        "ERR_INVALID_JSON" => EngineError::InvalidJson("sample".into()),
        "ERR_RESULT_NOT_JSON" => EngineError::ResultNotJson("sample".into()),
        "ERR_INPUT_TOO_LARGE" => EngineError::InputTooLarge { size: 2, limit: 1 },
        "ERR_OUTPUT_TOO_LARGE" => EngineError::OutputTooLarge("sample".into()),
        "ERR_HEAP_EXHAUSTED" => EngineError::HeapExhausted("sample".into()),
        "ERR_SNAPSHOT_NOT_FOUND" => EngineError::SnapshotNotFound("sample".into()),
        "ERR_SNAPSHOT_CORRUPT" => EngineError::SnapshotCorrupt("sample".into()),
        "ERR_SNAPSHOT_INCOMPATIBLE" => EngineError::SnapshotIncompatible("sample".into()),
        _ => return None,
    };
    Some(e)
}

/// Every code the engine can produce (`ErrorCode::ALL`).
#[napi_derive::napi(js_name = "_engineErrorCodes")]
pub fn engine_error_codes() -> Vec<String> {
    hyperlight_js_engine::ErrorCode::ALL
        .iter()
        .map(|c| c.as_str().to_string())
        .collect()
}

/// Test hook: throws the engine error for `code` the way a synchronous method
/// does.
#[napi_derive::napi(js_name = "_throwEngineError")]
pub fn throw_engine_error(code: String) -> napi::Result<(), String> {
    let e = sample(&code).ok_or_else(|| Failure::invalid_arg(format!("no sample for {code}")))?;
    Err(Failure::from(e).into())
}

/// Test hook: a Promise rejected with the engine error for `code`, the way an
/// asynchronous method rejects.
#[napi_derive::napi(js_name = "_rejectEngineError", ts_return_type = "Promise<void>")]
pub fn reject_engine_error(env: &Env, code: String) -> napi::Result<Object<'_>> {
    let failure = sample(&code).map_or_else(
        || Failure::invalid_arg(format!("no sample for {code}")),
        Failure::from,
    );
    crate::lane::rejected(env, failure)
}
