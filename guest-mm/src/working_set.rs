//! A call's working set: the pages the kernel opened or copied for user mode,
//! replayed at the start of a later call from the same snapshot in one kernel
//! entry instead of one fault each.
//!
//! Replaying an entry is serving the fault it stands for: [`replay`] makes
//! the [`PageFault`] that user mode would raise. The kernel's replay loop
//! (assembly, `guest/src/usermode/working_set.rs`) serves it only where the
//! fault fast path would, by the same rules, which give a subset of what
//! [`crate::decide`] gives that fault (`Open` or `CopyOnWrite`), and skips
//! anything else. So a list, however hostile, gains user mode nothing a
//! fault would not.

use crate::fault::{Decision, PageFault};
use crate::page_of;

/// Entry flag: the kernel copied the page (a write, or a read in the heap),
/// so the replay is a write.
pub const COPIED: u64 = 1;
/// Entry flag, set by the kernel during a replay: the page's copy was set up,
/// and user mode must copy the next window slot into it.
pub const PENDING: u64 = 2;

/// Longest working set the kernel records and replays (what the kernel
/// page has room for beside the rest of its state).
pub const MAX_PAGES: usize = 240;

/// The entry recording a fault at `addr` that the kernel served with `decision`.
pub const fn record(addr: u64, decision: Decision) -> u64 {
    page_of(addr)
        | match decision {
            Decision::CopyOnWrite => COPIED,
            _ => 0,
        }
}

/// The fault an entry stands for: a user access to a present page, a write
/// if the page was copied, else a read. Flags other than [`COPIED`] are ignored.
pub const fn replay(entry: u64) -> PageFault {
    const PRESENT: u64 = 1;
    const WRITE: u64 = 2;
    const USER: u64 = 4;
    PageFault {
        addr: page_of(entry),
        err: PRESENT | USER | if entry & COPIED != 0 { WRITE } else { 0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::{FaultKind, Recorded, decide};
    use crate::pte::{COW, PRESENT, RW};
    use crate::regions::UserRegions;

    const R: UserRegions = UserRegions {
        kernel_page: 0x20_0000,
        arena: [0xffff_8000_0100_0000, 0xffff_8000_0110_0000],
        stack_limit: 0xffff_f000_0ff0_0000,
        stack_top: 0xffff_f000_1000_0000,
    };
    const HEAP: [u64; 2] = [0x100_0000, 0x300_0000];

    fn replayed(entry: u64, leaf: u64) -> Decision {
        decide(replay(entry), &R, HEAP, Some(leaf), || Recorded::Other)
    }

    #[test]
    fn a_recorded_fault_replays_to_the_same_decision() {
        let cow = 0x5000 | PRESENT | COW;
        // (address, the CPU's error code of the original fault, its leaf)
        let faults = [
            (0x40_0123, 3, cow),                   // a write to copy-on-write
            (HEAP[0] + 0x10, 5, cow),              // a read in the heap: copied
            (0x40_0000, 5, 0x5000 | PRESENT),      // a read outside it: opened
            (0x41_0008, 7, 0x6000 | PRESENT | RW), // a write to a writable page
        ];
        for (addr, err, leaf) in faults {
            let original = decide(PageFault { addr, err }, &R, HEAP, Some(leaf), || {
                Recorded::Other
            });
            assert_eq!(
                replayed(record(addr, original), leaf),
                original,
                "{addr:#x}"
            );
        }
    }

    #[test]
    fn replaying_never_opens_what_a_fault_would_not() {
        let refused = Decision::Refuse(FaultKind::Access);
        let rw = 0x5000 | PRESENT | RW;
        assert_eq!(replayed(R.kernel_page, rw), refused);
        assert_eq!(replayed(R.kernel_page | COPIED | PENDING, rw), refused);
        assert_eq!(replayed(0xffff_8000_0000_0000, rw), refused);
        // A write to a read-only page that is not copy-on-write.
        assert_eq!(replayed(0x40_0000 | COPIED, 0x5000 | PRESENT), refused);
        // A page that is no longer present.
        assert_eq!(replayed(0x40_0000, 0x5000), refused);
    }

    #[test]
    fn a_page_already_copied_is_only_opened() {
        assert_eq!(
            replayed(0x40_0000 | COPIED, 0x7000 | PRESENT | RW),
            Decision::Open
        );
    }
}
