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
/// key after every later restore, so that the guest kernel serves them in
/// one entry instead of one fault each. The guest checks every entry as the
/// fault it stands for: the list only ever changes how fast a call starts,
/// never what it sees (every page still holds the snapshot's content).
#[derive(Debug, Default)]
pub(crate) struct WorkingSet(Mutex<HashMap<String, Arc<[u8]>>>);

impl WorkingSet {
    /// The list to replay for `key` as the call carries it, or `None` while
    /// none is learned.
    pub(crate) fn get(&self, key: &str) -> Option<Arc<[u8]>> {
        self.0.lock().ok()?.get(key).cloned()
    }

    /// Keeps the first list learned for `key` (the guest's entries, as
    /// [`guest_fn::WORKING_SET`](hyperlight_js_abi::guest_fn::WORKING_SET)
    /// reports them); later ones are dropped.
    pub(crate) fn learn(&self, key: &str, entries: &[u64]) -> bool {
        let Ok(mut sets) = self.0.lock() else {
            return false;
        };
        if sets.contains_key(key) {
            return false;
        }
        sets.insert(key.to_owned(), wire(entries).into());
        true
    }
}

/// A list as the guest kernel finds it at the end of the call's message:
/// at most `MAX_PAGES` entries, little-endian, then the trailer
/// (`hyperlight_js_guest_mm::working_set::trailer`).
fn wire(entries: &[u64]) -> Vec<u8> {
    use hyperlight_js_guest_mm::working_set::{MAX_PAGES, trailer};
    let entries = &entries[..entries.len().min(MAX_PAGES)];
    let n = u32::try_from(entries.len()).unwrap_or(0);
    entries
        .iter()
        .chain([trailer(n)].iter())
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
        self.working_set.learn(key, entries)
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

    use super::{empty_list, parse_entries, wire};

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
