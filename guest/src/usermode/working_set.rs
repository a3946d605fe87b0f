//! The working set: the pages a call after a restore needs opened or copied,
//! recorded by the kernel in one call and replayed at the start of later
//! ones in a single kernel entry, where each would otherwise cost a fault
//! (~0.3 ms of exception delivery here; the replay's work is ~1/3 of that).
//!
//! The host keeps the list between restores (it is lost with the memory) and
//! passes it with the call. The kernel treats it as untrusted: each entry is
//! decided like the fault it stands for (`hyperlight_js_guest_mm::working_set`).
//! Copies go through slots of the copy window after slot 0, which single
//! faults keep; user mode copies them natively, before anything else runs.

use core::arch::asm;

use hyperlight_js_guest_mm::fault::{Decision, Recorded, decide};
use hyperlight_js_guest_mm::working_set::{self as ws, MAX_PAGES, PENDING};
use hyperlight_js_guest_mm::{PAGE_SIZE, pte};

use super::kpage::KState;
use super::paging::{self, COPY_WINDOW};
use super::{SYS_WS_COPY, SYS_WS_RECORD, SYS_WS_REPLAY, faults, in_user, syscall};

/// Window slots a replay copies through (slot 0 is the single faults').
const SLOTS: u64 = 64;
const _: () = assert!(SLOTS < 512, "the slots share the window's leaf table");

/// Pages of the allocator a replay leaves for the faults of the call itself
/// (page tables, stack growth, pages the list did not foresee).
const RESERVE_PAGES: u64 = 64;

/// The list, in user memory, on a page of its own: user mode writes it for a
/// replay and the kernel marks what it copied; the kernel writes the record
/// there for [`recorded`].
#[repr(C, align(4096))]
struct Buffer([u64; MAX_PAGES]);

static mut BUFFER: Buffer = Buffer([0; MAX_PAGES]);

fn buffer() -> *mut u64 {
    (&raw mut BUFFER).cast()
}

// ---- kernel side ----------------------------------------------------------

/// Records a fault the full path served (the fast paths record their own in
/// `entry.rs`). Kernel mode.
pub fn record(k: &mut KState, addr: u64, decision: Decision) {
    let n = k.ws_len as usize;
    if k.ws_on && n < MAX_PAGES {
        k.ws[n] = ws::record(addr, decision);
        k.ws_len += 1;
    }
}

/// `SYS_WS_RECORD`: record this call's working set (until the next call begins).
pub fn start_recording(k: &mut KState) {
    k.ws_on = true;
    k.ws_len = 0;
}

/// `SYS_WS_COPY`: copies the record into the buffer; its length, or 0 when
/// the buffer is not a writable user page.
pub fn copy_out(k: &mut KState) -> u64 {
    let buf = buffer();
    if !paging::writable_page(k, buf as u64) {
        return 0;
    }
    let n = k.ws_len.min(MAX_PAGES as u64);
    // SAFETY: the buffer is a mapped, writable page of MAX_PAGES entries
    // (checked); one string instruction, as the emulator runs it as one.
    unsafe {
        asm!(
            "rep movsq",
            inout("rcx") n => _,
            inout("rsi") k.ws.as_ptr() => _,
            inout("rdi") buf => _,
            options(nostack, preserves_flags)
        )
    };
    n
}

/// `SYS_WS_REPLAY`: serves the faults that entries `start..end` of the
/// buffer stand for, as the full path would decide them, setting up the
/// copies through window slots 1.. and marking their entries [`PENDING`].
/// Returns where it stopped: `end`, or the first entry left for a later
/// replay (no slot left) or for the faults themselves (no page to spare).
///
/// # Safety
/// Kernel mode, handling user mode's system call on `k`.
pub unsafe fn replay(k: &mut KState, start: u64, end: u64) -> u64 {
    let end = end.min(MAX_PAGES as u64);
    let buf = buffer();
    if start >= end || !paging::writable_page(k, buf as u64) {
        return end;
    }
    let Some(window) = paging::window_leaf(k) else {
        return start;
    };
    let regions = faults::regions(k);
    let mut slot = 1;
    let mut i = start;
    while i < end {
        // SAFETY: `i` < MAX_PAGES, inside the buffer (checked writable).
        let at = unsafe { buf.add(i as usize) };
        // SAFETY: as above.
        let entry = unsafe { at.read_volatile() } & !PENDING;
        let fault = ws::replay(entry);
        let leaf = if regions.allows(fault.addr) {
            paging::open_walk(k, fault.addr)
        } else {
            None
        };
        let Some(leaf) = leaf else {
            // SAFETY: as above.
            unsafe { at.write_volatile(entry) };
            i += 1;
            continue;
        };
        // SAFETY: a live leaf entry.
        let v = unsafe { leaf.read_volatile() };
        // Opened already by the walk, when that is the decision.
        if decide(fault, &regions, k.heap, Some(v), || Recorded::Other) == Decision::CopyOnWrite {
            if slot > SLOTS {
                break;
            }
            let Some(pa) = paging::take_page(k, RESERVE_PAGES) else {
                break;
            };
            let src = COPY_WINDOW + slot * PAGE_SIZE;
            // SAFETY: the window's leaf table holds every slot; `leaf` is the
            // live leaf of a copy-on-write page; `pa` is a fresh page.
            unsafe {
                window.add(slot as usize).write_volatile(pte::read_view(v));
                asm!("invlpg [{}]", in(reg) src, options(nostack));
                leaf.write_volatile(pte::after_copy(v, pa));
                asm!("invlpg [{}]", in(reg) fault.addr, options(nostack));
                at.write_volatile(entry | PENDING);
            }
            slot += 1;
        } else {
            // SAFETY: as above.
            unsafe { at.write_volatile(entry) };
        }
        i += 1;
    }
    i
}

// ---- user side ------------------------------------------------------------

/// Records this call's working set from here on, for [`recorded`] in the
/// next call. User mode only.
pub fn record_from_here() {
    if in_user() {
        syscall(SYS_WS_RECORD, 0);
    }
}

/// The working set the previous call recorded (empty if it recorded none).
/// User mode only.
pub fn recorded() -> alloc::vec::Vec<u64> {
    if !in_user() {
        return alloc::vec::Vec::new();
    }
    let buf = buffer();
    // SAFETY: our buffer; the write makes its page private and writable.
    unsafe { buf.write_volatile(0) };
    let n = syscall(SYS_WS_COPY, 0) as usize;
    // SAFETY: the kernel wrote `n` <= MAX_PAGES entries.
    unsafe { core::slice::from_raw_parts(buf, n.min(MAX_PAGES)) }.to_vec()
}

/// Replays `list` (entries of `hyperlight_js_guest_mm::working_set`): the
/// kernel opens and sets up copies for what each entry's fault would get,
/// and each copy is made here before anything else can touch its page.
/// User mode only; entries past [`MAX_PAGES`] are ignored.
pub fn replay_list(list: &[u64]) {
    if !in_user() || list.is_empty() {
        return;
    }
    let n = list.len().min(MAX_PAGES);
    let buf = buffer();
    // SAFETY: our buffer holds MAX_PAGES entries; `list` is not in it.
    unsafe { core::ptr::copy_nonoverlapping(list.as_ptr(), buf, n) };
    let mut start = 0u64;
    while start < n as u64 {
        let next: u64;
        // SAFETY: the system call returns with every register but rax as it
        // was; the loop then copies each PENDING entry's window slot into its
        // page, using no stack: a page being copied may be the stack's own.
        unsafe {
            asm!(
                "ud2",
                "mov r8, rdi",
                "mov r9, {slot1}",
                "2:",
                "cmp r8, rax",
                "jae 4f",
                "mov r10, [r11 + r8 * 8]",
                "inc r8",
                "test r10b, {pending}",
                "jz 2b",
                "and r10, -4096",
                "mov rsi, r9",
                "mov rdi, r10",
                "mov ecx, {words}",
                "rep movsq",
                "add r9, {page}",
                "jmp 2b",
                "4:",
                slot1 = const COPY_WINDOW + PAGE_SIZE,
                pending = const PENDING,
                words = const PAGE_SIZE / 8,
                page = const PAGE_SIZE,
                inlateout("rax") SYS_WS_REPLAY => next,
                inout("rdi") start => _,
                inout("rsi") n as u64 => _,
                in("r11") buf,
                out("rcx") _,
                out("r8") _,
                out("r9") _,
                out("r10") _,
                options(nostack)
            )
        };
        if next <= start {
            // No progress: what is left is served by its faults.
            break;
        }
        start = next;
    }
}
