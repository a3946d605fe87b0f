//! Real time without a host call per read.
//!
//! A host call costs tens of milliseconds on paravirtual KVM (the kernel part
//! of the guest is emulated), which made `Date.now()` in a loop useless. The
//! host sends its wall-clock time and its TSC rate with every handler call;
//! reads extrapolate from there with `rdtsc`, which runs natively in user
//! mode. Without a time base (runtime init, handler registration) a read
//! falls back to the host call.

use core::cell::Cell;

struct Base {
    micros: Cell<u64>,
    tsc: Cell<u64>,
    hz: Cell<u64>,
}

// SAFETY: a hyperlight guest has one vCPU and no threads.
unsafe impl Sync for Base {}

static BASE: Base = Base {
    micros: Cell::new(0),
    tsc: Cell::new(0),
    hz: Cell::new(0),
};

fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no memory effects; CR4.TSD is clear in hyperlight guests.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Sets the time base for the current call: the host's time in microseconds
/// since the epoch and its TSC frequency (0: unknown, use host calls).
pub fn set_base(micros: u64, tsc_hz: u64) {
    BASE.micros.set(micros);
    BASE.tsc.set(rdtsc());
    BASE.hz.set(tsc_hz);
}

/// Microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    let hz = BASE.hz.get();
    if hz == 0 {
        return crate::host::now_micros();
    }
    let ticks = rdtsc().saturating_sub(BASE.tsc.get());
    BASE.micros.get() + (u128::from(ticks) * 1_000_000 / u128::from(hz)) as u64
}
