//! `pte::recorded` reads a leaf entry the way hyperlight-common's own page
//! walker (`vmem::virt_to_phys`) decodes it: the kernel relies on the two
//! agreeing, and only the walker is hyperlight's definition.

use hyperlight_common::vmem::{self, MappingKind, TableReadOps};
use hyperlight_js_guest_mm::fault::{Perms, Recorded};
use hyperlight_js_guest_mm::pte::{self, ADDR, COW, NX, PRESENT, RW, USER};

/// A four-level table whose upper levels lead to one page table, in a
/// vector of 4 KiB tables addressed by their index times 4096.
struct Tables(Vec<[u64; 512]>);

/// The address the tests look up: PML4, PDPT, PD and PT index 1 each.
const VA: u64 = (1 << 39) | (1 << 30) | (1 << 21) | (1 << 12);

impl Tables {
    fn with_leaf(leaf: u64) -> Self {
        let mut t = vec![[0u64; 512]; 4];
        for (level, table) in (1u64..).zip(t.iter_mut().take(3)) {
            table[1] = (level << 12) | PRESENT | RW | USER;
        }
        t[3][1] = leaf;
        Self(t)
    }
}

impl AsRef<Tables> for Tables {
    fn as_ref(&self) -> &Tables {
        self
    }
}

impl TableReadOps for Tables {
    type TableAddr = u64;

    fn entry_addr(addr: u64, entry_offset: u64) -> u64 {
        addr + entry_offset
    }

    unsafe fn read_entry(&self, addr: u64) -> u64 {
        self.0[(addr >> 12) as usize][((addr & 0xFFF) / 8) as usize]
    }

    fn to_phys(addr: u64) -> u64 {
        addr
    }

    fn from_phys(addr: u64) -> u64 {
        addr
    }

    fn root_table(&self) -> u64 {
        0
    }
}

/// hyperlight's reading of `leaf`, in the kernel's terms.
fn by_hyperlight(leaf: u64) -> Recorded {
    let tables = Tables::with_leaf(leaf);
    // SAFETY: the tables are plain memory owned by this test.
    let mapping = unsafe { vmem::virt_to_phys(&tables, VA, 1) }.next();
    match mapping.map(|m| m.kind) {
        Some(MappingKind::ZeroInit(bm)) => Recorded::ZeroInit(Perms {
            writable: bm.writable,
            executable: bm.executable,
        }),
        Some(MappingKind::Cow(cm)) => Recorded::Cow {
            executable: cm.executable,
        },
        _ => Recorded::Other,
    }
}

/// Every combination of the bits that matter, over present and missing leaves.
fn leaves() -> Vec<u64> {
    // USER is also bit 2, the zero-fill mark of a missing leaf.
    let flags = [RW, USER, 1 << 8, 1 << 9, 1 << 10, 1 << 11, NX];
    let mut out = Vec::new();
    for present in [0, PRESENT] {
        for mask in 0u32..(1 << flags.len()) {
            let mut leaf = present | (0x1234_5000 & ADDR);
            for (i, f) in flags.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    leaf |= f;
                }
            }
            out.push(leaf);
        }
    }
    out
}

#[test]
fn every_leaf_is_read_as_hyperlights_walker_reads_it() {
    for leaf in leaves() {
        assert_eq!(
            pte::recorded(leaf),
            by_hyperlight(leaf),
            "leaf {leaf:#018x}"
        );
    }
}

#[test]
fn the_grid_reaches_every_kind() {
    let kinds: Vec<Recorded> = leaves().into_iter().map(pte::recorded).collect();
    for wanted in [
        Recorded::Cow { executable: true },
        Recorded::Cow { executable: false },
        Recorded::Other,
    ] {
        assert!(kinds.contains(&wanted), "{wanted:?} not reached");
    }
    for writable in [false, true] {
        for executable in [false, true] {
            let z = Recorded::ZeroInit(Perms {
                writable,
                executable,
            });
            assert!(kinds.contains(&z), "{z:?} not reached");
        }
    }
    // A copy-on-write leaf as hyperlight writes one.
    assert_eq!(
        pte::recorded(0x5000 | PRESENT | COW | NX),
        Recorded::Cow { executable: false }
    );
}
