//! The wire contract between the hyperlight-js engine (host side) and the
//! QuickJS guest running inside the micro-VM.
//!
//! Both sides depend on this crate so that function names, result framing and
//! guest error kinds can never drift apart. It is `no_std` because the guest
//! is built for `x86_64-unknown-none`.
#![no_std]
#![deny(missing_docs)]

extern crate alloc;

use alloc::string::String;

/// Guest functions exported by the runtime, called by the engine.
pub mod guest_fn {
    /// `(max_stack: u64, memory_limit: u64, output_limit: u64, host_fns: String, user_mode: bool) -> String`:
    /// creates the QuickJS runtime and context; with `user_mode` every later
    /// call runs the JavaScript engine at CPL3. `host_fns` lists `module.function`
    /// names, one per line, that become callable as `host.module.function(...)`.
    pub const LOAD_RUNTIME: &str = "LoadRuntime";
    /// `(key: String, code: String) -> String`: compiles a handler under a routing key.
    pub const REGISTER_HANDLER: &str = "RegisterHandler";
    /// `(name: String, source: String) -> String`: stores an embedded ES module
    /// under its canonical name (`namespace:name`); compiled by [`LOAD_MODULE`].
    pub const ADD_MODULE: &str = "AddModule";
    /// `(name: String) -> String`: compiles and evaluates the stored module
    /// `name` (canonical) and what it imports.
    pub const LOAD_MODULE: &str = "LoadModule";
    /// `(key: String, event_json: String, context_json: String, gc: bool, seed: u64, now_micros: u64, tsc_hz: u64, working_set: Vec<u8>) -> String`:
    /// runs a handler as `handler(event, ctx)`; an empty `context_json` means no
    /// context (`ctx` is `undefined`). A non-zero `seed` reseeds `Math.random`
    /// first; `now_micros` and `tsc_hz` (0 if unknown) give the guest clock its
    /// time base. `working_set` (the entries of an
    /// earlier call's [`WORKING_SET`] from the same snapshot, little-endian,
    /// then `hyperlight_js_guest_mm::working_set::trailer`, or empty) is
    /// replayed by the guest kernel before user mode runs: it must be the
    /// last parameter, which Hyperlight places at the end of the message.
    /// The first call after a restore that carries none records its own,
    /// for the next [`WORKING_SET`].
    pub const CALL_HANDLER: &str = "CallHandler";
    /// `(addr: u64) -> String`: test hook, reads a byte at `addr` in the mode
    /// handlers run in (0: the guest's own data, 1: the user-mode kernel page;
    /// 2 divides by zero and 3 executes `int3` instead).
    pub const PROBE_READ: &str = "ProbeRead";
    /// `() -> u64`: kernel entries from user mode before this call began
    /// (so that the query does not count itself).
    pub const TRAP_COUNT: &str = "TrapCount";
    /// `(write: String, seek: String) -> String` (test hook): whether the
    /// marker of `seek` is in a guest static, a heap block, the user stack and
    /// the transport arena (`static=0|1 heap=0|1 stack=0|1 arena=0|1 wrote=…`),
    /// then writes the marker of `write` to the first three.
    pub const SCRIBBLE: &str = "Scribble";
    /// `() -> String`: the working set the previous call recorded (see
    /// [`CALL_HANDLER`]): the pages the guest kernel opened or copied for it
    /// in user mode, entries of `hyperlight_js_guest_mm::working_set` as 16
    /// hex digits each; empty if it recorded none.
    pub const WORKING_SET: &str = "WorkingSet";
    /// `() -> String`: the previous call's kernel entries from user mode, by
    /// kind, one `kind count cycles` line each (TSC cycles spent in the
    /// kernel's handler). Kinds: see [`crate::KERNEL_ENTRY_KINDS`]. Counting
    /// costs emulated kernel work on every call, so it is off until the first
    /// query, which turns it on and reports nothing; query once before a
    /// snapshot for sandboxes restored from it to count.
    pub const KERNEL_STATS: &str = "KernelStats";
    /// `() -> String` (test hook): how deep the guest kernel's stack and its
    /// exception stack have been since the last restore (or the start), and
    /// their sizes, in bytes: `kernel=<used>/<size> exception=<used>/<size>`.
    pub const STACK_USE: &str = "StackUse";
}

/// Kinds of kernel entry from guest user mode, as [`guest_fn::KERNEL_STATS`] names them:
/// a system call, an emulated `out` (host call or abort), a page opened to
/// user mode by the kernel's fast path or by its full path, a copy-on-write
/// by either, a fresh zeroed page, a fatal fault.
pub const KERNEL_ENTRY_KINDS: [&str; 8] = [
    "syscall",
    "out",
    "open-fast",
    "open",
    "copy-fast",
    "copy",
    "zero",
    "fatal",
];

/// Host functions the guest calls.
pub mod host_fn {
    /// `() -> u64`: microseconds since the Unix epoch (real time, from the host).
    pub const NOW_MICROS: &str = "HostNowMicros";
    /// `(level: i32, message: String) -> i32`: one `console.*` line.
    pub const CONSOLE: &str = "HostConsole";
    /// `(module: String, function: String, args_json: String) -> String`: a call to a
    /// user-registered host function; the answer is framed like a guest reply.
    pub const CALL: &str = "HostCall";
}

/// `console` levels carried by [`host_fn::CONSOLE`].
pub mod console_level {
    /// `console.debug`
    pub const DEBUG: i32 = 0;
    /// `console.log` and `console.info`
    pub const INFO: i32 = 1;
    /// `console.warn`
    pub const WARN: i32 = 2;
    /// `console.error`
    pub const ERROR: i32 = 3;
}

/// Why a guest call failed, as the guest reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestErrorKind {
    /// The handler threw (or its promise rejected).
    HandlerThrew,
    /// The handler code failed to compile or does not define `handler`.
    Compile,
    /// No handler is registered under the routing key.
    UnknownHandler,
    /// The handler's return value cannot be represented as JSON.
    ResultNotJson,
    /// The serialized result exceeds the output limit.
    OutputTooLarge,
    /// JavaScript recursion exceeded the stack limit.
    StackOverflow,
    /// The JavaScript heap limit was reached.
    OutOfMemory,
    /// The runtime was used before it was loaded, or loaded twice.
    RuntimeState,
    /// The user stack overflowed its guard page (user mode); the sandbox must be restored.
    UserStackOverflow,
    /// User mode faulted (touched a kernel page, or aborted); the sandbox must be restored.
    UserFault,
    /// Anything else.
    Internal,
    /// The handler threw a `RetryError` (or its promise rejected with one).
    /// The failure's [`detail`](GuestFailure::detail) is the requested
    /// `delayMs` as a JavaScript number's text (`"250"`, `"NaN"`,
    /// `"Infinity"`, `"1e+300"`), absent when the handler gave none.
    Retry,
}

impl GuestErrorKind {
    const ALL: [Self; 12] = [
        Self::HandlerThrew,
        Self::Compile,
        Self::UnknownHandler,
        Self::ResultNotJson,
        Self::OutputTooLarge,
        Self::StackOverflow,
        Self::OutOfMemory,
        Self::RuntimeState,
        Self::UserStackOverflow,
        Self::UserFault,
        Self::Internal,
        Self::Retry,
    ];

    /// The one-byte tag used on the wire.
    pub const fn tag(self) -> u8 {
        match self {
            Self::HandlerThrew => b't',
            Self::Compile => b'c',
            Self::UnknownHandler => b'u',
            Self::ResultNotJson => b'j',
            Self::OutputTooLarge => b'o',
            Self::StackOverflow => b's',
            Self::OutOfMemory => b'm',
            Self::RuntimeState => b'r',
            Self::UserStackOverflow => b'S',
            Self::UserFault => b'f',
            Self::Internal => b'i',
            Self::Retry => b'R',
        }
    }

    /// The kind for a wire tag.
    pub fn from_tag(tag: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.tag() == tag)
    }
}

/// A failure reported by the guest: what kind, the message, the JS stack if
/// any, and a kind-specific detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestFailure {
    /// What went wrong.
    pub kind: GuestErrorKind,
    /// The human message (for a thrown error, its `message`).
    pub message: String,
    /// The JavaScript stack trace, empty when there is none.
    pub stack: String,
    /// Extra data some kinds carry (see [`GuestErrorKind::Retry`]); `None`
    /// for the others.
    pub detail: Option<String>,
}

/// A guest reply: `Ok` holds the JSON text of the value.
pub type Reply = Result<String, GuestFailure>;

const OK: u8 = b'+';
const ERR: u8 = b'!';
const SEP: char = '\u{0}';

/// Frames a successful reply around a JSON text.
pub fn encode_ok(json: &str) -> String {
    let mut s = String::with_capacity(json.len() + 1);
    s.push(OK as char);
    s.push_str(json);
    s
}

/// Frames a failure with no detail.
pub fn encode_err(kind: GuestErrorKind, message: &str, stack: &str) -> String {
    encode_err_with_detail(kind, message, stack, None)
}

/// Frames a failure: `!`, the kind's tag, the message, NUL, the stack, and,
/// only when there is a detail, NUL and the detail. Frames without a detail
/// are byte for byte those of earlier versions. A NUL inside a field would
/// make the frame ambiguous, so it is sent as U+FFFD.
pub fn encode_err_with_detail(
    kind: GuestErrorKind,
    message: &str,
    stack: &str,
    detail: Option<&str>,
) -> String {
    let detail_len = detail.map_or(0, |d| d.len() + 1);
    let mut s = String::with_capacity(message.len() + stack.len() + detail_len + 3);
    s.push(ERR as char);
    s.push(kind.tag() as char);
    push_field(&mut s, message);
    s.push(SEP);
    push_field(&mut s, stack);
    if let Some(detail) = detail {
        s.push(SEP);
        push_field(&mut s, detail);
    }
    s
}

fn push_field(s: &mut String, field: &str) {
    if field.contains(SEP) {
        s.push_str(&field.replace(SEP, "\u{FFFD}"));
    } else {
        s.push_str(field);
    }
}

/// Reads a framed reply. `None` means the frame itself is malformed.
pub fn decode(mut frame: String) -> Option<Reply> {
    match frame.as_bytes().first() {
        Some(&OK) => {
            frame.remove(0);
            Some(Ok(frame))
        }
        Some(&ERR) => {
            let kind = GuestErrorKind::from_tag(*frame.as_bytes().get(1)?)?;
            let body = frame.get(2..)?;
            let mut fields = body.splitn(3, SEP);
            let message = fields.next().unwrap_or_default();
            let stack = fields.next().unwrap_or_default();
            Some(Err(GuestFailure {
                kind,
                message: message.into(),
                stack: stack.into(),
                detail: fields.next().map(String::from),
            }))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn ok_frames_round_trip() {
        assert_eq!(
            decode(encode_ok("{\"a\":1}")),
            Some(Ok("{\"a\":1}".to_string()))
        );
    }

    #[test]
    fn every_error_kind_round_trips_with_message_and_stack() {
        for kind in GuestErrorKind::ALL {
            let got = decode(encode_err(kind, "boom", "at handler (h.js:2)"));
            assert_eq!(
                got,
                Some(Err(GuestFailure {
                    kind,
                    message: "boom".into(),
                    stack: "at handler (h.js:2)".into(),
                    detail: None,
                }))
            );
        }
    }

    #[test]
    fn a_detail_round_trips_and_its_absence_is_kept() {
        for detail in [Some("250"), Some(""), Some("NaN"), Some("-Infinity"), None] {
            let frame = encode_err_with_detail(GuestErrorKind::Retry, "later", "at h", detail);
            assert_eq!(
                decode(frame),
                Some(Err(GuestFailure {
                    kind: GuestErrorKind::Retry,
                    message: "later".into(),
                    stack: "at h".into(),
                    detail: detail.map(String::from),
                }))
            );
        }
    }

    #[test]
    fn frames_without_a_detail_are_unchanged() {
        // The layout of earlier versions, which older peers still send and read.
        assert_eq!(
            encode_err(GuestErrorKind::HandlerThrew, "boom", "at h"),
            "!tboom\u{0}at h"
        );
        assert_eq!(
            encode_err_with_detail(GuestErrorKind::Retry, "m", "", Some("1.5e+300")),
            "!Rm\u{0}\u{0}1.5e+300"
        );
        let old = decode("!tonly a message".to_string());
        assert_eq!(
            old,
            Some(Err(GuestFailure {
                kind: GuestErrorKind::HandlerThrew,
                message: "only a message".into(),
                stack: String::new(),
                detail: None,
            }))
        );
    }

    #[test]
    fn nul_inside_a_field_cannot_shift_the_fields() {
        let frame = encode_err_with_detail(GuestErrorKind::Retry, "a\u{0}b", "s\u{0}t", Some("5"));
        assert_eq!(
            decode(frame),
            Some(Err(GuestFailure {
                kind: GuestErrorKind::Retry,
                message: "a\u{fffd}b".into(),
                stack: "s\u{fffd}t".into(),
                detail: Some("5".into()),
            }))
        );
    }

    #[test]
    fn malformed_frames_are_rejected() {
        assert_eq!(decode(String::new()), None);
        assert_eq!(decode("x".to_string()), None);
        assert_eq!(decode("!Z".to_string()), None);
    }
}
