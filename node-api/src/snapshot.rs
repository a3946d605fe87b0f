//! `Snapshot`: an opaque point-in-time copy of a loaded sandbox.

use hyperlight_js_engine as engine;
use napi_derive::napi;

/// An opaque handle to a point-in-time snapshot of a sandbox's state. Pass it
/// to `restore()` of the sandbox it came from, or to
/// `LoadedJSSandbox.fromSnapshot()` for a new sandbox in that state.
#[napi]
pub struct Snapshot {
    inner: engine::Snapshot,
}

impl Snapshot {
    pub(crate) fn new(inner: engine::Snapshot) -> Self {
        Self { inner }
    }

    pub(crate) fn inner(&self) -> &engine::Snapshot {
        &self.inner
    }
}
