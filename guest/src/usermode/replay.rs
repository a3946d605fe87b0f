//! The working set's replay phase: the page-table work of a call after a
//! restore, done by user mode at native speed before any handler code runs.
//!
//! Every CPL0 instruction is emulated here (~1 µs each): replayed by the
//! kernel, a working set of ~40 pages cost ~2 000 emulated instructions,
//! most of a call after a restore. So the kernel hands the same work to
//! pristine user-mode code instead, for one short phase at the call's start:
//!
//! 1. the kernel maps two 1 GiB windows in a page-map slot of their own,
//!    each through a static directory of 2 MiB pages: the top GiB of guest
//!    physical memory, where hyperlight's scratch region lies (page tables,
//!    its allocator, the list, the kernel page's copy), user writable, and
//!    the first GiB, the snapshot's memory, user read-only (copy sources);
//! 2. it enters user mode at [`hljs_user_replay`], which uses no stack:
//!    code of the image, run from the snapshot's exact memory, before any
//!    JavaScript of this call and with no handler code reachable;
//! 3. that code serves each entry as the fault fast path would serve the
//!    fault it stands for (same rules as `hyperlight_js_guest_mm::working_set`,
//!    the list being untrusted), then the call page (`paging::CALL_PAGE`,
//!    which the kernel writes at every call); a written page gets its new
//!    page in place at once and its copy after the loop, through its own
//!    address (KVM's shadow entry for it made once, and neighbours mapped
//!    with it: the kernel backs the pages the phase will take beforehand);
//!    then it leaves with `SYS_EXIT`;
//! 4. the kernel unmaps the windows and flushes the TLB before the call runs.
//!
//! The windows never outlive the phase and only this code runs while they
//! are mapped: a fault during it ends the phase at once (no landing is
//! delivered, [`REPLAYING`]), and the kernel's own pages outside scratch
//! (the kernel page) are refused by the same checks as in a fault. So the
//! privilege boundary is the same as with the kernel doing the work: what
//! moved is only which instructions the emulator has to run.

use core::arch::{asm, global_asm};

use hyperlight_js_guest_mm::PAGE_SIZE;
use hyperlight_js_guest_mm::pte::{self, LARGE, PRESENT, RW, USER};

use super::entry::{STATUS_EXIT, hljs_enter_user};
use super::kpage::{K_ALLOC_GVA, K_ALLOC_LIMIT, K_ARENA, K_SCRATCH_DELTA, K_USTACK_LIMIT, KState};
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

/// Pages the kernel populates per round before the phase (see [`Phase::run`]).
const TOUCH_UNROLL: u64 = 8;

/// Copies the phase makes at most: one pair of addresses each in its buffer page.
const MAX_COPIES: u64 = PAGE_SIZE / 16;

/// Marks [`KState::replayed`] while the phase runs: a fault then ends it
/// instead of resuming user mode at a landing.
pub const REPLAYING: u64 = 2;

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

/// Added to a physical address in the scratch window's GiB: its window address.
const TO_WINDOW: u64 = SCRATCH_WINDOW.wrapping_sub(SCRATCH_GIB);

/// A replay phase set up, its windows' table written but not yet mapped.
/// [`Phase::run`] runs it with no reference to the kernel page alive: the
/// phase's kernel entries take their own.
pub struct Phase {
    /// The root table's entry for the windows, and what maps them.
    slot: *mut u64,
    pdpt: u64,
    code: u64,
    /// The phase's arguments: the list and its end, the kernel page's
    /// state, the root table (see the assembly).
    args: [u64; 4],
    /// Where the kernel sees the first page the phase will take from the
    /// allocator, and how many pages from there it populates (see
    /// [`Phase::run`]).
    touch: (u64, u64),
}

/// Whether the phase can run in this image and sandbox: its directories and
/// code lie in the kernel page's 2 MiB region (the one leaf table
/// [`Phase::set_up`] reads them through), and scratch lies in the top GiB
/// the scratch window maps. Fixed for the guest's lifetime (neither the
/// image nor scratch moves), so the kernel checks it once, at init.
pub fn layout_holds(scratch_gpa: u64) -> bool {
    let region = super::kpage::kpage_addr() >> 21;
    let dirs = (&raw const DIRECTORIES) as u64;
    let code = hljs_user_replay as *const () as u64;
    scratch_gpa >= SCRATCH_GIB && dirs >> 21 == region && code >> 21 == region
}

impl Phase {
    /// Sets up the phase for the `n` entries at `list` (in the arena):
    /// `table` is the entry that points at the leaf table of the kernel
    /// page's 2 MiB region, where the phase's code and directories must lie
    /// too (they do in this image: statics and text of a small binary;
    /// `engine/tests/working_set.rs` fails if the phase stops running),
    /// `kpage` the kernel page's leaf entry, already copied, and `copies`
    /// the pages the list says it copies (untrusted: what the kernel
    /// populates for the phase, within its reserve). `None`: no phase, the
    /// call's faults serve its pages.
    ///
    /// Every instruction here is emulated: the walk is the table
    /// arithmetic itself, once, rather than a walk per page.
    #[inline(always)]
    pub fn set_up(
        k: &mut KState,
        table: u64,
        kpage: *mut u64,
        list: u64,
        n: u64,
        copies: u64,
    ) -> Option<Self> {
        let [scratch_gpa, scratch_gva] = k.scratch;
        if !k.phase_ok || list < scratch_gva {
            return None;
        }
        let dirs = (&raw const DIRECTORIES) as u64;
        let code = hljs_user_replay as *const () as u64;
        let leaves = pte::table_va(table, scratch_gpa, scratch_gva)?;
        let root_pa = paging::cr3() & pte::ADDR;
        let root = pte::table_va(root_pa, scratch_gpa, scratch_gva)?;
        let leaf = |va: u64| (leaves + 8 * pte::index(va, 3) as u64) as *mut u64;
        let slot = (root + 8 * pte::index(WINDOWS, 0) as u64) as *mut u64;
        // SAFETY: entries of the live root and leaf tables, in scratch (the
        // indexes are below 512); the kernel page's leaf entry (the caller's).
        let (free, snap_dir, scratch_dir, code_leaf, kstate) = unsafe {
            (
                slot.read_volatile() == 0,
                leaf(dirs).read_volatile(),
                leaf(dirs + PAGE_SIZE).read_volatile(),
                leaf(code).read_volatile(),
                kpage.read_volatile() & pte::ADDR,
            )
        };
        if !free || snap_dir & scratch_dir & code_leaf & PRESENT == 0 || kstate < scratch_gpa {
            return None;
        }
        // The table of 1 GiB entries: a fresh page (above hyperlight's
        // allocator pointer pages are zero: scratch is zeroed at every
        // restore and the allocator only bumps).
        let (pdpt_pa, pdpt) = paging::bump_page(k)?;
        // SAFETY: the phase's code page opened as a fault would open it; a
        // whole unused scratch page at `pdpt`.
        unsafe {
            if code_leaf & USER == 0 {
                leaf(code).write_volatile(code_leaf | USER);
            }
            let pdpt = pdpt.cast::<u64>();
            pdpt.write_volatile((snap_dir & pte::ADDR) | PRESENT | RW | USER);
            pdpt.add(1)
                .write_volatile((scratch_dir & pte::ADDR) | PRESENT | RW | USER);
        }
        let list_window = list - scratch_gva + scratch_gpa + TO_WINDOW;
        // The pages the phase will take: its pair buffer, then one a copy
        // (`copies` as the list says, and the call page), within what it
        // reserves (see the assembly).
        // SAFETY: the allocator's pointer (noted at init).
        let next = unsafe { (k.alloc_gva as *const u64).read_volatile() };
        let room = k
            .alloc_limit
            .saturating_sub(next + RESERVE_PAGES * PAGE_SIZE)
            / PAGE_SIZE;
        // At most what the pair buffer can hold: a hint of more (the list
        // comes from what earlier calls did) would only cost time here.
        let pages = (copies.min(MAX_COPIES) + 2)
            .next_multiple_of(TOUCH_UNROLL)
            .min(room & !(TOUCH_UNROLL - 1));
        Some(Self {
            slot,
            pdpt: pdpt_pa | PRESENT | RW | USER,
            code,
            args: [
                list_window,
                list_window + 8 * n,
                kstate + TO_WINDOW,
                root_pa,
            ],
            touch: (next.wrapping_add(k.scratch_delta), pages),
        })
    }

    /// Maps the windows, runs the phase, unmaps them and flushes the TLB;
    /// whether the phase ran to its end.
    ///
    /// # Safety
    /// Kernel mode at a call's start, no user run in progress, and no
    /// reference to the kernel page alive (the phase's exit and any fault
    /// in it take their own); the root entry is still the one set up.
    #[inline(always)]
    pub unsafe fn run(self) -> bool {
        // SAFETY: the caller's contract: the kernel page is ours to write
        // through its raw address; the root entry is ours (checked empty);
        // the phase's code is in the image and uses no stack; its arguments
        // are in the windows.
        unsafe {
            let replayed = &raw mut super::kpage::KPAGE.replayed[0];
            replayed.write_volatile(REPLAYING);
            self.slot.write_volatile(self.pdpt);
            // The pages the phase will write, each touched once here: an
            // emulated store makes the host back the page (scratch is
            // unbacked after every restore) without a fault of the guest's,
            // and KVM then maps a faulting page's neighbours with it
            // (which it does only for pages the host backs). One store a
            // page, eight a round.
            let (mut p, mut pages) = self.touch;
            while pages != 0 {
                asm!(
                    "mov byte ptr [{p}], 0",
                    "mov byte ptr [{p} + 0x1000], 0",
                    "mov byte ptr [{p} + 0x2000], 0",
                    "mov byte ptr [{p} + 0x3000], 0",
                    "mov byte ptr [{p} + 0x4000], 0",
                    "mov byte ptr [{p} + 0x5000], 0",
                    "mov byte ptr [{p} + 0x6000], 0",
                    "mov byte ptr [{p} + 0x7000], 0",
                    p = in(reg) p,
                    options(nostack)
                );
                p += TOUCH_UNROLL * PAGE_SIZE;
                pages -= TOUCH_UNROLL;
            }
            let [a0, a1, a2, a3] = self.args;
            let status = hljs_enter_user(self.code, 0, a0, a1, a2, a3);
            self.slot.write_volatile(0);
            // The windows gone from the TLB, and the replayed entries seen
            // by every later access: toggling CR4.PGE flushes it, as at the
            // call's entry. (Reloading CR3 instead makes KVM rebuild its
            // shadow tables here, and every page the call touches fault
            // again.)
            asm!(
                "mov {0}, cr4",
                "xor {0}, 0x80",
                "mov cr4, {0}",
                "xor {0}, 0x80",
                "mov cr4, {0}",
                out(reg) _,
                options(nostack)
            );
            replayed.write_volatile(super::working_set::LIST_REPLAYED);
            status == STATUS_EXIT
        }
    }
}

/// Phase assembly: r8, a table entry (or the root), becomes the window
/// address of the table it points to, which must lie in scratch (else `9f`).
macro_rules! table_of_entry {
    () => {
        concat!(
            "mov r9, {addr_mask}\n",
            "and r8, r9\n",
            "cmp r8, [r15 + {k_scratch_gpa}]\n",
            "jb 9f\n",
            "mov r9, {to_window}\n",
            "add r8, r9\n",
        )
    };
}

/// Phase assembly: r9 becomes the window address of the copies' pair
/// buffer, the reserved page just below the `r12` pages taken for copies
/// (`r11` the next one): r11 - 4096 * (r12 + 1). Clobbers rbx.
macro_rules! pair_buffer {
    () => {
        concat!(
            "mov r9, r12\n",
            "shl r9, 12\n",
            "neg r9\n",
            "lea r9, [r11 + r9 - 4096]\n",
            "mov rbx, {to_window}\n",
            "add r9, rbx\n",
        )
    };
}

/// Phase assembly: r8, the table of one level, becomes `rax`'s entry
/// there, which must be present and no large page (else `9f`), with the
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
            "jz 9f\n",
            "test r9b, 0x80\n",
            "jnz 9f\n",
            "test r9b, 4\n",
            "jnz 1f\n",
            "or r9, 4\n",
            "mov [r8], r9\n",
            "1:\n",
            "mov r8, r9\n",
        )
    };
}

/// Phase assembly: the walk of `rax`'s 2 MiB region, sets r13/r14 to the
/// region and its leaf table (in the window), or to -1/0 if it has none;
/// then goes on at `$next` (or back to the loop, `2b`, on failure).
macro_rules! walk_region {
    ($next:literal) => {
        concat!(
            "mov r8, rcx\n",
            table_of_entry!(),
            walk_level!(39),
            table_of_entry!(),
            walk_level!(30),
            table_of_entry!(),
            walk_level!(21),
            table_of_entry!(),
            "mov r14, r8\n",
            "mov r13, rax\n",
            "shr r13, 21\n",
            "jmp ",
            $next,
            "\n",
            "9:\n",
            "mov r13, -1\n",
            "xor r14d, r14d\n",
            "jmp 2b\n",
        )
    };
}

global_asm!(
    // hljs_user_replay(list: rdi, end: rsi, kstate: rdx, root: rcx), user
    // mode, in the windows: the list's entries, the kernel page's state
    // (read for its bounds) and the root table. No stack.
    // rax = the current page, rbx = entry, then copies made (the result,
    // read by the kernel from the saved registers), rcx = the root, rdx =
    // the list's end, rsi = the run's bytes left, rbp = its last page or
    // scratch, r8 = the current page's leaf entry, r9 = scratch, r10/r11 =
    // end of and next page in the pages reserved for copies, r12 = copies
    // made, r13/r14 = the 2 MiB region last walked and its leaf table (the
    // list is sorted, so each is walked once), r15 = the kernel state.
    ".pushsection .text.hljs_user_replay, \"ax\", @progbits",
    ".balign 4096",
    ".global hljs_user_replay",
    "hljs_user_replay:",
    "mov r15, rdx",
    "mov rdx, rsi",
    "xor r12d, r12d",
    "mov r13, -1",
    "xor r14d, r14d",
    // Reserve the allocator's pages up to RESERVE_PAGES below its limit (no
    // fault can come in the loop, and one vCPU: a plain read-modify-write).
    "mov r8, [r15 + {k_alloc_gva}]",
    "sub r8, [r15 + {k_scratch_delta}]",
    "mov r9, {to_window}",
    "add r8, r9",
    "mov r11, [r8]",
    "mov r10, [r15 + {k_alloc_limit}]",
    "sub r10, {reserve}",
    "cmp r10, r11",
    "cmovb r10, r11",
    "mov [r8], r10",
    // The first reserved page holds the copies' pairs of addresses (the
    // new page's own address, where the old one shows), made in the loop
    // and copied after it: every page is in place before the first copy,
    // so KVM can map a faulting page's neighbours as they will stay.
    "lea r9, [r11 + {page}]",
    "cmp r11, r10",
    "cmovb r11, r9",
    // The loop: one entry each time round, a page or a run of pages.
    "2:",
    "cmp rdi, rdx",
    "jae 90f",
    "mov rbx, [rdi]",
    "add rdi, 8",
    "mov rax, rbx",
    "and rax, -4096",
    "4:",
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
    "lea r9, [rip + {kpage}]",
    "cmp rax, r9",
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
    // Writes: a present page not open yet, copy-on-write (the next
    // reserved page put in place, writable and open, without the mark; its
    // copy noted in the buffer, made after the loop), or writable (opened).
    "61:",
    "mov r9, [r8]",
    "mov ebp, r9d",
    "and ebp, 0x207",
    "cmp ebp, 0x201",
    "jne 65f",
    "cmp r11, r10",
    "jae 90f",
    // rbp = where the old page shows, or leave it to the fault.
    "mov rbp, {addr_mask}",
    "and rbp, r9",
    "cmp rbp, {gib}",
    "jb 66f",
    "cmp rbp, [r15 + {k_scratch_gpa}]",
    "jb 63f",
    "mov r9, {to_window}",
    "add rbp, r9",
    "jmp 67f",
    "66:",
    "mov r9, {snap_window}",
    "add rbp, r9",
    // The new page in place, and the pair noted (a full buffer leaves the
    // rest to the faults).
    "67:",
    "cmp r12, {max_copies}",
    "jae 63f",
    "mov r9, [r8]",
    "mov rbx, {keep_mask}",
    "and r9, rbx",
    "or r9, r11",
    "or r9, {rw_user}",
    "mov [r8], r9",
    // The pair at slot r12 of the buffer.
    pair_buffer!(),
    "mov rbx, r12",
    "shl rbx, 4",
    "mov [r9 + rbx], rax",
    "mov [r9 + rbx + 8], rbp",
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
    "lea r9, [rip + {kpage}]",
    "sub r9, rax",
    "cmp r9, rsi",
    "jb 2b",
    "71:",
    "mov r9, rax",
    "shr r9, 21",
    "cmp r9, r13",
    "je 5b",
    walk_region!("5b"),
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
    walk_region!("3b"),
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
    // The list done, one more entry: the call page, which the kernel
    // writes at every call and user mode reads (rdx = 0 marks it served).
    "90:",
    "test rdx, rdx",
    "jz 92f",
    "xor edx, edx",
    "lea rbx, [rip + {call_page}]",
    "mov rax, rbx",
    "or rbx, {copied}",
    "jmp 4b",
    // The copies, each into the page's own address: its first write makes
    // the shadow entry the call uses (through the window it would make one
    // more, ~15 µs each on kvm-pvm), and KVM maps the neighbours in place
    // with it. No stale translation of those addresses can be writable:
    // nothing used them since the restore, and one the processor still
    // held read-only would fault, ending the phase.
    "92:",
    "test r12, r12",
    "jz 94f",
    pair_buffer!(),
    "mov r8, r12",
    "93:",
    "mov rdi, [r9]",
    "mov rsi, [r9 + 8]",
    "mov ecx, {words}",
    "rep movsq",
    "add r9, 16",
    "dec r8",
    "jnz 93b",
    // Done: the reserved pages not used go back to the allocator, unless
    // something else allocated since (then they stay taken, unused).
    "94:",
    "mov r8, [r15 + {k_alloc_gva}]",
    "sub r8, [r15 + {k_scratch_delta}]",
    "mov r9, {to_window}",
    "add r8, r9",
    "cmp [r8], r10",
    "jne 91f",
    "mov [r8], r11",
    "91:",
    "mov rbx, r12",
    "xor eax, eax",
    "ud2",
    // The kernel opens the phase's code as one page: padded to it with
    // `int3`, which the assembler refuses to do if the code is longer.
    ".org hljs_user_replay + 4096, 0xcc",
    ".popsection",
    k_scratch_gpa = const super::kpage::K_SCRATCH_GPA,
    k_scratch_delta = const K_SCRATCH_DELTA,
    k_alloc_gva = const K_ALLOC_GVA,
    k_alloc_limit = const K_ALLOC_LIMIT,
    k_ustack_limit = const K_USTACK_LIMIT,
    k_arena = const K_ARENA,
    kpage = sym super::kpage::KPAGE,
    call_page = sym super::paging::CALL_PAGE,
    to_window = const TO_WINDOW,
    reserve = const RESERVE_PAGES * PAGE_SIZE,
    ustack_top = const super::USER_STACK_TOP,
    addr_mask = const pte::ADDR,
    keep_mask = const !(pte::ADDR | pte::COW),
    rw_user = const RW | USER,
    copied = const hyperlight_js_guest_mm::working_set::COPIED,
    run = const hyperlight_js_guest_mm::working_set::RUN,
    page = const PAGE_SIZE,
    words = const PAGE_SIZE / 8,
    max_copies = const MAX_COPIES,
    gib = const GIB,
    snap_window = const SNAP_WINDOW,
);

const _: () = assert!(
    super::SYS_EXIT == 0,
    "the phase leaves with `xor eax, eax; ud2`"
);

unsafe extern "C" {
    /// The phase's code (see the assembly above), one page.
    fn hljs_user_replay();
}
