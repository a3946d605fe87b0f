//! A call's working set: the pages the kernel opened or copied for user mode,
//! replayed at the start of a later call from the same snapshot in one kernel
//! entry instead of one fault each.
//!
//! Replaying an entry is serving the fault it stands for: [`replay`] makes
//! the [`PageFault`] that user mode would raise. The kernel's replay loop
//! (assembly, `guest/src/usermode/working_set.rs`) serves it only where the
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

/// Longest working set the kernel records and replays (what the kernel
/// page has room for beside the rest of its state).
pub const MAX_PAGES: usize = 235;

/// The high half of a list's trailer: "HLWS".
pub const TRAILER_MAGIC: u32 = 0x484c_5753;

/// The last 8 bytes of a list of `n` entries as the host sends it: the
/// entries, little-endian, then this, so that the kernel finds the list
/// from the end of the call's message, where hyperlight puts the bytes of
/// the call's last (byte) parameter.
pub const fn trailer(n: u32) -> u64 {
    ((TRAILER_MAGIC as u64) << 32) | n as u64
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
    let n = trailer & 0xffff_ffff;
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
        // Whatever flag bits the entry carries.
        assert_eq!(replayed(R.kernel_page | COPIED | 0xffe, rw), refused);
        assert_eq!(replayed(0xffff_8000_0000_0000, rw), refused);
        // A write to a read-only page that is not copy-on-write.
        assert_eq!(replayed(0x40_0000 | COPIED, 0x5000 | PRESENT), refused);
        // A page that is no longer present.
        assert_eq!(replayed(0x40_0000, 0x5000), refused);
    }

    #[test]
    fn a_list_is_found_at_the_end_of_a_request_that_fits_its_buffer() {
        // A 100-byte payload ending in 3 entries and the trailer.
        assert_eq!(
            list_span(1, 100, 4096, trailer(3)),
            Some((12 + 100 - 32, 3))
        );
        assert_eq!(list_span(1, 32, 44, trailer(3)), Some((12, 3)));
        // An empty list is a list.
        assert_eq!(list_span(1, 8, 4096, trailer(0)), Some((12, 0)));
    }

    #[test]
    fn no_list_is_found_where_the_message_does_not_hold_one() {
        // Not a request (a snapshot checkpoint, a response).
        assert_eq!(list_span(7, 100, 4096, trailer(3)), None);
        assert_eq!(list_span(2, 100, 4096, trailer(3)), None);
        // The message continues in another buffer.
        assert_eq!(list_span(1, 5000, 4096, trailer(3)), None);
        assert_eq!(message_end(1, 4085, 4096), None);
        assert_eq!(message_end(1, 4084, 4096), Some(4096));
        // No trailer, or one claiming more entries than the payload holds
        // or than the kernel replays.
        assert_eq!(list_span(1, 100, 4096, 3), None);
        assert_eq!(list_span(1, 100, 4096, trailer(12)), None);
        assert_eq!(
            list_span(1, 4000, 4096, trailer(MAX_PAGES as u32 + 1)),
            None
        );
        // Too short to hold a trailer at all.
        assert_eq!(message_end(1, 7, 4096), None);
        // A length that would overflow 32 bits is still bounded.
        assert_eq!(list_span(1, u32::MAX, u64::MAX, trailer(u32::MAX)), None);
    }

    #[test]
    fn a_page_already_copied_is_only_opened() {
        assert_eq!(
            replayed(0x40_0000 | COPIED, 0x7000 | PRESENT | RW),
            Decision::Open
        );
    }
}
