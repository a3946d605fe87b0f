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

use alloc::boxed::Box;
use core::arch::{asm, global_asm};
use core::mem::offset_of;
use core::sync::atomic::{AtomicBool, Ordering};

use hyperlight_common::vmem::{BasicMapping, MappingKind, PAGE_SIZE};

/// System call: leave user mode (the job is done).
pub const SYS_EXIT: u64 = 0;
/// System call: the number of kernel entries before the current call began, in `rax`.
pub const SYS_TRAPS: u64 = 1;
/// A one-page window through which user mode reads the old page of a
/// copy-on-write (read-only; its content is user mode's own data anyway).
const COPY_WINDOW: u64 = 0xffff_f000_2000_0000;

/// Top of the user stack: a region of its own, outside every hyperlight region.
const USTACK_TOP: u64 = 0xffff_f000_1000_0000;

const PTE_PRESENT: u64 = 1;
const PTE_RW: u64 = 1 << 1;
const PTE_USER: u64 = 1 << 2;
const PTE_LARGE: u64 = 1 << 7;
const RFLAGS_DF: u64 = 1 << 10;
const PTE_COW: u64 = 1 << 9;
const PTE_ADDR: u64 = 0x000F_FFFF_FFFF_F000;

const SEL_KDATA: u64 = 0x10;
const SEL_UDATA: u64 = 0x28 | 3;
const SEL_UCODE: u64 = 0x30 | 3;

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

/// Everything the trap path needs, on one supervisor-only page (the
/// alignment makes the struct exactly one page).
#[repr(C, align(4096))]
struct KState {
    gdt: [u64; 8],
    kernel_rsp: u64,
    /// User GPRs at the trap: rax, rbx, rcx, rdx, rsi, rdi, rbp, r8..r15.
    user: [u64; 15],
    vector: u64,
    err: u64,
    /// rip, cs, rflags, rsp, ss of the interrupted user code.
    frame: [u64; 5],
    ustack_limit: u64,
    /// Kernel entries from user mode since the runtime was loaded.
    traps: u64,
    /// User mode is set up: every call is served in user mode.
    enabled: bool,
    /// `traps` when the current call from the host began.
    call_start: u64,
    fault: Option<Fault>,
    /// The transport arena (virtqueue rings, pools, mailbox): user mode
    /// serves calls itself, so these scratch pages are open to it.
    arena: [u64; 2],
    /// Scratch physical and virtual base, to read page tables without
    /// going through hyperlight's metadata reads at every level.
    scratch: [u64; 2],
    /// The copy window's leaf entry, and the snapshot generation it is valid for.
    window: [u64; 2],
    /// The heap, where a read fault on a copy-on-write page copies it at once.
    heap: [u64; 2],
}
const _: () = assert!(core::mem::size_of::<KState>() == 4096);

static mut KPAGE: KState = KState {
    gdt: [0; 8],
    kernel_rsp: 0,
    user: [0; 15],
    vector: 0,
    err: 0,
    frame: [0; 5],
    ustack_limit: 0,
    traps: 0,
    enabled: false,
    call_start: 0,
    fault: None,
    arena: [0; 2],
    scratch: [0; 2],
    window: [0; 2],
    heap: [0; 2],
};

/// Set while a user run is in progress (read by user code, to know that it
/// is user code; the kernel never trusts it).
static IN_USER: AtomicBool = AtomicBool::new(false);
/// Set once `init` has run, for user code; the kernel's own copy is on the
/// kernel page (see [`kernel_enabled`]), where user mode cannot clear it to
/// have the next call served in kernel mode.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether the current code runs in user mode.
pub fn in_user() -> bool {
    IN_USER.load(Ordering::Relaxed)
}

/// Whether user mode is set up for this sandbox (a hint for user code).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether user mode is set up for this sandbox, as the kernel knows it.
/// Kernel mode only.
pub fn kernel_enabled() -> bool {
    // SAFETY: a kernel-page field read, in kernel mode.
    unsafe { (*kstate()).enabled }
}

const K_RSP: usize = offset_of!(KState, kernel_rsp);
const K_USER: usize = offset_of!(KState, user);
const K_VECTOR: usize = offset_of!(KState, vector);
const K_ERR: usize = offset_of!(KState, err);
const K_FRAME: usize = offset_of!(KState, frame);

global_asm!(
    // hljs_enter_user(entry: rdi, user_rsp: rsi, arg: rdx) -> status
    ".global hljs_enter_user",
    "hljs_enter_user:",
    "push rbx", "push rbp", "push r12", "push r13", "push r14", "push r15",
    "lea rax, [rip + {kpage}]",
    "mov [rax + {k_rsp}], rsp",
    "push {udata}",
    "push rsi",
    "push 0x2",
    "push {ucode}",
    "push rdi",
    "mov rdi, rdx",
    // No kernel value leaks into user registers.
    "xor eax, eax", "xor ebx, ebx", "xor ecx, ecx", "xor edx, edx", "xor esi, esi", "xor ebp, ebp",
    "xor r8d, r8d", "xor r9d, r9d", "xor r10d, r10d", "xor r11d, r11d",
    "xor r12d, r12d", "xor r13d, r13d", "xor r14d, r14d", "xor r15d, r15d",
    "iretq",

    // One entry per exception vector user mode can raise. From user mode
    // every one goes to `hljs_user_trap` (#UD is also the system call, #GP
    // also the emulated `out`); from kernel mode to `hljs_kernel_fault`.
    // hyperlight-guest-bin's handlers never run once user mode is on: they
    // consult hook tables that live in user-writable statics.
    ".irp v, 0,1,3,4,5,6,7,9,16,19,20,28",
    ".global hljs_vec_\\v",
    "hljs_vec_\\v:",
    "test byte ptr [rsp + 8], 3",
    "jnz 2f",
    "push 0",
    "push \\v",
    "jmp hljs_kernel_trap",
    "2:",
    "push 0",
    "push \\v",
    "jmp hljs_trap_common",
    ".endr",
    ".irp v, 10,11,12,13,14,17,21,29,30",
    ".global hljs_vec_\\v",
    "hljs_vec_\\v:",
    "test byte ptr [rsp + 16], 3",
    "jnz 2f",
    "push \\v",
    "jmp hljs_kernel_trap",
    "2:",
    "push \\v",
    "jmp hljs_trap_common",
    ".endr",

    // A fault in kernel mode (stack: vector, err, rip, cs, rflags, rsp, ss,
    // on the exception stack). The caller-saved registers are saved around
    // the handler; it returns only when the fault is served.
    "hljs_kernel_trap:",
    "push rax", "push rcx", "push rdx", "push rsi", "push rdi",
    "push r8", "push r9", "push r10", "push r11",
    "mov rdi, [rsp + 72]",
    "mov rsi, [rsp + 80]",
    "mov rdx, cr2",
    "mov rcx, [rsp + 88]",
    "cld",
    "call {kernel_fault}",
    "pop r11", "pop r10", "pop r9", "pop r8",
    "pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rax",
    "add rsp, 16",
    "iretq",

    // Stack: vector, err, rip, cs, rflags, rsp, ss. Save the user state on
    // the kernel page, then leave the IST stack for the kernel stack so that
    // kernel faults taken by the handler cannot clobber this frame.
    "hljs_trap_common:",
    "push rax",
    "lea rax, [rip + {kpage}]",
    "mov [rax + {k_user} + 8], rbx",
    "mov [rax + {k_user} + 16], rcx",
    "mov [rax + {k_user} + 24], rdx",
    "mov [rax + {k_user} + 32], rsi",
    "mov [rax + {k_user} + 40], rdi",
    "mov [rax + {k_user} + 48], rbp",
    "mov [rax + {k_user} + 56], r8",
    "mov [rax + {k_user} + 64], r9",
    "mov [rax + {k_user} + 72], r10",
    "mov [rax + {k_user} + 80], r11",
    "mov [rax + {k_user} + 88], r12",
    "mov [rax + {k_user} + 96], r13",
    "mov [rax + {k_user} + 104], r14",
    "mov [rax + {k_user} + 112], r15",
    "mov rbx, rax",
    "pop rax",
    "mov [rbx + {k_user}], rax",
    "pop rax", "mov [rbx + {k_vector}], rax",
    "pop rax", "mov [rbx + {k_err}], rax",
    "pop rax", "mov [rbx + {k_frame}], rax",
    "pop rax", "mov [rbx + {k_frame} + 8], rax",
    "pop rax", "mov [rbx + {k_frame} + 16], rax",
    "pop rax", "mov [rbx + {k_frame} + 24], rax",
    "pop rax", "mov [rbx + {k_frame} + 32], rax",
    "mov rsp, [rbx + {k_rsp}]",
    "mov eax, {kdata}",
    "mov ss, ax",
    "mov rdi, cr2",
    "cld",
    "call {handler}",
    "lea rbx, [rip + {kpage}]",
    "test rax, rax",
    "jnz 3f",
    // Resume user mode.
    "push qword ptr [rbx + {k_frame} + 32]",
    "push qword ptr [rbx + {k_frame} + 24]",
    "push qword ptr [rbx + {k_frame} + 16]",
    "push qword ptr [rbx + {k_frame} + 8]",
    "push qword ptr [rbx + {k_frame}]",
    "mov rax, [rbx + {k_user}]",
    "mov rcx, [rbx + {k_user} + 16]",
    "mov rdx, [rbx + {k_user} + 24]",
    "mov rsi, [rbx + {k_user} + 32]",
    "mov rdi, [rbx + {k_user} + 40]",
    "mov rbp, [rbx + {k_user} + 48]",
    "mov r8, [rbx + {k_user} + 56]",
    "mov r9, [rbx + {k_user} + 64]",
    "mov r10, [rbx + {k_user} + 72]",
    "mov r11, [rbx + {k_user} + 80]",
    "mov r12, [rbx + {k_user} + 88]",
    "mov r13, [rbx + {k_user} + 96]",
    "mov r14, [rbx + {k_user} + 104]",
    "mov r15, [rbx + {k_user} + 112]",
    "mov rbx, [rbx + {k_user} + 8]",
    "iretq",
    // Leave user mode: back to hljs_enter_user's caller with rax = status.
    "3:",
    "mov rsp, [rbx + {k_rsp}]",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop rbp", "pop rbx",
    "ret",
    kpage = sym KPAGE,
    k_rsp = const K_RSP,
    k_user = const K_USER,
    k_vector = const K_VECTOR,
    k_err = const K_ERR,
    k_frame = const K_FRAME,
    kernel_fault = sym hljs_kernel_fault,
    udata = const SEL_UDATA,
    ucode = const SEL_UCODE,
    kdata = const SEL_KDATA,
    handler = sym hljs_user_trap,
);

/// A point user mode resumes at when one of its faults is fatal: like a
/// signal handler plus `longjmp`, so that the fault becomes an `Err` of
/// [`run`] without a trip back through the kernel's dispatch.
#[repr(C)]
#[derive(Default)]
struct Landing {
    rsp: u64,
    rip: u64,
    /// The enclosing landing (they nest).
    prev: u64,
    /// The fault, written by the kernel: kind, then two values.
    kind: u64,
    a: u64,
    b: u64,
}

/// The innermost landing, in user memory: only user mode relies on it, and
/// the kernel checks that it points at user memory before it writes there.
static mut USER_LANDING: u64 = 0;

global_asm!(
    // hljs_try(f: rdi, arg: rsi, landing: rdx) -> 0 when f(arg) returned,
    // 1 when the kernel resumed at the landing after a fatal fault.
    ".global hljs_try",
    "hljs_try:",
    "push rbx", "push rbp", "push r12", "push r13", "push r14", "push r15",
    "sub rsp, 8",
    "mov r12, rdx",
    "mov [r12], rsp",
    "lea rax, [rip + 2f]",
    "mov [r12 + 8], rax",
    "mov rax, [rip + {landing}]",
    "mov [r12 + 16], rax",
    "mov [rip + {landing}], r12",
    "mov rax, rdi",
    "mov rdi, rsi",
    "call rax",
    "xor eax, eax",
    "jmp 3f",
    // The kernel resumes here with rsp = landing.rsp and rdi = the landing.
    "2:",
    "mov r12, rdi",
    "mov eax, 1",
    "3:",
    "mov rcx, [r12 + 16]",
    "mov [rip + {landing}], rcx",
    "add rsp, 8",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop rbp", "pop rbx",
    "ret",
    landing = sym USER_LANDING,
);

/// What [`hljs_cow_copy`] copies and where it resumes, written by the
/// kernel; then three registers it saves. User memory: it is user mode's
/// own copy of its own page. A page of its own, so that it is never the
/// page being copied.
#[repr(C, align(4096))]
struct CowCopy {
    src: u64,
    dst: u64,
    rip: u64,
    saved: [u64; 3],
}

static mut COW_COPY: CowCopy = CowCopy {
    src: 0,
    dst: 0,
    rip: 0,
    saved: [0; 3],
};

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
    c = sym COW_COPY,
    words = const PAGE_SIZE / 8,
);

unsafe extern "C" {
    fn hljs_cow_copy();
    fn hljs_try(f: u64, arg: u64, landing: *mut Landing) -> u64;
    fn hljs_enter_user(entry: u64, user_rsp: u64, arg: u64) -> u64;
    fn hljs_vec_0();
    fn hljs_vec_1();
    fn hljs_vec_3();
    fn hljs_vec_4();
    fn hljs_vec_5();
    fn hljs_vec_6();
    fn hljs_vec_7();
    fn hljs_vec_9();
    fn hljs_vec_10();
    fn hljs_vec_11();
    fn hljs_vec_12();
    fn hljs_vec_13();
    fn hljs_vec_14();
    fn hljs_vec_16();
    fn hljs_vec_17();
    fn hljs_vec_19();
    fn hljs_vec_20();
    fn hljs_vec_21();
    fn hljs_vec_28();
    fn hljs_vec_29();
    fn hljs_vec_30();
}

const STATUS_RESUME: u64 = 0;
const STATUS_EXIT: u64 = 1;
const STATUS_FAULT: u64 = 2;

fn kstate() -> *mut KState {
    &raw mut KPAGE
}

/// Sets up user mode once, before the runtime's snapshot: ring-3 segments,
/// the trap gates, and the user stack's size. Kernel mode only.
pub fn init(stack_size: u64) {
    if kernel_enabled() {
        return;
    }
    let k = kstate();
    // SAFETY: kernel mode, single vCPU; the descriptor tables are valid and
    // the writes below keep them valid (copied kernel entries plus two
    // ring-3 entries; the IDT gates keep selector, IST and type).
    unsafe {
        let mut gdtr = [0u8; 10];
        asm!("sgdt [{}]", in(reg) gdtr.as_mut_ptr(), options(nostack));
        let base = u64::from_le_bytes([
            gdtr[2], gdtr[3], gdtr[4], gdtr[5], gdtr[6], gdtr[7], gdtr[8], gdtr[9],
        ]) as *const u64;
        let gdt = &raw mut (*k).gdt as *mut u64;
        for i in 0..5 {
            let mut d = base.add(i).read();
            // Pre-set the accessed bit of code/data descriptors so that the CPU
            // never writes the GDT (it may be a read-only copy-on-write page).
            if i == 1 || i == 2 {
                d |= 1 << 40;
            }
            gdt.add(i).write(d);
        }
        gdt.add(5).write(0x00CF_F300_0000_FFFF); // user data, DPL 3, accessed
        gdt.add(6).write(0x00AF_FB00_0000_FFFF); // user code, 64-bit, DPL 3, accessed
        let mut ptr = [0u8; 10];
        ptr[0..2].copy_from_slice(&((8 * 7 - 1) as u16).to_le_bytes());
        ptr[2..10].copy_from_slice(&(gdt as u64).to_le_bytes());
        asm!("lgdt [{}]", in(reg) ptr.as_ptr(), options(nostack));

        let mut idtr = [0u8; 10];
        asm!("sidt [{}]", in(reg) idtr.as_mut_ptr(), options(nostack));
        let idt = u64::from_le_bytes([
            idtr[2], idtr[3], idtr[4], idtr[5], idtr[6], idtr[7], idtr[8], idtr[9],
        ]) as *mut u64;
        let entries: [(usize, unsafe extern "C" fn()); 21] = [
            (0, hljs_vec_0),
            (1, hljs_vec_1),
            (3, hljs_vec_3),
            (4, hljs_vec_4),
            (5, hljs_vec_5),
            (6, hljs_vec_6),
            (7, hljs_vec_7),
            (9, hljs_vec_9),
            (10, hljs_vec_10),
            (11, hljs_vec_11),
            (12, hljs_vec_12),
            (13, hljs_vec_13),
            (14, hljs_vec_14),
            (16, hljs_vec_16),
            (17, hljs_vec_17),
            (19, hljs_vec_19),
            (20, hljs_vec_20),
            (21, hljs_vec_21),
            (28, hljs_vec_28),
            (29, hljs_vec_29),
            (30, hljs_vec_30),
        ];
        for (v, entry) in entries {
            gate(idt, v, entry as *const () as u64);
        }
        (*k).ustack_limit = USTACK_TOP - stack_size.next_multiple_of(PAGE_SIZE as u64);
        (*k).arena = crate::transport::arena_range().map_or([0; 2], |(lo, hi)| [lo, hi]);
        (*k).heap = heap_range();
        (*k).scratch = [
            hyperlight_guest::layout::scratch_base_gpa(),
            hyperlight_guest::layout::scratch_base_gva(),
        ];
    }
    // SAFETY: kernel-page field, kernel mode.
    unsafe { (*k).enabled = true };
    ENABLED.store(true, Ordering::Relaxed);
}

/// Runs `entry` in user mode as the whole of a call from the host; it ends
/// with `SYS_EXIT`. A fault that no [`run`] catches aborts the call.
pub fn serve_in_user(entry: extern "C" fn(u64) -> !) {
    IN_USER.store(true, Ordering::Relaxed);
    // SAFETY: kernel mode; `entry` is in the image, the user stack region is ours.
    let status = unsafe { hljs_enter_user(entry as *const () as u64, USTACK_TOP - 8, 0) };
    IN_USER.store(false, Ordering::Relaxed);
    if status != STATUS_EXIT {
        // No formatting here: that would use the heap, whose allocator
        // state user mode can write.
        // SAFETY: a kernel-page field read, in kernel mode.
        let fault = unsafe { (*kstate()).fault };
        let (vector, rip) = match fault {
            Some(Fault::Other { vector, rip }) => (vector, rip),
            Some(Fault::Access { addr, rip }) => (addr, rip),
            _ => (0, 0),
        };
        abort_report(b"user mode faulted outside any handler: ", vector, 0, rip);
    }
}

/// Points IDT vector `v` at `handler`, keeping its selector, IST and type.
unsafe fn gate(idt: *mut u64, v: usize, handler: u64) {
    // SAFETY: `idt` is the live IDT; each gate is two u64s.
    unsafe {
        let lo = idt.add(2 * v).read_volatile();
        let new_lo =
            (lo & 0x0000_ffff_ffff_0000) | (handler & 0xffff) | ((handler & 0xffff_0000) << 32);
        idt.add(2 * v).write_volatile(new_lo);
        idt.add(2 * v + 1).write_volatile(handler >> 32);
    }
}

/// Kernel entries from user mode (faults and system calls) before the
/// current call from the host began.
pub fn trap_count() -> u64 {
    if in_user() {
        return syscall(SYS_TRAPS, 0);
    }
    // SAFETY: plain read of a kernel-page field, in kernel mode.
    unsafe { (*kstate()).call_start }
}

/// Marks the start of a call from the host (for [`trap_count`]). Kernel mode.
pub fn call_begins() {
    // SAFETY: kernel-page fields, kernel mode, single vCPU.
    unsafe { (*kstate()).call_start = (*kstate()).traps };
}

/// The address of the kernel page, for tests that prove user mode cannot read it.
pub fn kernel_page() -> u64 {
    kstate() as u64
}

/// Runs `f` in user mode and returns its result, or the fault that ended it.
/// From kernel mode it enters user mode for `f`; from user mode it only sets
/// a landing for faults.
pub fn run<R>(f: impl FnOnce() -> R) -> Result<R, Fault> {
    if in_user() {
        return catch(f);
    }
    let mut out: Box<Option<Result<R, Fault>>> = Box::new(None);
    let out_ptr: *mut Option<Result<R, Fault>> = &mut *out;
    let job = move || {
        // SAFETY: `out` outlives the user run and nothing else touches it meanwhile.
        unsafe { out_ptr.write(Some(catch(f))) }
    };
    let mut job: Box<Option<_>> = Box::new(Some(job));
    let entry = trampoline_for(&*job);
    let k = kstate();
    IN_USER.store(true, Ordering::Relaxed);
    // SAFETY: kernel mode; the trampoline and `job` live in user-accessible
    // memory (image and heap), the user stack region is ours.
    let status = unsafe {
        (*k).fault = None;
        hljs_enter_user(entry, USTACK_TOP - 8, &mut *job as *mut _ as u64)
    };
    IN_USER.store(false, Ordering::Relaxed);
    // SAFETY: kernel mode, after the run.
    let fault = unsafe { (*k).fault }.unwrap_or(Fault::Other { vector: 0, rip: 0 });
    match status {
        STATUS_EXIT => out.take().unwrap_or(Err(fault)),
        _ => Err(fault),
    }
}

/// A closure and its result, handed to [`hljs_try`] by address.
struct Job<F, R> {
    f: Option<F>,
    out: Option<R>,
}

extern "C" fn call_job<F: FnOnce() -> R, R>(job: u64) {
    // SAFETY: `catch` passes a pointer to its live `Job<F, R>`.
    let job = unsafe { &mut *(job as *mut Job<F, R>) };
    if let Some(f) = job.f.take() {
        job.out = Some(f());
    }
}

/// Runs `f` (in user mode) with a landing for its fatal faults.
fn catch<R, F: FnOnce() -> R>(f: F) -> Result<R, Fault> {
    let mut job = Job::<F, R> {
        f: Some(f),
        out: None,
    };
    let mut landing = Landing::default();
    // SAFETY: `hljs_try` calls `call_job` with `job` and returns normally, or
    // resumes at its landing after a fault; either way `job` and `landing`
    // are still live in this frame (a fault abandons only the frames below).
    let faulted = unsafe {
        hljs_try(
            call_job::<F, R> as *const () as u64,
            &mut job as *mut Job<F, R> as u64,
            &mut landing,
        )
    };
    if faulted == 0 {
        return job.out.ok_or(Fault::Other { vector: 0, rip: 0 });
    }
    Err(match landing.kind {
        LANDING_STACK => Fault::StackOverflow,
        LANDING_ACCESS => Fault::Access {
            addr: landing.a,
            rip: landing.b,
        },
        _ => Fault::Other {
            vector: landing.a,
            rip: landing.b,
        },
    })
}

const LANDING_STACK: u64 = 0;
const LANDING_ACCESS: u64 = 1;
const LANDING_OTHER: u64 = 2;

fn trampoline_for<G: FnOnce()>(_: &Option<G>) -> u64 {
    trampoline::<G> as *const () as u64
}

/// The first user-mode function of a run.
extern "C" fn trampoline<G: FnOnce()>(job: *mut Option<G>) -> ! {
    // SAFETY: `run` passes a valid pointer to its boxed job.
    if let Some(g) = unsafe { (*job).take() } {
        g();
    }
    syscall(SYS_EXIT, 0);
    loop {
        core::hint::spin_loop();
    }
}

/// A system call from user mode.
#[inline(never)]
pub fn syscall(num: u64, arg: u64) -> u64 {
    let ret: u64;
    // SAFETY: `ud2` traps to `hljs_vec_6`, which resumes after it with rax set.
    unsafe { asm!("ud2", inlateout("rax") num => ret, in("rdi") arg, options(nostack)) };
    ret
}

/// Kernel side of every user trap; returns a `STATUS_*`.
extern "C" fn hljs_user_trap(cr2: u64) -> u64 {
    let k = kstate();
    // SAFETY: kernel mode, on the kernel stack, single vCPU.
    unsafe {
        (*k).traps += 1;
        let rip = (*k).frame[0];
        match (*k).vector {
            6 => match (*k).user[0] {
                SYS_EXIT => STATUS_EXIT,
                SYS_TRAPS => {
                    (*k).user[0] = (*k).call_start;
                    (*k).frame[0] = rip + 2;
                    STATUS_RESUME
                }
                _ => deliver(Fault::Other { vector: 6, rip }),
            },
            13 if emulate_out(rip) => STATUS_RESUME,
            14 => match page_fault(cr2, (*k).err) {
                Ok(()) => STATUS_RESUME,
                Err(f) => deliver(f),
            },
            v => deliver(Fault::Other { vector: v, rip }),
        }
    }
}

/// Does the `out` that user mode may not do (IOPL is 0 at CPL3 on kvm-pvm),
/// for the two ports user mode needs: the virtqueue notification that makes
/// the host serve a host-function call, and the abort stream of a panic.
fn emulate_out(rip: u64) -> bool {
    use hyperlight_common::outb::OutBAction;
    if !user_range(rip, 1) {
        return false;
    }
    let k = kstate();
    // SAFETY: `rip` is user memory (checked); the saved registers are on the kernel page.
    let (op, port, value) = unsafe {
        (
            (rip as *const u8).read_volatile(),
            (*k).user[3] as u16,
            (*k).user[0] as u32,
        )
    };
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
        (*k).frame[0] = rip + 1;
    }
    true
}

/// Ends a user computation on a fatal fault: resumes user mode at its
/// innermost landing (see [`run`]), or, with none, returns to the kernel.
fn deliver(f: Fault) -> u64 {
    let k = kstate();
    // SAFETY: a plain read of a user-memory static, in kernel mode.
    let at = unsafe { (&raw const USER_LANDING).read_volatile() };
    let size = core::mem::size_of::<Landing>() as u64;
    // The kernel writes there: it must be mapped, writable user memory, so
    // that the write cannot fault into hyperlight-guest-bin's handlers.
    if at == 0
        || !at.is_multiple_of(8)
        || !user_range(at, size)
        || !writable_page(at)
        || !writable_page(at + size - 1)
    {
        // SAFETY: kernel mode, single vCPU.
        unsafe { (*k).fault = Some(f) };
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
        (*k).frame[0] = (&raw const (*l).rip).read_volatile();
        (*k).frame[3] = (&raw const (*l).rsp).read_volatile();
        (*k).user[5] = at;
        (*k).fault = Some(f);
    }
    STATUS_RESUME
}

/// Whether the page of `va` is mapped and writable (at once or by copy on write).
fn writable_page(va: u64) -> bool {
    open_walk(va).is_some_and(|leaf| {
        // SAFETY: a live leaf entry.
        let v = unsafe { leaf.read_volatile() };
        v & (PTE_RW | PTE_COW) != 0
    })
}

/// The address ranges user mode may touch: the low half (image, heap)
/// except the kernel page, the transport arena, and the user stack, with its
/// guard page if `guard` (a fault there is a stack overflow).
fn user_regions(guard: bool) -> [(u64, u64); 4] {
    let k = kstate();
    let kpage = k as u64;
    // SAFETY: reads of kernel-page fields in kernel mode.
    let (limit, arena) = unsafe { ((*k).ustack_limit, (*k).arena) };
    [
        (0, kpage),
        (kpage + PAGE_SIZE as u64, 0x0000_8000_0000_0000),
        (arena[0], arena[1]),
        (limit - if guard { PAGE_SIZE as u64 } else { 0 }, USTACK_TOP),
    ]
}

/// May user mode touch `addr`?
fn user_allowed(addr: u64) -> bool {
    user_regions(true)
        .iter()
        .any(|&(lo, hi)| (lo..hi).contains(&addr))
}

/// Whether `[ptr, ptr + len)` lies in user-accessible memory.
fn user_range(ptr: u64, len: u64) -> bool {
    let Some(end) = ptr.checked_add(len) else {
        return false;
    };
    user_regions(false)
        .iter()
        .any(|&(lo, hi)| lo <= ptr && end <= hi)
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

fn pt_entry(table: u64, va: u64, level: u32) -> Option<*mut u64> {
    let shift = 39 - 9 * level;
    let idx = (va >> shift) & 0x1ff;
    // SAFETY: kernel-page field read.
    let [gpa, gva] = unsafe { (*kstate()).scratch };
    let pa = table & PTE_ADDR;
    // Page tables live in scratch; anything else is not ours to walk.
    if gva == 0 || pa < gpa {
        return None;
    }
    let t = (gva + (pa - gpa)) as *mut u64;
    // SAFETY: idx < 512 entries of a 4 KiB table.
    Some(unsafe { t.add(idx as usize) })
}

/// Walks the tables for `va`, setting the user bit on every present level.
/// Returns the leaf entry, or `None` if some level is not present.
fn open_walk(va: u64) -> Option<*mut u64> {
    let e = leaf_entry(va)?;
    // SAFETY: `e` points into a live page table in scratch memory.
    let v = unsafe { e.read_volatile() };
    if v & PTE_PRESENT == 0 {
        return None;
    }
    if v & PTE_USER == 0 {
        // SAFETY: as above; adding the user bit keeps the entry valid.
        unsafe { e.write_volatile(v | PTE_USER) };
    }
    Some(e)
}

/// The copy window's leaf entry, found once per snapshot generation (a
/// restore rebuilds the page tables elsewhere); mapped the first time.
fn window_leaf() -> Option<*mut u64> {
    let k = kstate();
    let generation = crate::transport::generation();
    // SAFETY: kernel mode; kernel-page fields and live page tables.
    unsafe {
        if (*k).window[0] != 0 && (*k).window[1] == generation {
            return Some((*k).window[0] as *mut u64);
        }
        let leaf = match leaf_entry(COPY_WINDOW) {
            Some(leaf) => leaf,
            None => {
                hyperlight_guest_bin::paging::map_region(
                    hyperlight_guest::prim_alloc::alloc_phys_pages(1),
                    COPY_WINDOW as *mut u8,
                    PAGE_SIZE as u64,
                    MappingKind::Basic(BasicMapping {
                        readable: true,
                        writable: true,
                        executable: false,
                    }),
                );
                leaf_entry(COPY_WINDOW)?
            }
        };
        leaf.write_volatile(0);
        asm!("invlpg [{}]", in(reg) COPY_WINDOW, options(nostack));
        (*k).window = [leaf as u64, generation];
        Some(leaf)
    }
}

/// The leaf entry for `va`, present or not, with the user bit set on the
/// levels above it; `None` if a level above is missing.
fn leaf_entry(va: u64) -> Option<*mut u64> {
    let cr3: u64;
    // SAFETY: reading CR3 in kernel mode.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack)) };
    let mut table = cr3;
    for level in 0..3 {
        let e = pt_entry(table, va, level)?;
        // SAFETY: `e` points into a live page table in scratch memory.
        let v = unsafe { e.read_volatile() };
        // A large page would open its neighbours too: refuse it.
        if v & PTE_PRESENT == 0 || v & PTE_LARGE != 0 {
            return None;
        }
        if v & PTE_USER == 0 {
            // SAFETY: as above; the user bit on an upper level opens nothing
            // by itself (the leaf decides).
            unsafe { e.write_volatile(v | PTE_USER) };
        }
        table = v;
    }
    pt_entry(table, va, 3)
}

/// A fault in kernel mode once user mode is on: the page faults the guest
/// kernel takes by design (a first write to a copy-on-write page, a first
/// touch of a zero-fill page, main-stack growth) are served like
/// hyperlight-guest-bin would; anything else is a guest-kernel bug and ends
/// the VM with a report. Never heap, never hooks.
extern "C" fn hljs_kernel_fault(vector: u64, err: u64, cr2: u64, rip: u64) {
    if vector == 14 && kernel_page_fault(cr2, err) {
        return;
    }
    abort_report(b"guest kernel fault: vector ", vector, cr2, rip);
}

fn kernel_page_fault(addr: u64, err: u64) -> bool {
    use hyperlight_guest::layout::{MAIN_STACK_LIMIT_GVA, MAIN_STACK_TOP_GVA};
    let present = err & 1 != 0;
    let write = err & 2 != 0;
    let fetch = err & (1 << 4) != 0;
    let page = addr & !(PAGE_SIZE as u64 - 1);
    let mapping = hyperlight_guest_bin::paging::virt_to_phys(page).next();
    // SAFETY: kernel mode; fresh scratch pages are mapped where nothing or
    // a read-only copy-on-write page was, with the permissions recorded.
    unsafe {
        if !present {
            let kind = if (MAIN_STACK_LIMIT_GVA..MAIN_STACK_TOP_GVA).contains(&addr) {
                BasicMapping {
                    readable: true,
                    writable: true,
                    executable: false,
                }
            } else if let Some(MappingKind::ZeroInit(bm)) = mapping.map(|m| m.kind) {
                bm
            } else {
                return false;
            };
            let pa = hyperlight_guest::prim_alloc::alloc_phys_pages(1);
            let Some(p) = hyperlight_guest_bin::paging::phys_to_virt(pa) else {
                return false;
            };
            p.write_bytes(0, PAGE_SIZE);
            hyperlight_guest_bin::paging::map_region(
                pa,
                page as *mut u8,
                PAGE_SIZE as u64,
                MappingKind::Basic(kind),
            );
            return true;
        }
        let Some(MappingKind::Cow(cm)) = mapping.map(|m| m.kind) else {
            return false;
        };
        if !write || fetch {
            return false;
        }
        let pa = hyperlight_guest::prim_alloc::alloc_phys_pages(1);
        let Some(dst) = hyperlight_guest_bin::paging::phys_to_virt(pa) else {
            return false;
        };
        copy_page(page as *const u8, dst);
        hyperlight_guest_bin::paging::map_region(
            pa,
            page as *mut u8,
            PAGE_SIZE as u64,
            MappingKind::Basic(BasicMapping {
                readable: cm.readable,
                writable: true,
                executable: cm.executable,
            }),
        );
        asm!("invlpg [{}]", in(reg) page, options(nostack));
    }
    true
}

/// Ends the VM with `what`, a number and two addresses in hex, without
/// touching the heap.
fn abort_report(what: &[u8], n: u64, addr: u64, rip: u64) -> ! {
    use hyperlight_common::flatbuffer_wrappers::guest_error::ErrorCode;
    use hyperlight_guest::exit::write_abort;
    fn hex(v: u64) -> [u8; 18] {
        let mut out = *b"0x0000000000000000";
        for i in 0..16 {
            let d = ((v >> (60 - 4 * i)) & 0xf) as u8;
            out[2 + i] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
        }
        out
    }
    write_abort(&[ErrorCode::GuestError as u8]);
    write_abort(what);
    write_abort(&hex(n));
    write_abort(b" at address ");
    write_abort(&hex(addr));
    write_abort(b", rip ");
    write_abort(&hex(rip));
    write_abort(&[0xFF]);
    loop {
        core::hint::spin_loop();
    }
}

/// Copies one page with a single `rep movsq`: kernel mode is emulated on
/// kvm-pvm, and the emulator runs a string instruction as one, where the
/// generic `memcpy` loop costs ~2 000 emulated instructions (~1.6 ms).
///
/// # Safety
/// `src` and `dst` are page-aligned, mapped, and do not overlap.
unsafe fn copy_page(src: *const u8, dst: *mut u8) {
    // SAFETY: the caller's contract; DF is clear in our kernel (`cld` at entry).
    unsafe {
        asm!(
            "rep movsq",
            inout("rcx") PAGE_SIZE / 8 => _,
            inout("rsi") src => _,
            inout("rdi") dst => _,
            options(nostack, preserves_flags)
        )
    };
}

fn page_fault(addr: u64, err: u64) -> Result<(), Fault> {
    // SAFETY: read of the saved user rip in kernel mode.
    let rip = unsafe { (*kstate()).frame[0] };
    if !user_allowed(addr) {
        return Err(Fault::Access { addr, rip });
    }
    // SAFETY: kernel-page field read.
    let limit = unsafe { (*kstate()).ustack_limit };
    let page = addr & !(PAGE_SIZE as u64 - 1);
    let present = err & 1 != 0;
    let write = err & 2 != 0;
    if !present {
        let in_stack = addr >= limit && addr < USTACK_TOP;
        if addr >= 0x0000_8000_0000_0000 && !in_stack {
            return Err(Fault::StackOverflow);
        }
        let kind = if in_stack {
            Some(BasicMapping {
                readable: true,
                writable: true,
                executable: false,
            })
        } else {
            match hyperlight_guest_bin::paging::virt_to_phys(page)
                .next()
                .map(|m| m.kind)
            {
                Some(MappingKind::ZeroInit(bm)) => Some(bm),
                _ => None,
            }
        };
        let Some(bm) = kind else {
            return Err(Fault::Access { addr, rip });
        };
        // SAFETY: kernel mode; a fresh zeroed scratch page is mapped at an
        // address that was not present.
        unsafe {
            let pa = hyperlight_guest::prim_alloc::alloc_phys_pages(1);
            if let Some(p) = hyperlight_guest_bin::paging::phys_to_virt(pa) {
                p.write_bytes(0, PAGE_SIZE);
            }
            hyperlight_guest_bin::paging::map_region(
                pa,
                page as *mut u8,
                PAGE_SIZE as u64,
                MappingKind::Basic(bm),
            );
        }
        return open_walk(addr)
            .map(|_| ())
            .ok_or(Fault::Access { addr, rip });
    }
    let leaf = open_walk(addr).ok_or(Fault::Access { addr, rip })?;
    // SAFETY: live leaf entry.
    let v = unsafe { leaf.read_volatile() };
    // A heap page is copied at its first user touch, read or write: most
    // heap pages user mode reads after a restore it also writes, and one
    // kernel entry then serves both. Elsewhere (image data, and above all
    // code and constants, which the kernel itself runs from) only a write
    // copies.
    // SAFETY: kernel-page field read.
    let [heap_lo, heap_hi] = unsafe { (*kstate()).heap };
    let fetch = err & (1 << 4) != 0;
    let eager = !fetch && v & PTE_COW != 0 && (heap_lo..heap_hi).contains(&addr);
    if v & PTE_RW == 0 && (write || eager) {
        if v & PTE_COW == 0 {
            return Err(Fault::Access { addr, rip });
        }
        // Copy-on-write. The copy itself runs in user mode (natively; the
        // same copy in the emulated kernel costs ~0.6 ms): the new page goes
        // in place at once, the old one appears read-only at the copy
        // window, and user mode resumes in `hljs_cow_copy`, which copies and
        // then goes back to the faulting instruction.
        // SAFETY: kernel mode; live leaf entries; the fields written are
        // user mode's own (the copy descriptor and its saved rip).
        unsafe {
            let pa = hyperlight_guest::prim_alloc::alloc_phys_pages(1);
            let Some(window) = window_leaf() else {
                let dst = hyperlight_guest_bin::paging::phys_to_virt(pa)
                    .ok_or(Fault::Access { addr, rip })?;
                copy_page(page as *const u8, dst);
                leaf.write_volatile((v & !(PTE_ADDR | PTE_COW)) | pa | PTE_RW | PTE_USER);
                asm!("invlpg [{}]", in(reg) page, options(nostack));
                return Ok(());
            };
            window.write_volatile((v & PTE_ADDR) | PTE_PRESENT | PTE_USER);
            asm!("invlpg [{}]", in(reg) COPY_WINDOW, options(nostack));
            leaf.write_volatile((v & !(PTE_ADDR | PTE_COW)) | pa | PTE_RW | PTE_USER);
            asm!("invlpg [{}]", in(reg) page, options(nostack));
            let k = kstate();
            // A `rep movs` with DF set copies downwards: start at the top.
            let top = if (*k).frame[2] & RFLAGS_DF != 0 {
                PAGE_SIZE as u64 - 8
            } else {
                0
            };
            let c = &raw mut COW_COPY;
            (&raw mut (*c).src).write_volatile(COPY_WINDOW + top);
            (&raw mut (*c).dst).write_volatile(page + top);
            (&raw mut (*c).rip).write_volatile(rip);
            (*k).frame[0] = hljs_cow_copy as *const () as u64;
        }
    }
    Ok(())
}
