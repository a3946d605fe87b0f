//! `InterruptHandle`: kill the running handler from the JavaScript thread.

use hyperlight_js_engine as engine;
use napi_derive::napi;

/// Handle for interrupting handler execution. `kill()` never blocks the
/// event loop: the engine's kill (which waits for the vCPU to leave the
/// guest) runs on a short-lived thread.
#[napi]
pub struct InterruptHandle {
    inner: engine::InterruptHandle,
    lane: u64,
}

impl InterruptHandle {
    pub(crate) fn new(inner: engine::InterruptHandle, lane: u64) -> Self {
        Self { inner, lane }
    }
}

/// How long `kill()` lets the engine raise its cancel flag before failing the
/// host calls the sandbox waits on (so the guest cannot finish normally in
/// between).
const ABANDON_AFTER: std::time::Duration = std::time::Duration::from_millis(20);

#[napi]
impl InterruptHandle {
    /// Stops the handler running in the sandbox right now; its
    /// `callHandler()` rejects with `ERR_CANCELLED` and the sandbox is
    /// poisoned until `restore()`. Does nothing if no handler is running.
    #[napi]
    pub fn kill(&self) {
        let handle = self.inner.clone();
        let lane = self.lane;
        // The engine's kill waits until the vCPU leaves the guest, and when
        // the guest is waiting on a host function, until that returns: so it
        // runs on its own thread, and host calls waiting on this sandbox are
        // failed right after.
        let spawned = std::thread::Builder::new()
            .name("hyperlight-js-kill".into())
            .spawn(move || {
                let killer = std::thread::Builder::new()
                    .name("hyperlight-js-kill".into())
                    .spawn({
                        let handle = handle.clone();
                        move || {
                            handle.kill();
                        }
                    });
                std::thread::sleep(ABANDON_AFTER);
                crate::host::abandon_lane(lane, "host function abandoned: the handler was killed");
                if killer.is_err() {
                    handle.kill();
                }
            });
        if spawned.is_err() {
            // No thread to spare: kill here. It only waits while the vCPU
            // leaves the guest (or a host function it waits on returns).
            self.inner.kill();
        }
    }
}
