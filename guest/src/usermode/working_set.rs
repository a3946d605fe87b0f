//! The working set: the pages a call after a restore needs opened or copied,
//! recorded by the kernel in one call and replayed at the start of later
//! ones in a single kernel entry, where each would otherwise cost a fault
//! (~0.3 ms of exception delivery here; the replay's work is ~1/3 of that).
//!
//! The host keeps the list between restores (it is lost with the memory) and
//! passes it with the call, where the kernel reads it before user mode runs
//! (`replay_at_start`). The kernel treats it as untrusted: each entry is
//! served as the fault fast path would serve the fault it stands for, or
//! not at all (`hyperlight_js_guest_mm::working_set`).
//! Copies go through slots of the copy window after slot 0, which single
//! faults keep; user mode copies them natively, before anything else runs.

use core::arch::{asm, global_asm};

use hyperlight_js_guest_mm::fault::Decision;
use hyperlight_js_guest_mm::working_set::{self as ws, COPIED, MAX_PAGES};
use hyperlight_js_guest_mm::{PAGE_SIZE, page_of, pte};

use super::kpage::{
    K_ALLOC_GVA, K_ALLOC_LIMIT, K_ARENA, K_SCRATCH_DELTA, K_SCRATCH_GPA, K_USTACK_LIMIT, KState,
};
use super::paging::{self, COPY_WINDOW};
use super::{SYS_WS_COPY, SYS_WS_SOURCE, in_user, syscall};

/// Window slots a replay copies through (slot 0 is the single faults'):
/// the most copies one replay sets up.
pub const SLOTS: u64 = MAX_PAGES as u64;
const _: () = assert!(SLOTS < 512, "the slots share the window's leaf table");

/// Pages of the allocator a replay leaves for the faults of the call itself
/// (page tables, stack growth, pages the list did not foresee).
const RESERVE_PAGES: u64 = 64;

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

/// Replays the working set that the call's message carries, at the start of
/// the first call after a restore, before user mode runs: serves the
/// faults its entries stand for (each a run of pages in one 2 MiB region,
/// `hyperlight_js_guest_mm::working_set::run`), setting up copies through window slots
/// 1.., each slot's target page noted on the call page for user mode to
/// copy first (`hljs_user_start`). Notes in `k.replayed` whether a list came
/// and how many copies it set up (`[0, 0]`: no list).
///
/// The list is the call's last parameter, so hyperlight puts it at the end
/// of the message, which the kernel reads in place in the receive buffer
/// noted at the snapshot's checkpoint (`hyperlight_js_guest_mm::working_set::list_span`).
/// Nothing in user mode has run since the restore, and every entry is
/// checked as the fault it stands for anyway; the kernel only reads it.
///
/// The loop is [`hljs_ws_replay`], in assembly: every instruction here is
/// emulated (~1 µs each), and the same work in Rust, through
/// `hyperlight_js_guest_mm::decide`, cost ~250 µs an entry, about what the
/// fault it saves costs. It serves what the fault fast path in `entry.rs`
/// serves, by the same rules (a subset of `decide`'s, see
/// `hyperlight_js_guest_mm::working_set`), and skips anything else: that
/// page's own fault, later, gets the full path's decision.
///
/// # Safety
/// Kernel mode at a call's start, after a restore, with the copy window's
/// leaf `window` found for this generation and [`CALL_PAGE`] writable; no
/// user run in progress.
pub unsafe fn replay_at_start(k: &mut KState, window: *mut u64) {
    k.replayed = [0; 2];
    let [msg, cap, _] = k.first_msg;
    if msg == 0 {
        return;
    }
    // SAFETY: `msg..msg + cap` is a receive buffer in the arena, mapped for
    // the guest's lifetime (checked when noted); reads within it.
    let (kind, payload_len) = unsafe {
        (
            (msg as *const u8).read_volatile(),
            ((msg + 8) as *const u32).read_unaligned(),
        )
    };
    let Some(end) = ws::message_end(kind, payload_len, cap) else {
        return;
    };
    // SAFETY: `end - 8..end` is within the buffer (`message_end`).
    let trailer = unsafe { ((msg + end - 8) as *const u64).read_unaligned() };
    let Some((offset, n)) = ws::list_before(end, payload_len, trailer) else {
        return;
    };
    if n == 0 {
        // The engine's empty list: nothing to replay, nothing to record.
        k.replayed = [1, 0];
        return;
    }
    let list = (msg + offset) as *const u64;
    // SAFETY: `n` entries at `list` lie within the buffer (`list_before`);
    // `window` is the live leaf entry of slot 0, whose table holds every
    // slot; the call page is writable (the caller's contract); kernel mode.
    let copies = unsafe { hljs_ws_replay(list, n, window) };
    k.replayed = [1, copies];
}

/// Replay assembly: r8, a table entry (or CR3), becomes the virtual address
/// of the table it points to, which must lie in scratch (else `89f`).
macro_rules! table_of_entry {
    () => {
        concat!(
            "mov r9, {addr_mask}\n",
            "and r8, r9\n",
            "cmp r8, [r15 + {k_gpa}]\n",
            "jb 89f\n",
            "add r8, [r15 + {k_delta}]\n",
        )
    };
}

/// Replay assembly: r8, the table of one level, becomes `rax`'s entry
/// there, which must be present and no large page (else `89f`), with the
/// user bit set.
macro_rules! walk_level {
    ($shift:literal) => {
        concat!(
            "mov r9, rax\n",
            "shr r9, ",
            $shift,
            "\n",
            "and r9d, 0x1ff\n",
            "lea r8, [r8 + r9 * 8]\n",
            "mov r9, [r8]\n",
            "test r9b, 1\n",
            "jz 89f\n",
            "test r9b, 0x80\n",
            "jnz 89f\n",
            "test r9b, 4\n",
            "jnz 1f\n",
            "or r9, 4\n",
            "mov [r8], r9\n",
            "1:\n",
            "mov r8, r9\n",
        )
    };
}

global_asm!(
    // hljs_ws_replay(list: rdi, n: rsi, window: rdx) -> rax = copies set up.
    // rbx = entry, rax = the current page, rbp = its run's last page, rsi =
    // the run's bytes left, rcx = entries left, rdx = the window's leaf
    // table, r8 = the current page's leaf entry, r9 = scratch, r10/r11 =
    // end of and next page in the pages reserved for copies (one allocation
    // for the whole replay, at most one page per slot), r12 = next slot,
    // r13/r14 = the 2 MiB region last walked and its leaf table (the list is
    // sorted, so each is walked once), r15 = the kernel page.
    ".global hljs_ws_replay",
    "hljs_ws_replay:",
    "push rbx", "push rbp", "push r12", "push r13", "push r14", "push r15",
    "sub rsp, 16",
    "mov qword ptr [rsp], -1",
    "lea r15, [rip + {kpage}]",
    "mov r12, 1",
    "mov r13, -1",
    "mov rcx, rsi",
    // Reserve up to one page per slot, leaving the reserve (one vCPU, and
    // no fault can come in the loop: a plain read-modify-write).
    "mov r8, [r15 + {k_alloc_gva}]",
    "mov r11, [r8]",
    "mov r10, [r15 + {k_alloc_limit}]",
    "sub r10, {reserve}",
    "lea r9, [r11 + {slots} * {page}]",
    "cmp r9, r10",
    "cmovb r10, r9",
    "cmp r10, r11",
    "cmovb r10, r11",
    "mov [r8], r10",
    // The loop: one entry each time round, a page or a run of pages.
    "2:",
    "sub rcx, 1",
    "jb 90f",
    "mov rbx, [rdi]",
    "add rdi, 8",
    "mov rax, rbx",
    "and rax, -4096",
    "test ebx, {run}",
    "jnz 70f",
    // One page: a low-half page other than the kernel page, or a page of
    // the user stack (not its guard page) or the arena, as the fast path
    // serves.
    "mov esi, {page}",
    "mov r9, rax",
    "shr r9, 21",
    "cmp r9, r13",
    "jne 20f",
    "3:",
    "test rax, rax",
    "js 39f",
    "cmp rax, r15",
    "je 2b",
    // The first page's leaf; reads or writes.
    "5:",
    "mov r8, rax",
    "shr r8, 9",
    "and r8d, 0xff8",
    "add r8, r14",
    "test bl, {copied}",
    "jnz 61f",
    // Reads: open each page present and not open yet (a copy-on-write one
    // read-only, as the recording call had it: a write later copies it).
    "50:",
    "mov r9, [r8]",
    "mov ebp, r9d",
    "and ebp, 5",
    "cmp ebp, 1",
    "jne 51f",
    "or r9, 4",
    "mov [r8], r9",
    "51:",
    "add r8, 8",
    "sub esi, {page}",
    "jnz 50b",
    "jmp 2b",
    // Writes: a present page not open yet, copy-on-write (the next reserved
    // page, the old one at the next slot, read-only for user mode: flushed
    // only if the slot held a page, as a restore leaves them empty unless
    // the snapshot was taken with some set; the new one in place, its page
    // noted for user mode's copy), or writable (opened).
    "61:",
    "mov r9, [r8]",
    "mov ebp, r9d",
    "and ebp, 0x207",
    "cmp ebp, 0x201",
    "jne 65f",
    "cmp r11, r10",
    "jae 90f",
    "mov rbp, {addr_mask}",
    "and rbp, r9",
    "or rbp, 5",
    "cmp qword ptr [rdx + r12 * 8], 0",
    "mov [rdx + r12 * 8], rbp",
    "je 62f",
    "push rbp",
    "push r9",
    "mov rbp, r12",
    "shl rbp, 12",
    "mov r9, {window}",
    "add rbp, r9",
    "invlpg [rbp]",
    "pop r9",
    "pop rbp",
    // The leaf's flags, P and not RW, U or COW (checked above), become P,
    // RW and U, without COW; the address the new page's.
    "62:",
    "xor r9, rbp",
    "xor r9, {to_copied}",
    "or r9, r11",
    "mov [r8], r9",
    "invlpg [rax]",
    "lea rbp, [rip + {call_page} + {copies} - 8]",
    "mov [rbp + r12 * 8], rax",
    "inc r12",
    "add r11, {page}",
    "63:",
    "add rax, {page}",
    "add r8, 8",
    "sub esi, {page}",
    "jnz 61b",
    "jmp 2b",
    "65:",
    "and ebp, 7",
    "cmp ebp, 3",
    "jne 63b",
    "or r9, 4",
    "mov [r8], r9",
    "jmp 63b",
    // A run: its pages in one 2 MiB region (so no wrapping around either),
    // checked whole as one page is (the kernel page not among them, all in
    // the stack or all in the arena), or skipped whole.
    "70:",
    "mov esi, ebx",
    "and esi, {run}",
    "shl esi, 11",
    "lea rbp, [rax + rsi]",
    "mov r9, rbp",
    "xor r9, rax",
    "shr r9, 21",
    "jnz 2b",
    "add esi, {page}",
    "test rax, rax",
    "js 40f",
    "mov r9, r15",
    "sub r9, rax",
    "cmp r9, rsi",
    "jb 2b",
    "71:",
    "mov r9, rax",
    "shr r9, 21",
    "cmp r9, r13",
    "je 5b",
    "call 80f",
    "test r14, r14",
    "jz 2b",
    "jmp 5b",
    // One page of a region not walked yet: an upper-half page must be the
    // stack's or the arena's before its tables are touched.
    "20:",
    "test rax, rax",
    "jns 21f",
    "cmp rax, [r15 + {k_ustack_limit}]",
    "jb 22f",
    "mov r9, {ustack_top}",
    "cmp rax, r9",
    "jb 21f",
    "22:",
    "cmp rax, [r15 + {k_arena}]",
    "jb 2b",
    "cmp rax, [r15 + {k_arena} + 8]",
    "jae 2b",
    "21:",
    "call 80f",
    "test r14, r14",
    "jz 2b",
    "jmp 3b",
    // Upper-half pages of the region walked last, from `rax` to `rbp`:
    // within the user stack or within the arena.
    "39:",
    "mov rbp, rax",
    "40:",
    "cmp rax, [r15 + {k_ustack_limit}]",
    "jb 41f",
    "mov r9, {ustack_top}",
    "cmp rbp, r9",
    "jb 42f",
    "41:",
    "cmp rax, [r15 + {k_arena}]",
    "jb 2b",
    "cmp rbp, [r15 + {k_arena} + 8]",
    "jae 2b",
    "42:",
    "test ebx, {run}",
    "jz 5b",
    "jmp 71b",
    // The walk of `rax`'s region: the three upper levels, tables in
    // scratch, present, no large page, the user bit set on the way; r13/r14
    // set to the region and its leaf table, or to -1/0 if it has none. The
    // upper two levels are walked once per 1 GiB: the frame keeps the last
    // one walked and its level-2 table ([rsp + 8], [rsp + 16] here).
    "80:",
    "mov r9, rax",
    "shr r9, 30",
    "cmp r9, [rsp + 8]",
    "jne 81f",
    "mov r8, [rsp + 16]",
    "jmp 82f",
    "81:",
    "mov r8, cr3",
    table_of_entry!(),
    walk_level!(39),
    table_of_entry!(),
    walk_level!(30),
    table_of_entry!(),
    "mov [rsp + 16], r8",
    "mov r9, rax",
    "shr r9, 30",
    "mov [rsp + 8], r9",
    "82:",
    walk_level!(21),
    table_of_entry!(),
    "mov r14, r8",
    "mov r13, rax",
    "shr r13, 21",
    "ret",
    "89:",
    "mov r13, -1",
    "xor r14d, r14d",
    "ret",
    // Done: the reserved pages not used go back to the allocator (nothing
    // else has allocated since).
    "90:",
    "mov r8, [r15 + {k_alloc_gva}]",
    "mov [r8], r11",
    "lea rax, [r12 - 1]",
    "add rsp, 16",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop rbp", "pop rbx",
    "ret",
    kpage = sym super::kpage::KPAGE,
    call_page = sym super::paging::CALL_PAGE,
    copies = const super::paging::CALL_PAGE_COPIES,
    k_gpa = const K_SCRATCH_GPA,
    k_delta = const K_SCRATCH_DELTA,
    k_alloc_gva = const K_ALLOC_GVA,
    k_alloc_limit = const K_ALLOC_LIMIT,
    k_ustack_limit = const K_USTACK_LIMIT,
    k_arena = const K_ARENA,
    ustack_top = const super::USER_STACK_TOP,
    addr_mask = const pte::ADDR,
    to_copied = const pte::PRESENT | pte::RW | pte::COW,
    copied = const COPIED,
    run = const ws::RUN,
    slots = const SLOTS,
    page = const PAGE_SIZE,
    reserve = const PAGE_SIZE * RESERVE_PAGES,
    window = const COPY_WINDOW,
);

unsafe extern "C" {
    /// The replay loop (see [`replay_at_start`]).
    fn hljs_ws_replay(list: *const u64, n: u64, window: *mut u64) -> u64;
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

global_asm!(
    // hljs_user_start(entry: rdi, copies: rsi, count: rdx): user mode's
    // first code in every call. Copies window slot k + 1 into the page
    // copies[k] names, for each of the `count` copies the kernel's replay
    // has just set up (the pages are in place, writable), before anything
    // can read or write them; then runs `entry`, as if called from the top
    // of the user stack. No stack use: a page being copied may be the
    // stack's own.
    ".global hljs_user_start",
    "hljs_user_start:",
    "mov r11, rdi",
    "mov r8, rsi",
    "lea r9, [rsi + rdx * 8]",
    "mov r10, {slot1}",
    "2:",
    "cmp r8, r9",
    "jae 4f",
    "mov rdi, [r8]",
    "add r8, 8",
    "mov rsi, r10",
    "mov ecx, {words}",
    "rep movsq",
    "add r10, {page}",
    "jmp 2b",
    "4:",
    "xor edi, edi",
    "xor esi, esi",
    "xor edx, edx",
    "xor ecx, ecx",
    "xor r8d, r8d",
    "xor r9d, r9d",
    "xor r10d, r10d",
    "jmp r11",
    slot1 = const COPY_WINDOW + PAGE_SIZE,
    words = const PAGE_SIZE / 8,
    page = const PAGE_SIZE,
);

unsafe extern "C" {
    /// User mode's start (see the assembly above).
    pub fn hljs_user_start();
}
