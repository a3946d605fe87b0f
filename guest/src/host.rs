//! Calls from the guest to the host functions named in `hyperlight_js_abi::host_fn`.

use alloc::string::String;
use alloc::vec;

use hyperlight_common::flatbuffer_wrappers::function_types::{ParameterValue, ReturnType};
use hyperlight_guest_bin::host_comm::call_host_function;
use hyperlight_js_abi::host_fn;

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

/// Calls a user-registered host function; the answer is a framed reply.
pub fn call(module: String, function: String, args_json: String) -> Option<String> {
    call_host_function::<String>(
        host_fn::CALL,
        Some(vec![
            ParameterValue::String(module),
            ParameterValue::String(function),
            ParameterValue::String(args_json),
        ]),
        ReturnType::String,
    )
    .ok()
}
