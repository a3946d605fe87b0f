//! x86-64 page-table entries as hyperlight 0.18 writes them, and the page walk's arithmetic.

use crate::fault::{Perms, Recorded};

/// The entry maps something.
pub const PRESENT: u64 = 1;
/// Writes allowed.
pub const RW: u64 = 1 << 1;
/// User-mode (CPL3) access allowed. Hyperlight never sets it: every snapshot
/// rebuilds the tables without it, and the guest kernel sets it on demand.
pub const USER: u64 = 1 << 2;
/// A 2 MiB or 1 GiB page at an upper level.
pub const LARGE: u64 = 1 << 7;
/// Hyperlight's copy-on-write mark (an AVL bit) on a read-only leaf.
pub const COW: u64 = 1 << 9;
/// No instruction fetches.
pub const NX: u64 = 1 << 63;
/// The physical address bits.
pub const ADDR: u64 = 0x000F_FFFF_FFFF_F000;

/// Levels of the walk: PML4, PDPT, PD, PT.
pub const LEVELS: u32 = 4;

/// The index of `va`'s entry in its table at `level` (0 = PML4, 3 = PT).
pub const fn index(va: u64, level: u32) -> usize {
    ((va >> (39 - 9 * level)) & 0x1ff) as usize
}

/// Where the table that `entry` points to is visible to the kernel: page
/// tables live in hyperlight's scratch region, mapped at `scratch_gva` for
/// the physical `scratch_gpa`. A table outside scratch is not ours to walk.
pub const fn table_va(entry: u64, scratch_gpa: u64, scratch_gva: u64) -> Option<u64> {
    let pa = entry & ADDR;
    if scratch_gva == 0 || pa < scratch_gpa {
        return None;
    }
    Some(scratch_gva + (pa - scratch_gpa))
}

/// What an upper-level entry allows the walk to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upper {
    /// Go down to the next table.
    Descend,
    /// Not present: the address is not mapped.
    Missing,
    /// A large page: opening it would open its neighbours too, so refuse.
    Large,
}

/// Classifies an upper-level entry for the walk.
pub const fn upper(entry: u64) -> Upper {
    if entry & PRESENT == 0 {
        Upper::Missing
    } else if entry & LARGE != 0 {
        Upper::Large
    } else {
        Upper::Descend
    }
}

/// A leaf after copy-on-write: the new page `pa`, writable and open to user
/// mode, every other bit kept.
pub const fn after_copy(leaf: u64, pa: u64) -> u64 {
    (leaf & !(ADDR | COW)) | (pa & ADDR) | RW | USER
}

/// A read-only, user-readable view of the page a leaf maps (the copy window's entry).
pub const fn read_view(leaf: u64) -> u64 {
    (leaf & ADDR) | PRESENT | USER
}

/// A leaf after a copy-on-write the kernel takes for its own write: the new
/// page `pa`, writable, with the user bit as it was (a kernel-only page stays
/// closed, a page user mode could read stays readable).
pub const fn after_kernel_copy(leaf: u64, pa: u64) -> u64 {
    (leaf & !(ADDR | COW)) | (pa & ADDR) | RW
}

/// hyperlight's software bits on a leaf that is not present: bit 2 marks a
/// zero-fill page, bits 8–10 its permissions (read, write, execute).
const ZERO_INIT: u64 = 1 << 2;
const ZERO_INIT_WRITABLE: u64 = 1 << 9;
const ZERO_INIT_EXECUTABLE: u64 = 1 << 10;
/// The three software-available bits of a present leaf; hyperlight's
/// copy-on-write mark is the value [`COW`] of all three.
pub const AVL: u64 = 0xE00;

/// How hyperlight records a page, read from its leaf entry alone, exactly
/// as hyperlight-common's walker decodes it (without the walk through its
/// generic table operations, ~1 000 emulated instructions a lookup here).
pub const fn recorded(leaf: u64) -> Recorded {
    if leaf & PRESENT == 0 {
        if leaf & ZERO_INIT == 0 {
            return Recorded::Other;
        }
        return Recorded::ZeroInit(Perms {
            writable: leaf & ZERO_INIT_WRITABLE != 0,
            executable: leaf & ZERO_INIT_EXECUTABLE != 0,
        });
    }
    if leaf & AVL == COW {
        Recorded::Cow {
            executable: leaf & NX == 0,
        }
    } else {
        Recorded::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_follow_the_four_level_layout() {
        let va = (3 << 39) | (5 << 30) | (7 << 21) | (9 << 12) | 0x123;
        assert_eq!(
            [index(va, 0), index(va, 1), index(va, 2), index(va, 3)],
            [3, 5, 7, 9]
        );
        // The sign-extended upper half: index 511 at the top level.
        assert_eq!(index(0xffff_f000_1000_0000, 0), 480);
        assert_eq!(index(u64::MAX, 0), 511);
    }

    #[test]
    fn tables_are_walked_only_inside_scratch() {
        let gpa = 0x1_0000_0000;
        let gva = 0xffff_8000_0000_0000;
        assert_eq!(
            table_va((gpa + 0x3000) | PRESENT | RW, gpa, gva),
            Some(gva + 0x3000)
        );
        assert_eq!(table_va(0x5000 | PRESENT, gpa, gva), None);
        assert_eq!(table_va(gpa | PRESENT, gpa, 0), None);
        // Flag bits above the address (NX) do not move the table.
        assert_eq!(
            table_va((gpa + 0x1000) | (1 << 63), gpa, gva),
            Some(gva + 0x1000)
        );
    }

    #[test]
    fn upper_levels_refuse_large_pages() {
        assert_eq!(upper(0), Upper::Missing);
        assert_eq!(upper(LARGE), Upper::Missing);
        assert_eq!(upper(0x2000 | PRESENT | LARGE), Upper::Large);
        assert_eq!(upper(0x2000 | PRESENT | RW), Upper::Descend);
    }

    #[test]
    fn a_kernel_copy_keeps_the_user_bit_as_it_was() {
        let closed = 0x7000 | PRESENT | COW;
        assert_eq!(after_kernel_copy(closed, 0x9000), 0x9000 | PRESENT | RW);
        let open = closed | USER | NX;
        assert_eq!(
            after_kernel_copy(open, 0x9000),
            0x9000 | PRESENT | RW | USER | NX
        );
    }

    #[test]
    fn a_copy_keeps_permissions_and_drops_the_mark() {
        let nx = 1 << 63;
        let leaf = 0x7000 | PRESENT | COW | nx;
        let new = after_copy(leaf, 0x9000);
        assert_eq!(new, 0x9000 | PRESENT | RW | USER | nx);
        assert_eq!(read_view(leaf), 0x7000 | PRESENT | USER);
    }
}
