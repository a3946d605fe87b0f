//! The kernel's page-table work: walks that open pages to user mode, fresh
//! zeroed pages, and both halves of copy-on-write.
//!
//! Page tables live in hyperlight's scratch region and are rebuilt by every
//! snapshot without the user bit (see `hyperlight_js_guest_mm::pte`).

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU64};

use hyperlight_common::vmem::{BasicMapping, MappingKind};
use hyperlight_js_guest_mm::fault::{Perms, Recorded};
use hyperlight_js_guest_mm::pte::{self, LEVELS, PRESENT, RW, USER, Upper};
use hyperlight_js_guest_mm::{PAGE_SIZE, page_of};

use super::kpage::KState;

/// A one-page window through which user mode reads the old page of a
/// copy-on-write (read-only; its content is user mode's own data anyway).
pub const COPY_WINDOW: u64 = 0xffff_f000_2000_0000;

const RFLAGS_DF: u64 = 1 << 10;

/// The entry for `va` in `table` (an entry of the level above) at `level`,
/// with the page tables' scratch region at `scratch` (physical, virtual).
fn entry_at(scratch: [u64; 2], table: u64, va: u64, level: u32) -> Option<*mut u64> {
    let [gpa, gva] = scratch;
    let t = pte::table_va(table, gpa, gva)? as *mut u64;
    // SAFETY: the index is below 512, the entries of a 4 KiB table.
    Some(unsafe { t.add(pte::index(va, level)) })
}

fn entry_in(k: &KState, table: u64, va: u64, level: u32) -> Option<*mut u64> {
    entry_at(k.scratch, table, va, level)
}

pub fn cr3() -> u64 {
    let cr3: u64;
    // SAFETY: reading CR3 in kernel mode.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack)) };
    cr3
}

/// The entry that points at the leaf table of `va`, with the user bit set
/// on the levels above the leaves; `None` if a level above is missing or a
/// large page. Every page in the same 2 MiB shares it.
pub fn leaf_table(k: &KState, va: u64) -> Option<u64> {
    let mut table = cr3();
    for level in 0..LEVELS - 1 {
        let e = entry_in(k, table, va, level)?;
        // SAFETY: `e` points into a live page table in scratch memory.
        let v = unsafe { e.read_volatile() };
        if pte::upper(v) != Upper::Descend {
            return None;
        }
        if v & USER == 0 {
            // SAFETY: as above; the user bit on an upper level opens nothing
            // by itself (the leaf decides).
            unsafe { e.write_volatile(v | USER) };
        }
        table = v;
    }
    Some(table)
}

/// The leaf entry of `va` in the leaf table `table` (from [`leaf_table`]).
pub fn leaf_in(k: &KState, table: u64, va: u64) -> Option<*mut u64> {
    entry_in(k, table, va, LEVELS - 1)
}

/// The leaf entry for `va`, present or not, with the user bit set on the
/// levels above it; `None` if a level above is missing or a large page.
pub fn leaf_entry(k: &KState, va: u64) -> Option<*mut u64> {
    leaf_in(k, leaf_table(k, va)?, va)
}

/// Walks the tables for `va`, setting the user bit on every level. Returns
/// the leaf entry, or `None` if some level is not present.
pub fn open_walk(k: &KState, va: u64) -> Option<*mut u64> {
    open_leaf(leaf_entry(k, va)?)
}

/// Sets the user bit on the leaf entry `e` if it is present; `None` if not.
pub fn open_leaf(e: *mut u64) -> Option<*mut u64> {
    // SAFETY: `e` points into a live page table in scratch memory.
    let v = unsafe { e.read_volatile() };
    if v & PRESENT == 0 {
        return None;
    }
    if v & USER == 0 {
        // SAFETY: as above; adding the user bit keeps the entry valid.
        unsafe { e.write_volatile(v | USER) };
    }
    Some(e)
}

/// Whether the page of `va` is mapped and writable (at once or by copy on write).
pub fn writable_page(k: &KState, va: u64) -> bool {
    open_walk(k, va).is_some_and(|leaf| {
        // SAFETY: a live leaf entry.
        let v = unsafe { leaf.read_volatile() };
        v & (RW | pte::COW) != 0
    })
}

/// How hyperlight records the page of `va` (a zero-fill page, copy-on-write…),
/// read from its leaf entry: the upper levels are opened on the way (the
/// caller has checked that user mode may have `va`).
pub fn recorded(k: &KState, va: u64) -> Recorded {
    recorded_at(leaf_entry(k, va))
}

/// How hyperlight records the page whose leaf entry is `leaf` (from a walk).
pub fn recorded_at(leaf: Option<*mut u64>) -> Recorded {
    leaf.map_or(Recorded::Other, |e| {
        // SAFETY: a live leaf entry.
        pte::recorded(unsafe { e.read_volatile() })
    })
}

/// The leaf entry of `va`, found without writing any table and without the
/// kernel page (a user trap may hold it), for the kernel's own faults;
/// `None` if a level above is missing or a large page.
pub fn peek_leaf(va: u64) -> Option<*mut u64> {
    let scratch = [
        hyperlight_guest::layout::scratch_base_gpa(),
        hyperlight_guest::layout::scratch_base_gva(),
    ];
    let mut table = cr3();
    for level in 0..LEVELS - 1 {
        // SAFETY: `entry_at` points into a live page table in scratch memory.
        let v = unsafe { entry_at(scratch, table, va, level)?.read_volatile() };
        if pte::upper(v) != Upper::Descend {
            return None;
        }
        table = v;
    }
    entry_at(scratch, table, va, LEVELS - 1)
}

/// A fresh physical page, and where the kernel sees it.
fn fresh_page() -> Option<(u64, *mut u8)> {
    // SAFETY: kernel mode; the allocator hands out unused scratch pages.
    let pa = unsafe { hyperlight_guest::prim_alloc::alloc_phys_pages(1) };
    hyperlight_guest_bin::paging::phys_to_virt(pa).map(|p| (pa, p))
}

/// A fresh physical page from hyperlight's allocator, bumped in place as its
/// own `alloc_phys_pages` does (one vCPU, and no fault can come between the
/// read and the write: the kernel page and the allocator's are mapped), and
/// where the kernel sees it; `None` when the allocator is spent. Kernel mode.
pub fn bump_page(k: &KState) -> Option<(u64, *mut u8)> {
    let next = k.alloc_gva as *mut u64;
    // SAFETY: the allocator's pointer, in scratch metadata mapped for the
    // guest's lifetime (noted at init).
    let pa = unsafe { next.read_volatile() };
    if pa.checked_add(PAGE_SIZE)? > k.alloc_limit {
        return None;
    }
    // SAFETY: as above.
    unsafe { next.write_volatile(pa + PAGE_SIZE) };
    Some((pa, pa.wrapping_add(k.scratch_delta) as *mut u8))
}

/// Maps a fresh zeroed page at the page of `va`, which was not present.
/// `false` (nothing mapped) when the page cannot be had.
///
/// # Safety
/// Kernel mode; nothing is mapped at `va`.
pub unsafe fn map_zeroed(va: u64, perms: Perms) -> bool {
    let Some((pa, p)) = fresh_page() else {
        return false;
    };
    // SAFETY: `p` is the kernel's view of a whole unused page; the caller's
    // contract for the mapping.
    unsafe {
        p.write_bytes(0, PAGE_SIZE as usize);
        hyperlight_guest_bin::paging::map_region(
            pa,
            page_of(va) as *mut u8,
            PAGE_SIZE,
            MappingKind::Basic(BasicMapping {
                readable: true,
                writable: perms.writable,
                executable: perms.executable,
            }),
        );
    }
    true
}

/// Copy-on-write of a user page done by the kernel itself (when there is no
/// copy window): copies the page of `va` into a fresh one and puts that in
/// place through `leaf`, writable and open to user mode.
///
/// # Safety
/// Kernel mode; `leaf` is the live leaf entry of `va`, a copy-on-write page.
unsafe fn copy_in_kernel(leaf: *mut u64, va: u64) -> bool {
    let Some((pa, dst)) = fresh_page() else {
        return false;
    };
    let page = page_of(va);
    // SAFETY: the caller's contract; the source page is mapped (read-only),
    // the destination is a whole unused page.
    unsafe {
        copy_page(page as *const u8, dst);
        leaf.write_volatile(pte::after_copy(leaf.read_volatile(), pa));
        asm!("invlpg [{}]", in(reg) page, options(nostack));
    }
    true
}

/// Copy-on-write for a fault of the kernel itself: copies the bytes `span`
/// (`[start, end)` offsets, qword-aligned) of the page of `va` into a fresh
/// one, whose other bytes are dead (`hyperlight_js_guest_mm::fault::kernel_copy_span`),
/// and puts that in place through `leaf`, writable, with
/// every other bit as it was (the bits hyperlight's mapper would write for
/// the copy, except that a page already open to user mode stays open: user
/// mode could have had the same copy by writing it). Uses neither the
/// kernel page nor the heap: it may run while a user trap is being handled.
///
/// # Safety
/// Kernel mode; `leaf` is the live leaf entry of `va`, a copy-on-write page.
pub unsafe fn copy_for_kernel(leaf: *mut u64, va: u64, span: [u64; 2]) -> bool {
    let Some((pa, dst)) = fresh_page() else {
        return false;
    };
    let page = page_of(va);
    let [start, end] = [span[0].min(PAGE_SIZE) & !7, span[1].min(PAGE_SIZE) & !7];
    // SAFETY: the caller's contract; the source page is mapped (read-only),
    // the destination is a whole unused page; the span lies within both.
    unsafe {
        copy_qwords(
            (page + start) as *const u8,
            dst.add(start as usize),
            end.saturating_sub(start) / 8,
        );
        leaf.write_volatile(pte::after_kernel_copy(leaf.read_volatile(), pa));
        asm!("invlpg [{}]", in(reg) page, options(nostack));
    }
    true
}

/// Copy-on-write with the copy done by user mode, natively (the same copy
/// in the emulated kernel costs ~0.6 ms): the new page goes in place at
/// once, the old one appears read-only at the copy window, and user mode
/// resumes in `hljs_cow_copy`, which copies and then goes back to the
/// faulting instruction.
///
/// # Safety
/// Kernel mode, handling a user fault at `va` whose frame is on `k`; `leaf`
/// is the live leaf entry of `va`, a copy-on-write page.
pub unsafe fn copy_in_user(k: &mut KState, leaf: *mut u64, va: u64) -> bool {
    let Some(window) = window_leaf(k) else {
        // SAFETY: the caller's contract.
        return unsafe { copy_in_kernel(leaf, va) };
    };
    // SAFETY: kernel mode: the allocator hands out unused scratch pages.
    let pa = unsafe { hyperlight_guest::prim_alloc::alloc_phys_pages(1) };
    let page = page_of(va);
    // SAFETY: live leaf entries; the fields written are user mode's own (the
    // copy descriptor and its saved rip).
    unsafe {
        let v = leaf.read_volatile();
        window.write_volatile(pte::read_view(v));
        asm!("invlpg [{}]", in(reg) COPY_WINDOW, options(nostack));
        leaf.write_volatile(pte::after_copy(v, pa));
        asm!("invlpg [{}]", in(reg) page, options(nostack));
        // A `rep movs` with DF set copies downwards: start at the top.
        let top = if k.frame[2] & RFLAGS_DF != 0 {
            PAGE_SIZE - 8
        } else {
            0
        };
        let c = &raw mut CALL_PAGE;
        (&raw mut (*c).src).write_volatile(COPY_WINDOW + top);
        (&raw mut (*c).dst).write_volatile(page + top);
        (&raw mut (*c).rip).write_volatile(k.frame[0]);
        k.frame[0] = hljs_cow_copy as *const () as u64;
    }
    true
}

/// The copy window's leaf entry, found once per snapshot generation (a
/// restore rebuilds the page tables elsewhere); mapped the first time.
pub fn window_leaf(k: &mut KState) -> Option<*mut u64> {
    let generation = crate::transport::generation();
    if k.window[0] != 0 && k.window[1] == generation {
        return Some(k.window[0] as *mut u64);
    }
    let leaf = match leaf_entry(k, COPY_WINDOW) {
        Some(leaf) => leaf,
        None => {
            let (pa, _) = fresh_page()?;
            // SAFETY: kernel mode; nothing is mapped at the window yet.
            unsafe {
                hyperlight_guest_bin::paging::map_region(
                    pa,
                    COPY_WINDOW as *mut u8,
                    PAGE_SIZE,
                    MappingKind::Basic(BasicMapping {
                        readable: true,
                        writable: true,
                        executable: false,
                    }),
                )
            };
            leaf_entry(k, COPY_WINDOW)?
        }
    };
    // SAFETY: a live leaf entry; the window starts closed.
    unsafe {
        leaf.write_volatile(0);
        asm!("invlpg [{}]", in(reg) COPY_WINDOW, options(nostack));
    }
    k.window = [leaf as u64, generation];
    Some(leaf)
}

/// The snapshot generation, if this is the first call since a restore or a
/// snapshot and [`prepare_copies`] is due; `None` on a warm call. It reads
/// the kernel page only: nothing may write it before [`prepare_copies`].
#[inline(always)]
pub fn restored(k: &KState) -> Option<u64> {
    // All of it holds until the next restore or snapshot, which change the
    // generation: a warm call pays only this check.
    // SAFETY: the address of the generation, set at init; the metadata page
    // is mapped for the guest's lifetime.
    let generation = unsafe { (k.generation_gva as *const u64).read_volatile() };
    (k.window[1] != generation).then_some(generation)
}

/// What [`prepare_copies`] found of the kernel page, for the replay phase:
/// the entry that points at its region's leaf table, and its leaf entry.
pub struct Restored {
    pub kpage: Option<(u64, *mut u64)>,
}

/// Readies a call after a restore (see [`restored`]), in kernel mode on the
/// kernel stack, before the kernel page is written: copies the kernel page,
/// which the kernel writes at every call, at once rather than by a kernel
/// fault; empties the #PF fast path's leaf-table cache and forgets the copy
/// window's leaf (the tables have moved). The caller then has the call's
/// working set replayed and the call page readied ([`ready_call_page`]):
/// [`CALL_PAGE`] must be writable before user mode runs, as the fast path
/// writes it on the exception stack, where a fault of its own would
/// overwrite the frame it runs on.
#[inline(always)]
pub fn prepare_copies(k: &mut KState, generation: u64) -> Restored {
    let kpage = super::kpage::kpage_addr();
    let kpage_table = leaf_table(k, kpage);
    let kpage_leaf = kpage_table.and_then(|t| leaf_in(k, t, kpage));
    // A fresh copy carries only the live bytes: the rest, the leaf-table
    // cache included, is zero already (the allocator hands out pages that
    // the restore zeroed), and each store here is an emulated instruction.
    if !copy_if_shared(kpage_leaf, kpage, super::kpage::LIVE) {
        for t in &mut k.leaf_tables {
            t[0] = 0;
        }
    }
    // The copy window's leaf is found at the first copy that needs it (a
    // call whose working set is replayed has none).
    k.window = [0, generation];
    Restored {
        kpage: kpage_table.zip(kpage_leaf),
    }
}

/// Readies [`CALL_PAGE`] for the call after a restore, unless the replay
/// phase did (`phase_ran`): user mode reads it in every call, so it is
/// opened with its copy, as the fault for that read would open it.
pub fn ready_call_page(k: &mut KState, kpage: Option<(u64, *mut u64)>, phase_ran: bool) {
    let va = (&raw const CALL_PAGE) as u64;
    if !phase_ran {
        // A static of the image, in the kernel page's 2 MiB region as it is.
        let table = match kpage {
            Some((table, _)) if va >> 21 == super::kpage::kpage_addr() >> 21 => Some(table),
            _ => leaf_table(k, va),
        };
        if let Some(leaf) = table.and_then(|t| leaf_in(k, t, va)) {
            open_leaf(leaf);
            copy_if_shared(Some(leaf), va, CALL_PAGE_LIVE);
            // SAFETY: kernel mode; drops what the TLB holds for the page.
            unsafe { asm!("invlpg [{}]", in(reg) va, options(nostack)) };
        }
    }
    // SAFETY: kernel mode, no user run in progress: nothing else uses the
    // descriptor; the write stores the value already there (and serves the
    // kernel fault here if the copy above could not be made).
    unsafe {
        let c = &raw mut CALL_PAGE;
        let rip = &raw mut (*c).rip;
        rip.write_volatile(rip.read_volatile());
    }
}

/// Copies the first `live` bytes of the page of `va`, whose leaf entry is
/// `leaf`, for the kernel if it is still copy-on-write, as the kernel's fault
/// for a write there would (the rest of the page is dead, zero in the copy).
/// Best effort: a page left shared is copied by that fault. Whether the page
/// is now a fresh copy.
#[inline(always)]
fn copy_if_shared(leaf: Option<*mut u64>, va: u64, live: u64) -> bool {
    let Some(leaf) = leaf else {
        return false;
    };
    // SAFETY: a live leaf entry.
    let v = unsafe { leaf.read_volatile() };
    // SAFETY: kernel mode; the live leaf of a copy-on-write page.
    matches!(pte::recorded(v), Recorded::Cow { .. })
        && v & RW == 0
        && unsafe { copy_for_kernel(leaf, va, [0, live]) }
}

/// Copies one page with a single `rep movsq` (see [`copy_qwords`]).
///
/// # Safety
/// `src` and `dst` are page-aligned, mapped, and do not overlap.
unsafe fn copy_page(src: *const u8, dst: *mut u8) {
    // SAFETY: the caller's contract.
    unsafe { copy_qwords(src, dst, PAGE_SIZE / 8) }
}

/// Copies `n` qwords with a single `rep movsq`: kernel mode is emulated on
/// kvm-pvm, where the generic `memcpy` loop costs ~2 000 emulated
/// instructions a page; the string instruction still costs ~1 µs per
/// qword (~0.5 ms a page), so the kernel copies only what is live.
///
/// # Safety
/// `src..src + 8n` and `dst..dst + 8n` are mapped and do not overlap.
unsafe fn copy_qwords(src: *const u8, dst: *mut u8, n: u64) {
    // SAFETY: the caller's contract; DF is clear in our kernel (`cld` at entry).
    unsafe {
        asm!(
            "rep movsq",
            inout("rcx") n => _,
            inout("rsi") src => _,
            inout("rdi") dst => _,
            options(nostack, preserves_flags)
        )
    };
}

/// The one page of user memory the kernel writes at every call, copied at
/// call start after a restore (`prepare_copies`): what [`hljs_cow_copy`]
/// copies and where it resumes, then three registers it saves (user mode's
/// own copy of its own page, so never the page being copied), then the
/// flag of a user run and the snapshot generation for user mode (which the
/// kernel never trusts).
#[repr(C, align(4096))]
pub struct CallPage {
    src: u64,
    dst: u64,
    rip: u64,
    saved: [u64; 3],
    /// Set by the kernel while a user run is in progress.
    pub in_user: AtomicBool,
    /// The snapshot generation, published by the kernel at every call
    /// (user mode cannot read the scratch metadata page it lives on).
    pub generation: AtomicU64,
}

/// The bytes of [`CALL_PAGE`] in use (its alignment pads it to a page): what
/// its copy at call start carries over.
const CALL_PAGE_LIVE: u64 = core::mem::offset_of!(CallPage, generation) as u64 + 8;

// With the other page-aligned statics, so that none splits the small
// statics a call writes across more pages (each costs a copy per call).
#[unsafe(link_section = ".data.hljs_page_aligned")]
pub static mut CALL_PAGE: CallPage = CallPage {
    src: 0,
    dst: 0,
    rip: 0,
    saved: [0; 3],
    in_user: AtomicBool::new(false),
    generation: AtomicU64::new(0),
};

/// The flag of a user run, on the call page.
pub fn user_run_flag() -> &'static AtomicBool {
    // SAFETY: taking the field's address reads nothing.
    let flag = unsafe { &raw const CALL_PAGE.in_user };
    // SAFETY: a shared reference to an atomic field only; the page's other
    // fields are written through raw pointers, never through a reference.
    unsafe { &*flag }
}

/// The snapshot generation user mode reads, on the call page.
pub fn published_generation() -> &'static AtomicU64 {
    // SAFETY: taking the field's address reads nothing.
    let generation = unsafe { &raw const CALL_PAGE.generation };
    // SAFETY: as in `user_run_flag`.
    unsafe { &*generation }
}

global_asm!(
    // User mode's half of a copy-on-write: copy the old page (mapped at
    // the copy window) into the new one, natively, then resume the
    // interrupted instruction with every register and flag as it was. No
    // stack use (the stack page may be the one being copied) and no flag
    // changes: with DF set the kernel points src/dst at the last qword.
    ".global hljs_cow_copy",
    "hljs_cow_copy:",
    "mov [rip + {c} + 24], rsi",
    "mov [rip + {c} + 32], rdi",
    "mov [rip + {c} + 40], rcx",
    "mov rsi, [rip + {c}]",
    "mov rdi, [rip + {c} + 8]",
    "mov ecx, {words}",
    "rep movsq",
    "mov rsi, [rip + {c} + 24]",
    "mov rdi, [rip + {c} + 32]",
    "mov rcx, [rip + {c} + 40]",
    "jmp qword ptr [rip + {c} + 16]",
    c = sym CALL_PAGE,
    words = const PAGE_SIZE / 8,
);

unsafe extern "C" {
    fn hljs_cow_copy();
}
