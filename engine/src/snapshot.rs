//! `Snapshot`: a point-in-time copy of a loaded sandbox.

use std::collections::BTreeSet;
use std::sync::Arc;

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
