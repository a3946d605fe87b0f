//! The privilege switch: entering user mode, and every way back into the
//! kernel (the exception vectors user mode can raise).
//!
//! Assembly only; what the kernel does once entered is in `traps.rs` (from
//! user mode) and `faults.rs` (the kernel's own faults).

use core::arch::global_asm;

use super::kpage::{
    K_ALLOC_GVA, K_ALLOC_LIMIT, K_ARENA, K_COPIED, K_ERR, K_FRAME, K_GENERATION_GVA, K_HEAP,
    K_LEAF_TABLES, K_OPENED, K_RSP, K_SCRATCH_DELTA, K_SCRATCH_GPA, K_TRAPS, K_USER,
    K_USTACK_LIMIT, K_VECTOR, K_WINDOW, K_WS, K_WS_LEN, K_WS_ON,
};

pub const SEL_KDATA: u64 = 0x10;
pub const SEL_UDATA: u64 = 0x28 | 3;
pub const SEL_UCODE: u64 = 0x30 | 3;

/// What a user trap's handler asks the trap path to do next.
pub const STATUS_RESUME: u64 = 0;
/// Leave user mode: the job is done.
pub const STATUS_EXIT: u64 = 1;
const _: () = assert!(super::SYS_EXIT == 0, "#UD's fast exit tests rax for zero");
/// Leave user mode: a fault no landing catches.
pub const STATUS_FAULT: u64 = 2;

global_asm!(
    // Appends the working-set entry for the page of `addr` with `flags` to
    // the kernel page's record while recording is on (the first call after
    // a restore that brought no list); clobbers `entry`, `tmp` and `base`.
    // The entry is made only then: every instruction here is emulated.
    ".macro hljs_ws_record addr, flags, entry, tmp, base",
    "cmp byte ptr [rip + {kpage} + {k_ws_on}], 0",
    "je 1f",
    "mov \\tmp, [rip + {kpage} + {k_ws_len}]",
    "cmp \\tmp, {ws_max}",
    "jae 1f",
    "mov \\entry, \\addr",
    "and \\entry, -4096",
    "or \\entry, \\flags",
    "lea \\base, [rip + {kpage}]",
    "mov [\\base + \\tmp * 8 + {k_ws}], \\entry",
    "inc \\tmp",
    "mov [\\base + {k_ws_len}], \\tmp",
    "1:",
    ".endm",

    // hljs_enter_user(entry: rdi, user_rsp: rsi, args: rdx, rcx, r8, r9) -> status;
    // user mode gets the args in rdi, rsi, rdx, rcx.
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
    "mov rsi, rcx",
    "mov rdx, r8",
    "mov rcx, r9",
    // No kernel value leaks into user registers.
    "xor eax, eax", "xor ebx, ebx", "xor ebp, ebp",
    "xor r8d, r8d", "xor r9d, r9d", "xor r10d, r10d", "xor r11d, r11d",
    "xor r12d, r12d", "xor r13d, r13d", "xor r14d, r14d", "xor r15d, r15d",
    "iretq",

    // One entry per exception vector user mode can raise. From user mode
    // every one goes to `hljs_user_trap` (#UD is also the system call, #GP
    // also the emulated `out`); from kernel mode to `hljs_kernel_fault`.
    // hyperlight-guest-bin's handlers never run once user mode is on: they
    // consult hook tables that live in user-writable statics.
    ".irp v, 0,1,3,4,5,7,9,16,19,20,28",
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
    // #UD from user mode with rax = 0 is `SYS_EXIT`, which ends every call
    // (and the working set's replay phase): left here at once, without the
    // full register save and the trap handler (~100 emulated instructions),
    // unless per-kind counting is on. The same as `traps::syscall` makes of
    // it: back to `hljs_enter_user`'s caller with STATUS_EXIT.
    ".global hljs_vec_6",
    "hljs_vec_6:",
    "test byte ptr [rsp + 8], 3",
    "jnz 2f",
    "push 0",
    "push 6",
    "jmp hljs_kernel_trap",
    "2:",
    "test rax, rax",
    "jnz 3f",
    "cmp byte ptr [rip + {kpage} + {k_stats_on}], 0",
    "jne 3f",
    "inc qword ptr [rip + {kpage} + {k_traps}]",
    "mov rsp, [rip + {kpage} + {k_rsp}]",
    "mov eax, {kdata}",
    "mov ss, ax",
    "cld",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop rbp", "pop rbx",
    "mov eax, {status_exit}",
    "ret",
    "3:",
    "push 0",
    "push 6",
    "jmp hljs_trap_common",
    ".irp v, 10,11,12,13,17,21,29,30",
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

    // #PF has a fast path in assembly for the two faults that fill a call
    // after a restore (hyperlight rebuilds the tables without the user bit
    // and makes every writable page copy-on-write again): a page that only
    // lacks the user bit, and a copy-on-write. Every CPL0 instruction is
    // emulated here (~1.5 µs each), so it saves six registers, not the whole
    // state, and walks the tables itself, starting from a per-2 MiB cache of
    // leaf tables. It serves only a subset of what
    // `hyperlight_js_guest_mm::decide` serves, the same way: a low-half page
    // other than the kernel page, or a page of the user stack or the
    // transport arena in the upper half, through tables in scratch, no large
    // page, no reserved bit. For a leaf not open yet it opens a fetch (not
    // from a no-execute page), a write to a writable page and a read of a
    // page that is not copy-on-write outside the heap (or any read while the
    // working set is recorded: a read-only open gives less than the copy).
    // It copies a write to a copy-on-write page (open yet or not) and a read
    // of one in the heap, when the copy window is valid for this snapshot
    // generation and the allocator has a page. Anything else goes to the
    // full path, which decides again from scratch.
    // Stack after the pushes: r9, r8, rsi, rdx, rcx, rax, err, rip, cs, rflags, ...
    ".global hljs_vec_14",
    "hljs_vec_14:",
    "test byte ptr [rsp + 16], 3",
    "jnz 2f",
    "push 14",
    "jmp hljs_kernel_trap",
    "2:",
    "push rax", "push rcx", "push rdx", "push rsi", "push r8", "push r9",
    "test byte ptr [rsp + 48], 8",
    "jnz 8f",
    "mov rax, cr2",
    "mov rcx, rax",
    "shr rcx, 47",
    "jz 10f",
    // The upper half: the user stack (not its guard page) and the arena only.
    "cmp rax, [rip + {kpage} + {k_ustack_limit}]",
    "jb 11f",
    "mov rcx, {ustack_top}",
    "cmp rax, rcx",
    "jb 10f",
    "11:",
    "cmp rax, [rip + {kpage} + {k_arena}]",
    "jb 8f",
    "cmp rax, [rip + {kpage} + {k_arena} + 8]",
    "jae 8f",
    "10:",
    "lea rdx, [rip + {kpage}]",
    "mov rcx, rax",
    "and rcx, -4096",
    "cmp rcx, rdx",
    "je 8f",
    "mov rsi, {addr_mask}",
    // The leaf table from the cache (rdx: its kernel address), if there.
    "mov rcx, rax",
    "shr rcx, 21",
    "inc rcx",
    "mov edx, ecx",
    "and edx, {lt_mask}",
    "shl edx, 4",
    "lea r8, [rip + {kpage}]",
    "add r8, rdx",
    "cmp rcx, [r8 + {k_lt}]",
    "jne 13f",
    "mov rdx, [r8 + {k_lt} + 8]",
    "jmp 14f",
    "13:",
    "mov rdx, cr3",
    // The three upper levels: present, no large page, user bit set.
    ".irp shift, 39,30,21",
    "and rdx, rsi",
    "cmp rdx, [rip + {kpage} + {k_gpa}]",
    "jb 8f",
    "add rdx, [rip + {kpage} + {k_delta}]",
    "mov rcx, rax",
    "shr rcx, \\shift",
    "and ecx, 0x1ff",
    "lea rdx, [rdx + rcx * 8]",
    "mov rcx, [rdx]",
    "test cl, 1",
    "jz 8f",
    "test cl, 0x80",
    "jnz 8f",
    "test cl, 4",
    "jnz 1f",
    "or rcx, 4",
    "mov [rdx], rcx",
    "1:",
    "mov rdx, rcx",
    ".endr",
    "and rdx, rsi",
    "cmp rdx, [rip + {kpage} + {k_gpa}]",
    "jb 8f",
    "add rdx, [rip + {kpage} + {k_delta}]",
    // Into the cache: r8 is the entry, rcx its tag (region + 1).
    "mov rcx, rax",
    "shr rcx, 21",
    "inc rcx",
    "mov [r8 + {k_lt}], rcx",
    "mov [r8 + {k_lt} + 8], rdx",
    "14:",
    "mov rcx, rax",
    "shr rcx, 12",
    "and ecx, 0x1ff",
    "lea rdx, [rdx + rcx * 8]",
    "mov rcx, [rdx]",
    "test cl, 1",
    "jz 8f",
    // The leaf: rcx = entry, rdx = its address.
    "test cl, 4",
    "jnz 12f",
    "test byte ptr [rsp + 48], 0x10",
    "jz 3f",
    "bt rcx, 63",
    "jc 8f",
    "jmp 5f",
    "3:",
    "test byte ptr [rsp + 48], 2",
    "jz 4f",
    "test cl, 2",
    "jnz 5f",
    "test ecx, 0x200",
    "jz 8f",
    "jmp 6f",
    // Open already (read before): only a write to a copy-on-write page.
    "12:",
    "test byte ptr [rsp + 48], 0x10",
    "jnz 8f",
    "test byte ptr [rsp + 48], 2",
    "jz 8f",
    "test cl, 2",
    "jnz 8f",
    "test ecx, 0x200",
    "jz 8f",
    "jmp 6f",
    "4:",
    "test ecx, 0x200",
    "jz 5f",
    // While recording, a read opens even in the heap: the record then says
    // which pages the call only read, which a replay opens without a copy.
    "cmp byte ptr [rip + {kpage} + {k_ws_on}], 0",
    "jne 5f",
    "cmp rax, [rip + {kpage} + {k_heap}]",
    "jb 5f",
    "cmp rax, [rip + {kpage} + {k_heap} + 8]",
    "jb 6f",
    // Open.
    "5:",
    "or rcx, 4",
    "mov [rdx], rcx",
    "inc qword ptr [rip + {kpage} + {k_opened}]",
    "hljs_ws_record rax, 0, rcx, rsi, r8",
    "jmp 9f",
    // Copy-on-write, as `paging::copy_in_user` does it.
    "6:",
    "mov rsi, [rip + {kpage} + {k_gen_gva}]",
    "mov rsi, [rsi]",
    "cmp rsi, [rip + {kpage} + {k_window} + 8]",
    "jne 8f",
    "mov rsi, [rip + {kpage} + {k_window}]",
    "test rsi, rsi",
    "jz 8f",
    "mov r9, [rip + {kpage} + {k_alloc_gva}]",
    "mov r8, {page}",
    "xadd [r9], r8",
    "lea r9, [r8 + {page}]",
    "cmp r9, [rip + {kpage} + {k_alloc_limit}]",
    "ja 7f",
    // The old page at the window, read-only for user mode.
    "mov r9, {addr_mask}",
    "and r9, rcx",
    "or r9, 5",
    "mov [rsi], r9",
    "mov r9, {window}",
    "invlpg [r9]",
    // The new page in place, writable and open.
    "mov r9, {keep_mask}",
    "and rcx, r9",
    "or rcx, r8",
    "or rcx, 6",
    "mov [rdx], rcx",
    "mov rcx, rax",
    "and rcx, -4096",
    "invlpg [rcx]",
    // With DF set the user copy runs downwards from the last qword.
    "xor r8d, r8d",
    "test dword ptr [rsp + 72], 0x400",
    "jz 1f",
    "mov r8d, {last_qword}",
    "1:",
    "mov r9, {window}",
    "add r9, r8",
    "mov [rip + {cow}], r9",
    "add rcx, r8",
    "mov [rip + {cow} + 8], rcx",
    "mov r9, [rsp + 56]",
    "mov [rip + {cow} + 16], r9",
    "lea r9, [rip + hljs_cow_copy]",
    "mov [rsp + 56], r9",
    "inc qword ptr [rip + {kpage} + {k_copied}]",
    "hljs_ws_record rax, {ws_copied}, rcx, rsi, r8",
    "9:",
    "inc qword ptr [rip + {kpage} + {k_traps}]",
    "pop r9", "pop r8", "pop rsi", "pop rdx", "pop rcx", "pop rax",
    "add rsp, 8",
    "iretq",
    // No page: give it back, and let the full path report it.
    "7:",
    "mov r9, [rip + {kpage} + {k_alloc_gva}]",
    "sub qword ptr [r9], {page}",
    "8:",
    "pop r9", "pop r8", "pop rsi", "pop rdx", "pop rcx", "pop rax",
    "push 14",
    "jmp hljs_trap_common",

    // A fault in kernel mode (stack: vector, err, rip, cs, rflags, rsp, ss,
    // on the exception stack). The caller-saved registers are saved around
    // the handler, which gets vector, err, cr2, rip and the interrupted rsp;
    // it returns only when the fault is served.
    "hljs_kernel_trap:",
    "push rax", "push rcx", "push rdx", "push rsi", "push rdi",
    "push r8", "push r9", "push r10", "push r11",
    "mov rdi, [rsp + 72]",
    "mov rsi, [rsp + 80]",
    "mov rdx, cr2",
    "mov rcx, [rsp + 88]",
    "mov r8, [rsp + 112]",
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
    kpage = sym super::kpage::KPAGE,
    k_ws_on = const K_WS_ON,
    k_ws_len = const K_WS_LEN,
    k_ws = const K_WS,
    ws_max = const hyperlight_js_guest_mm::working_set::MAX_PAGES,
    ws_copied = const hyperlight_js_guest_mm::working_set::COPIED,
    k_rsp = const K_RSP,
    k_user = const K_USER,
    k_vector = const K_VECTOR,
    k_err = const K_ERR,
    k_frame = const K_FRAME,
    kernel_fault = sym super::faults::hljs_kernel_fault,
    k_gpa = const K_SCRATCH_GPA,
    k_lt = const K_LEAF_TABLES,
    lt_mask = const super::kpage::LEAF_TABLES - 1,
    k_ustack_limit = const K_USTACK_LIMIT,
    k_arena = const K_ARENA,
    ustack_top = const super::USER_STACK_TOP,
    k_delta = const K_SCRATCH_DELTA,
    k_traps = const K_TRAPS,
    k_stats_on = const super::kpage::K_STATS_ON,
    status_exit = const STATUS_EXIT,
    k_opened = const K_OPENED,
    addr_mask = const hyperlight_js_guest_mm::pte::ADDR,
    keep_mask = const !(hyperlight_js_guest_mm::pte::ADDR | hyperlight_js_guest_mm::pte::COW),
    k_heap = const K_HEAP,
    k_window = const K_WINDOW,
    k_gen_gva = const K_GENERATION_GVA,
    k_alloc_gva = const K_ALLOC_GVA,
    k_alloc_limit = const K_ALLOC_LIMIT,
    k_copied = const K_COPIED,
    page = const hyperlight_js_guest_mm::PAGE_SIZE,
    last_qword = const hyperlight_js_guest_mm::PAGE_SIZE - 8,
    window = const super::paging::COPY_WINDOW,
    cow = sym super::paging::CALL_PAGE,
    udata = const SEL_UDATA,
    ucode = const SEL_UCODE,
    kdata = const SEL_KDATA,
    handler = sym super::traps::hljs_user_trap,
);

unsafe extern "C" {
    /// Enters user mode at `entry` with `user_rsp` and `args` in `rdi`,
    /// `rsi`, `rdx`, `rcx`; returns the `STATUS_*` with which user mode was left.
    pub fn hljs_enter_user(entry: u64, user_rsp: u64, a0: u64, a1: u64, a2: u64, a3: u64) -> u64;
    pub fn hljs_vec_0();
    pub fn hljs_vec_1();
    pub fn hljs_vec_3();
    pub fn hljs_vec_4();
    pub fn hljs_vec_5();
    pub fn hljs_vec_6();
    pub fn hljs_vec_7();
    pub fn hljs_vec_9();
    pub fn hljs_vec_10();
    pub fn hljs_vec_11();
    pub fn hljs_vec_12();
    pub fn hljs_vec_13();
    pub fn hljs_vec_14();
    pub fn hljs_vec_16();
    pub fn hljs_vec_17();
    pub fn hljs_vec_19();
    pub fn hljs_vec_20();
    pub fn hljs_vec_21();
    pub fn hljs_vec_28();
    pub fn hljs_vec_29();
    pub fn hljs_vec_30();
}
