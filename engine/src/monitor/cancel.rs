//! The per-sandbox stop signal that reaches a call waiting in a host function.
//!
//! Hyperlight's kill only interrupts a running vCPU; while the guest waits in a
//! host function it merely stops the *next* entry. So host functions run on a
//! helper thread while the vCPU thread waits on this token, which monitors and
//! `kill()` raise before they kill the VM: the wait ends at once with an error
//! into the guest, and the pending kill then ends the call.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

#[derive(Default)]
struct State {
    /// Raised by a stop; cleared when the next call starts.
    cancelled: bool,
    /// Bumped for every call, so a stop aimed at one call never hits the next.
    call: u64,
}

/// A stop flag and the condition variable host-call waits sleep on.
#[derive(Clone, Default)]
pub struct CancelToken(Arc<(Mutex<State>, Condvar)>);

impl std::fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelToken")
            .field("cancelled", &self.lock().cancelled)
            .finish()
    }
}

impl CancelToken {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Single-field updates: a panic cannot leave the state half-written.
        self.0.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A call starts: earlier stops are forgotten. Returns the call's number.
    pub(crate) fn begin(&self) -> u64 {
        let mut s = self.lock();
        s.cancelled = false;
        s.call += 1;
        s.call
    }

    /// Stops whatever call is running (wakes its host-call wait).
    pub(crate) fn cancel(&self) {
        self.lock().cancelled = true;
        self.0.1.notify_all();
    }

    /// Wakes the waiter so it re-checks its reply (a host function finished).
    pub(crate) fn notify(&self) {
        // Taking the lock orders the reply's write before the waiter's check.
        drop(self.lock());
        self.0.1.notify_all();
    }

    /// Waits until `ready()` holds (`Some`) or the token is cancelled (`None`).
    pub(crate) fn wait_for<T>(&self, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
        let mut s = self.lock();
        loop {
            if let Some(v) = ready() {
                return Some(v);
            }
            if s.cancelled {
                return None;
            }
            s = self.0.1.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}
