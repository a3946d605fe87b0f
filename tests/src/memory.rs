//! Memory as the kernel accounts it: `/proc/<pid>/smaps_rollup` for a whole
//! process and `/proc/<pid>/smaps` per mapping. PSS (each page divided by
//! the number of processes mapping it) is what shows page-cache sharing;
//! RSS counts a shared page fully in every process.

use std::io;
use std::path::Path;

/// One process's (or one mapping's) memory, in KiB, as the kernel reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// `Rss`: resident pages mapped, shared ones counted fully.
    pub rss: u64,
    /// `Pss`: resident pages, each divided by the processes mapping it.
    pub pss: u64,
    /// `Shared_Clean`: unmodified pages also mapped by another process.
    pub shared_clean: u64,
    /// `Shared_Dirty`.
    pub shared_dirty: u64,
    /// `Private_Clean`: unmodified pages mapped by this process only.
    pub private_clean: u64,
    /// `Private_Dirty`: written pages of this process only (heap, copies).
    pub private_dirty: u64,
    /// `Anonymous`: pages not backed by a file (in a file mapping: private copies).
    pub anonymous: u64,
}

impl Usage {
    /// `Private_Clean + Private_Dirty` (USS): what ending the process frees.
    pub fn private(&self) -> u64 {
        self.private_clean + self.private_dirty
    }

    fn add(&mut self, other: &Usage) {
        self.rss += other.rss;
        self.pss += other.pss;
        self.shared_clean += other.shared_clean;
        self.shared_dirty += other.shared_dirty;
        self.private_clean += other.private_clean;
        self.private_dirty += other.private_dirty;
        self.anonymous += other.anonymous;
    }

    /// Reads one `Name:   123 kB` line into its field; other lines are ignored.
    fn field(&mut self, line: &str) {
        let Some((name, rest)) = line.split_once(':') else {
            return;
        };
        let Some(kb) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        else {
            return;
        };
        let slot = match name {
            "Rss" => &mut self.rss,
            "Pss" => &mut self.pss,
            "Shared_Clean" => &mut self.shared_clean,
            "Shared_Dirty" => &mut self.shared_dirty,
            "Private_Clean" => &mut self.private_clean,
            "Private_Dirty" => &mut self.private_dirty,
            "Anonymous" => &mut self.anonymous,
            _ => return,
        };
        *slot = kb;
    }
}

/// One mapping of `/proc/<pid>/smaps`.
#[derive(Clone, Debug, Default)]
pub struct Mapping {
    /// The header's permissions, e.g. `r--p` (`p`: `MAP_PRIVATE`).
    pub perms: String,
    /// The mapped file, or a pseudo-name like `[heap]`; empty for anonymous memory.
    pub path: String,
    /// Its pages.
    pub usage: Usage,
}

/// The whole process's memory (`/proc/<pid>/smaps_rollup`).
pub fn rollup(pid: u32) -> io::Result<Usage> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let mut usage = Usage::default();
    text.lines().for_each(|l| usage.field(l));
    Ok(usage)
}

/// Every mapping of the process (`/proc/<pid>/smaps`).
pub fn mappings(pid: u32) -> io::Result<Vec<Mapping>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        // A header is `start-end perms offset dev inode [path]`; field lines
        // start with a capitalised name and a colon.
        let mut parts = line.split_whitespace();
        let first = parts.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            let perms = parts.next().unwrap_or_default().to_owned();
            // offset, dev, inode, then the path (which may hold spaces).
            let path = line
                .splitn(6, char::is_whitespace)
                .nth(5)
                .unwrap_or_default()
                .trim()
                .to_owned();
            out.push(Mapping {
                perms,
                path,
                usage: Usage::default(),
            });
        } else if let Some(m) = out.last_mut() {
            m.usage.field(line);
        }
    }
    Ok(out)
}

/// The mappings of files under `dir`, and their pages summed.
pub fn files_under(pid: u32, dir: &Path) -> io::Result<(Vec<Mapping>, Usage)> {
    let dir = dir.to_string_lossy();
    let found: Vec<Mapping> = mappings(pid)?
        .into_iter()
        .filter(|m| m.path.starts_with(dir.as_ref()))
        .collect();
    let mut sum = Usage::default();
    found.iter().for_each(|m| sum.add(&m.usage));
    Ok((found, sum))
}

/// The mappings of the process's own executable (`/proc/<pid>/exe`), summed:
/// its code and read-only data, shared with every process running it.
pub fn executable(pid: u32) -> io::Result<Usage> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    let mut sum = Usage::default();
    mappings(pid)?
        .iter()
        .filter(|m| Path::new(&m.path) == exe)
        .for_each(|m| sum.add(&m.usage));
    Ok(sum)
}

/// A child process driven in steps: its stdout and stderr lines arrive on a
/// channel (so a wait has a time limit), its stdin stays open until
/// [`Staged::close_stdin`]. Killed on drop.
pub struct Staged {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<(bool, String)>,
    log: Vec<String>,
}

impl Staged {
    /// Starts `cmd` with every stream piped.
    pub fn spawn(mut cmd: std::process::Command) -> io::Result<Self> {
        use std::io::BufRead as _;
        use std::process::Stdio;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = child
            .stdout
            .take()
            .map(|s| (false, Box::new(s) as Box<dyn io::Read + Send>));
        let stderr = child
            .stderr
            .take()
            .map(|s| (true, Box::new(s) as Box<dyn io::Read + Send>));
        for (is_err, stream) in [stdout, stderr].into_iter().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in io::BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send((is_err, line)).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Self {
            stdin: child.stdin.take(),
            child,
            lines,
            log: Vec::new(),
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for a line (stdout: `stderr == false`) that
    /// `want` accepts; returns it. Panics with the output so far on a timeout
    /// or when the process ends first.
    pub fn wait_for(
        &mut self,
        stderr: bool,
        timeout: std::time::Duration,
        want: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((is_err, line)) => {
                    let hit = is_err == stderr && want(&line);
                    self.log.push(line.clone());
                    if hit {
                        return line;
                    }
                }
                Err(e) => {
                    let _ = self.child.kill();
                    panic!(
                        "pid {}: no awaited line within {timeout:?} ({e}); its output:\n{}",
                        self.pid(),
                        self.log.join("\n")
                    );
                }
            }
        }
    }

    /// Writes one line to its stdin.
    pub fn send(&mut self, line: &str) -> io::Result<()> {
        use std::io::Write as _;
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::other("stdin already closed"))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()
    }

    /// Closes its stdin and waits up to `timeout` for it to exit; its status.
    pub fn close_stdin(mut self, timeout: std::time::Duration) -> std::process::ExitStatus {
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("pid {} did not exit within {timeout:?}", self.pid());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// KiB as MiB with one decimal, for tables.
pub fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = rollup(std::process::id()).unwrap();
        assert!(me.rss > 0 && me.pss > 0 && me.pss <= me.rss, "{me:?}");
        let maps = mappings(std::process::id()).unwrap();
        let exe = std::env::current_exe().unwrap();
        let text = maps
            .iter()
            .filter(|m| Path::new(&m.path) == exe)
            .map(|m| m.usage.rss)
            .sum::<u64>();
        assert!(text > 0, "this binary's own mapping is resident");
    }
}
