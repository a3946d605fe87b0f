//! Page faults: the user's, decided by `hyperlight_js_guest_mm`, and the
//! kernel's own, and the report that ends the VM on a kernel bug.

use hyperlight_js_guest_mm::fault::{
    Decision, FaultKind, PageFault, decide, decide_kernel, kernel_copy_span,
};
use hyperlight_js_guest_mm::{PAGE_SIZE, UserRegions, page_of};

use super::kpage::{Entry, KState, kpage_addr};
use super::{Fault, USTACK_TOP, paging, working_set};

/// The regions open to user mode, from the kernel page.
pub fn regions(k: &KState) -> UserRegions {
    UserRegions {
        kernel_page: kpage_addr(),
        arena: k.arena,
        stack_limit: k.ustack_limit,
        stack_top: USTACK_TOP,
    }
}

/// Serves a page fault raised by user mode at `addr` (the error code is on
/// the kernel page); the kind of entry it was, or the fault that ends the
/// user computation.
pub fn user_page_fault(k: &mut KState, addr: u64) -> Result<Entry, Fault> {
    let rip = k.frame[0];
    let fault = PageFault { addr, err: k.err };
    let access = Fault::Access { addr, rip };
    let regions = regions(k);
    // Before any walk: a walk opens the levels it passes.
    if !regions.allows(addr) {
        return Err(access);
    }
    let leaf = if fault.present() {
        paging::open_walk(k, addr)
    } else {
        None
    };
    // SAFETY: a live leaf entry.
    let v = leaf.map(|e| unsafe { e.read_volatile() });
    let decision = decide(fault, &regions, k.heap, v, || paging::recorded(k, addr));
    if matches!(decision, Decision::Open | Decision::CopyOnWrite) {
        working_set::record(k, addr, decision);
    }
    match decision {
        Decision::Open => Ok(Entry::Open),
        Decision::CopyOnWrite => {
            let leaf = leaf.ok_or(access)?;
            // SAFETY: kernel mode, a user fault on `k`; `leaf` is the live
            // leaf of a copy-on-write page (decided above).
            if unsafe { paging::copy_in_user(k, leaf, addr) } {
                Ok(Entry::Copy)
            } else {
                Err(access)
            }
        }
        Decision::MapZeroed(perms) => {
            // SAFETY: kernel mode; the page was not present.
            if unsafe { paging::map_zeroed(addr, perms) } && paging::open_walk(k, addr).is_some() {
                Ok(Entry::Zero)
            } else {
                Err(access)
            }
        }
        Decision::Refuse(FaultKind::StackOverflow) => Err(Fault::StackOverflow),
        Decision::Refuse(FaultKind::Access) => Err(access),
    }
}

/// A fault in kernel mode once user mode is on (from `entry.rs`): the page
/// faults the guest kernel takes by design are served like
/// hyperlight-guest-bin would; anything else is a guest-kernel bug and ends
/// the VM with a report. Never the kernel page (a user trap may hold it),
/// never the heap, never hyperlight's hooks.
pub extern "C" fn hljs_kernel_fault(vector: u64, err: u64, cr2: u64, rip: u64, sp: u64) {
    if vector == 14 && kernel_page_fault(PageFault { addr: cr2, err }, sp) {
        return;
    }
    abort_report(b"guest kernel fault: vector ", vector, cr2, rip);
}

/// Serves the kernel's own page fault at `fault`, raised with stack pointer `sp`.
fn kernel_page_fault(fault: PageFault, sp: u64) -> bool {
    use hyperlight_guest::layout::{MAIN_STACK_LIMIT_GVA, MAIN_STACK_TOP_GVA};
    let in_main_stack = (MAIN_STACK_LIMIT_GVA..MAIN_STACK_TOP_GVA).contains(&fault.addr);
    let leaf = paging::peek_leaf(fault.addr);
    let recorded = paging::recorded_at(leaf);
    match (decide_kernel(fault, in_main_stack, recorded), leaf) {
        // SAFETY: kernel mode; the page was not present.
        (Some(Decision::MapZeroed(perms)), _) => unsafe { paging::map_zeroed(fault.addr, perms) },
        // SAFETY: kernel mode; the live leaf of a copy-on-write page (decided above).
        (Some(Decision::CopyOnWrite), Some(leaf)) => unsafe {
            let span = kernel_copy_span(
                page_of(fault.addr),
                sp,
                [MAIN_STACK_LIMIT_GVA, MAIN_STACK_TOP_GVA],
            );
            paging::copy_for_kernel(leaf, fault.addr, span)
        },
        _ => false,
    }
}

/// Ends the VM with `what`, a number and two addresses in hex, without
/// touching the heap.
pub fn abort_report(what: &[u8], n: u64, addr: u64, rip: u64) -> ! {
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

const _: () = assert!(PAGE_SIZE == hyperlight_common::vmem::PAGE_SIZE as u64);
