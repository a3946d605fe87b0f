//! Running code in user mode: [`run`], and the landings that turn a fatal
//! user fault into an `Err` (like a signal handler and `longjmp`).

use alloc::boxed::Box;
use core::arch::global_asm;
use core::sync::atomic::Ordering;

use super::entry::{STATUS_EXIT, hljs_enter_user};
use super::kpage::kpage;
use super::{Fault, SYS_EXIT, USTACK_TOP, in_user, paging, syscall};

/// A point user mode resumes at when one of its faults is fatal: like a
/// signal handler plus `longjmp`, so that the fault becomes an `Err` of
/// [`run`] without a trip back through the kernel's dispatch.
#[repr(C)]
#[derive(Default)]
pub struct Landing {
    pub rsp: u64,
    pub rip: u64,
    /// The enclosing landing (they nest).
    prev: u64,
    /// The fault, written by the kernel: kind, then two values.
    pub kind: u64,
    pub a: u64,
    pub b: u64,
}

/// The innermost landing, in user memory: only user mode relies on it, and
/// the kernel checks that it points at user memory before it writes there.
pub static mut USER_LANDING: u64 = 0;

global_asm!(
    // hljs_try(f: rdi, arg: rsi, landing: rdx) -> 0 when f(arg) returned,
    // 1 when the kernel resumed at the landing after a fatal fault.
    ".global hljs_try",
    "hljs_try:",
    "push rbx", "push rbp", "push r12", "push r13", "push r14", "push r15",
    "sub rsp, 8",
    "mov r12, rdx",
    "mov [r12], rsp",
    "lea rax, [rip + 2f]",
    "mov [r12 + 8], rax",
    "mov rax, [rip + {landing}]",
    "mov [r12 + 16], rax",
    "mov [rip + {landing}], r12",
    "mov rax, rdi",
    "mov rdi, rsi",
    "call rax",
    "xor eax, eax",
    "jmp 3f",
    // The kernel resumes here with rsp = landing.rsp and rdi = the landing.
    "2:",
    "mov r12, rdi",
    "mov eax, 1",
    "3:",
    "mov rcx, [r12 + 16]",
    "mov [rip + {landing}], rcx",
    "add rsp, 8",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop rbp", "pop rbx",
    "ret",
    landing = sym USER_LANDING,
);

unsafe extern "C" {
    fn hljs_try(f: u64, arg: u64, landing: *mut Landing) -> u64;
}

/// Runs `f` in user mode and returns its result, or the fault that ended it.
/// From kernel mode it enters user mode for `f`; from user mode it only sets
/// a landing for faults.
pub fn run<R>(f: impl FnOnce() -> R) -> Result<R, Fault> {
    if in_user() {
        return catch(f);
    }
    let mut out: Box<Option<Result<R, Fault>>> = Box::new(None);
    let out_ptr: *mut Option<Result<R, Fault>> = &mut *out;
    let job = move || {
        // SAFETY: `out` outlives the user run and nothing else touches it meanwhile.
        unsafe { out_ptr.write(Some(catch(f))) }
    };
    let mut job: Box<Option<_>> = Box::new(Some(job));
    let entry = trampoline_for(&*job);
    // SAFETY: kernel mode (not in user mode, checked above); the reference
    // ends before user mode is entered.
    unsafe { kpage() }.fault = None;
    paging::user_run_flag().store(true, Ordering::Relaxed);
    // SAFETY: kernel mode; the trampoline and `job` live in user-accessible
    // memory (image and heap), the user stack region is ours.
    let status =
        unsafe { hljs_enter_user(entry, USTACK_TOP - 8, &mut *job as *mut _ as u64, 0, 0, 0) };
    paging::user_run_flag().store(false, Ordering::Relaxed);
    // SAFETY: kernel mode, after the run.
    let fault = unsafe { kpage() }
        .fault
        .unwrap_or(Fault::Other { vector: 0, rip: 0 });
    match status {
        STATUS_EXIT => out.take().unwrap_or(Err(fault)),
        _ => Err(fault),
    }
}

/// A closure and its result, handed to [`hljs_try`] by address.
struct Job<F, R> {
    f: Option<F>,
    out: Option<R>,
}

extern "C" fn call_job<F: FnOnce() -> R, R>(job: u64) {
    // SAFETY: `catch` passes a pointer to its live `Job<F, R>`.
    let job = unsafe { &mut *(job as *mut Job<F, R>) };
    if let Some(f) = job.f.take() {
        job.out = Some(f());
    }
}

/// Runs `f` (in user mode) with a landing for its fatal faults.
fn catch<R, F: FnOnce() -> R>(f: F) -> Result<R, Fault> {
    let mut job = Job::<F, R> {
        f: Some(f),
        out: None,
    };
    let mut landing = Landing::default();
    // SAFETY: `hljs_try` calls `call_job` with `job` and returns normally, or
    // resumes at its landing after a fault; either way `job` and `landing`
    // are still live in this frame (a fault abandons only the frames below).
    let faulted = unsafe {
        hljs_try(
            call_job::<F, R> as *const () as u64,
            &mut job as *mut Job<F, R> as u64,
            &mut landing,
        )
    };
    if faulted == 0 {
        return job.out.ok_or(Fault::Other { vector: 0, rip: 0 });
    }
    Err(match landing.kind {
        LANDING_STACK => Fault::StackOverflow,
        LANDING_ACCESS => Fault::Access {
            addr: landing.a,
            rip: landing.b,
        },
        _ => Fault::Other {
            vector: landing.a,
            rip: landing.b,
        },
    })
}

/// Kinds of fault the kernel writes into a landing.
pub const LANDING_STACK: u64 = 0;
/// See [`LANDING_STACK`].
pub const LANDING_ACCESS: u64 = 1;
/// See [`LANDING_STACK`].
pub const LANDING_OTHER: u64 = 2;

fn trampoline_for<G: FnOnce()>(_: &Option<G>) -> u64 {
    trampoline::<G> as *const () as u64
}

/// The first user-mode function of a run.
extern "C" fn trampoline<G: FnOnce()>(job: *mut Option<G>) -> ! {
    // SAFETY: `run` passes a valid pointer to its boxed job.
    if let Some(g) = unsafe { (*job).take() } {
        g();
    }
    syscall(SYS_EXIT, 0);
    loop {
        core::hint::spin_loop();
    }
}
