//! CPU time as the kernel accounts it per thread (`/proc/<pid>/task/<tid>/stat`):
//! user, system and guest time. Guest time is the part of user time the
//! kernel charged to running a vCPU (by ticks: a tick that lands while the
//! thread is marked in guest mode); KVM's work outside that (the instruction
//! emulator, shadow page faults) is system time, the rest of user time the
//! host process's own code (hyperlight, the engine). On kvm-pvm part of the
//! exit handling is charged as guest time, so read the split as the kernel's,
//! not as guest code against KVM.

use std::collections::HashMap;
use std::io;
use std::path::Path;

/// `/proc` reports thread times in `USER_HZ` ticks, 100 per second on every
/// Linux ABI (the kernel converts from its own `HZ`).
const TICKS_PER_SECOND: f64 = 100.0;

/// One thread's (or a sum of threads') CPU time, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Times {
    /// User time, guest time included (as the kernel counts it).
    pub user: f64,
    /// System time: the host kernel, KVM included.
    pub system: f64,
    /// Guest time: the vCPU's guest code, part of `user`.
    pub guest: f64,
}

impl Times {
    /// All CPU time.
    pub fn total(&self) -> f64 {
        self.user + self.system
    }

    /// User time outside the guest: the host process's own code.
    pub fn host_user(&self) -> f64 {
        (self.user - self.guest).max(0.0)
    }

    /// What was used between `earlier` and `self`.
    pub fn minus(&self, earlier: &Times) -> Times {
        Times {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
            guest: self.guest - earlier.guest,
        }
    }

    fn add(&mut self, other: &Times) {
        self.user += other.user;
        self.system += other.system;
        self.guest += other.guest;
    }
}

/// Parses one `stat` line: the fields after the command's closing parenthesis
/// (the command itself may hold spaces and parentheses).
fn parse_stat(line: &str) -> Option<Times> {
    let rest = &line[line.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 of proc(5): utime is 14, stime 15, guest_time 43.
    let tick = |field: usize| -> Option<f64> {
        Some(fields.get(field - 3)?.parse::<u64>().ok()? as f64 / TICKS_PER_SECOND)
    };
    Some(Times {
        user: tick(14)?,
        system: tick(15)?,
        guest: tick(43)?,
    })
}

fn read_stat(path: &Path) -> io::Result<Times> {
    let text = std::fs::read_to_string(path)?;
    parse_stat(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not a stat line: {text}", path.display()),
        )
    })
}

/// The calling thread's times.
pub fn this_thread() -> io::Result<Times> {
    read_stat(Path::new("/proc/thread-self/stat"))
}

/// Every thread of process `pid` at one moment, by thread id.
#[derive(Clone, Debug, Default)]
pub struct Threads(HashMap<u32, Times>);

impl Threads {
    /// Reads `/proc/<pid>/task/*/stat`. A thread that ends while it is read is left out.
    pub fn of(pid: u32) -> io::Result<Self> {
        let mut threads = HashMap::new();
        for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let entry = entry?;
            let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            if let Ok(t) = read_stat(&entry.path().join("stat")) {
                threads.insert(tid, t);
            }
        }
        Ok(Self(threads))
    }

    /// What each thread used since `earlier` (a thread that started since counts from zero).
    pub fn since(&self, earlier: &Threads) -> Vec<Times> {
        self.0
            .iter()
            .map(|(tid, now)| now.minus(&earlier.0.get(tid).copied().unwrap_or_default()))
            .collect()
    }
}

/// The sum of `times` that ran guest code (`vcpu`) and of the others.
pub fn split_vcpu(times: &[Times]) -> (Times, Times) {
    let (mut vcpu, mut other) = (Times::default(), Times::default());
    for t in times {
        if t.guest > 0.0 {
            vcpu.add(t);
        } else {
            other.add(t);
        }
    }
    (vcpu, other)
}

/// The sum of `times`.
pub fn sum(times: &[Times]) -> Times {
    let mut all = Times::default();
    for t in times {
        all.add(t);
    }
    all
}

/// The first process whose command (`/proc/<pid>/comm`) is `comm`.
pub fn find_process(comm: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let name = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (name.trim_end() == comm).then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_whose_command_has_spaces_and_parentheses() {
        // proc(5): pid (comm) state ppid ... utime(14) stime(15) ... guest_time(43) cguest_time(44)
        let mut fields: Vec<String> = vec!["0".into(); 50];
        fields[14 - 3] = "250".into();
        fields[15 - 3] = "120".into();
        fields[43 - 3] = "200".into();
        let line = format!("4242 (a (b) c) {}", fields.join(" "));
        let t = parse_stat(&line).unwrap();
        assert_eq!(t.user, 2.5);
        assert_eq!(t.system, 1.2);
        assert_eq!(t.guest, 2.0);
        assert!((t.host_user() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn this_threads_cpu_time_grows_with_work() {
        let before = this_thread().unwrap();
        // Busy until the kernel has charged this thread 50 ms, with a
        // wall-clock limit so a counter that never moves fails instead of hanging.
        let limit = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut x = 0u64;
        let after = loop {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            let now = this_thread().unwrap();
            if now.total() - before.total() >= 0.05 {
                break now;
            }
            assert!(
                std::time::Instant::now() < limit,
                "no CPU time charged in 20 s of busy loop: {before:?} -> {now:?}"
            );
        };
        assert!(after.user >= before.user && after.system >= before.system);
        assert_eq!(after.guest, before.guest, "no vCPU ran on this thread");
    }

    #[test]
    fn a_sandbox_call_is_charged_as_guest_time_to_the_calling_thread() {
        use hyperlight_js_engine::{CallOptions, SandboxBuilder};
        let mut js = SandboxBuilder::new()
            .build()
            .unwrap()
            .load_runtime()
            .unwrap();
        js.add_handler(
            "spin",
            "function handler(e) { let x = 0; for (let i = 0; i < e.n; i++) x = (x + i) | 0; return x; }",
        )
        .unwrap();
        let mut sb = js.get_loaded_sandbox().unwrap();
        let options = CallOptions::default()
            .cpu_timeout(std::time::Duration::from_secs(10))
            .wall_clock_timeout(std::time::Duration::from_secs(20));
        let before = this_thread().unwrap();
        // User-mode JavaScript runs as guest code; a few hundred ms of it
        // leaves ticks the kernel can only charge as guest time.
        let mut after = before;
        for _ in 0..20 {
            sb.call_handler_json("spin", r#"{"n": 2000000}"#, &options)
                .unwrap();
            after = this_thread().unwrap();
            if after.guest - before.guest >= 0.05 {
                break;
            }
        }
        assert!(
            after.guest - before.guest >= 0.05,
            "no guest time charged to the vCPU's thread: {before:?} -> {after:?}"
        );
        // Guest time is part of user time (to the tick the kernel counts in).
        assert!(after.user - before.user + 0.011 >= after.guest - before.guest);
    }
}
