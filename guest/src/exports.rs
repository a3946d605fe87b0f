//! The guest functions the engine calls (names in `hyperlight_js_abi::guest_fn`),
//! reached through [`crate::dispatch`].
//!
//! With user mode on, each one runs at CPL3 and catches its own fatal
//! faults through [`usermode::run`]; the kernel part only serves faults.

use alloc::format;
use alloc::string::String;

use hyperlight_js_abi::{GuestErrorKind, encode_err, encode_ok};

use crate::handlers::{self, reply};
use crate::runtime;
use crate::usermode::{self, Fault};

/// Stack kept above QuickJS's recursion limit on the user stack.
const USER_STACK_SLACK: u64 = 128 * 1024;

fn in_mode(f: impl FnOnce() -> String) -> String {
    if !usermode::enabled() {
        return f();
    }
    match usermode::run(f) {
        Ok(frame) => frame,
        Err(Fault::StackOverflow) => encode_err(
            GuestErrorKind::UserStackOverflow,
            "the user stack overflowed its guard page",
            "",
        ),
        Err(Fault::Access { addr, rip }) => encode_err(
            GuestErrorKind::UserFault,
            &format!("user mode touched memory it may not access: address {addr:#x} at {rip:#x}"),
            "",
        ),
        Err(Fault::Other { vector, rip }) => encode_err(
            GuestErrorKind::UserFault,
            &format!(
                "user mode faulted: vector {vector} at {rip:#x} (an abort or panic inside the JavaScript engine)"
            ),
            "",
        ),
    }
}

/// `LoadRuntime`: creates the QuickJS runtime; `user_mode` turns user mode on.
pub fn load_runtime(
    max_stack: u64,
    memory_limit: u64,
    output_limit: u64,
    host_fns: String,
    user_mode: bool,
) -> String {
    if user_mode {
        usermode::init(max_stack + USER_STACK_SLACK);
    }
    in_mode(move || {
        let r = runtime::load(
            max_stack as usize,
            memory_limit as usize,
            output_limit as usize,
            &host_fns,
        );
        reply(r.map(|()| String::from("null")))
    })
}

/// `RegisterHandler`: compiles a handler under a routing key.
pub fn register_handler(key: String, code: String) -> String {
    in_mode(move || match handlers::register(&key, &code) {
        Ok(()) => encode_ok("null"),
        Err(f) => f.encode(),
    })
}

/// `AddModule`: stores an embedded module's source.
pub fn add_module(name: String, source: String) -> String {
    in_mode(move || reply(handlers::add_module(&name, &source).map(|()| String::from("null"))))
}

/// `LoadModule`: compiles and evaluates a stored module.
pub fn load_module(name: String) -> String {
    in_mode(move || reply(handlers::load_module(&name).map(|()| String::from("null"))))
}

/// `CallHandler`: runs a handler on one event and its context (empty: none).
pub fn call_handler(
    key: String,
    event: String,
    context: String,
    gc: bool,
    seed: u64,
    now_micros: u64,
    tsc_hz: u64,
) -> String {
    crate::clock::set_base(now_micros, tsc_hz);
    in_mode(move || {
        runtime::reseed(seed);
        reply(handlers::call(&key, &event, &context, gc))
    })
}

static PROBE_TARGET: u8 = 42;

/// Test hook: reads one byte at `addr` from the mode handlers run in, so that
/// tests can prove user mode cannot touch kernel pages. Address 0 reads a
/// byte of the guest's own data (allowed), 1 the kernel page of user mode;
/// 2 divides by zero and 3 executes `int3` instead (exceptions other than
/// the ones the kernel serves).
pub fn probe_read(addr: u64) -> String {
    let addr = match addr {
        0 => &PROBE_TARGET as *const u8 as u64,
        1 => usermode::kernel_page(),
        a => a,
    };
    in_mode(move || {
        match addr {
            // SAFETY: deliberately faulting instructions; the fault ends the run.
            2 => unsafe {
                core::arch::asm!("xor edx, edx", "xor eax, eax", "div ecx", in("ecx") 0u32, out("eax") _, out("edx") _, options(nostack));
            },
            // SAFETY: as above.
            3 => unsafe { core::arch::asm!("int3", options(nostack)) },
            _ => {}
        }
        // SAFETY: deliberately unchecked: the point is to fault on kernel pages.
        let b = unsafe { (addr as *const u8).read_volatile() };
        encode_ok(&format!("{b}"))
    })
}

/// The marker a [`scribble`] writes, from the caller's value.
fn scribble_marker(value: &str) -> [u8; SCRIBBLE_LEN] {
    let mut out = [0u8; SCRIBBLE_LEN];
    let text = format!("hljs-scribble:{value}");
    let n = text.len().min(SCRIBBLE_LEN);
    out[..n].copy_from_slice(&text.as_bytes()[..n]);
    out
}

const SCRIBBLE_LEN: usize = 64;
/// A guest static the scribble writes (a data page of the image).
static mut SCRIBBLE_STATIC: [u8; SCRIBBLE_LEN] = [0; SCRIBBLE_LEN];
/// A heap block the scribble writes, allocated by its first call.
static SCRIBBLE_HEAP: core::sync::atomic::AtomicPtr<u8> =
    core::sync::atomic::AtomicPtr::new(core::ptr::null_mut());
/// How far below the top of the user stack the scribble writes: below every
/// frame of a call that only scribbles, above the guard page.
const SCRIBBLE_STACK_DEPTH: u64 = 48 * 1024;

/// `Scribble` (test hook): from the mode handlers run in, reports whether
/// the marker of `seek` is in a guest static, a heap block, a fixed place on
/// the user stack and anywhere in the transport arena, then writes the
/// marker of `write` to the first three (and returns it, so that it reaches
/// the arena through the reply).
pub fn scribble(write: String, seek: String) -> String {
    in_mode(move || {
        let (wrote, sought) = (scribble_marker(&write), scribble_marker(&seek));
        let heap = match SCRIBBLE_HEAP.load(core::sync::atomic::Ordering::Relaxed) {
            p if p.is_null() => {
                let p = alloc::boxed::Box::leak(alloc::boxed::Box::new([0u8; SCRIBBLE_LEN]))
                    .as_mut_ptr();
                SCRIBBLE_HEAP.store(p, core::sync::atomic::Ordering::Relaxed);
                p
            }
            p => p,
        };
        let stack = if usermode::enabled() {
            (usermode::USER_STACK_TOP - SCRIBBLE_STACK_DEPTH) as *mut u8
        } else {
            core::ptr::null_mut()
        };
        let places = [(&raw mut SCRIBBLE_STATIC).cast::<u8>(), heap, stack];
        let mut found = [false; 4];
        for (i, p) in places.into_iter().enumerate() {
            if p.is_null() {
                continue;
            }
            // SAFETY: each place is `SCRIBBLE_LEN` bytes of this guest's own
            // memory (a static, a leaked block, dead user stack far below
            // every live frame); nothing else uses them.
            unsafe {
                let here = core::slice::from_raw_parts_mut(p, SCRIBBLE_LEN);
                found[i] = *here == sought;
                here.copy_from_slice(&wrote);
            }
        }
        if let Ok((lo, hi)) = crate::transport::with(|t| Ok(t.arena())) {
            // SAFETY: the arena is mapped for the guest's lifetime and open to user mode.
            let arena = unsafe { core::slice::from_raw_parts(lo as *const u8, (hi - lo) as usize) };
            let key = &sought[..sought.iter().position(|&b| b == 0).unwrap_or(SCRIBBLE_LEN)];
            found[3] = arena.windows(key.len()).any(|w| w == key);
        }
        let text = core::str::from_utf8(&wrote)
            .unwrap_or("")
            .trim_end_matches('\0');
        encode_ok(&format!(
            "static={} heap={} stack={} arena={} wrote={text}",
            found[0] as u8, found[1] as u8, found[2] as u8, found[3] as u8
        ))
    })
}
