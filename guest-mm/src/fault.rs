//! What a page fault needs: the decision, from the fault and the page tables.

use crate::PAGE_SIZE;
use crate::pte::{COW, NX, PRESENT, RW};
use crate::regions::{UPPER_HALF, UserRegions};

/// A page fault as the CPU reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFault {
    /// The faulting address (CR2).
    pub addr: u64,
    /// The error code pushed by the CPU.
    pub err: u64,
}

impl PageFault {
    /// The page was present (a protection fault, not a missing page).
    pub const fn present(&self) -> bool {
        self.err & 1 != 0
    }

    /// The access was a write.
    pub const fn write(&self) -> bool {
        self.err & 2 != 0
    }

    /// A reserved bit was set in some entry of the walk.
    pub const fn reserved(&self) -> bool {
        self.err & (1 << 3) != 0
    }

    /// The access was an instruction fetch.
    pub const fn fetch(&self) -> bool {
        self.err & (1 << 4) != 0
    }
}

/// Permissions of a page the kernel maps afresh (always readable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perms {
    /// Writes allowed.
    pub writable: bool,
    /// Instruction fetches allowed.
    pub executable: bool,
}

impl Perms {
    /// Readable and writable data.
    pub const DATA: Perms = Perms {
        writable: true,
        executable: false,
    };
}

/// How hyperlight records the page of a fault, when it records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// A zero-fill page, mapped at first touch with these permissions.
    ZeroInit(Perms),
    /// A copy-on-write page; its copy may run code if `executable`.
    Cow {
        /// Instruction fetches allowed.
        executable: bool,
    },
    /// Anything else, or nothing.
    Other,
}

/// Why a fault ends the user computation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// A kernel page, an unmapped address, or a write to a read-only page.
    Access,
    /// The user stack ran into its guard page.
    StackOverflow,
}

/// What the kernel does for a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Set the user bit along the walk; nothing else is missing.
    Open,
    /// Put a fresh copy of the page in place, writable and open.
    CopyOnWrite,
    /// Map a fresh zeroed page with these permissions, then open it.
    MapZeroed(Perms),
    /// The fault is fatal to the user computation.
    Refuse(FaultKind),
}

/// The decision for a page fault raised by user mode.
///
/// - `leaf`: the leaf entry of the faulting address, if the walk reached one;
/// - `heap`: the guest heap `[lo, hi)`, whose copy-on-write pages are copied
///   at their first touch, read or write (a heap page user mode reads after a
///   restore it nearly always writes too, and one kernel entry then serves both);
/// - `recorded`: how hyperlight records the page (asked only for missing pages).
pub fn decide(
    fault: PageFault,
    regions: &UserRegions,
    heap: [u64; 2],
    leaf: Option<u64>,
    recorded: impl FnOnce() -> Recorded,
) -> Decision {
    let addr = fault.addr;
    if !regions.allows(addr) {
        return Decision::Refuse(FaultKind::Access);
    }
    if !fault.present() {
        let in_stack = regions.in_stack(addr);
        if in_stack {
            return Decision::MapZeroed(Perms::DATA);
        }
        // The only open upper-half address that may be missing is the
        // stack's guard page: the arena is always mapped.
        if addr >= UPPER_HALF {
            return Decision::Refuse(FaultKind::StackOverflow);
        }
        return match recorded() {
            Recorded::ZeroInit(perms) => Decision::MapZeroed(perms),
            _ => Decision::Refuse(FaultKind::Access),
        };
    }
    let Some(v) = leaf.filter(|v| v & PRESENT != 0) else {
        return Decision::Refuse(FaultKind::Access);
    };
    // Faults the user bit does not cure: opening and resuming would fault
    // again for ever.
    if fault.reserved() || (fault.fetch() && v & NX != 0) {
        return Decision::Refuse(FaultKind::Access);
    }
    let eager = !fault.fetch() && v & COW != 0 && (heap[0]..heap[1]).contains(&addr);
    if v & RW == 0 && (fault.write() || eager) {
        if v & COW == 0 {
            return Decision::Refuse(FaultKind::Access);
        }
        return Decision::CopyOnWrite;
    }
    Decision::Open
}

/// The decision for a page fault raised by the guest kernel itself once user
/// mode is on: the faults it takes by design (a first write to a
/// copy-on-write page, a first touch of a zero-fill page, main-stack growth);
/// `None` for anything else, a guest-kernel bug that ends the VM.
pub fn decide_kernel(
    fault: PageFault,
    in_main_stack: bool,
    recorded: Recorded,
) -> Option<Decision> {
    if !fault.present() {
        if in_main_stack {
            return Some(Decision::MapZeroed(Perms::DATA));
        }
        return match recorded {
            Recorded::ZeroInit(perms) => Some(Decision::MapZeroed(perms)),
            _ => None,
        };
    }
    (matches!(recorded, Recorded::Cow { .. }) && fault.write() && !fault.fetch())
        .then_some(Decision::CopyOnWrite)
}

/// The bytes of the page at `page` that a copy-on-write for the kernel's own
/// write must carry over, as `[start, end)` offsets in the page: all of it,
/// except for a page of the kernel's main stack written while the kernel
/// runs on that stack with stack pointer `sp`, where what lies below `sp` is
/// dead (no red zone in kernel code) and only `[sp, page end)` is copied,
/// nothing when the whole page is below `sp`. Each qword the emulator copies
/// costs ~1 µs on kvm-pvm, so a stack page whose live part is a few frames
/// is ~10× cheaper to copy this way than whole.
pub fn kernel_copy_span(page: u64, sp: u64, main_stack: [u64; 2]) -> [u64; 2] {
    let on_stack = |a: u64| (main_stack[0]..=main_stack[1]).contains(&a);
    if !on_stack(page) || !on_stack(sp) {
        return [0, PAGE_SIZE];
    }
    match sp.checked_sub(page) {
        // The page is above the stack pointer: all of it may be live frames.
        None => [0, PAGE_SIZE],
        Some(off) if off >= PAGE_SIZE => [0, 0],
        // Qword-aligned down, so that the copy stays one string instruction.
        Some(off) => [off & !7, PAGE_SIZE],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PAGE_SIZE;
    use crate::pte::USER;

    const R: UserRegions = UserRegions {
        kernel_page: 0x20_0000,
        arena: [0xffff_8000_0100_0000, 0xffff_8000_0110_0000],
        stack_limit: 0xffff_f000_0ff0_0000,
        stack_top: 0xffff_f000_1000_0000,
    };
    const HEAP: [u64; 2] = [0x100_0000, 0x300_0000];
    const READ: u64 = 1;
    const WRITE: u64 = 3;
    const FETCH: u64 = 1 | 1 << 4;
    const MISSING_READ: u64 = 0;
    const MISSING_WRITE: u64 = 2;

    fn pf(addr: u64, err: u64) -> PageFault {
        PageFault { addr, err }
    }

    fn user(addr: u64, err: u64, leaf: Option<u64>) -> Decision {
        decide(pf(addr, err), &R, HEAP, leaf, || Recorded::Other)
    }

    const COW_LEAF: Option<u64> = Some(0x5000 | PRESENT | COW);
    const RO_LEAF: Option<u64> = Some(0x5000 | PRESENT);
    const RW_LEAF: Option<u64> = Some(0x5000 | PRESENT | RW);

    const MAIN: [u64; 2] = [0x10_0000, 0x20_0000];

    #[test]
    fn a_kernel_copy_carries_only_the_live_part_of_a_main_stack_page() {
        let page = 0x1f_f000;
        // The stack pointer inside the page: from it to the page's end.
        assert_eq!(
            kernel_copy_span(page, page + 0xf48, MAIN),
            [0xf48, PAGE_SIZE]
        );
        assert_eq!(
            kernel_copy_span(page, page + 0xf4c, MAIN),
            [0xf48, PAGE_SIZE]
        );
        assert_eq!(kernel_copy_span(page, page, MAIN), [0, PAGE_SIZE]);
        // The page wholly below the stack pointer: nothing is live.
        assert_eq!(kernel_copy_span(page - PAGE_SIZE, page + 8, MAIN), [0, 0]);
        assert_eq!(kernel_copy_span(page, page + PAGE_SIZE, MAIN), [0, 0]);
        // The page wholly above it: all of it.
        assert_eq!(kernel_copy_span(page, page - 8, MAIN), [0, PAGE_SIZE]);
    }

    #[test]
    fn a_kernel_copy_off_the_main_stack_carries_the_whole_page() {
        // A data page, or the stack pointer on another stack (an IST stack,
        // whose interrupted context may own the page's every byte).
        assert_eq!(kernel_copy_span(0x40_0000, 0x1f_f800, MAIN), [0, PAGE_SIZE]);
        assert_eq!(kernel_copy_span(0x1f_f000, 0x40_0800, MAIN), [0, PAGE_SIZE]);
    }

    #[test]
    fn the_kernel_page_and_closed_regions_are_refused_whatever_the_tables_say() {
        let refused = Decision::Refuse(FaultKind::Access);
        assert_eq!(user(R.kernel_page, READ, RW_LEAF), refused);
        assert_eq!(user(R.kernel_page + 8, WRITE, COW_LEAF), refused);
        assert_eq!(user(0xffff_8000_0000_0000, READ, RW_LEAF), refused);
        assert_eq!(user(R.stack_top, MISSING_WRITE, None), refused);
    }

    #[test]
    fn a_page_that_only_lacks_the_user_bit_is_opened() {
        assert_eq!(user(0x40_0000, READ, RO_LEAF), Decision::Open);
        assert_eq!(user(0x40_0000, FETCH, RO_LEAF), Decision::Open);
        assert_eq!(user(0x40_0000, WRITE, RW_LEAF), Decision::Open);
        assert_eq!(
            user(0x40_0000, READ, Some(0x5000 | PRESENT | USER)),
            Decision::Open
        );
        // A copy-on-write page outside the heap is only read: no copy yet.
        assert_eq!(user(0x40_0000, READ, COW_LEAF), Decision::Open);
    }

    #[test]
    fn writes_copy_on_write_pages_and_heap_pages_are_copied_at_first_touch() {
        assert_eq!(user(0x40_0000, WRITE, COW_LEAF), Decision::CopyOnWrite);
        assert_eq!(user(HEAP[0], READ, COW_LEAF), Decision::CopyOnWrite);
        assert_eq!(user(HEAP[1] - 1, READ, COW_LEAF), Decision::CopyOnWrite);
        assert_eq!(user(HEAP[1], READ, COW_LEAF), Decision::Open);
        // Code in the heap is never copied by a fetch.
        assert_eq!(user(HEAP[0], FETCH, COW_LEAF), Decision::Open);
    }

    #[test]
    fn a_write_to_a_read_only_page_or_a_vanished_leaf_is_refused() {
        let refused = Decision::Refuse(FaultKind::Access);
        assert_eq!(user(0x40_0000, WRITE, RO_LEAF), refused);
        assert_eq!(user(0x40_0000, READ, None), refused);
        assert_eq!(user(0x40_0000, READ, Some(0x5000)), refused);
    }

    #[test]
    fn faults_the_user_bit_cannot_cure_are_refused() {
        let refused = Decision::Refuse(FaultKind::Access);
        assert_eq!(user(0x40_0000, FETCH, Some(0x5000 | PRESENT | NX)), refused);
        assert_eq!(user(0x40_0000, READ | 1 << 3, RO_LEAF), refused);
        // Reading a no-execute page is fine.
        assert_eq!(
            user(0x40_0000, READ, Some(0x5000 | PRESENT | NX)),
            Decision::Open
        );
    }

    #[test]
    fn missing_pages_grow_the_stack_fill_zero_pages_or_overflow() {
        assert_eq!(
            user(R.stack_top - 8, MISSING_WRITE, None),
            Decision::MapZeroed(Perms::DATA)
        );
        assert_eq!(
            user(R.stack_limit - 8, MISSING_WRITE, None),
            Decision::Refuse(FaultKind::StackOverflow)
        );
        let zero = Perms {
            writable: true,
            executable: false,
        };
        assert_eq!(
            decide(
                pf(HEAP[0] + PAGE_SIZE, MISSING_READ),
                &R,
                HEAP,
                None,
                || { Recorded::ZeroInit(zero) }
            ),
            Decision::MapZeroed(zero)
        );
        assert_eq!(
            user(0x40_0000, MISSING_READ, None),
            Decision::Refuse(FaultKind::Access)
        );
    }

    #[test]
    fn the_kernel_serves_only_its_designed_faults() {
        assert_eq!(
            decide_kernel(pf(0x1000, MISSING_WRITE), true, Recorded::Other),
            Some(Decision::MapZeroed(Perms::DATA))
        );
        let ro = Perms {
            writable: false,
            executable: false,
        };
        assert_eq!(
            decide_kernel(pf(0x1000, MISSING_READ), false, Recorded::ZeroInit(ro)),
            Some(Decision::MapZeroed(ro))
        );
        assert_eq!(
            decide_kernel(pf(0x1000, MISSING_READ), false, Recorded::Other),
            None
        );
        assert_eq!(
            decide_kernel(
                pf(0x1000, WRITE),
                false,
                Recorded::Cow { executable: false }
            ),
            Some(Decision::CopyOnWrite)
        );
        assert_eq!(
            decide_kernel(pf(0x1000, READ), false, Recorded::Cow { executable: false }),
            None
        );
        assert_eq!(
            decide_kernel(
                pf(0x1000, FETCH | 2),
                false,
                Recorded::Cow { executable: false }
            ),
            None
        );
        assert_eq!(
            decide_kernel(pf(0x1000, WRITE), false, Recorded::Other),
            None
        );
    }
}
