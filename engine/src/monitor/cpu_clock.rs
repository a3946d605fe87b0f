//! The CPU clock of one thread (`pthread_getcpuclockid`).

use std::io;
use std::time::Duration;

/// The CPU-time clock of the thread that created it. Readable from any thread.
#[derive(Clone, Copy, Debug)]
pub struct ThreadCpuClock(libc::clockid_t);

impl ThreadCpuClock {
    /// The clock of the calling thread.
    pub fn current() -> io::Result<Self> {
        let mut id: libc::clockid_t = 0;
        // SAFETY: pthread_self() is always a valid thread handle for the caller,
        // and `id` is a valid out-pointer.
        let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(Self(id))
    }

    /// CPU time consumed so far by the thread.
    pub fn now(&self) -> io::Result<Duration> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid out-pointer; an invalid clock id yields EINVAL.
        let rc = unsafe { libc::clock_gettime(self.0, &mut ts) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
}
