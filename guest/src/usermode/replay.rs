//! The working set's replay phase: the page-table work of a call after a
//! restore, done by user mode at native speed before any handler code runs.
//!
//! Every CPL0 instruction is emulated here (~1 µs each): replayed by the
//! kernel, a working set of ~40 pages cost ~2 000 emulated instructions,
//! most of a call after a restore. So the kernel hands the same work to
//! pristine user-mode code instead, for one short phase at the call's start:
//!
//! 1. the kernel maps two 1 GiB windows in a page-map slot of their own: the
//!    scratch region (page tables, hyperlight's allocator, the list), user
//!    writable, and the snapshot's memory, user read-only (copy sources);
//! 2. it enters user mode at [`hljs_user_replay`], on a fresh stack in
//!    scratch: code of the image, run from the snapshot's exact memory, before
//!    any JavaScript of this call and with no handler code reachable;
//! 3. that code serves each entry as the fault fast path would serve the
//!    fault it stands for (same rules as `hyperlight_js_guest_mm::working_set`,
//!    the list being untrusted), copying written pages itself, and leaves
//!    with `SYS_EXIT`;
//! 4. the kernel unmaps the windows and flushes the TLB before the call runs.
//!
//! The windows never outlive the phase and only this code runs while they
//! are mapped: a fault during it ends the phase at once (no landing is
//! delivered, [`REPLAYING`]), and the kernel's own pages outside scratch
//! (the kernel page) are refused by the same checks as in a fault. So the
//! privilege boundary is the same as with the kernel doing the work: what
//! moved is only which instructions the emulator has to run.

use core::arch::{asm, global_asm};

use hyperlight_js_guest_mm::pte::{self, LARGE, PRESENT, RW, USER};
use hyperlight_js_guest_mm::{PAGE_SIZE, page_of};

use super::entry::{STATUS_EXIT, hljs_enter_user};
use super::kpage::{KState, kpage_addr};
use super::paging;

/// The page-map (PML4) slot of the windows: below the user stack's (480),
/// unused by hyperlight's layout and by ours.
const SLOT: u64 = 479;
/// The windows' base, the start of [`SLOT`]'s 512 GiB.
const WINDOWS: u64 = 0xffff_0000_0000_0000 | (SLOT << 39);
/// The snapshot's memory, guest physical 0..1 GiB, read-only.
const SNAP_WINDOW: u64 = WINDOWS;
/// The top 1 GiB of guest physical memory, which holds hyperlight's scratch
/// region (it ends at 64 GiB), writable.
const SCRATCH_WINDOW: u64 = WINDOWS + GIB;
const GIB: u64 = 1 << 30;
/// The first guest physical address [`SCRATCH_WINDOW`] maps.
const SCRATCH_GIB: u64 = (hyperlight_common::layout::SCRATCH_TOP_GPA as u64 + 1) - GIB;

/// Pages of the allocator the phase leaves for the faults of the call itself
/// (page tables, stack growth, pages the list did not foresee).
const RESERVE_PAGES: u64 = 64;

/// Marks [`KState::replayed`] while the phase runs: a fault then ends it
/// instead of resuming user mode at a landing.
pub const REPLAYING: u64 = 2;

/// What the phase's code needs, at the start of its stack page (read and
/// written through the scratch window). Offsets are the assembly's.
#[repr(C)]
struct Args {
    /// The root table's physical address (user mode cannot read CR3).
    root: u64,
    /// Added to a scratch physical address, its address in the window.
    to_window: u64,
    /// The scratch region's first physical address: tables lie above it.
    scratch_gpa: u64,
    kpage: u64,
    ustack_limit: u64,
    arena: [u64; 2],
    /// hyperlight's allocator pointer (its next free physical page), in
    /// the window.
    alloc: u64,
    /// Where the phase's allocations stop.
    alloc_end: u64,
    /// What the phase wrote to the allocator pointer, to give back only if
    /// nothing else allocated meanwhile (assembly's own).
    reserved: u64,
    /// Out: the pages copied.
    copies: u64,
}

/// The windows' page directories, one per window, each 512 entries of 2 MiB
/// pages over a fixed physical range: content that does not depend on where
/// a snapshot puts anything, so it is built at compile time and read from
/// the snapshot's memory by the page walk (the accessed and dirty bits set
/// already: the walk never writes there). Only their table of 1 GiB
/// entries, which names where they are, is made per restore.
#[repr(C, align(8192))]
struct Directories([[u64; 512]; 2]);

static DIRECTORIES: Directories = Directories([directory(0, 0), directory(SCRATCH_GIB, RW)]);

const fn directory(base: u64, rw: u64) -> [u64; 512] {
    const ACCESSED_DIRTY: u64 = 0x60;
    let mut d = [0; 512];
    let mut i = 0;
    while i < 512 {
        d[i] = (base + ((i as u64) << 21)) | PRESENT | USER | LARGE | ACCESSED_DIRTY | rw;
        i += 1;
    }
    d
}

/// Replays `n` entries at `list` (in the arena) in the phase; the number of
/// pages copied, or `None` when the phase could not be set up (the call's
/// faults then serve its pages).
///
/// # Safety
/// Kernel mode at a call's start, no user run in progress; the list lies
/// in scratch memory.
pub unsafe fn replay(k: &mut KState, list: u64, n: u64) -> Option<u64> {
    let [scratch_gpa, scratch_gva] = k.scratch;
    if scratch_gpa < SCRATCH_GIB || list < scratch_gva {
        return None;
    }
    let to_window = SCRATCH_WINDOW.wrapping_sub(SCRATCH_GIB);
    let to_window_gva = |gva: u64| gva - scratch_gva + scratch_gpa + to_window;
    let slot = paging::root_entry(k, WINDOWS)?;
    // SAFETY: a live entry of the root table.
    if unsafe { slot.read_volatile() } != 0 {
        return None;
    }
    // Where this snapshot put the two directories (one 2 MiB region: the
    // pair is aligned to its size).
    let dirs = (&raw const DIRECTORIES) as u64;
    let table = paging::leaf_table(k, dirs)?;
    let dir_pa = |va: u64| {
        let leaf = paging::leaf_in(k, table, va)?;
        // SAFETY: a live leaf entry.
        let v = unsafe { leaf.read_volatile() };
        (v & PRESENT != 0).then_some(v & pte::ADDR)
    };
    let (snap_dir, scratch_dir) = (dir_pa(dirs)?, dir_pa(dirs + PAGE_SIZE)?);
    // Both fresh: pages above hyperlight's allocator pointer are zero
    // (scratch is zeroed at every restore and the allocator only bumps).
    let (pdpt_pa, pdpt) = paging::fresh_page()?;
    let (stack_pa, stack) = paging::fresh_page()?;
    let alloc_end = k.alloc_limit.saturating_sub(RESERVE_PAGES * PAGE_SIZE);
    let args = stack.cast::<Args>();
    // SAFETY: two whole unused scratch pages, seen by the kernel at `pdpt`
    // and `stack`; the root entry is ours (checked empty above).
    unsafe {
        let pdpt = pdpt.cast::<u64>();
        pdpt.write_volatile(snap_dir | PRESENT | RW | USER);
        pdpt.add(1)
            .write_volatile(scratch_dir | PRESENT | RW | USER);
        args.write_volatile(Args {
            root: cr3() & pte::ADDR,
            to_window,
            scratch_gpa,
            kpage: kpage_addr(),
            ustack_limit: k.ustack_limit,
            arena: k.arena,
            alloc: to_window_gva(k.alloc_gva),
            alloc_end,
            reserved: 0,
            copies: 0,
        });
    }
    // The phase's code, opened as a fault would open it.
    let code = hljs_user_replay as *const () as u64;
    let end = (&raw const hljs_user_replay_end) as u64;
    let mut page = page_of(code);
    while page < end {
        paging::open_walk(k, page)?;
        page += PAGE_SIZE;
    }
    let stack_win = stack_pa + to_window;
    k.replayed = [REPLAYING, 0];
    // SAFETY: the root entry is ours; kernel mode. The phase's code is in
    // the image, its stack a page of its own, its arguments in the window.
    let status = unsafe {
        slot.write_volatile(pdpt_pa | PRESENT | RW | USER);
        let status = hljs_enter_user(
            code,
            stack_win + PAGE_SIZE - 16,
            to_window_gva(list),
            n,
            stack_win,
        );
        slot.write_volatile(0);
        // The windows gone from the TLB, and the replayed entries seen by
        // every later access: toggling CR4.PGE flushes it, as at the call's
        // entry. (Reloading CR3 instead makes KVM rebuild its shadow tables
        // here, and every page the call touches fault again.)
        asm!(
            "mov {0}, cr4",
            "xor {0}, 0x80",
            "mov cr4, {0}",
            "xor {0}, 0x80",
            "mov cr4, {0}",
            out(reg) _,
            options(nostack)
        );
        status
    };
    k.replayed = [0; 2];
    // SAFETY: the stack page, read by the kernel after the phase.
    let copies = unsafe { (&raw const (*args).copies).read_volatile() };
    (status == STATUS_EXIT).then_some(copies)
}

fn cr3() -> u64 {
    let cr3: u64;
    // SAFETY: reading CR3 in kernel mode.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack)) };
    cr3
}

/// Phase assembly: r8, a table entry (or the root), becomes the window
/// address of the table it points to, which must lie in scratch (else `89f`).
macro_rules! table_of_entry {
    () => {
        concat!(
            "mov r9, {addr_mask}\n",
            "and r8, r9\n",
            "cmp r8, [r15 + {a_scratch_gpa}]\n",
            "jb 89f\n",
            "add r8, [r15 + {a_to_window}]\n",
        )
    };
}

/// Phase assembly: r8, the table of one level, becomes `rax`'s entry
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
    // hljs_user_replay(list: rdi, n: rsi, args: rdx), user mode, the stack
    // at the top of the arguments' page. rbx = entry, rax = the current
    // page, rbp = its run's last page or scratch, rsi = the run's bytes left,
    // rcx = entries left, r8 = the current page's leaf entry (in the
    // window), r9 = scratch, r10/r11 = end of and next page in the pages
    // reserved for copies, r12 = copies made, r13/r14 = the 2 MiB region
    // last walked and its leaf table (the list is sorted, so each is walked
    // once), r15 = the arguments.
    ".pushsection .text.hljs_user_replay, \"ax\", @progbits",
    ".balign 4096",
    ".global hljs_user_replay",
    "hljs_user_replay:",
    "mov r15, rdx",
    "sub rsp, 16",
    "mov qword ptr [rsp], -1",
    "xor r12d, r12d",
    "mov r13, -1",
    "xor r14d, r14d",
    "mov rcx, rsi",
    // Reserve the allocator's pages up to the end the kernel set (no fault
    // can come in the loop, and one vCPU: a plain read-modify-write).
    "mov r8, [r15 + {a_alloc}]",
    "mov r11, [r8]",
    "mov r10, [r15 + {a_alloc_end}]",
    "cmp r10, r11",
    "cmovb r10, r11",
    "mov [r8], r10",
    "mov [r15 + {a_reserved}], r10",
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
    "cmp rax, [r15 + {a_kpage}]",
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
    // Writes: a present page not open yet, copy-on-write (copied into the
    // next reserved page from where a window shows the old one, then put
    // in place writable and open, without the mark), or writable (opened).
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
    "cmp rbp, {gib}",
    "jb 66f",
    "cmp rbp, [r15 + {a_scratch_gpa}]",
    "jb 63f",
    "add rbp, [r15 + {a_to_window}]",
    "jmp 67f",
    "66:",
    "mov rdx, {snap_window}",
    "add rbp, rdx",
    "67:",
    "push rsi",
    "push rdi",
    "push rcx",
    "mov rsi, rbp",
    "mov rdi, r11",
    "add rdi, [r15 + {a_to_window}]",
    "mov ecx, {words}",
    "rep movsq",
    "pop rcx",
    "pop rdi",
    "pop rsi",
    "mov rbp, {keep_mask}",
    "and r9, rbp",
    "or r9, r11",
    "or r9, {rw_user}",
    "mov [r8], r9",
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
    "mov r9, [r15 + {a_kpage}]",
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
    "cmp rax, [r15 + {a_ustack_limit}]",
    "jb 22f",
    "mov r9, {ustack_top}",
    "cmp rax, r9",
    "jb 21f",
    "22:",
    "cmp rax, [r15 + {a_arena}]",
    "jb 2b",
    "cmp rax, [r15 + {a_arena} + 8]",
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
    "cmp rax, [r15 + {a_ustack_limit}]",
    "jb 41f",
    "mov r9, {ustack_top}",
    "cmp rbp, r9",
    "jb 42f",
    "41:",
    "cmp rax, [r15 + {a_arena}]",
    "jb 2b",
    "cmp rbp, [r15 + {a_arena} + 8]",
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
    "mov r8, [r15 + {a_root}]",
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
    // Done: the reserved pages not used go back to the allocator, unless
    // something else allocated since (then they stay taken, unused).
    "90:",
    "mov r8, [r15 + {a_alloc}]",
    "mov r9, [r15 + {a_reserved}]",
    "cmp [r8], r9",
    "jne 91f",
    "mov [r8], r11",
    "91:",
    "mov [r15 + {a_copies}], r12",
    "xor eax, eax",
    "ud2",
    ".global hljs_user_replay_end",
    "hljs_user_replay_end:",
    ".popsection",
    a_root = const core::mem::offset_of!(Args, root),
    a_to_window = const core::mem::offset_of!(Args, to_window),
    a_scratch_gpa = const core::mem::offset_of!(Args, scratch_gpa),
    a_kpage = const core::mem::offset_of!(Args, kpage),
    a_ustack_limit = const core::mem::offset_of!(Args, ustack_limit),
    a_arena = const core::mem::offset_of!(Args, arena),
    a_alloc = const core::mem::offset_of!(Args, alloc),
    a_alloc_end = const core::mem::offset_of!(Args, alloc_end),
    a_reserved = const core::mem::offset_of!(Args, reserved),
    a_copies = const core::mem::offset_of!(Args, copies),
    ustack_top = const super::USER_STACK_TOP,
    addr_mask = const pte::ADDR,
    keep_mask = const !(pte::ADDR | pte::COW),
    rw_user = const RW | USER,
    copied = const hyperlight_js_guest_mm::working_set::COPIED,
    run = const hyperlight_js_guest_mm::working_set::RUN,
    page = const PAGE_SIZE,
    words = const PAGE_SIZE / 8,
    gib = const GIB,
    snap_window = const SNAP_WINDOW,
);

const _: () = assert!(
    super::SYS_EXIT == 0,
    "the phase leaves with `xor eax, eax; ud2`"
);

unsafe extern "C" {
    /// The phase's code (see the assembly above).
    fn hljs_user_replay();
    /// The end of the phase's code, for the kernel to open its pages.
    static hljs_user_replay_end: u8;
}
