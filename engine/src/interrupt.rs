//! A handle that stops a running handler from any thread.

use std::sync::Arc;

use hyperlight_host::hypervisor::InterruptHandle as HlInterruptHandle;

/// Stops the handler currently running in a sandbox. Cheap to clone, `Send`
/// and `Sync`: hand it to a timer, a signal handler or another thread.
///
/// A kill only affects a call that is running; it is not remembered for the
/// next one. The killed sandbox is poisoned until it is restored or unloaded.
#[derive(Clone, Debug)]
pub struct InterruptHandle {
    vm: Arc<dyn HlInterruptHandle>,
}

impl InterruptHandle {
    pub(crate) fn new(vm: Arc<dyn HlInterruptHandle>) -> Self {
        Self { vm }
    }

    /// Stops the running handler; the call fails with `ERR_CANCELLED`.
    /// Returns whether a call was running. Blocks until the vCPU has left the
    /// guest: microseconds, or until a host function the guest is in returns.
    /// Event-loop code (Node.js) should call it from another thread.
    pub fn kill(&self) -> bool {
        self.vm.kill()
    }

    pub(crate) fn vm(&self) -> Arc<dyn HlInterruptHandle> {
        self.vm.clone()
    }
}
