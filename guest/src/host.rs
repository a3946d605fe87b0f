//! Calls from the guest to the host functions named in `hyperlight_js_abi::host_fn`.
//!
//! In user mode the `out` instruction faults, so a host call becomes a
//! [`HostRequest`] in user memory handed to the kernel by a system call; the
//! kernel checks that every pointer in it is user memory, makes the call and
//! writes the answer back.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec;

use hyperlight_common::flatbuffer_wrappers::function_types::{ParameterValue, ReturnType};
use hyperlight_guest_bin::host_comm::call_host_function;
use hyperlight_js_abi::host_fn;

use crate::usermode;

/// One host call crossing from user mode to the kernel.
pub enum HostRequest {
    /// Real time, answered in place.
    Now(u64),
    /// One console line.
    Console(i32, String),
    /// A user-registered host function; the framed answer comes back in `reply`.
    Call {
        module: String,
        function: String,
        args: String,
        reply: Option<String>,
    },
}

fn submit(mut req: Box<HostRequest>) -> Box<HostRequest> {
    usermode::syscall(usermode::SYS_HOST, &mut *req as *mut HostRequest as u64);
    req
}

/// Microseconds since the Unix epoch, from the host's real-time clock.
pub fn now_micros() -> u64 {
    if usermode::in_user() {
        return match *submit(Box::new(HostRequest::Now(0))) {
            HostRequest::Now(t) => t,
            _ => 0,
        };
    }
    direct_now()
}

/// Sends one console line to the host, which turns it into a tracing event.
pub fn console(level: i32, message: String) {
    if usermode::in_user() {
        submit(Box::new(HostRequest::Console(level, message)));
        return;
    }
    direct_console(level, message);
}

/// Calls a user-registered host function; the answer is a framed reply.
pub fn call(module: String, function: String, args_json: String) -> Option<String> {
    if usermode::in_user() {
        return match *submit(Box::new(HostRequest::Call {
            module,
            function,
            args: args_json,
            reply: None,
        })) {
            HostRequest::Call { reply, .. } => reply,
            _ => None,
        };
    }
    direct_call(module, function, args_json)
}

fn direct_now() -> u64 {
    call_host_function::<u64>(host_fn::NOW_MICROS, None, ReturnType::ULong).unwrap_or(0)
}

fn direct_console(level: i32, message: String) {
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

fn direct_call(module: String, function: String, args_json: String) -> Option<String> {
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

/// Copies a string that user mode handed over, after checking that its bytes
/// are user memory.
fn user_string(s: &str) -> Option<String> {
    usermode::user_range(s.as_ptr() as u64, s.len() as u64).then(|| s.into())
}

/// Kernel side of `SYS_HOST`: serves the request at `arg`. Returns 1 when
/// served, 0 when the request was not valid user memory.
pub fn serve(arg: u64) -> u64 {
    if !usermode::user_range(arg, core::mem::size_of::<HostRequest>() as u64)
        || !arg.is_multiple_of(8)
    {
        return 0;
    }
    // SAFETY: `arg` is an aligned range of user memory (checked above); user
    // code is stopped while the kernel runs, so nothing aliases it now.
    let req = unsafe { &mut *(arg as *mut HostRequest) };
    match req {
        HostRequest::Now(t) => *t = direct_now(),
        HostRequest::Console(level, line) => {
            let Some(line) = user_string(line) else {
                return 0;
            };
            direct_console(*level, line);
        }
        HostRequest::Call {
            module,
            function,
            args,
            reply,
        } => {
            let (Some(m), Some(f), Some(a)) = (
                user_string(module),
                user_string(function),
                user_string(args),
            ) else {
                return 0;
            };
            *reply = direct_call(m, f, a);
        }
    }
    1
}
