//! Replacements for the two libc pieces that do not fit a soft-float guest.

use core::ffi::c_int;

/// `struct timespec` as picolibc lays it out on x86_64.
#[repr(C)]
pub struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

/// The linker routes every `clock_gettime` call here (`--wrap=clock_gettime`):
/// the stock guest clock is synthetic and advances one second per call, so
/// `Date.now()` would be meaningless. Real time comes from the host (see `crate::clock`).
///
/// # Safety
/// `tp` must be null or point to writable memory for a `Timespec`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __wrap_clock_gettime(_clock: c_int, tp: *mut Timespec) -> c_int {
    if tp.is_null() {
        return -1;
    }
    let micros = crate::clock::now_micros();
    let ts = Timespec {
        tv_sec: (micros / 1_000_000) as i64,
        tv_nsec: ((micros % 1_000_000) * 1000) as i64,
    };
    // SAFETY: the caller passes a valid, writable timespec (checked non-null above).
    unsafe { tp.write(ts) };
    0
}

/// picolibc's `fegetround` reads the x87 control word (`fnstcw`), which kills a
/// guest on kvm-pvm. Soft-float arithmetic always rounds to nearest (0).
#[unsafe(no_mangle)]
pub extern "C" fn fegetround() -> c_int {
    0
}
