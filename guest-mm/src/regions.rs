//! The addresses user mode may touch.

use crate::PAGE_SIZE;

/// Where the upper (kernel) half of the address space begins.
pub const UPPER_HALF: u64 = 0x0000_8000_0000_0000;

/// The parts of the address space open to user mode: the low half (guest
/// image and heap) except the kernel page, the transport arena, and the user
/// stack with its guard page below it. Everything else (page tables,
/// descriptor tables, kernel stacks, scratch metadata) stays kernel-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserRegions {
    /// The kernel page (its state), inside the low half but never open.
    pub kernel_page: u64,
    /// The transport arena `[lo, hi)`, in the upper half.
    pub arena: [u64; 2],
    /// The lowest address of the user stack; the page below is its guard.
    pub stack_limit: u64,
    /// One past the user stack's highest address.
    pub stack_top: u64,
}

impl UserRegions {
    /// The ranges `[lo, hi)` open to user mode, with the stack's guard page
    /// if `guard` (touching it is a stack overflow, not an access violation).
    pub const fn ranges(&self, guard: bool) -> [(u64, u64); 4] {
        let guard = if guard { PAGE_SIZE } else { 0 };
        [
            (0, self.kernel_page),
            (self.kernel_page + PAGE_SIZE, UPPER_HALF),
            (self.arena[0], self.arena[1]),
            (self.stack_limit.saturating_sub(guard), self.stack_top),
        ]
    }

    /// May user mode touch `addr` (the stack's guard page included)?
    pub fn allows(&self, addr: u64) -> bool {
        self.ranges(true)
            .iter()
            .any(|&(lo, hi)| (lo..hi).contains(&addr))
    }

    /// Does `[ptr, ptr + len)` lie inside one range open to user mode (no guard page)?
    pub fn contains(&self, ptr: u64, len: u64) -> bool {
        let Some(end) = ptr.checked_add(len) else {
            return false;
        };
        self.ranges(false)
            .iter()
            .any(|&(lo, hi)| lo <= ptr && end <= hi)
    }

    /// Is `addr` in the user stack (not its guard page)?
    pub const fn in_stack(&self, addr: u64) -> bool {
        addr >= self.stack_limit && addr < self.stack_top
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: UserRegions = UserRegions {
        kernel_page: 0x20_0000,
        arena: [0xffff_8000_0100_0000, 0xffff_8000_0110_0000],
        stack_limit: 0xffff_f000_0ff0_0000,
        stack_top: 0xffff_f000_1000_0000,
    };

    #[test]
    fn the_kernel_page_is_closed_and_its_neighbours_open() {
        assert!(R.allows(0x1f_ffff));
        assert!(!R.allows(0x20_0000));
        assert!(!R.allows(0x20_0fff));
        assert!(R.allows(0x20_1000));
        assert!(R.allows(UPPER_HALF - 1));
        assert!(!R.allows(UPPER_HALF));
    }

    #[test]
    fn the_upper_half_is_closed_but_arena_and_stack() {
        assert!(!R.allows(0xffff_8000_0000_0000));
        assert!(R.allows(R.arena[0]));
        assert!(!R.allows(R.arena[1]));
        assert!(R.allows(R.stack_top - 8));
        assert!(!R.allows(R.stack_top));
        // The guard page is open to the fault path (a stack overflow) but
        // not to a range check.
        assert!(R.allows(R.stack_limit - 1));
        assert!(!R.allows(R.stack_limit - PAGE_SIZE - 1));
        assert!(!R.contains(R.stack_limit - 8, 8));
        assert!(R.contains(R.stack_limit, 8));
        assert!(R.in_stack(R.stack_limit) && !R.in_stack(R.stack_limit - 1));
    }

    #[test]
    fn a_range_must_fit_one_region_and_not_wrap() {
        assert!(R.contains(0x1f_f000, 0x1000));
        assert!(!R.contains(0x1f_f000, 0x1001), "runs into the kernel page");
        assert!(!R.contains(u64::MAX - 4, 8), "wraps");
        assert!(!R.contains(R.arena[1] - 8, 16));
    }
}
