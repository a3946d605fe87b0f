//! The kernel side of every trap from user mode: system calls, the emulated
//! `out`, page faults, and the delivery of fatal faults to a landing.

use core::arch::asm;

use super::entry::{STATUS_EXIT, STATUS_FAULT, STATUS_RESUME};
use super::kpage::{ENTRY_KINDS, Entry, KState, kpage};
use super::run::{LANDING_ACCESS, LANDING_OTHER, LANDING_STACK, Landing, USER_LANDING};
use super::{
    Fault, SYS_EXIT, SYS_STACK_USE, SYS_STATS, SYS_STATS_ON, SYS_TRAPS, SYS_WS_COPY, SYS_WS_SOURCE,
    faults, paging, working_set,
};

/// Kernel side of every user trap; returns a `STATUS_*`. Called by the trap
/// path in `entry.rs` on the kernel stack, with the user state saved on the
/// kernel page.
pub extern "C" fn hljs_user_trap(cr2: u64) -> u64 {
    // SAFETY: kernel mode, on the kernel stack, single vCPU: this is the one
    // reference to the kernel page for the whole trap.
    let k = unsafe { kpage() };
    // Sampled once: the trap that turns counting on is not counted.
    let counting = k.stats_on;
    let t0 = if counting { tsc() } else { 0 };
    k.traps += 1;
    let rip = k.frame[0];
    let vector = k.vector;
    let (kind, status) = match vector {
        6 => (Entry::Syscall, syscall(k, rip)),
        13 if emulate_out(k, rip) => (Entry::Out, STATUS_RESUME),
        14 => match faults::user_page_fault(k, cr2) {
            Ok(kind) => (kind, STATUS_RESUME),
            Err(f) => (Entry::Fatal, deliver(k, f)),
        },
        v => (Entry::Fatal, deliver(k, Fault::Other { vector: v, rip })),
    };
    if counting {
        let s = &mut k.stats[kind as usize];
        s[0] += 1;
        s[1] += tsc().wrapping_sub(t0);
    }
    status
}

fn syscall(k: &mut KState, rip: u64) -> u64 {
    let arg = k.user[5];
    let answer = match k.user[0] {
        SYS_EXIT => return STATUS_EXIT,
        SYS_TRAPS => k.call_start,
        SYS_STATS_ON => {
            let was_on = k.stats_on;
            if !was_on {
                k.stats_on = true;
                k.stats = [[0; 2]; ENTRY_KINDS];
                k.last_stats = [[0; 2]; ENTRY_KINDS];
            }
            u64::from(was_on)
        }
        SYS_STATS if (arg as usize) < 2 * ENTRY_KINDS => {
            k.last_stats[arg as usize / 2][arg as usize % 2]
        }
        SYS_WS_COPY => working_set::copy_out(k),
        SYS_WS_SOURCE => working_set::note_source(k),
        // SAFETY: kernel mode; reads of the kernel's own stacks.
        SYS_STACK_USE => unsafe { super::stack_high_water(arg) },
        _ => return deliver(k, Fault::Other { vector: 6, rip }),
    };
    k.user[0] = answer;
    k.frame[0] = rip + 2;
    STATUS_RESUME
}

/// The time-stamp counter.
fn tsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `rdtsc` only reads the counter.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Does the `out` that user mode may not do (IOPL is 0 at CPL3 on kvm-pvm),
/// for the two ports user mode needs: the virtqueue notification that makes
/// the host serve a host-function call, and the abort stream of a panic.
fn emulate_out(k: &mut KState, rip: u64) -> bool {
    use hyperlight_common::outb::OutBAction;
    if !faults::regions(k).contains(rip, 1) {
        return false;
    }
    // SAFETY: `rip` is user memory (checked).
    let op = unsafe { (rip as *const u8).read_volatile() };
    let (port, value) = (k.user[3] as u16, k.user[0] as u32);
    if port != OutBAction::VirtqNotify as u16 && port != OutBAction::Abort as u16 {
        return false;
    }
    // SAFETY: the host handles these ports; the value is user mode's own.
    unsafe {
        match op {
            0xEF => asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack)),
            0xEE => asm!("out dx, al", in("dx") port, in("al") value as u8, options(nostack)),
            _ => return false,
        }
    }
    k.frame[0] = rip + 1;
    true
}

/// Ends a user computation on a fatal fault: resumes user mode at its
/// innermost landing (see `run.rs`), or, with none, returns to the kernel.
fn deliver(k: &mut KState, f: Fault) -> u64 {
    // The working set's replay phase has no landing: the kernel ends it.
    if k.replayed[0] == super::replay::REPLAYING {
        k.fault = Some(f);
        return STATUS_FAULT;
    }
    // SAFETY: a plain read of a user-memory static, in kernel mode.
    let at = unsafe { (&raw const USER_LANDING).read_volatile() };
    let size = core::mem::size_of::<Landing>() as u64;
    // The kernel writes there: it must be mapped, writable user memory, so
    // that the write cannot fault into hyperlight-guest-bin's handlers.
    if at == 0
        || !at.is_multiple_of(8)
        || !faults::regions(k).contains(at, size)
        || !paging::writable_page(k, at)
        || !paging::writable_page(k, at + size - 1)
    {
        k.fault = Some(f);
        return STATUS_FAULT;
    }
    let (kind, a, b) = match f {
        Fault::StackOverflow => (LANDING_STACK, 0, 0),
        Fault::Access { addr, rip } => (LANDING_ACCESS, addr, rip),
        Fault::Other { vector, rip } => (LANDING_OTHER, vector, rip),
    };
    let l = at as *mut Landing;
    // SAFETY: `l` is an aligned `Landing` in user memory (checked above);
    // user mode is stopped. The resumed rip and rsp are user mode's own.
    unsafe {
        (&raw mut (*l).kind).write_volatile(kind);
        (&raw mut (*l).a).write_volatile(a);
        (&raw mut (*l).b).write_volatile(b);
        k.frame[0] = (&raw const (*l).rip).read_volatile();
        k.frame[3] = (&raw const (*l).rsp).read_volatile();
    }
    k.user[5] = at;
    k.fault = Some(f);
    STATUS_RESUME
}
