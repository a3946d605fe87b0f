//! Calls from the guest to the host functions named in `hyperlight_js_abi::host_fn`.
//!
//! The same code serves both modes: the call is encoded into the transport
//! arena where it runs, and only the `out` that notifies the host needs the
//! kernel in user mode (see `usermode::traps`).

use alloc::string::String;
use alloc::vec;

use hyperlight_common::flatbuffer_wrappers::function_types::{
    ParameterValue, ReturnType, ReturnValue,
};
use hyperlight_js_abi::host_fn;

use crate::transport;

fn call_host_function<T: TryFrom<ReturnValue>>(
    name: &str,
    params: Option<alloc::vec::Vec<ParameterValue>>,
    ret: ReturnType,
) -> Result<T, transport::Error> {
    let v = transport::with(|t| t.call_host(name, params, ret))?;
    T::try_from(v).map_err(|_| String::from("host function returned another type"))
}

/// Microseconds since the Unix epoch, from the host's real-time clock.
pub fn now_micros() -> u64 {
    call_host_function::<u64>(host_fn::NOW_MICROS, None, ReturnType::ULong).unwrap_or(0)
}

/// Sends one console line to the host, which turns it into a tracing event.
pub fn console(level: i32, message: String) {
    // A lost log line must never fail the handler.
    let _ = call_host_function::<i32>(
        host_fn::CONSOLE,
        Some(vec![
            ParameterValue::Int(level),
            ParameterValue::String(message),
        ]),
        ReturnType::Int,
    );
}

/// Calls a user-registered host function; the answer is a framed reply, the
/// error says why the call could not be made.
pub fn call(
    module: String,
    function: String,
    args_json: String,
) -> Result<String, transport::Error> {
    call_host_function::<String>(
        host_fn::CALL,
        Some(vec![
            ParameterValue::String(module),
            ParameterValue::String(function),
            ParameterValue::String(args_json),
        ]),
        ReturnType::String,
    )
}
