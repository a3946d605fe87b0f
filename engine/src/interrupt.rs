//! A handle that stops a running handler from any thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hyperlight_host::hypervisor::InterruptHandle as HlInterruptHandle;

/// Stops the handler currently running in a sandbox. Cheap to clone, `Send`
/// and `Sync`: hand it to a timer, a signal handler or another thread.
///
/// A kill only affects a call that is running; it is not remembered for the
/// next one. The killed sandbox is poisoned until it is restored or unloaded.
#[derive(Clone, Debug)]
pub struct InterruptHandle {
    vm: Arc<dyn HlInterruptHandle>,
    killed: Arc<AtomicBool>,
}

impl InterruptHandle {
    pub(crate) fn new(vm: Arc<dyn HlInterruptHandle>) -> Self {
        Self {
            vm,
            killed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Stops the running handler; the call fails with `ERR_CANCELLED`.
    /// Returns whether a call was running. Blocks until the vCPU has left the
    /// guest (microseconds, or until a host function the guest is in returns).
    pub fn kill(&self) -> bool {
        self.killed.store(true, Ordering::SeqCst);
        self.vm.kill()
    }

    pub(crate) fn vm(&self) -> Arc<dyn HlInterruptHandle> {
        self.vm.clone()
    }

    /// Clears the kill marker before a call starts.
    pub(crate) fn arm(&self) {
        self.killed.store(false, Ordering::SeqCst);
    }

    pub(crate) fn was_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }
}
