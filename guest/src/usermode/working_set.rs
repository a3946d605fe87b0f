//! The working set: the pages a call after a restore needs opened or copied,
//! recorded by the kernel in one call and replayed at the start of later
//! ones in a single kernel entry, where each would otherwise cost a fault
//! (~0.3 ms of exception delivery here; the replay's work is ~1/3 of that).
//!
//! The host keeps the list between restores (it is lost with the memory) and
//! passes it with the call. The kernel treats it as untrusted: each entry is
//! served as the fault fast path would serve the fault it stands for, or
//! not at all (`hyperlight_js_guest_mm::working_set`).
//! Copies go through slots of the copy window after slot 0, which single
//! faults keep; user mode copies them natively, before anything else runs.

use core::arch::{asm, global_asm};

use hyperlight_js_guest_mm::fault::Decision;
use hyperlight_js_guest_mm::working_set::{self as ws, COPIED, MAX_PAGES, PENDING};
use hyperlight_js_guest_mm::{PAGE_SIZE, page_of, pte};

use super::kpage::{K_ALLOC_GVA, K_ALLOC_LIMIT, K_HEAP, K_SCRATCH_DELTA, K_SCRATCH_GPA, KState};
use super::paging::{self, COPY_WINDOW};
use super::{SYS_WS_COPY, SYS_WS_RECORD, SYS_WS_REPLAY, in_user, syscall};

/// Window slots a replay copies through (slot 0 is the single faults').
const SLOTS: u64 = 64;
const _: () = assert!(PENDING == 2, "the replay loop clears it with `and rbx, -3`");
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
/// buffer stand for, setting up the copies through window slots 1.. and
/// marking their entries [`PENDING`]. Returns where it stopped: `end`, or
/// the first entry left for a later replay (no slot left) or for the faults
/// themselves (no page to spare).
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
    // SAFETY: the buffer is a writable user page of MAX_PAGES entries and
    // `end` is within it; `window` is the live leaf entry of slot 0, whose
    // table holds every slot; kernel mode.
    unsafe { hljs_ws_replay(buf, start, end, window) }
}

global_asm!(
    // hljs_ws_replay(buf: rdi, start: rsi, end: rdx, window: rcx) -> rax.
    // rbx = entry, rax = its page, r8/r9 = walk, r12 = next slot,
    // r13/r14 = the 2 MiB region last walked and its leaf table (the list
    // is sorted, so each is walked once), r15 = the kernel page.
    ".global hljs_ws_replay",
    "hljs_ws_replay:",
    "push rbx", "push rbp", "push r12", "push r13", "push r14", "push r15",
    "mov r12, 1",
    "mov r13, -1",
    "lea r15, [rip + {kpage}]",
    "2:",
    "cmp rsi, rdx",
    "jae 90f",
    "mov rbx, [rdi + rsi * 8]",
    "and rbx, -3",
    "mov [rdi + rsi * 8], rbx",
    "mov rax, rbx",
    "and rax, -4096",
    // A low-half page other than the kernel page, as the fast path serves.
    "mov rbp, rax",
    "shr rbp, 47",
    "jnz 80f",
    "cmp rax, r15",
    "je 80f",
    "mov rbp, rax",
    "shr rbp, 21",
    "cmp rbp, r13",
    "je 5f",
    // The three upper levels: tables in scratch, present, no large page;
    // the user bit set on the way.
    "mov r8, cr3",
    ".irp shift, 39,30,21",
    "mov r9, {addr_mask}",
    "and r8, r9",
    "cmp r8, [r15 + {k_gpa}]",
    "jb 80f",
    "add r8, [r15 + {k_delta}]",
    "mov r9, rax",
    "shr r9, \\shift",
    "and r9d, 0x1ff",
    "lea r8, [r8 + r9 * 8]",
    "mov r9, [r8]",
    "test r9b, 1",
    "jz 80f",
    "test r9b, 0x80",
    "jnz 80f",
    "test r9b, 4",
    "jnz 1f",
    "or r9, 4",
    "mov [r8], r9",
    "1:",
    "mov r8, r9",
    ".endr",
    "mov r9, {addr_mask}",
    "and r8, r9",
    "cmp r8, [r15 + {k_gpa}]",
    "jb 80f",
    "add r8, [r15 + {k_delta}]",
    "mov r14, r8",
    "mov r13, rbp",
    // The leaf: present and not open yet.
    "5:",
    "mov r9, rax",
    "shr r9, 12",
    "and r9d, 0x1ff",
    "lea r8, [r14 + r9 * 8]",
    "mov r9, [r8]",
    "test r9b, 1",
    "jz 80f",
    "test r9b, 4",
    "jnz 80f",
    "test bl, {copied}",
    "jz 6f",
    // A write: open a writable page, copy a copy-on-write one.
    "test r9b, 2",
    "jnz 7f",
    "test r9d, 0x200",
    "jz 80f",
    "jmp 8f",
    // A read: copy a copy-on-write page in the heap, open anything else.
    "6:",
    "test r9d, 0x200",
    "jz 7f",
    "cmp rax, [r15 + {k_heap}]",
    "jb 7f",
    "cmp rax, [r15 + {k_heap} + 8]",
    "jb 8f",
    "7:",
    "or r9, 4",
    "mov [r8], r9",
    "jmp 80f",
    // Copy-on-write: a fresh page (leaving the reserve), the old one at the
    // next slot, read-only for user mode, the new one in place.
    "8:",
    "cmp r12, {slots}",
    "ja 90f",
    "mov r10, [r15 + {k_alloc_gva}]",
    "mov r11, {page}",
    "lock xadd [r10], r11",
    "lea rbp, [r11 + {spare}]",
    "cmp rbp, [r15 + {k_alloc_limit}]",
    "ja 85f",
    "mov rbp, {addr_mask}",
    "and rbp, r9",
    "or rbp, 5",
    "mov [rcx + r12 * 8], rbp",
    "mov rbp, r12",
    "shl rbp, 12",
    "mov r10, {window}",
    "add rbp, r10",
    "invlpg [rbp]",
    "mov rbp, {keep_mask}",
    "and r9, rbp",
    "or r9, r11",
    "or r9, 6",
    "mov [r8], r9",
    "invlpg [rax]",
    "or rbx, {pending}",
    "mov [rdi + rsi * 8], rbx",
    "inc r12",
    "jmp 80f",
    // No page to spare: give it back and stop.
    "85:",
    "lock sub qword ptr [r10], {page}",
    "jmp 90f",
    "80:",
    "inc rsi",
    "jmp 2b",
    "90:",
    "mov rax, rsi",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop rbp", "pop rbx",
    "ret",
    kpage = sym super::kpage::KPAGE,
    k_gpa = const K_SCRATCH_GPA,
    k_delta = const K_SCRATCH_DELTA,
    k_heap = const K_HEAP,
    k_alloc_gva = const K_ALLOC_GVA,
    k_alloc_limit = const K_ALLOC_LIMIT,
    addr_mask = const pte::ADDR,
    keep_mask = const !(pte::ADDR | pte::COW),
    copied = const COPIED,
    pending = const PENDING,
    slots = const SLOTS,
    page = const PAGE_SIZE,
    spare = const PAGE_SIZE * (1 + RESERVE_PAGES),
    window = const COPY_WINDOW,
);

unsafe extern "C" {
    /// The replay loop (see [`replay`]).
    fn hljs_ws_replay(buf: *mut u64, start: u64, end: u64, window: *mut u64) -> u64;
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
    let mut list = unsafe { core::slice::from_raw_parts(buf, n.min(MAX_PAGES)) }.to_vec();
    // By address, so that a replay walks each 2 MiB once; one entry a page,
    // a copy where one was needed (a copy opens the page too).
    list.sort_unstable();
    list.dedup_by(|later, kept| {
        let same = page_of(*later) == page_of(*kept);
        if same {
            *kept |= *later & COPIED;
        }
        same
    });
    list
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
