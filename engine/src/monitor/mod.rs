//! Per-call execution monitors: a wall-clock limit and a CPU-time limit,
//! raced with OR semantics. The first to fire kills the call.
//!
//! One watchdog thread serves every sandbox in the process. A call registers
//! a [`Watch`] before it enters the VM and drops it when it returns; the
//! watchdog kills the VM through hyperlight's interrupt handle when a limit is
//! passed. Kills happen under the watchdog's lock, and dropping a watch takes
//! the same lock, so a late kill can never hit the *next* call.
//!
//! Fail closed: if the watchdog thread or the vCPU thread's CPU clock cannot
//! be obtained, [`Monitors::start`] fails and the handler does not run.

mod cancel;
mod cpu_clock;
mod watchdog;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use cancel::CancelToken;
pub use cpu_clock::ThreadCpuClock;
use hyperlight_host::hypervisor::InterruptHandle as HlInterruptHandle;
pub(crate) use watchdog::WatchGuard;

use crate::error::{Error, Result};

/// The longest limit a call may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Limits for one call, already validated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock limit.
    pub wall: Option<Duration>,
    /// CPU-time limit of the thread that runs the vCPU.
    pub cpu: Option<Duration>,
}

impl Limits {
    /// Checks that each limit is present-and-positive and at most [`MAX_TIMEOUT`].
    pub fn validated(wall: Option<Duration>, cpu: Option<Duration>) -> Result<Self> {
        for (name, limit) in [("wall-clock timeout", wall), ("CPU timeout", cpu)] {
            match limit {
                Some(d) if d.is_zero() => {
                    return Err(Error::InvalidArgument(format!(
                        "{name} must be greater than zero"
                    )));
                }
                Some(d) if d > MAX_TIMEOUT => {
                    return Err(Error::InvalidArgument(format!(
                        "{name} of {} ms is over the maximum of {} ms",
                        d.as_millis(),
                        MAX_TIMEOUT.as_millis()
                    )));
                }
                _ => {}
            }
        }
        Ok(Self { wall, cpu })
    }

    /// Whether any monitor is needed.
    pub fn is_empty(&self) -> bool {
        self.wall.is_none() && self.cpu.is_none()
    }
}

/// Starts the monitors for one call on the current thread (the vCPU thread).
pub(crate) struct Monitors;

impl Monitors {
    /// Registers the call with the watchdog. The returned guard must live
    /// until the call has returned; it reports which monitor fired, if any.
    pub(crate) fn start(
        limits: Limits,
        vm: Arc<dyn HlInterruptHandle>,
        token: CancelToken,
    ) -> Result<Option<WatchGuard>> {
        if limits.is_empty() {
            return Ok(None);
        }
        let cpu = match limits.cpu {
            Some(limit) => {
                let clock = ThreadCpuClock::current().map_err(|e| {
                    Error::Internal(format!("cannot start the CPU-time monitor: {e}"))
                })?;
                let start = clock.now().map_err(|e| {
                    Error::Internal(format!("cannot read the vCPU thread's CPU clock: {e}"))
                })?;
                Some((clock, start + limit, limit))
            }
            None => None,
        };
        let wall = limits.wall.map(|limit| (Instant::now() + limit, limit));
        let watchdog = watchdog::Watchdog::global()
            .map_err(|e| Error::Internal(format!("cannot start the execution monitor: {e}")))?;
        Ok(Some(watchdog.watch(vm, token, wall, cpu)))
    }
}
