//! `Snapshot`: a point-in-time copy of a loaded sandbox.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hyperlight_host::sandbox::snapshot::Snapshot as HlSnapshot;

use crate::loaded::Shared;

/// An opaque, cheap-to-clone capture of a [`crate::LoadedJSSandbox`]: its
/// memory, registers and handler set. Restore it into the sandbox it came
/// from, or build new sandboxes from it with
/// [`crate::LoadedJSSandbox::from_snapshot`].
#[derive(Clone)]
pub struct Snapshot {
    pub(crate) hl: Arc<HlSnapshot>,
    pub(crate) handlers: Arc<BTreeSet<String>>,
    pub(crate) shared: Arc<Shared>,
    /// Learned from the first call after a restore of this snapshot, shared
    /// by its clones and by every sandbox restored from it.
    pub(crate) working_set: Arc<WorkingSet>,
}

/// The pages a call after a restore of one snapshot needed opened or copied
/// (guest user mode), per handler key, as the guest reports them: recorded
/// in the first such call of a key, then passed with the first call of that
/// key after every later restore, so that the guest serves them all at the
/// call's start instead of one fault each. A call that replays a list
/// records the faults it still takes (pages the recording call did not
/// fault on, for instance because KVM's shadow tables still held them from
/// before the restore), which are added to the list, a few times at most.
/// The guest checks every entry as the fault it stands for: the list only
/// ever changes how fast a call starts, never what it sees (every page
/// still holds the snapshot's content).
#[derive(Debug, Default)]
pub(crate) struct WorkingSet(Mutex<HashMap<String, Learned>>);

#[derive(Debug)]
struct Learned {
    entries: Vec<u64>,
    wire: Arc<[u8]>,
    /// How many more times a replaying call's faults are added.
    refinements: u8,
}

/// Calls whose remaining faults are added to a learned list, at most.
const REFINEMENTS: u8 = 3;

impl WorkingSet {
    /// The list to replay for `key` as the call carries it, and whether the
    /// call's remaining faults are wanted ([`Self::refine`]); `None` while
    /// none is learned.
    pub(crate) fn get(&self, key: &str) -> Option<(Arc<[u8]>, bool)> {
        let sets = self.0.lock().ok()?;
        let l = sets.get(key)?;
        Some((l.wire.clone(), l.refinements > 0))
    }

    /// Keeps the first list learned for `key` (the guest's entries, as
    /// [`guest_fn::WORKING_SET`](hyperlight_js_abi::guest_fn::WORKING_SET)
    /// reports them); later ones are dropped.
    pub(crate) fn learn(&self, key: &str, entries: &[u64]) -> bool {
        self.insert(key, entries, REFINEMENTS)
    }

    fn insert(&self, key: &str, entries: &[u64], refinements: u8) -> bool {
        let Ok(mut sets) = self.0.lock() else {
            return false;
        };
        if sets.contains_key(key) {
            return false;
        }
        let learned = Learned {
            entries: entries.to_vec(),
            wire: wire(entries).into(),
            refinements,
        };
        sets.insert(key.to_owned(), learned);
        true
    }

    /// Adds the faults a call that replayed `key`'s list still took; none
    /// means the list is complete.
    pub(crate) fn refine(&self, key: &str, faults: &[u64]) {
        let Ok(mut sets) = self.0.lock() else {
            return;
        };
        let Some(l) = sets.get_mut(key) else {
            return;
        };
        if faults.is_empty() {
            l.refinements = 0;
            return;
        }
        l.refinements = l.refinements.saturating_sub(1);
        l.entries = union(&l.entries, faults);
        l.wire = wire(&l.entries).into();
    }
}

/// Two lists as one: every page of either once, copied if either copied it,
/// in runs (`hyperlight_js_guest_mm::working_set::merge_runs`). Entries the
/// guest would skip (a run leaving its 2 MiB region) are dropped.
fn union(a: &[u64], b: &[u64]) -> Vec<u64> {
    use hyperlight_js_guest_mm::PAGE_SIZE;
    use hyperlight_js_guest_mm::working_set::{COPIED, merge_runs, run};
    let mut pages: Vec<u64> = a
        .iter()
        .chain(b)
        .filter_map(|&e| Some((run(e)?, e & COPIED)))
        .flat_map(|((first, n), copied)| (0..n).map(move |i| (first + i * PAGE_SIZE) | copied))
        .collect();
    pages.sort_unstable();
    pages.dedup_by(|later, kept| {
        let same = *later & !COPIED == *kept & !COPIED;
        if same {
            *kept |= *later & COPIED;
        }
        same
    });
    let n = merge_runs(&mut pages);
    pages.truncate(n);
    pages
}

/// A list as the guest kernel finds it at the end of the call's message:
/// at most `MAX_PAGES` entries, little-endian, then the trailer
/// (`hyperlight_js_guest_mm::working_set::trailer`).
fn wire(entries: &[u64]) -> Vec<u8> {
    use hyperlight_js_guest_mm::working_set::{COPIED, MAX_PAGES, run, trailer};
    let entries = &entries[..entries.len().min(MAX_PAGES)];
    let n = u32::try_from(entries.len()).unwrap_or(0);
    // The pages the replay will copy, which the kernel readies for it.
    let copies: u64 = entries
        .iter()
        .filter(|e| *e & COPIED != 0)
        .filter_map(|e| run(*e).map(|(_, pages)| pages))
        .sum();
    let copies = u32::try_from(copies).unwrap_or(u32::MAX);
    entries
        .iter()
        .chain([trailer(n, copies)].iter())
        .flat_map(|e| e.to_le_bytes())
        .collect()
}

/// A list of no entries: the guest kernel neither replays nor records for
/// the call that carries it.
pub(crate) fn empty_list() -> Vec<u8> {
    wire(&[])
}

/// The entries of the guest's report: 16 hex digits each.
pub(crate) fn parse_entries(text: &str) -> Vec<u64> {
    text.as_bytes()
        .chunks_exact(16)
        .filter_map(|c| std::str::from_utf8(c).ok())
        .filter_map(|c| u64::from_str_radix(c, 16).ok())
        .collect()
}

impl Snapshot {
    /// Test hook: sets the working set that calls of `key` replay after a
    /// restore (entries of `hyperlight_js_guest_mm::working_set`), as if a
    /// call had recorded it; `false` if one is set already. The guest checks
    /// every entry, so tests use this to replay lists no call would record.
    #[doc(hidden)]
    pub fn set_working_set(&self, key: &str, entries: &[u64]) -> bool {
        // As set: a test's list is not refined by the calls that replay it.
        self.working_set.insert(key, entries, 0)
    }
}

impl Snapshot {
    /// The routing keys of its handlers.
    pub fn handler_keys(&self) -> impl Iterator<Item = &str> {
        self.handlers.iter().map(String::as_str)
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("handlers", &self.handlers)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use hyperlight_js_guest_mm::working_set::{MAX_PAGES, list_span};

    use super::{empty_list, parse_entries, union, wire};

    #[test]
    fn a_union_keeps_every_page_once_copied_if_either_copied_it_in_runs() {
        use hyperlight_js_guest_mm::working_set::{COPIED, run};
        let page = |i: u64| 0x40_0000 + i * 0x1000;
        // Pages 0..4 read as one run, page 6 copied; then page 2 copied,
        // pages 4 and 5 read, and a run leaving its 2 MiB region (dropped).
        let a = [page(0) | 3 << 1, page(6) | COPIED];
        let b = [page(2) | COPIED, page(4), page(5), 0x5f_f000 | 2 << 1];
        let u = union(&a, &b);
        let pages: Vec<(u64, u64, u64)> = u
            .iter()
            .map(|&e| {
                let (first, n) = run(e).unwrap();
                (first, n, e & COPIED)
            })
            .collect();
        assert_eq!(
            pages,
            [
                (page(0), 2, 0),
                (page(2), 1, COPIED),
                (page(3), 3, 0),
                (page(6), 1, COPIED),
            ]
        );
        // Nothing new: the same list.
        assert_eq!(union(&u, &[]), u);
    }

    /// A request message as Hyperlight lays it out in a receive buffer:
    /// the 12-byte header (kind, reserved, cid, payload length), then the
    /// payload, whose last bytes are the call's last byte parameter.
    fn message(control: &[u8], last_param: &[u8]) -> Vec<u8> {
        let payload_len = (control.len() + last_param.len()) as u32;
        let mut m = vec![1u8, 0, 0, 0];
        m.extend_from_slice(&7u32.to_le_bytes());
        m.extend_from_slice(&payload_len.to_le_bytes());
        m.extend_from_slice(control);
        m.extend_from_slice(last_param);
        m
    }

    /// What the guest kernel finds in `buffer` (of `capacity` bytes).
    fn found(buffer: &[u8], capacity: u64) -> Option<Vec<u64>> {
        let payload_len = u32::from_le_bytes(buffer[8..12].try_into().unwrap());
        let end = 12 + payload_len as usize;
        let trailer = u64::from_le_bytes(buffer[end - 8..end].try_into().unwrap());
        let (offset, n) = list_span(buffer[0], payload_len, capacity, trailer)?;
        let at = offset as usize;
        Some(
            buffer[at..at + 8 * n as usize]
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        )
    }

    #[test]
    fn the_guest_kernel_finds_the_list_the_engine_sends() {
        let entries = [0x21c_0001, 0x21c_1001, 0x8_b000, 0xffff_ffff_fd70_0000];
        // An odd-sized control part: the list need not be aligned.
        let m = message(&[0xAB; 333], &wire(&entries));
        assert_eq!(found(&m, 4096), Some(entries.to_vec()));
        assert_eq!(found(&message(&[0; 40], &empty_list()), 4096), Some(vec![]));
        // A message that does not fit its buffer carries no list for the kernel.
        assert_eq!(found(&m, m.len() as u64 - 1), None);
    }

    #[test]
    fn the_trailer_tells_the_kernel_how_many_pages_the_list_copies() {
        use hyperlight_js_guest_mm::working_set::copies_hint;
        // A copied run of 3 pages, a copied page, a page only opened.
        let entries = [0x21c_0001 | (2 << 1), 0x22_0001, 0x8_b000];
        let w = wire(&entries);
        let trailer = u64::from_le_bytes(w[w.len() - 8..].try_into().unwrap());
        assert_eq!(copies_hint(trailer), 4);
        assert_eq!(found(&message(&[0; 8], &w), 4096), Some(entries.to_vec()));
    }

    #[test]
    fn a_list_longer_than_the_kernel_replays_is_cut_to_what_it_does() {
        let entries: Vec<u64> = (0..MAX_PAGES as u64 + 10).map(|i| i << 12).collect();
        let m = message(&[0; 16], &wire(&entries));
        assert_eq!(found(&m, 1 << 20), Some(entries[..MAX_PAGES].to_vec()));
    }

    #[test]
    fn the_guests_report_is_read_as_hex_entries() {
        assert_eq!(
            parse_entries("00000000021c0001fffffffffd700000"),
            vec![0x21c_0001, 0xffff_ffff_fd70_0000]
        );
        assert_eq!(parse_entries(""), Vec::<u64>::new());
    }
}
