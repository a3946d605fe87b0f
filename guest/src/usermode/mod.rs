//! Guest user mode: the JavaScript engine runs at CPL3 inside the micro-VM.
//!
//! On paravirtual KVM (kvm-pvm) a guest's kernel-mode code is emulated at
//! ~1 µs per instruction while user-mode code runs natively. So every guest
//! function does its real work (QuickJS) in user mode, and the small kernel
//! part here is entered only through faults:
//!
//! - `ud2` from user mode is a system call (`rax` = number): leave user
//!   mode at the end of a call, or read the kernel-entry counter;
//! - `#GP` from an `out` to the virtqueue or abort port is done by the
//!   kernel for user mode (IOPL is forced to 0 at CPL3 here): that is how a
//!   host-function call and a panic's abort reach the host;
//! - a page fault from user mode sets the user bit along the page walk
//!   (hyperlight rebuilds page tables without it at every snapshot), grows
//!   the user stack, and for copy-on-write puts a fresh page in place and
//!   lets user mode copy into it natively (`hljs_cow_copy`);
//! - any other exception ends the user computation: the kernel resumes user
//!   mode at the innermost landing set by [`run`] (like a signal handler and
//!   `longjmp`), which returns the fault as an `Err`.
//!
//! Faults raised in kernel mode are served here too ([`hljs_kernel_fault`]):
//! hyperlight-guest-bin's handlers consult hook tables in user-writable
//! statics, so none of them runs once user mode is on. Nothing the kernel
//! relies on lives in user-writable memory, and it never uses the heap.
//! The kernel's pages (page tables, IDT/GDT/TSS, kernel and exception stacks,
//! scratch metadata, this module's state) never get the user bit: JS in user
//! mode cannot read or write them, a second privilege boundary inside the VM.
//!
//! The module by concern: `kpage` (the kernel's state and its one
//! accessor), `descriptors` (GDT and IDT), `entry` (the privilege switch,
//! assembly), `traps` (what the kernel does for a user trap), `faults` and
//! `paging` (page faults and page-table work, with the rules themselves in
//! the pure `hyperlight_js_guest_mm` crate), `run` (running code in user
//! mode, landings), `working_set` (a call's pages, recorded and replayed in
//! one kernel entry).

mod descriptors;
mod entry;
mod faults;
mod kpage;
mod paging;
mod replay;
mod run;
mod traps;
mod working_set;

use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};

use hyperlight_js_guest_mm::PAGE_SIZE;

pub use kpage::{ENTRY_KINDS, Entry};
// For the call entry's assembly (`dispatch.rs`), which picks the stack.
pub(crate) use kpage::{K_ENABLED, KPAGE as KPAGE_SYMBOL};
pub use run::run;
pub use working_set::{checkpointed, recorded};

/// System call: leave user mode (the job is done).
pub const SYS_EXIT: u64 = 0;
/// System call: the number of kernel entries before the current call began, in `rax`.
pub const SYS_TRAPS: u64 = 1;
/// System call: one number of the previous call's kernel entries (`rdi` =
/// 2 × kind + 0 for the count, + 1 for the TSC cycles spent in the handler).
pub const SYS_STATS: u64 = 2;
/// System call: turn per-kind counting on (zeroed) if it was off; `rax` = 1
/// if it was already on.
pub const SYS_STATS_ON: u64 = 3;

/// System call: copy the previous call's working set into the list buffer; `rax` = its length.
pub const SYS_WS_COPY: u64 = 4;
/// System call: the transport is in its canonical state for a snapshot;
/// note where the first call after a restore of it will arrive (the kernel
/// finds the working set to replay there, `usermode::working_set`).
pub const SYS_WS_SOURCE: u64 = 5;

/// System call: how deep one of the kernel's stacks has been since scratch
/// was last zeroed (`rdi` = 0: the kernel stack, 1: the exception stack), in
/// bytes, `rax` (see [`stack_use`]).
pub const SYS_STACK_USE: u64 = 6;

/// Pages of the kernel stack: the lowest of the pages hyperlight reserves
/// at the top of scratch for its exception stack (IST1) and metadata, which
/// its allocator never hands out. A restore zeroes scratch, so the stack's
/// first use after one costs KVM a shadow fault and the guest no
/// copy-on-write; it is outside every region user mode may touch. The
/// exception stack grows down from the top of the same pages and keeps the
/// rest (the kernel's own faults run there, a few hundred bytes deep).
const KERNEL_STACK_PAGES: u64 = 4;
const RESERVED_PAGES: u64 = hyperlight_common::layout::SCRATCH_TOP_RESERVED_PAGES as u64;
const _: () = assert!(
    RESERVED_PAGES >= KERNEL_STACK_PAGES + 4,
    "the exception stack keeps at least four pages above the kernel stack"
);
/// Top of the kernel stack, where every call from the host starts once user
/// mode is on (`dispatch::hljs_dispatch`); its lowest page is the first one
/// above hyperlight's allocator limit.
pub(crate) const KERNEL_STACK_TOP: u64 = hyperlight_common::layout::SCRATCH_TOP_GVA as u64 + 1
    - (RESERVED_PAGES - KERNEL_STACK_PAGES) * PAGE_SIZE;

/// The kernel stack and the exception stack above it, `[low, high)`: the
/// latter ends below the metadata hyperlight keeps at the top of scratch.
const STACKS: [[u64; 2]; 2] = [
    [
        KERNEL_STACK_TOP - KERNEL_STACK_PAGES * PAGE_SIZE,
        KERNEL_STACK_TOP,
    ],
    [
        KERNEL_STACK_TOP,
        hyperlight_common::layout::SCRATCH_TOP_GVA as u64 + 1
            - hyperlight_common::layout::SCRATCH_TOP_EXN_STACK_OFFSET,
    ],
];

/// The high-water mark of stack `which` of [`STACKS`] in bytes, from its
/// lowest non-zero qword: every restore zeroes scratch, so this is the
/// deepest either stack has been since (a test proves the margin, which no
/// guard page enforces). Out of range: `u64::MAX`.
///
/// # Safety
/// Kernel mode: the stacks are kernel pages.
pub(crate) unsafe fn stack_high_water(which: u64) -> u64 {
    let Some(&[low, high]) = STACKS.get(which as usize) else {
        return u64::MAX;
    };
    let mut at = low;
    while at < high {
        // SAFETY: the caller's contract; both stacks are mapped scratch pages.
        if unsafe { (at as *const u64).read_volatile() } != 0 {
            return high - at;
        }
        at += 8;
    }
    0
}

/// How deep the kernel stack and the exception stack have been since the
/// last restore (or the start), in bytes, and their sizes: test hook.
pub fn stack_use() -> [[u64; 2]; 2] {
    let used = |which: u64| {
        if in_user() {
            syscall(SYS_STACK_USE, which)
        } else {
            // SAFETY: not in a user run: this is kernel mode.
            unsafe { stack_high_water(which) }
        }
    };
    [
        [used(0), STACKS[0][1] - STACKS[0][0]],
        [used(1), STACKS[1][1] - STACKS[1][0]],
    ]
}

/// Top of the user stack: a region of its own, outside every hyperlight region.
const USTACK_TOP: u64 = 0xffff_f000_1000_0000;
/// The top of the user stack, for test hooks that write below every frame.
pub const USER_STACK_TOP: u64 = USTACK_TOP;

/// Why a user run ended early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The user stack overflowed into its guard page.
    StackOverflow,
    /// User mode touched a kernel page or an unmapped address.
    Access { addr: u64, rip: u64 },
    /// A general-protection fault (a panic's `out` lands here) or another fault.
    Other { vector: u64, rip: u64 },
}

/// Set once `init` has run, for user code; the kernel's own copy is on the
/// kernel page (see [`kernel_enabled`]), where user mode cannot clear it to
/// have the next call served in kernel mode.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether the current code runs in user mode.
pub fn in_user() -> bool {
    // Set while a user run is in progress (read by user code, to know that
    // it is user code; the kernel never trusts it).
    paging::user_run_flag().load(Ordering::Relaxed)
}

/// Whether user mode is set up for this sandbox (a hint for user code).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether user mode is set up for this sandbox, as the kernel knows it.
/// Kernel mode only.
pub fn kernel_enabled() -> bool {
    // SAFETY: kernel mode (this function's contract); a read.
    unsafe { kpage::kpage() }.enabled
}

/// Sets up user mode once, before the runtime's snapshot: ring-3 segments,
/// the trap gates, and the user stack's size. Kernel mode only.
pub fn init(stack_size: u64) {
    if kernel_enabled() {
        return;
    }
    // SAFETY: kernel mode, single vCPU, before user mode exists: the only
    // reference to the kernel page, and the descriptor tables are
    // hyperlight-guest-bin's.
    let k = unsafe { kpage::kpage() };
    // SAFETY: as above.
    unsafe { descriptors::install(k) };
    k.ustack_limit = USTACK_TOP - stack_size.next_multiple_of(PAGE_SIZE);
    k.arena = crate::transport::arena_range().map_or([0; 2], |(lo, hi)| [lo, hi]);
    k.heap = heap_range();
    k.scratch = [
        hyperlight_guest::layout::scratch_base_gpa(),
        hyperlight_guest::layout::scratch_base_gva(),
    ];
    k.scratch_delta = k.scratch[1].wrapping_sub(k.scratch[0]);
    k.alloc_gva = hyperlight_guest::layout::allocator_gva() as u64;
    k.alloc_limit = hyperlight_common::layout::scratch_allocator_limit_gpa();
    k.generation_gva = hyperlight_guest::layout::snapshot_generation_gva() as u64;
    k.phase_ok = replay::layout_holds(k.scratch[0]);
    k.enabled = true;
    ENABLED.store(true, Ordering::Relaxed);
}

/// Runs `entry` in user mode as the whole of a call from the host; it ends
/// with `SYS_EXIT`. A fault that no [`run`] catches aborts the call.
pub fn serve_in_user(entry: extern "C" fn(u64) -> !) {
    paging::user_run_flag().store(true, Ordering::Relaxed);
    // SAFETY: kernel mode; `entry` is in the image, the user stack region
    // is ours.
    let status =
        unsafe { entry::hljs_enter_user(entry as *const () as u64, USTACK_TOP - 8, 0, 0, 0, 0) };
    paging::user_run_flag().store(false, Ordering::Relaxed);
    if status != entry::STATUS_EXIT {
        // No formatting here: that would use the heap, whose allocator
        // state user mode can write.
        // SAFETY: kernel mode, after the user run.
        let fault = unsafe { kpage::kpage() }.fault;
        let (vector, rip) = match fault {
            Some(Fault::Other { vector, rip }) => (vector, rip),
            Some(Fault::Access { addr, rip }) => (addr, rip),
            _ => (0, 0),
        };
        faults::abort_report(b"user mode faulted outside any handler: ", vector, 0, rip);
    }
}

/// Kernel entries from user mode (faults and system calls) before the
/// current call from the host began.
pub fn trap_count() -> u64 {
    if in_user() {
        return syscall(SYS_TRAPS, 0);
    }
    // SAFETY: kernel mode; a read.
    unsafe { kpage::kpage() }.call_start
}

/// Turns per-kind counting on; whether it was already on. User mode only.
pub fn count_entries() -> bool {
    syscall(SYS_STATS_ON, 0) != 0
}

/// The previous call's kernel entries of `kind`: their count and the TSC
/// cycles the kernel's handler spent on them (exception delivery and the
/// register save of the trap path not included). User mode only.
pub fn last_call_entries(kind: Entry) -> (u64, u64) {
    let i = 2 * kind as u64;
    (syscall(SYS_STATS, i), syscall(SYS_STATS, i + 1))
}

/// Marks the start of a call from the host (for [`trap_count`] and
/// [`last_call_entries`]) and publishes the snapshot `generation` to user
/// mode ([`call_generation`]). Kernel mode.
pub fn call_begins(generation: u64) {
    // SAFETY: kernel mode, single vCPU, no user run in progress.
    let k = unsafe { kpage::kpage() };
    // Before the first write to the kernel page (the generation's address
    // is known once user mode is set up).
    let restored = k.enabled
        && paging::restored(k).is_some_and(|snapshot_generation| {
            after_restore(snapshot_generation);
            true
        });
    // SAFETY: as above (`after_restore`'s references are over).
    let k = unsafe { kpage::kpage() };
    paging::published_generation().store(generation, Ordering::Relaxed);
    k.call_start = k.traps;
    // The working set of the first call after a restore that brought none
    // is recorded (`usermode::working_set`), from its first fault on.
    // The first page of the second call's receive buffer goes in too: a
    // call after the first reads it.
    // A call that replayed one records the faults it still takes: pages the
    // list missed (the engine adds them to it).
    let list = k.replayed[0];
    k.ws_on = restored && list != working_set::LIST_EMPTY;
    if k.ws_on && list == working_set::LIST_NONE {
        k.ws[0] = hyperlight_js_guest_mm::page_of(k.first_msg[2]);
        k.ws_len = u64::from(k.first_msg[2] != 0);
    } else if k.ws_on {
        k.ws_len = 0;
    }
    if k.stats_on {
        k.last_stats = k.stats;
        k.stats = [[0; 2]; ENTRY_KINDS];
        // The replay phase's exit was counted before the rotation above: it
        // belongs to this call.
        if restored && k.replayed[1] == 1 {
            let exit = Entry::Syscall as usize;
            k.last_stats[exit][0] = k.last_stats[exit][0].saturating_sub(1);
            k.stats[exit][0] += 1;
        }
    }
}

/// A call's start after a restore: the kernel page's copy, the working
/// set's replay phase, then the call page. Out of line, so that a warm
/// call's start stays short (every instruction is emulated), and with no
/// reference to the kernel page held across the phase: its kernel entries
/// take their own.
#[cold]
#[inline(never)]
fn after_restore(snapshot_generation: u64) {
    // SAFETY: kernel mode at the call's start, no user run in progress.
    let k = unsafe { kpage::kpage() };
    let p = paging::prepare_copies(k, snapshot_generation);
    let phase = working_set::replay_at_start(k, p.kpage);
    // SAFETY: as above; `k` is not used again.
    let ran = phase.is_some_and(|phase| unsafe { phase.run() });
    // SAFETY: kernel mode; the phase is over: the one reference again.
    let k = unsafe { kpage::kpage() };
    k.replayed[1] = u64::from(ran);
    paging::ready_call_page(k, p.kpage, ran);
}

/// The snapshot generation of the current call, as the kernel published it.
pub fn call_generation() -> u64 {
    paging::published_generation().load(Ordering::Relaxed)
}

/// The address of the kernel page, for tests that prove user mode cannot read it.
pub fn kernel_page() -> u64 {
    kpage::kpage_addr()
}

/// A system call from user mode.
#[inline(never)]
pub fn syscall(num: u64, arg: u64) -> u64 {
    let ret: u64;
    // SAFETY: `ud2` traps to `hljs_vec_6`, which resumes after it with rax set.
    unsafe { asm!("ud2", inlateout("rax") num => ret, in("rdi") arg, options(nostack)) };
    ret
}

/// The guest heap's address range, from the PEB. Kernel mode.
fn heap_range() -> [u64; 2] {
    // SAFETY: the PEB pointer was set by hyperlight-guest-bin's initialisation
    // and the PEB stays mapped for the guest's lifetime.
    unsafe {
        let handle = &raw const hyperlight_guest_bin::GUEST_HANDLE;
        match (*handle).peb() {
            Some(peb) => {
                let heap = (*peb).guest_heap;
                [heap.ptr, heap.ptr + heap.size]
            }
            None => [0; 2],
        }
    }
}
