//! A handle that stops a running handler from any thread.

use std::sync::Arc;

use hyperlight_host::hypervisor::InterruptHandle as HlInterruptHandle;

use crate::monitor::CancelToken;

/// Stops the handler currently running in a sandbox. Cheap to clone, `Send`
/// and `Sync`: hand it to a timer, a signal handler or another thread.
///
/// A kill only affects a call that is running; it is not remembered for the
/// next one. The killed sandbox is poisoned until it is restored or unloaded.
#[derive(Clone, Debug)]
pub struct InterruptHandle(Arc<Inner>);

/// One allocation: keeps `LoadedJSSandbox` (and its transition errors) small.
#[derive(Debug)]
struct Inner {
    vm: Arc<dyn HlInterruptHandle>,
    token: CancelToken,
}

impl InterruptHandle {
    pub(crate) fn new(vm: Arc<dyn HlInterruptHandle>) -> Self {
        Self(Arc::new(Inner {
            vm,
            token: CancelToken::default(),
        }))
    }

    /// Stops the running handler; the call fails with `ERR_CANCELLED`, also
    /// when it is waiting in a host function (the wait is abandoned at once).
    /// Returns whether the vCPU was running guest code. Blocks until the vCPU
    /// has left the guest: microseconds. Event-loop code (Node.js) should
    /// still call it from another thread.
    pub fn kill(&self) -> bool {
        // Kill first: in a host function it only marks the next guest entry
        // cancelled, so the guest cannot run on once the token ends the wait.
        let running = self.0.vm.kill();
        self.0.token.cancel();
        running
    }

    pub(crate) fn token(&self) -> CancelToken {
        self.0.token.clone()
    }

    pub(crate) fn vm(&self) -> Arc<dyn HlInterruptHandle> {
        self.0.vm.clone()
    }
}
