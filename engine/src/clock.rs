//! The time base sent to the guest with every call (see the guest's `clock`).

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch.
pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The TSC frequency, measured once per process against the monotonic clock
/// (the guest reads the same TSC). 0 when it cannot be trusted, which makes
/// the guest fall back to a host call per clock read.
pub(crate) fn tsc_hz() -> u64 {
    static HZ: OnceLock<u64> = OnceLock::new();
    *HZ.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: rdtsc has no memory effects.
            let tsc = || unsafe { core::arch::x86_64::_rdtsc() };
            let (t0, c0) = (Instant::now(), tsc());
            std::thread::sleep(Duration::from_millis(20));
            let (t1, c1) = (Instant::now(), tsc());
            let ns = t1.duration_since(t0).as_nanos();
            if ns == 0 || c1 <= c0 {
                return 0;
            }
            (u128::from(c1 - c0) * 1_000_000_000 / ns) as u64
        }
        #[cfg(not(target_arch = "x86_64"))]
        0
    })
}
