//! The working set: the pages a call after a restore needs opened or copied,
//! recorded by the kernel in one call and replayed at the start of later
//! ones, all at once, where each would otherwise cost a fault (~0.3 ms of
//! exception delivery here). A call that replays a list records the faults
//! it still takes, which the engine adds to the list.
//!
//! The host keeps the list between restores (it is lost with the memory) and
//! passes it with the call, where the kernel finds it before user mode runs
//! (`replay_at_start`) and has it replayed by the replay phase
//! (`super::replay`). The list is untrusted: each entry is served as the
//! fault fast path would serve the fault it stands for, or not at all
//! (`hyperlight_js_guest_mm::working_set`).

use core::arch::asm;

use hyperlight_js_guest_mm::fault::Decision;
use hyperlight_js_guest_mm::page_of;
use hyperlight_js_guest_mm::working_set::{self as ws, COPIED, MAX_PAGES};

use super::kpage::KState;
use super::paging;
use super::replay::Phase;
use super::{SYS_WS_COPY, SYS_WS_SOURCE, in_user, syscall};

/// The list, in user memory, on a page of its own: user mode writes it for a
/// replay and the kernel marks what it copied; the kernel writes the record
/// there for [`recorded`].
#[repr(C, align(4096))]
struct Buffer([u64; MAX_PAGES]);

// With the other page-aligned statics, so that none splits the small
// statics a call writes across more pages (each costs a copy per call).
#[unsafe(link_section = ".data.hljs_page_aligned")]
static mut BUFFER: Buffer = Buffer([0; MAX_PAGES]);

fn buffer() -> *mut u64 {
    (&raw mut BUFFER).cast()
}

// ---- kernel side ----------------------------------------------------------

/// [`KState::replayed`]'s first field: no list came with the call (the
/// call records its working set from scratch).
pub const LIST_NONE: u64 = 0;
/// The engine's empty list: nothing to replay, nothing to record.
pub const LIST_EMPTY: u64 = 1;
/// A list came and was replayed: the call records the faults it still
/// takes, for the engine to add to the list.
pub const LIST_REPLAYED: u64 = 3;

/// Records a fault the full path served (the fast paths record their own in
/// `entry.rs`). Kernel mode.
pub fn record(k: &mut KState, addr: u64, decision: Decision) {
    let n = k.ws_len as usize;
    if k.ws_on && n < MAX_PAGES {
        k.ws[n] = ws::record(addr, decision);
        k.ws_len += 1;
    }
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

/// `SYS_WS_SOURCE`: notes where the first call after a restore of the
/// snapshot about to be taken arrives (the transport has just reset its
/// queues); 0. Read by the kernel from the ring itself: user mode only says when.
pub fn note_source(k: &mut KState) -> u64 {
    k.first_msg = crate::transport::h2g_buffers().unwrap_or([0; 3]);
    0
}

/// Finds the working set that the call's message carries, at the start of
/// the first call after a restore, before user mode runs, and sets up the
/// replay phase that serves the faults its entries stand for, each a run of
/// pages in one 2 MiB region (`hyperlight_js_guest_mm::working_set::run`).
/// Notes in `k.replayed` what came ([`LIST_NONE`], [`LIST_EMPTY`],
/// [`LIST_REPLAYED`]); the phase, if one is to run.
///
/// The list is the call's last parameter, so hyperlight puts it at the end
/// of the message, which the kernel reads in place in the receive buffer
/// noted at the snapshot's checkpoint (`hyperlight_js_guest_mm::working_set::list_span`).
/// Nothing in user mode has run since the restore, and every entry is
/// checked as the fault it stands for anyway; the kernel only reads it.
/// `kpage` is what the phase needs of the kernel page: its region's leaf
/// table and its leaf entry (`None`: no phase, the faults serve the call).
#[inline(always)]
pub fn replay_at_start(k: &mut KState, kpage: Option<(u64, *mut u64)>) -> Option<Phase> {
    k.replayed[0] = LIST_NONE;
    let [msg, cap, _] = k.first_msg;
    if msg == 0 {
        return None;
    }
    // SAFETY: `msg..msg + cap` is a receive buffer in the arena, mapped for
    // the guest's lifetime (checked when noted); reads within it.
    let (kind, payload_len) = unsafe {
        (
            (msg as *const u8).read_volatile(),
            ((msg + 8) as *const u32).read_unaligned(),
        )
    };
    let end = ws::message_end(kind, payload_len, cap)?;
    // SAFETY: `end - 8..end` is within the buffer (`message_end`).
    let trailer = unsafe { ((msg + end - 8) as *const u64).read_unaligned() };
    let (offset, n) = ws::list_before(end, payload_len, trailer)?;
    if n == 0 {
        k.replayed[0] = LIST_EMPTY;
        return None;
    }
    k.replayed[0] = LIST_REPLAYED;
    let (table, leaf) = kpage?;
    // `n` entries at `msg + offset` lie within the buffer (`list_before`),
    // in the arena.
    Phase::set_up(k, table, leaf, msg + offset, n, ws::copies_hint(trailer))
}

// ---- user side ------------------------------------------------------------

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
    let mut list = unsafe { core::slice::from_raw_parts(buf, n.min(MAX_PAGES)) }.to_vec();
    // By address, so that a replay walks each 2 MiB once; one entry a page,
    // a copy where one was needed (a copy opens the page too); then runs of
    // consecutive pages, one entry each.
    list.sort_unstable();
    list.dedup_by(|later, kept| {
        let same = page_of(*later) == page_of(*kept);
        if same {
            *kept |= *later & COPIED;
        }
        same
    });
    // The buffer's page is written only to hand this list over: a call
    // that replays it need not copy it.
    list.retain(|e| page_of(*e) != buf as u64);
    let runs = ws::merge_runs(&mut list);
    list.truncate(runs);
    list
}

/// Tells the kernel that the transport is in its canonical state for a
/// snapshot (`SYS_WS_SOURCE`). User mode, or kernel mode before user mode
/// is set up.
pub fn checkpointed() {
    if in_user() {
        syscall(SYS_WS_SOURCE, 0);
    } else if super::kernel_enabled() {
        // SAFETY: kernel mode, no user run in progress.
        note_source(unsafe { super::kpage::kpage() });
    }
}
