//! The kernel page: everything the trap path needs, on one supervisor-only page.

use core::mem::offset_of;

use hyperlight_js_guest_mm::working_set::MAX_PAGES;

use super::Fault;

/// Kinds of kernel entry from user mode, counted separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Entry {
    /// A system call (`ud2`): leave user mode, read a counter.
    Syscall = 0,
    /// An emulated `out`: a host-function call or an abort.
    Out = 1,
    /// A page that only lacked the user bit, opened by the assembly fast
    /// path (counted, not timed).
    OpenFast = 2,
    /// A page that only lacked the user bit, opened by the full path.
    Open = 3,
    /// A copy-on-write page, by the assembly fast path (counted, not timed).
    CopyFast = 4,
    /// A copy-on-write page, by the full path.
    Copy = 5,
    /// A fresh zeroed page (stack growth, zero-fill).
    Zero = 6,
    /// A fault that ended the user computation.
    Fatal = 7,
}

impl Entry {
    /// Every kind, in index order.
    pub const ALL: [Entry; ENTRY_KINDS] = [
        Entry::Syscall,
        Entry::Out,
        Entry::OpenFast,
        Entry::Open,
        Entry::CopyFast,
        Entry::Copy,
        Entry::Zero,
        Entry::Fatal,
    ];

    /// The kind's name in the stats the host reads.
    pub const fn name(self) -> &'static str {
        hyperlight_js_abi::KERNEL_ENTRY_KINDS[self as usize]
    }
}

/// Number of [`Entry`] kinds.
pub const ENTRY_KINDS: usize = hyperlight_js_abi::KERNEL_ENTRY_KINDS.len();

/// Count and TSC cycles spent in the kernel's handler, per kind of entry.
pub type EntryStats = [[u64; 2]; ENTRY_KINDS];

/// The kernel's state. The alignment makes it exactly one page, which never
/// gets the user bit (see `hyperlight_js_guest_mm::UserRegions`).
#[repr(C, align(4096))]
pub struct KState {
    pub gdt: [u64; 8],
    pub ustack_limit: u64,
    /// Kernel entries from user mode since the runtime was loaded.
    pub traps: u64,
    /// User mode is set up: every call is served in user mode.
    pub enabled: bool,
    pub fault: Option<Fault>,
    /// The transport arena (virtqueue rings, pools, mailbox): user mode
    /// serves calls itself, so these scratch pages are open to it.
    pub arena: [u64; 2],
    /// Scratch physical and virtual base, to read page tables without
    /// going through hyperlight's metadata reads at every level.
    pub scratch: [u64; 2],
    /// The copy window's leaf entry (0 until a copy needs it), and the
    /// snapshot generation both it and the call-start work are done for.
    pub window: [u64; 2],
    /// The heap, where a read fault on a copy-on-write page copies it at once.
    pub heap: [u64; 2],
    /// Scratch virtual minus physical base (wrapping), for the fast path's walk.
    pub scratch_delta: u64,
    /// hyperlight's physical page allocator (its next free address) and its
    /// limit, and where the snapshot generation is, for the fast path.
    pub alloc_gva: u64,
    pub alloc_limit: u64,
    pub generation_gva: u64,
    /// Per-kind counting is on (`SYS_STATS_ON`): off, a call pays nothing
    /// for it (every CPL0 instruction is emulated here).
    pub stats_on: bool,
    /// Recording the pages opened and copied for user mode: on in the
    /// first call after a restore that replayed no working set.
    pub ws_on: bool,
    /// The replay phase's layout holds ([`super::replay::layout_holds`]):
    /// checked once at init, as neither the image nor scratch moves.
    pub phase_ok: bool,
    /// The recorded working set's length (entries in [`KState::ws`]).
    pub ws_len: u64,
    /// Where the first call after a restore of this snapshot arrives: its
    /// receive buffer in the arena and the buffer's capacity, then the
    /// buffer the second call arrives in (noted at the checkpoint before
    /// the snapshot, `SYS_WS_SOURCE`).
    pub first_msg: [u64; 3],
    // ---- Dead at a call's start after a restore: each field below is
    // written before it is read in every call (or, for the statistics, only
    // loses the counts of the call before the restore), so the page's copy
    // then stops here ([`LIVE`]).
    pub kernel_rsp: u64,
    /// User GPRs at the trap: rax, rbx, rcx, rdx, rsi, rdi, rbp, r8..r15.
    pub user: [u64; 15],
    pub vector: u64,
    pub err: u64,
    /// rip, cs, rflags, rsp, ss of the interrupted user code.
    pub frame: [u64; 5],
    /// `traps` when the current call from the host began.
    pub call_start: u64,
    /// Entries of the current call, per kind.
    pub stats: EntryStats,
    /// Entries of the previous call, per kind.
    pub last_stats: EntryStats,
    /// The working set at this call's start: what came with the call
    /// (`working_set::LIST_*`, or `replay::REPLAYING` during the replay
    /// phase) and whether the replay phase ran (1).
    pub replayed: [u64; 2],
    /// The #PF fast path's cache of leaf tables, direct-mapped by the 2 MiB
    /// region: `[region + 1, the leaf table's kernel address]`, `[0, _]`
    /// when empty. Cleared whenever the snapshot generation changes (the
    /// tables move), in kernel mode before the call's first fault.
    pub leaf_tables: [[u64; 2]; LEAF_TABLES],
    /// The recorded working set: `ws_len` entries of
    /// `hyperlight_js_guest_mm::working_set`, written before they are read
    /// (recording starts from `ws_len` = 0 or 1 at a call's start).
    pub ws: [u64; MAX_PAGES],
}

/// The bytes of the kernel page that must survive its copy-on-write at the
/// first call after a restore: the fields before `kernel_rsp`; the rest is
/// dead then. The emulator copies a qword in ~1 µs, the whole page in ~0.5 ms.
pub const LIVE: u64 = offset_of!(KState, kernel_rsp) as u64;
const _: () = assert!(LIVE.is_multiple_of(8) && LIVE < 512);

/// Entries of [`KState::leaf_tables`] (a power of two).
pub const LEAF_TABLES: usize = 8;
const _: () = assert!(core::mem::size_of::<KState>() == 4096);

// With the other page-aligned statics, so that none splits the small
// statics a call writes across more pages (each costs a copy per call).
#[unsafe(link_section = ".data.hljs_page_aligned")]
pub(crate) static mut KPAGE: KState = KState {
    gdt: [0; 8],
    ustack_limit: 0,
    traps: 0,
    enabled: false,
    fault: None,
    arena: [0; 2],
    scratch: [0; 2],
    // No generation yet: the first call prepares as after a restore.
    window: [0, u64::MAX],
    heap: [0; 2],
    scratch_delta: 0,
    alloc_gva: 0,
    alloc_limit: 0,
    generation_gva: 0,
    stats_on: false,
    ws_on: false,
    phase_ok: false,
    ws_len: 0,
    first_msg: [0; 3],
    kernel_rsp: 0,
    user: [0; 15],
    vector: 0,
    err: 0,
    frame: [0; 5],
    call_start: 0,
    stats: [[0; 2]; ENTRY_KINDS],
    last_stats: [[0; 2]; ENTRY_KINDS],
    replayed: [0; 2],
    leaf_tables: [[0; 2]; LEAF_TABLES],
    ws: [0; MAX_PAGES],
};

/// The kernel page, the one way to reach it from Rust (the trap path's
/// assembly reaches it by symbol, see `entry.rs`).
///
/// # Safety
/// Kernel mode only, and no other reference it returned is live: the
/// kernel runs on one vCPU, a user trap takes one reference for its whole
/// handling and passes it down, and the kernel's own faults never touch it.
pub unsafe fn kpage() -> &'static mut KState {
    let page = &raw mut KPAGE;
    // SAFETY: the caller's contract makes this the only live reference.
    unsafe { &mut *page }
}

/// The kernel page's address (not a reference: user mode may ask for it, to
/// prove it cannot read there).
pub fn kpage_addr() -> u64 {
    (&raw const KPAGE) as u64
}

pub const K_RSP: usize = offset_of!(KState, kernel_rsp);
pub const K_ENABLED: usize = offset_of!(KState, enabled);
pub const K_USER: usize = offset_of!(KState, user);
pub const K_VECTOR: usize = offset_of!(KState, vector);
pub const K_ERR: usize = offset_of!(KState, err);
pub const K_FRAME: usize = offset_of!(KState, frame);
pub const K_SCRATCH_GPA: usize = offset_of!(KState, scratch);
pub const K_SCRATCH_DELTA: usize = offset_of!(KState, scratch_delta);
pub const K_TRAPS: usize = offset_of!(KState, traps);
pub const K_STATS_ON: usize = offset_of!(KState, stats_on);
pub const K_OPENED: usize = offset_of!(KState, stats) + 16 * Entry::OpenFast as usize;
pub const K_COPIED: usize = offset_of!(KState, stats) + 16 * Entry::CopyFast as usize;
pub const K_USTACK_LIMIT: usize = offset_of!(KState, ustack_limit);
pub const K_ARENA: usize = offset_of!(KState, arena);
pub const K_HEAP: usize = offset_of!(KState, heap);
pub const K_WINDOW: usize = offset_of!(KState, window);
pub const K_GENERATION_GVA: usize = offset_of!(KState, generation_gva);
pub const K_ALLOC_GVA: usize = offset_of!(KState, alloc_gva);
pub const K_ALLOC_LIMIT: usize = offset_of!(KState, alloc_limit);
pub const K_WS_ON: usize = offset_of!(KState, ws_on);
pub const K_WS_LEN: usize = offset_of!(KState, ws_len);
pub const K_WS: usize = offset_of!(KState, ws);
pub const K_LEAF_TABLES: usize = offset_of!(KState, leaf_tables);
