//! The process-wide watchdog thread that enforces call limits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use hyperlight_host::hypervisor::InterruptHandle as HlInterruptHandle;

use super::{CancelToken, ThreadCpuClock};
use crate::error::CancelReason;

/// Longest sleep between CPU-clock checks; bounds how late a CPU limit fires
/// when the vCPU thread is descheduled.
const CPU_POLL_MAX: Duration = Duration::from_millis(10);
const CPU_POLL_MIN: Duration = Duration::from_micros(500);

struct Entry {
    vm: Arc<dyn HlInterruptHandle>,
    token: CancelToken,
    wall: Option<(Instant, Duration)>,
    cpu: Option<(ThreadCpuClock, Duration, Duration)>,
    fired: Option<CancelReason>,
}

#[derive(Default)]
struct State {
    entries: HashMap<u64, Entry>,
}

pub(crate) struct Watchdog {
    state: Mutex<State>,
    wake: Condvar,
    next_id: AtomicU64,
}

impl Watchdog {
    /// The process-wide watchdog, started on first use.
    pub(crate) fn global() -> Result<&'static Watchdog, String> {
        static GLOBAL: OnceLock<Result<&'static Watchdog, String>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                let dog: &'static Watchdog = Box::leak(Box::new(Watchdog {
                    state: Mutex::new(State::default()),
                    wake: Condvar::new(),
                    next_id: AtomicU64::new(1),
                }));
                std::thread::Builder::new()
                    .name("hyperlight-js-watchdog".into())
                    .spawn(move || dog.run())
                    .map(|_| dog)
                    .map_err(|e| e.to_string())
            })
            .clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` inconsistent
        // (every update is a single insert/remove), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn watch(
        &'static self,
        vm: Arc<dyn HlInterruptHandle>,
        token: CancelToken,
        wall: Option<(Instant, Duration)>,
        cpu: Option<(ThreadCpuClock, Duration, Duration)>,
    ) -> WatchGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().entries.insert(
            id,
            Entry {
                vm,
                token,
                wall,
                cpu,
                fired: None,
            },
        );
        self.wake.notify_one();
        WatchGuard {
            dog: self,
            id,
            fired: None,
        }
    }

    fn run(&self) {
        let mut state = self.lock();
        loop {
            let now = Instant::now();
            let mut sleep: Option<Duration> = None;
            for entry in state.entries.values_mut().filter(|e| e.fired.is_none()) {
                let mut reason = None;
                if let Some((deadline, limit)) = entry.wall {
                    if now >= deadline {
                        reason = Some(CancelReason::WallClock(limit));
                    } else {
                        sleep = Some(sleep.map_or(deadline - now, |s| s.min(deadline - now)));
                    }
                }
                if reason.is_none()
                    && let Some((clock, deadline, limit)) = entry.cpu
                {
                    match clock.now() {
                        Ok(used) if used >= deadline => reason = Some(CancelReason::CpuTime(limit)),
                        // CPU time cannot run faster than wall time, so the
                        // remaining budget is the earliest it can fire.
                        Ok(used) => {
                            let wait = (deadline - used).clamp(CPU_POLL_MIN, CPU_POLL_MAX);
                            sleep = Some(sleep.map_or(wait, |s| s.min(wait)));
                        }
                        // The clock vanished: fail closed.
                        Err(_) => reason = Some(CancelReason::CpuTime(limit)),
                    }
                }
                if let Some(reason) = reason {
                    tracing::debug!(%reason, "execution monitor fired");
                    entry.fired = Some(reason);
                    // Kill first: while the guest waits in a host function
                    // it only marks the next entry cancelled (no blocking);
                    // then the token ends that wait.
                    entry.vm.kill();
                    entry.token.cancel();
                }
            }
            state = match sleep {
                Some(d) => {
                    self.wake
                        .wait_timeout(state, d)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self.wake.wait(state).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }
}

/// Keeps a call registered with the watchdog; unregisters on drop.
pub(crate) struct WatchGuard {
    dog: &'static Watchdog,
    id: u64,
    fired: Option<CancelReason>,
}

impl WatchGuard {
    /// Unregisters now and returns which monitor fired, if any.
    pub(crate) fn finish(&mut self) -> Option<CancelReason> {
        if let Some(entry) = self.dog.lock().entries.remove(&self.id) {
            self.fired = entry.fired;
        }
        self.fired
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.finish();
    }
}
