//! Guest-kernel instructions emulated by KVM during a call, read from the
//! kernel's `kvm:kvm_emulate_insn` tracepoint and attributed to guest functions.
//!
//! On kvm-pvm every guest CPL0 instruction goes through KVM's instruction
//! emulator (~1-2 µs each) and fires this tracepoint, while CPL3 code runs
//! natively and fires nothing: the number of events during a call is the
//! guest kernel's share of its cost. (On hardware KVM the tracepoint fires only
//! for the rare emulated MMIO or port access.)
//!
//! Events go to a private tracefs instance, filtered to the calling thread
//! (hyperlight runs the vCPU on the thread that calls into the sandbox), so
//! other tracers and other VMs on the machine neither disturb the counts nor
//! are disturbed. Needs root and a mounted tracefs.
//!
//! A directory module (like `tests/common`) so that cargo does not take it for
//! a bench target of its own.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use object::{Object, ObjectSegment, ObjectSymbol, SegmentFlags, SymbolKind, SymbolSection};

/// One call's emulated instructions, then its [`COUNTED`] events.
pub type Counts = [u64; 1 + COUNTED.len()];

/// Emulated instructions seen while one traced closure ran.
#[derive(Default)]
pub struct Trace {
    pub total: u64,
    /// Events of KVM's shadow MMU, per [`COUNTED`] event: the guest never
    /// sees them, but each is host work during the call.
    pub mmu: [u64; COUNTED.len()],
    /// Per guest rip: how often, the instruction's bytes, and the
    /// microseconds its emulations took (see [`Rip`]).
    pub by_rip: HashMap<u64, Rip>,
}

/// One guest instruction's share of a trace.
#[derive(Default)]
pub struct Rip {
    pub count: u64,
    pub bytes: Vec<u8>,
    /// Time from each of its events to the next event: what emulating it
    /// took, string instructions (`rep movsq` copies a qword per ~1 µs)
    /// and faults it raised included. Not counted for the instructions that
    /// leave the emulator (`iretq` to user mode, `out`, `hlt`), whose next
    /// event comes after native user code or the host ran.
    pub micros: f64,
}

impl Trace {
    /// The emulated instructions, then the [`COUNTED`] events.
    pub fn counts(&self) -> Counts {
        let mut c = [self.total; 1 + COUNTED.len()];
        c[1..].copy_from_slice(&self.mmu);
        c
    }

    pub fn merge(&mut self, other: Trace) {
        self.total += other.total;
        for (a, b) in self.mmu.iter_mut().zip(other.mmu) {
            *a += b;
        }
        for (rip, r) in other.by_rip {
            let e = self.by_rip.entry(rip).or_insert_with(|| Rip {
                bytes: r.bytes,
                ..Rip::default()
            });
            e.count += r.count;
            e.micros += r.micros;
        }
    }
}

/// Whether the instruction `bytes` leaves KVM's emulator: `iretq` (to user
/// mode, which runs natively), `out` and `hlt` (to the host).
fn leaves_emulation(bytes: &[u8]) -> bool {
    matches!(
        bytes,
        [0x48, 0xcf, ..] | [0xe6 | 0xe7 | 0xee | 0xef, ..] | [0xf4, ..]
    ) || matches!(bytes, [0x66, 0xe6 | 0xe7 | 0xee | 0xef, ..])
}

/// A tracefs instance with `kvm:kvm_emulate_insn` enabled for this thread;
/// removed on drop.
pub struct Tracer {
    dir: PathBuf,
}

const EVENT: &str = "events/kvm/kvm_emulate_insn";
/// Traces written by `BENCH_TRACE_DUMP` so far.
static DUMPED: AtomicUsize = AtomicUsize::new(0);
/// Counted too, where the kernel has them: KVM's shadow-MMU work (kvm-pvm
/// has no EPT): the faults in its shadow tables it served (one
/// `kvm_mmu_spte_requested` each, ~15 µs a round trip from guest user mode
/// on kvm-pvm), the shadow entries it set (those plus its prefetches of
/// neighbours), the shadow pages it looked up or made, its walks of the
/// guest's tables (one per fault and per operand the emulator translates),
/// and the shadow pages it zapped, synced and let go out of sync.
pub const COUNTED: [&str; 7] = [
    "events/kvmmmu/kvm_mmu_spte_requested",
    "events/kvmmmu/kvm_mmu_set_spte",
    "events/kvmmmu/kvm_mmu_get_page",
    "events/kvmmmu/kvm_mmu_pagetable_walk",
    "events/kvmmmu/kvm_mmu_prepare_zap_page",
    "events/kvmmmu/kvm_mmu_sync_page",
    "events/kvmmmu/kvm_mmu_unsync_page",
];

impl Tracer {
    /// Sets the instance up; the error says in one phrase why tracing cannot be used here.
    pub fn open() -> Result<Self, String> {
        let root = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.join(EVENT).is_dir())
            .ok_or_else(|| {
                if !is_root() {
                    "tracefs needs root and this process is not root".to_string()
                } else if fs::read_dir("/sys/kernel/tracing/events")
                    .map_or(true, |mut d| d.next().is_none())
                {
                    "tracefs is not mounted (mount -t tracefs none /sys/kernel/tracing)".into()
                } else {
                    "the kernel has no kvm:kvm_emulate_insn tracepoint (kvm module not loaded?)"
                        .into()
                }
            })?;
        // Our own tid: the filter keeps only the vCPU this thread runs.
        let tid = fs::read_link("/proc/thread-self")
            .ok()
            .and_then(|p| p.file_name()?.to_str()?.parse::<u32>().ok())
            .ok_or("cannot read this thread's id from /proc/thread-self")?;
        let dir = root
            .join("instances")
            .join(format!("hljs-bench-{}", std::process::id()));
        fs::create_dir(&dir)
            .map_err(|e| format!("cannot create tracefs instance {}: {e}", dir.display()))?;
        let tracer = Self { dir };
        tracer.write("tracing_on", "0")?;
        // Per CPU; a call after a restore emulates ~15k instructions of ~48 bytes each.
        tracer.write("buffer_size_kb", "8192")?;
        for event in std::iter::once(EVENT).chain(COUNTED) {
            if event != EVENT && !tracer.dir.join(event).is_dir() {
                continue;
            }
            tracer.write(&format!("{event}/filter"), &format!("common_pid == {tid}"))?;
            tracer.write(&format!("{event}/enable"), "1")?;
        }
        Ok(tracer)
    }

    /// Runs `f` with the tracepoint recording, and returns what it recorded.
    pub fn trace(&mut self, f: impl FnOnce()) -> Result<Trace, String> {
        self.write("trace", "")?; // truncating the file clears the buffer
        self.write("tracing_on", "1")?;
        f();
        self.write("tracing_on", "0")?;
        let text = fs::read_to_string(self.dir.join("trace"))
            .map_err(|e| format!("cannot read the trace: {e}"))?;
        // BENCH_TRACE_DUMP=<prefix>: every traced call's raw trace to
        // <prefix>.<n>, for its timeline (where the ~15 µs gaps are).
        if let Ok(prefix) = std::env::var("BENCH_TRACE_DUMP") {
            let n = DUMPED.fetch_add(1, Ordering::Relaxed);
            let _ = fs::write(format!("{prefix}.{n}"), &text);
        }
        parse(&text)
    }

    fn write(&self, file: &str, value: &str) -> Result<(), String> {
        let path = self.dir.join(file);
        fs::write(&path, value).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        // The instance cannot be removed while its events are enabled.
        for event in std::iter::once(EVENT).chain(COUNTED) {
            let _ = self.write(&format!("{event}/enable"), "0");
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Parses the text trace; lines look like
/// `comm-123 [001] d..1. 5.600001: kvm_emulate_insn: 0:8dcf6:0f 20 e7 (prot64)`
/// (timestamp in seconds with microseconds, then csbase:rip:bytes).
fn parse(text: &str) -> Result<Trace, String> {
    let mut trace = Trace::default();
    // The previous event: its rip, timestamp (µs) and whether it left the emulator.
    let mut prev: Option<(u64, f64, bool)> = None;
    for line in text.lines() {
        if let Some(counts) = line.strip_prefix("# entries-in-buffer/entries-written:") {
            // A full buffer drops events: the count would be silently low.
            let mut it = counts.split_whitespace().next().unwrap_or("").split('/');
            if let (Some(kept), Some(written)) = (it.next(), it.next())
                && kept != written
            {
                return Err(format!(
                    "the trace buffer overflowed ({kept} of {written} events kept)"
                ));
            }
            continue;
        }
        if let Some(i) = COUNTED.iter().position(|e| {
            let name = e.rsplit('/').next().unwrap_or(e);
            line.split_once(": ").is_some_and(|(_, rest)| {
                rest.starts_with(name) && rest[name.len()..].starts_with(':')
            })
        }) {
            trace.mmu[i] += 1;
            continue;
        }
        let Some((head, event)) = line.split_once(": kvm_emulate_insn: ") else {
            continue;
        };
        let micros = head
            .rsplit(' ')
            .next()
            .and_then(|t| t.parse::<f64>().ok())
            .ok_or_else(|| format!("no timestamp in: {line}"))?
            * 1e6;
        let mut fields = event.splitn(3, ':');
        let (Some(_csbase), Some(rip), Some(rest)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(format!("unexpected trace line: {line}"));
        };
        let rip = u64::from_str_radix(rip, 16).map_err(|_| format!("bad rip in: {line}"))?;
        let bytes: Vec<u8> = rest
            .split(" (")
            .next()
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|b| u8::from_str_radix(b, 16).ok())
            .collect();
        if let Some((p, t, false)) = prev
            && let Some(r) = trace.by_rip.get_mut(&p)
        {
            r.micros += (micros - t).max(0.0);
        }
        prev = Some((rip, micros, leaves_emulation(&bytes)));
        trace.total += 1;
        let r = trace.by_rip.entry(rip).or_insert_with(|| Rip {
            bytes,
            ..Rip::default()
        });
        r.count += 1;
    }
    Ok(trace)
}

/// The guest ELF's code and function symbols.
pub struct Symbols {
    /// Executable segments: ELF vaddr and bytes.
    code: Vec<(u64, Vec<u8>)>,
    /// Function start addresses (ELF vaddr) and short names, sorted.
    funcs: Vec<(u64, String)>,
}

impl Symbols {
    pub fn new(elf: &[u8]) -> Result<Self, String> {
        let file = object::File::parse(elf).map_err(|e| format!("guest ELF: {e}"))?;
        let code: Vec<(u64, Vec<u8>)> = file
            .segments()
            .filter(|s| {
                matches!(s.flags(), SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0)
            })
            .filter_map(|s| Some((s.address(), s.data().ok()?.to_vec())))
            .collect();
        let in_code = |a: u64| {
            code.iter()
                .any(|(v, d)| (*v..*v + d.len() as u64).contains(&a))
        };
        // Assembly entry points (`hljs_vec_14`...) are untyped symbols, Rust and C functions typed.
        let mut funcs: Vec<(u64, String)> = file
            .symbols()
            .filter(|s| matches!(s.kind(), SymbolKind::Text | SymbolKind::Unknown))
            .filter(|s| matches!(s.section(), SymbolSection::Section(_)) && in_code(s.address()))
            .filter_map(|s| Some((s.address(), short_name(s.name().ok()?))))
            .filter(|(_, n)| !n.is_empty() && !n.starts_with(".L"))
            .collect();
        if funcs.is_empty() {
            return Err("the guest ELF has no symbol table".into());
        }
        funcs.sort();
        funcs.dedup_by_key(|(a, _)| *a);
        Ok(Self { code, funcs })
    }

    /// The load offset (guest rip = ELF vaddr + offset), found by matching the
    /// traced instruction bytes against the ELF's code: the offset most of the
    /// longest distinct instructions agree on.
    pub fn load_offset(&self, trace: &Trace) -> Result<u64, String> {
        let mut samples: Vec<(&u64, &Vec<u8>)> = trace
            .by_rip
            .iter()
            .map(|(rip, r)| (rip, &r.bytes))
            .filter(|(_, b)| !b.is_empty())
            .collect();
        samples.sort_by_key(|(rip, b)| (std::cmp::Reverse(b.len()), **rip));
        samples.truncate(24);
        let mut votes: HashMap<u64, usize> = HashMap::new();
        for (rip, bytes) in &samples {
            let mut offsets = HashSet::new();
            for (vaddr, data) in &self.code {
                for (pos, w) in data.windows(bytes.len()).enumerate() {
                    if w == bytes.as_slice() {
                        offsets.insert(rip.wrapping_sub(vaddr + pos as u64));
                    }
                }
            }
            for o in offsets {
                *votes.entry(o).or_default() += 1;
            }
        }
        let (offset, n) = votes
            .into_iter()
            .max_by_key(|(o, n)| (*n, std::cmp::Reverse(*o)))
            .ok_or("no traced instruction occurs in the guest ELF's code")?;
        if n * 2 <= samples.len() {
            return Err(format!(
                "traced instructions do not match the guest ELF (best offset {offset:#x}: {n} of {})",
                samples.len()
            ));
        }
        Ok(offset)
    }

    /// The function holding `vaddr` (the nearest symbol at or below it).
    pub fn name(&self, vaddr: u64) -> &str {
        match self.funcs.partition_point(|(a, _)| *a <= vaddr) {
            0 => "?",
            i => &self.funcs[i - 1].1,
        }
    }

    /// Mean instructions per call for each function, most first.
    pub fn per_function(&self, trace: &Trace, offset: u64, calls: usize) -> Vec<(String, f64)> {
        self.per_function_by(trace, offset, calls, |r| r.count as f64)
    }

    /// Mean emulation microseconds per call for each function, most first.
    pub fn per_function_micros(
        &self,
        trace: &Trace,
        offset: u64,
        calls: usize,
    ) -> Vec<(String, f64)> {
        self.per_function_by(trace, offset, calls, |r| r.micros)
    }

    fn per_function_by(
        &self,
        trace: &Trace,
        offset: u64,
        calls: usize,
        value: impl Fn(&Rip) -> f64,
    ) -> Vec<(String, f64)> {
        let mut by: HashMap<&str, f64> = HashMap::new();
        for (rip, r) in &trace.by_rip {
            *by.entry(self.name(rip.wrapping_sub(offset))).or_default() += value(r);
        }
        let mut v: Vec<(String, f64)> = by
            .into_iter()
            .map(|(k, n)| (k.to_string(), n / calls as f64))
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }
}

/// A legacy-mangled Rust symbol (`_ZN…17h<hash>E`) demangled, without its
/// hash, and with every path cut to its last two segments so that a table
/// cell stays readable; other names as they are.
fn short_name(sym: &str) -> String {
    let Some(mut rest) = sym.strip_prefix("_ZN") else {
        return sym.to_string();
    };
    let mut parts = Vec::new();
    while let Some(digits) = rest.find(|c: char| !c.is_ascii_digit()).filter(|&d| d > 0) {
        let Ok(len) = rest[..digits].parse::<usize>() else {
            break;
        };
        let Some(part) = rest.get(digits..digits + len) else {
            break;
        };
        parts.push(part);
        rest = &rest[digits + len..];
    }
    if parts
        .last()
        .is_some_and(|h| h.len() == 17 && h.starts_with('h'))
    {
        parts.pop();
    }
    let mut s = parts
        .iter()
        // A segment that would start with `$` is written `_$`.
        .map(|p| {
            p.strip_prefix('_')
                .filter(|q| q.starts_with('$'))
                .unwrap_or(p)
        })
        .collect::<Vec<_>>()
        .join("::");
    for (from, to) in [
        ("$LT$", "<"),
        ("$GT$", ">"),
        ("$u20$", " "),
        ("$RF$", "&"),
        ("$BP$", "*"),
        ("$C$", ","),
        ("$LP$", "("),
        ("$RP$", ")"),
        ("$u7b$", "{"),
        ("$u7d$", "}"),
        ("$u5b$", "["),
        ("$u5d$", "]"),
        ("$u27$", "'"),
        ("..", "::"),
    ] {
        s = s.replace(from, to);
    }
    shorten_paths(&s)
}

/// `a::b::c::D<x::y::Z>` → `c::D<y::Z>`.
fn shorten_paths(s: &str) -> String {
    let mut out = String::new();
    let mut path: Vec<&str> = Vec::new();
    let mut rest = s;
    let flush = |path: &mut Vec<&str>, out: &mut String| {
        let keep = path.len().saturating_sub(2);
        out.push_str(&path[keep..].join("::"));
        path.clear();
    };
    while !rest.is_empty() {
        let ident_len = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
            .unwrap_or(rest.len());
        if ident_len > 0 {
            path.push(&rest[..ident_len]);
            rest = &rest[ident_len..];
            if let Some(r) = rest.strip_prefix("::") {
                rest = r;
                continue;
            }
            flush(&mut path, &mut out);
        } else {
            if !path.is_empty() {
                flush(&mut path, &mut out);
            }
            let c = rest.chars().next().unwrap_or(' ');
            // `<A as B>::f`: the `::` after a closing bracket belongs to the output.
            if let Some(r) = rest.strip_prefix("::") {
                out.push_str("::");
                rest = r;
            } else {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    flush(&mut path, &mut out);
    out
}
