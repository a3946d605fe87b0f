//! A call's working set: the pages the kernel opened or copied for user mode,
//! replayed at the start of a later call from the same snapshot in one kernel
//! entry instead of one fault each.
//!
//! Replaying an entry is serving the fault it stands for: [`replay`] makes
//! the [`PageFault`] that user mode would raise. The replay phase's loop
//! (assembly, `guest/src/usermode/replay.rs`) serves it only where the
//! fault fast path would, by the same rules, which give a subset of what
//! [`crate::decide`] gives that fault (`Open` or `CopyOnWrite`), and skips
//! anything else; for a read of a copy-on-write page in the heap, where the
//! fault would get a copy, it opens the page read-only, which gives less
//! (the recording call does the same, so its list says which heap pages a
//! call only reads, and a later write there is an ordinary copy-on-write
//! fault). So a list, however hostile, gains user mode nothing a fault
//! would not.

use crate::fault::{Decision, PageFault};
use crate::page_of;

/// Entry flag: the kernel copied the page (for a write; a read in the heap is
/// copied too, but not while the kernel records), so the replay is a write.
pub const COPIED: u64 = 1;

/// Entry field, bits 1..=9: a replayed entry stands for a *run* of this
/// field + 1 consecutive pages from its page, all with its [`COPIED`] flag
/// and all in the 2 MiB region of its first page ([`run`]), so that the
/// replay decodes the entry and checks its region once for the whole run
/// (the replay once ran in the emulated kernel, where each instruction
/// counted; it still saves work). The kernel records
/// single pages (the field is 0); [`merge_runs`] makes the runs.
pub const RUN: u64 = 0x1ff << 1;

/// Pages in a 2 MiB region: the longest run.
pub const REGION_PAGES: u64 = 512;

/// The first page and the number of pages of the run `entry` stands for,
/// or `None` if they would not all lie in one 2 MiB region (the kernel
/// skips such an entry whole). Bits 10 and 11 are ignored.
pub const fn run(entry: u64) -> Option<(u64, u64)> {
    let first = page_of(entry);
    let pages = ((entry & RUN) >> 1) + 1;
    let last = first.wrapping_add((pages - 1) * crate::PAGE_SIZE);
    if last < first || last >> 21 != first >> 21 {
        return None;
    }
    Some((first, pages))
}

/// Merges a sorted list of single-page entries, one per page (as
/// [`record`] makes them, after sorting and removing duplicates), into runs
/// of consecutive pages with the same flag in one 2 MiB region, in place;
/// the number of entries it now holds. An entry that already is a run, or
/// carries other bits, is kept as it is.
pub fn merge_runs(list: &mut [u64]) -> usize {
    let mut n = 0;
    for i in 0..list.len() {
        let entry = list[i];
        if n > 0 && extends(list[n - 1], entry) {
            list[n - 1] += 1 << 1;
        } else {
            list[n] = entry;
            n += 1;
        }
    }
    n
}

/// Whether the single-page `entry` is the page just after the run `open`,
/// with the same flag, in the same 2 MiB region.
fn extends(open: u64, entry: u64) -> bool {
    const FLAGS: u64 = crate::PAGE_SIZE - 1;
    let Some((first, pages)) = run(open) else {
        return false;
    };
    let next = first + pages * crate::PAGE_SIZE;
    open & FLAGS & !RUN == entry & FLAGS
        && entry & FLAGS & !COPIED == 0
        && page_of(entry) == next
        && next >> 21 == first >> 21
}

/// Longest working set the kernel records and replays (what the kernel
/// page has room for beside the rest of its state).
pub const MAX_PAGES: usize = 235;

/// The high half of a list's trailer: "HLWS".
pub const TRAILER_MAGIC: u32 = 0x484c_5753;

/// The last 8 bytes of a list of `n` entries as the host sends it: the
/// entries, little-endian, then this, so that the kernel finds the list
/// from the end of the call's message, where hyperlight puts the bytes of
/// the call's last (byte) parameter. Bits 16..32 carry how many pages the
/// list copies (its [`COPIED`] runs' pages, at most `0xffff`): a hint, read
/// by [`copies_hint`], of how many fresh pages the replay will take.
pub const fn trailer(n: u32, copies: u32) -> u64 {
    // Both fields saturate: a length too large for its 16 bits stays too
    // large for the kernel (never wraps to a short, valid-looking one).
    const fn field(v: u32) -> u64 {
        if v > 0xffff { 0xffff } else { v as u64 }
    }
    ((TRAILER_MAGIC as u64) << 32) | (field(copies) << 16) | field(n)
}

/// The pages a list says it copies, from its trailer ([`trailer`]). Untrusted:
/// the kernel populates at most that many of the pages the replay phase
/// reserves, where a wrong hint costs time and nothing else.
pub const fn copies_hint(trailer: u64) -> u64 {
    (trailer >> 16) & 0xffff
}

/// Where the list of a call message sits, found from what the kernel reads
/// of the message in place (the host wrote it; nothing in user mode has run
/// since the restore, and every entry is checked anyway): the header's
/// `kind` (byte 0) and `payload_len` (bytes 8..12), the receive buffer's
/// `capacity`, and the 8 bytes that end the payload (`trailer`, read only
/// if [`message_end`] gave their place). `Some((offset, n))`: `n` entries
/// from `offset` bytes into the buffer.
pub const fn list_span(
    kind: u8,
    payload_len: u32,
    capacity: u64,
    trailer: u64,
) -> Option<(u64, u64)> {
    match message_end(kind, payload_len, capacity) {
        Some(end) => list_before(end, payload_len, trailer),
        None => None,
    }
}

/// [`list_span`] once [`message_end`] has given `end` (the kernel needs it
/// first, to read the trailer there): the list that the `trailer` ending a
/// payload of `payload_len` bytes at `end` announces, if it fits.
pub const fn list_before(end: u64, payload_len: u32, trailer: u64) -> Option<(u64, u64)> {
    if (trailer >> 32) as u32 != TRAILER_MAGIC {
        return None;
    }
    let n = trailer & 0xffff;
    let bytes = 8 * (n + 1);
    if n as usize > MAX_PAGES || bytes > payload_len as u64 {
        return None;
    }
    Some((end - bytes, n))
}

/// The offset just past a request message of `payload_len` bytes in a
/// receive buffer of `capacity` (the header is 12 bytes), if it is a
/// request that ends in that buffer with room for a trailer.
pub const fn message_end(kind: u8, payload_len: u32, capacity: u64) -> Option<u64> {
    const REQUEST: u8 = 1;
    const HEADER: u64 = 12;
    let end = HEADER + payload_len as u64;
    if kind != REQUEST || payload_len < 8 || end > capacity {
        return None;
    }
    Some(end)
}

/// The entry recording a fault at `addr` that the kernel served with `decision`.
pub const fn record(addr: u64, decision: Decision) -> u64 {
    page_of(addr)
        | match decision {
            Decision::CopyOnWrite => COPIED,
            _ => 0,
        }
}

/// The faults an entry stands for, one per page of its [`run`] (none if it
/// crosses a 2 MiB region): a user access to a present page, a write if the
/// pages were copied, else a read.
pub fn replay(entry: u64) -> impl Iterator<Item = PageFault> {
    const PRESENT: u64 = 1;
    const WRITE: u64 = 2;
    const USER: u64 = 4;
    let (first, pages) = run(entry).unwrap_or((0, 0));
    let err = PRESENT | USER | if entry & COPIED != 0 { WRITE } else { 0 };
    (0..pages).map(move |i| PageFault {
        addr: first + i * crate::PAGE_SIZE,
        err,
    })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

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

    /// The decision for each page of the entry's run, each with `leaf`.
    fn replayed_all(entry: u64, leaf: u64) -> Vec<Decision> {
        replay(entry)
            .map(|f| decide(f, &R, HEAP, Some(leaf), || Recorded::Other))
            .collect()
    }

    /// The decision for the entry's first page.
    fn replayed(entry: u64, leaf: u64) -> Decision {
        replayed_all(entry, leaf)[0]
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
                replayed_all(record(addr, original), leaf),
                [original],
                "{addr:#x}"
            );
        }
    }

    #[test]
    fn replaying_never_opens_what_a_fault_would_not() {
        let refused = Decision::Refuse(FaultKind::Access);
        let rw = 0x5000 | PRESENT | RW;
        assert_eq!(replayed(R.kernel_page, rw), refused);
        // Whatever flag bits the entry carries.
        assert_eq!(replayed(R.kernel_page | COPIED | 0xffe, rw), refused);
        assert_eq!(replayed(0xffff_8000_0000_0000, rw), refused);
        // Nor does a run reaching into the upper half.
        let run = 0xffff_8000_0000_0000 | RUN;
        assert!(replayed_all(run, rw).iter().all(|d| *d == refused));
        // A run may not leave its region or wrap: it stands for no fault at all.
        assert_eq!(replay(0x1ff_000 | 2 << 1).count(), 0);
        assert_eq!(replay(0xffff_ffff_ffff_f000 | RUN).count(), 0);
        // A write to a read-only page that is not copy-on-write.
        assert_eq!(replayed(0x40_0000 | COPIED, 0x5000 | PRESENT), refused);
        // A page that is no longer present.
        assert_eq!(replayed(0x40_0000, 0x5000), refused);
    }

    #[test]
    fn a_list_is_found_at_the_end_of_a_request_that_fits_its_buffer() {
        // A 100-byte payload ending in 3 entries and the trailer.
        assert_eq!(
            list_span(1, 100, 4096, trailer(3, 0)),
            Some((12 + 100 - 32, 3))
        );
        assert_eq!(list_span(1, 32, 44, trailer(3, 0)), Some((12, 3)));
        // An empty list is a list.
        assert_eq!(list_span(1, 8, 4096, trailer(0, 0)), Some((12, 0)));
    }

    #[test]
    fn no_list_is_found_where_the_message_does_not_hold_one() {
        // Not a request (a snapshot checkpoint, a response).
        assert_eq!(list_span(7, 100, 4096, trailer(3, 0)), None);
        assert_eq!(list_span(2, 100, 4096, trailer(3, 0)), None);
        // The message continues in another buffer.
        assert_eq!(list_span(1, 5000, 4096, trailer(3, 0)), None);
        assert_eq!(message_end(1, 4085, 4096), None);
        assert_eq!(message_end(1, 4084, 4096), Some(4096));
        // No trailer, or one claiming more entries than the payload holds
        // or than the kernel replays.
        assert_eq!(list_span(1, 100, 4096, 3), None);
        assert_eq!(list_span(1, 100, 4096, trailer(12, 0)), None);
        assert_eq!(
            list_span(1, 4000, 4096, trailer(MAX_PAGES as u32 + 1, 0)),
            None
        );
        // Too short to hold a trailer at all.
        assert_eq!(message_end(1, 7, 4096), None);
        // A length that would overflow 32 bits is still bounded.
        assert_eq!(list_span(1, u32::MAX, u64::MAX, trailer(u32::MAX, 0)), None);
    }

    #[test]
    fn the_trailer_carries_the_copies_hint_beside_the_length() {
        let t = trailer(3, 40);
        assert_eq!(list_span(1, 100, 4096, t), Some((80, 3)));
        assert_eq!(copies_hint(t), 40);
        assert_eq!(copies_hint(trailer(3, 1 << 20)), 0xffff);
        assert_eq!(copies_hint(trailer(3, 0)), 0);
        // A length past 16 bits saturates, and is refused, rather than wrapping.
        assert_eq!(list_span(1, 100, 4096, trailer(0x1_0003, 0)), None);
    }

    #[test]
    fn a_run_is_at_most_its_region() {
        assert_eq!(run(0x40_0000 | COPIED), Some((0x40_0000, 1)));
        assert_eq!(run(0x40_0000 | RUN | 0xc00), Some((0x40_0000, 512)));
        assert_eq!(run(0x40_1000 | RUN), None);
        assert_eq!(run(0x5f_f000 | 1 << 1), None);
        assert_eq!(run(0x5f_e000 | 1 << 1), Some((0x5f_e000, 2)));
        assert_eq!(run(u64::MAX), None);
    }

    /// Single pages, sorted, one per page, as user mode hands them over.
    fn pages(list: &[(u64, bool)]) -> Vec<u64> {
        list.iter()
            .map(|&(page, copied)| page | if copied { COPIED } else { 0 })
            .collect()
    }

    /// Every page the entries stand for, with its flag.
    fn expanded(list: &[u64]) -> Vec<u64> {
        list.iter()
            .flat_map(|&e| replay(e).map(move |f| f.addr | (e & COPIED)))
            .collect()
    }

    #[test]
    fn runs_join_consecutive_pages_of_one_flag_in_one_region() {
        let mut list = pages(&[
            (0x40_0000, false),
            (0x40_1000, false),
            (0x40_2000, true), // another flag
            (0x40_3000, true),
            (0x40_5000, true), // a gap
            (0x5f_f000, true),
            (0x60_0000, true), // another region
            (0x60_1000, true),
        ]);
        let n = merge_runs(&mut list);
        assert_eq!(
            &list[..n],
            [
                0x40_0000 | 1 << 1,
                0x40_2000 | 1 << 1 | COPIED,
                0x40_5000 | COPIED,
                0x5f_f000 | COPIED,
                0x60_0000 | 1 << 1 | COPIED,
            ]
        );
    }

    #[test]
    fn merged_runs_stand_for_exactly_the_pages_merged() {
        // A whole region, its neighbours, and a pseudo-random mix of flags
        // and gaps, as a call's heap might give.
        let mut list: Vec<u64> = (0..512u64 + 2).map(|i| 0x3f_f000 + i * 0x1000).collect();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut page = 0x100_0000;
        for _ in 0..300 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            page += 0x1000 * (1 + (x & 3) / 3);
            list.push(page | (x >> 8) & COPIED);
        }
        let before = list.clone();
        let n = merge_runs(&mut list);
        assert!(n < before.len() / 2, "{n} entries");
        assert_eq!(expanded(&list[..n]), before);
        // A whole region is one entry.
        assert!(list[..n].contains(&(0x40_0000 | RUN)));
        // Merged again, nothing changes.
        let again = list[..n].to_vec();
        assert_eq!(merge_runs(&mut list[..n]), n);
        assert_eq!(list[..n], again);
    }

    #[test]
    fn entries_with_undefined_bits_are_never_merged() {
        let mut list = [0x40_0000 | 0x400, 0x40_1000, 0x40_2000 | 0x800];
        assert_eq!(merge_runs(&mut list), 3);
    }

    #[test]
    fn a_page_already_copied_is_only_opened() {
        assert_eq!(
            replayed(0x40_0000 | COPIED, 0x7000 | PRESENT | RW),
            Decision::Open
        );
    }
}
