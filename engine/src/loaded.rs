//! `LoadedJSSandbox`: handlers are compiled; events can be processed.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyperlight_host::sandbox::snapshot::Snapshot as HlSnapshot;
use hyperlight_host::{HyperlightError, Sandbox};
use hyperlight_js_abi::guest_fn;
use serde::de::IgnoredAny;
use serde_json::Value;
use tracing::instrument;

use crate::builder::SandboxConfig;
use crate::error::{CancelReason, Error, Result, TransitionError};
use crate::error_map;
use crate::host_functions::{self, HostRegistry};
use crate::interrupt::InterruptHandle;
use crate::js_sandbox::{JSSandbox, check_key};
use crate::monitor::{Limits, Monitors, ThreadCpuClock};
use crate::snapshot::{Snapshot, WorkingSet};

/// What every state of one sandbox lineage shares.
pub(crate) struct Shared {
    pub(crate) config: SandboxConfig,
    pub(crate) registry: HostRegistry,
    /// The runtime loaded, no handlers: where `unload` goes back to.
    pub(crate) runtime_snapshot: Arc<HlSnapshot>,
}

/// Options for one call. With no timeout, the handler runs without monitors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallOptions {
    /// Wall-clock limit for the call.
    pub wall_clock_timeout: Option<Duration>,
    /// CPU-time limit for the call (CPU time of the thread running the vCPU).
    pub cpu_timeout: Option<Duration>,
    /// Run the garbage collector after the call (default `true`).
    pub gc: bool,
    /// The handler's second argument as JSON text; `None`: `undefined`.
    /// Private so that it is always valid JSON (set by [`Self::context`]).
    context: Option<String>,
}

impl Default for CallOptions {
    fn default() -> Self {
        Self {
            wall_clock_timeout: None,
            cpu_timeout: None,
            gc: true,
            context: None,
        }
    }
}

impl CallOptions {
    /// Sets the wall-clock limit.
    pub fn wall_clock_timeout(mut self, d: Duration) -> Self {
        self.wall_clock_timeout = Some(d);
        self
    }

    /// Sets the CPU-time limit.
    pub fn cpu_timeout(mut self, d: Duration) -> Self {
        self.cpu_timeout = Some(d);
        self
    }

    /// Chooses whether to collect garbage after the call.
    pub fn gc(mut self, gc: bool) -> Self {
        self.gc = gc;
        self
    }

    /// Passes `ctx` to the handler as its second argument, `handler(event, ctx)`
    /// (without it, `ctx` is `undefined`). It is plain JSON: unlike the event,
    /// `{"__hl_bytes": …}` stays an object. Its JSON counts towards the input
    /// buffer size together with the event's.
    pub fn context(mut self, ctx: Value) -> Self {
        self.context = Some(ctx.to_string());
        self
    }

    /// The context as JSON text, if one was set.
    pub fn context_json(&self) -> Option<&str> {
        self.context.as_deref()
    }
}

/// What the last handler call cost, and what stopped it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallStats {
    /// Wall-clock time of the guest call (from entering the VM to leaving it).
    pub wall_clock: Duration,
    /// CPU time the vCPU thread used over the call (host functions run on
    /// helper threads and are not counted).
    pub cpu_time: Duration,
    /// The monitor or kill that stopped the call; `None` if it ran to its end.
    pub terminated_by: Option<CancelReason>,
}

/// A sandbox whose handlers are compiled, ready to process events.
///
/// Calls block the calling thread while the guest runs (the vCPU runs on it).
/// From async code, run them on a blocking thread, e.g.
/// `tokio::task::spawn_blocking(move || { let r = sb.call_handler(..); (sb, r) })`.
pub struct LoadedJSSandbox {
    /// Boxed: hyperlight's sandbox is ~2 KB and every transition moves it.
    sandbox: Box<Sandbox>,
    shared: Arc<Shared>,
    handlers: Arc<BTreeSet<String>>,
    interrupt: InterruptHandle,
    /// Send a fresh `Math.random` seed with the next call: set for a new
    /// sandbox and after every restore, whose memory holds an old RNG state.
    reseed: bool,
    /// A user-mode run was abandoned by a fault: the JS heap may be
    /// inconsistent, so calls are refused until a restore.
    faulted: bool,
    /// Boxed: keeps `TransitionError<LoadedJSSandbox>` small.
    last_call_stats: Option<Box<CallStats>>,
    /// The working set of the snapshot last restored (or made into this VM).
    restored: Option<Arc<WorkingSet>>,
    /// A call has run since that restore: only the first one replays or records.
    called_since_restore: bool,
    /// That restore is not the first of its snapshot with a call after it on
    /// this VM. Only then is a working set recorded: the call after the first
    /// restore runs on the page tables hyperlight has just built for a new
    /// snapshot or VM, and on a paravirtual MMU it faults on ~90 code pages
    /// that later restores leave open.
    restored_again: bool,
    /// Replay working sets (see [`Self::replay_working_sets`]).
    replay: bool,
}

impl std::fmt::Debug for LoadedJSSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedJSSandbox")
            .field("handlers", &self.handlers)
            .field("poisoned", &self.poisoned())
            .finish_non_exhaustive()
    }
}

impl LoadedJSSandbox {
    pub(crate) fn new(
        sandbox: Box<Sandbox>,
        shared: Arc<Shared>,
        handlers: BTreeSet<String>,
    ) -> Self {
        let interrupt = InterruptHandle::new(sandbox.interrupt_handle());
        Self {
            sandbox,
            shared,
            handlers: Arc::new(handlers),
            interrupt,
            reseed: true,
            faulted: false,
            last_call_stats: None,
            restored: None,
            called_since_restore: false,
            restored_again: false,
            replay: true,
        }
    }

    /// A new, independent sandbox in the state `snapshot` captured: same
    /// handlers, same JavaScript state, its own micro-VM. Much cheaper than
    /// building and loading from scratch, since no runtime init runs.
    #[instrument(name = "sandbox.from_snapshot", skip_all, err(Display))]
    pub fn from_snapshot(snapshot: &Snapshot) -> Result<Self> {
        let shared = snapshot.shared.clone();
        let builder = shared
            .config
            .sized(hyperlight_host::SandboxBuilder::from_snapshot(
                snapshot.hl.clone(),
            ))?;
        let sandbox = host_functions::install(builder, &shared.registry)
            .build()
            .map_err(error_map::from_hyperlight)?;
        let mut loaded = Self::new(Box::new(sandbox), shared, BTreeSet::new());
        loaded.handlers = snapshot.handlers.clone();
        loaded.restored = Some(snapshot.working_set.clone());
        Ok(loaded)
    }

    /// Runs the handler registered under `key` on `event`, returning its result.
    pub fn call_handler(
        &mut self,
        key: &str,
        event: &Value,
        options: &CallOptions,
    ) -> Result<Value> {
        let event = serde_json::to_string(event).map_err(|e| Error::InvalidJson(e.to_string()))?;
        let json = self.call_handler_json(key, &event, options)?;
        serde_json::from_str(&json)
            .map_err(|e| Error::Internal(format!("the guest returned invalid JSON: {e}")))
    }

    /// Like [`call_handler`](Self::call_handler) with the event and result as
    /// JSON text; the event is validated (`ERR_INVALID_JSON`) but not re-encoded.
    // A handler's failure is an outcome, not an engine fault: logged at debug.
    #[instrument(name = "sandbox.call", skip(self, event, options), fields(bytes = event.len()), err(level = "debug", Display))]
    pub fn call_handler_json(
        &mut self,
        key: &str,
        event: &str,
        options: &CallOptions,
    ) -> Result<String> {
        self.last_call_stats = None;
        check_key(key)?;
        let limits = Limits::validated(options.wall_clock_timeout, options.cpu_timeout)?;
        if self.poisoned() {
            return Err(Error::Poisoned);
        }
        if !self.handlers.contains(key) {
            return Err(Error::UnknownHandler(key.to_string()));
        }
        let context = options.context.as_deref().unwrap_or_default();
        let limit = self.shared.config.input_buffer_size as usize;
        // Both travel in the same call, through the same input buffer.
        let size = event.len() + context.len();
        if size > limit {
            return Err(Error::InputTooLarge { size, limit });
        }
        serde_json::from_str::<IgnoredAny>(event).map_err(|e| Error::InvalidJson(e.to_string()))?;

        let seed = if self.reseed { fresh_seed() } else { 0 };
        let restored = if self.called_since_restore {
            None
        } else {
            self.called_since_restore = true;
            self.restored.clone()
        };
        let first_after_restore = restored.is_some();
        let working_set = restored.filter(|_| self.replay);
        let (pages, learn) = match working_set.as_deref().map(|ws| ws.get(key)) {
            Some(Some((pages, refine))) => (pages.to_vec(), refine.then_some(Learn::Refine)),
            Some(None) => (Vec::new(), self.restored_again.then_some(Learn::Record)),
            // Replay off after a restore: an empty list, which the guest
            // neither replays nor records from (the benchmark's baseline).
            None if first_after_restore => (crate::snapshot::empty_list(), None),
            None => (Vec::new(), None),
        };
        let cpu_clock = ThreadCpuClock::current().map_err(|e| {
            Error::Internal(format!("cannot read the vCPU thread's CPU clock: {e}"))
        })?;
        let token = self.interrupt.token();
        token.begin();
        let config = &self.shared.config;
        let scope = host_functions::CallScope::enter(
            token.clone(),
            config.console_max_bytes,
            config.console_max_lines,
        );
        // Read before the monitors start, so the stats never show less than
        // the CPU monitor counted.
        let wall_start = Instant::now();
        let cpu_start = cpu_clock.now().unwrap_or_default();
        // Fail closed: no monitor, no run.
        let mut guard = Monitors::start(limits, self.interrupt.vm(), token)?;
        let result: std::result::Result<String, HyperlightError> = self.sandbox.call(
            guest_fn::CALL_HANDLER,
            (
                key.to_string(),
                event.to_string(),
                context.to_string(),
                options.gc,
                seed,
                crate::clock::now_micros(),
                crate::clock::tsc_hz(),
                // Last: the guest kernel finds it at the end of the message.
                pages,
            ),
        );
        let wall_clock = wall_start.elapsed();
        let cpu_time = cpu_clock
            .now()
            .map_or(Duration::ZERO, |t| t.saturating_sub(cpu_start));
        let fired = guard.as_mut().and_then(|g| g.finish());
        drop(guard);
        drop(scope);
        let cancelled = matches!(result, Err(HyperlightError::ExecutionCanceledByHost()));
        self.last_call_stats = Some(Box::new(CallStats {
            wall_clock,
            cpu_time,
            terminated_by: cancelled.then(|| fired.unwrap_or(CancelReason::Killed)),
        }));
        match result {
            Ok(frame) => {
                self.reseed = false;
                let reply = error_map::reply_checked(key, frame).map_err(|(e, fatal)| {
                    self.faulted |= fatal;
                    e
                });
                if let (Some(ws), Some(learn), false) = (&working_set, learn, self.faulted) {
                    self.learn_working_set(ws, key, learn);
                }
                let json = reply?;
                let limit = self.shared.config.output_buffer_size as usize;
                if json.len() > limit {
                    return Err(Error::OutputTooLarge(format!(
                        "the result is {} bytes, over the output buffer size of {limit} bytes",
                        json.len()
                    )));
                }
                Ok(json)
            }
            // No monitor fired: the interrupt handle did it.
            Err(HyperlightError::ExecutionCanceledByHost()) => {
                Err(Error::Cancelled(fired.unwrap_or(CancelReason::Killed)))
            }
            Err(e) => Err(error_map::from_hyperlight(e)),
        }
    }

    /// Captures the sandbox's whole state (memory and handlers).
    #[instrument(name = "sandbox.snapshot", skip_all, err(Display))]
    pub fn snapshot(&mut self) -> Result<Snapshot> {
        if self.poisoned() {
            return Err(Error::Poisoned);
        }
        let hl = self
            .sandbox
            .snapshot()
            .map_err(error_map::from_hyperlight)?;
        Ok(Snapshot {
            hl,
            handlers: self.handlers.clone(),
            shared: self.shared.clone(),
            working_set: Arc::default(),
        })
    }

    /// Rolls the sandbox back to `snapshot`; clears the poisoned state.
    #[instrument(name = "sandbox.restore", skip_all, err(Display))]
    pub fn restore(&mut self, snapshot: &Snapshot) -> Result<()> {
        if !Arc::ptr_eq(&snapshot.shared, &self.shared) {
            return Err(Error::InvalidArgument(
                "the snapshot was taken from a different sandbox lineage".into(),
            ));
        }
        self.sandbox
            .restore(snapshot.hl.clone())
            .map_err(error_map::from_hyperlight)?;
        self.handlers = snapshot.handlers.clone();
        self.reseed = true;
        self.faulted = false;
        let ws = &snapshot.working_set;
        self.restored_again = self.called_since_restore
            && self
                .restored
                .as_ref()
                .is_some_and(|before| Arc::ptr_eq(before, ws));
        self.restored = Some(ws.clone());
        self.called_since_restore = false;
        Ok(())
    }

    /// Asks the guest for the working set the call just made recorded (all
    /// of it, or the faults a replaying call still took), and
    /// keeps it for later restores of the same snapshot. Best effort: without
    /// it, calls only start slower.
    fn learn_working_set(&mut self, ws: &WorkingSet, key: &str, learn: Learn) {
        match self.sandbox.call::<String>(guest_fn::WORKING_SET, ()) {
            Ok(text) => {
                let entries = crate::snapshot::parse_entries(&text);
                tracing::debug!(
                    entries = entries.len(),
                    ?learn,
                    "learned working set entries"
                );
                match learn {
                    Learn::Record => {
                        ws.learn(key, &entries);
                    }
                    Learn::Refine => ws.refine(key, &entries),
                }
            }
            Err(e) => tracing::debug!(error = %e, "no working set learned"),
        }
    }

    /// Drops every handler and all JavaScript state, back to a fresh runtime.
    #[instrument(name = "sandbox.unload", skip_all, err(Display))]
    pub fn unload(mut self) -> Result<JSSandbox, TransitionError<LoadedJSSandbox>> {
        match self.sandbox.restore(self.shared.runtime_snapshot.clone()) {
            Ok(()) => Ok(JSSandbox::from_parts(self.sandbox, self.shared)),
            Err(e) => {
                let error = error_map::from_hyperlight(e);
                self.reseed = true;
                Err(TransitionError { error, state: self })
            }
        }
    }

    #[doc(hidden)]
    pub fn last_working_set(&mut self) -> Result<String> {
        self.sandbox
            .call::<String>(guest_fn::WORKING_SET, ())
            .map_err(error_map::from_hyperlight)
    }

    /// Benchmark hook: whether the first call after a restore replays the
    /// snapshot's working set (on by default; off, every page the call needs
    /// costs its own fault, the baseline the benchmark compares with, and
    /// the call records nothing either).
    #[doc(hidden)]
    pub fn replay_working_sets(&mut self, on: bool) {
        self.replay = on;
    }

    /// What the last `call_handler` cost and what stopped it: set after every
    /// call that entered the VM, whether it returned, threw or was stopped;
    /// `None` before the first call and after one refused before entering
    /// the VM (bad argument, poisoned, unknown handler, input too large).
    pub fn last_call_stats(&self) -> Option<CallStats> {
        self.last_call_stats.as_deref().copied()
    }

    /// A handle that kills the running call from any thread.
    pub fn interrupt_handle(&self) -> InterruptHandle {
        self.interrupt.clone()
    }

    /// Whether an earlier failure (kill, timeout, guest abort) left the
    /// sandbox inconsistent. Calls fail with `ERR_POISONED` until a restore.
    pub fn poisoned(&self) -> bool {
        self.faulted || !self.sandbox.status().is_ready()
    }

    /// The routing keys of the compiled handlers.
    pub fn handler_keys(&self) -> impl Iterator<Item = &str> {
        self.handlers.iter().map(String::as_str)
    }

    /// Test and benchmark hook: reads one byte at a guest address from the
    /// mode handlers run in (0: the guest's own data; 1: the user-mode kernel
    /// page). In user mode, kernel pages fault: `ERR_GUEST_ABORT`, poisoned.
    #[doc(hidden)]
    pub fn probe_read(&mut self, addr: u64) -> Result<u8> {
        if self.poisoned() {
            return Err(Error::Poisoned);
        }
        let frame: String = self
            .sandbox
            .call(guest_fn::PROBE_READ, addr)
            .map_err(error_map::from_hyperlight)?;
        let text = error_map::reply_checked("", frame).map_err(|(e, fatal)| {
            self.faulted |= fatal;
            e
        })?;
        text.parse()
            .map_err(|_| Error::Internal(format!("bad probe reply {text}")))
    }

    /// Test hook: the guest's own native code looks for the marker of `seek`
    /// in a guest static, a heap block, the user stack and the transport
    /// arena, then writes the marker of `write` (see
    /// [`hyperlight_js_abi::guest_fn::SCRIBBLE`]); returns its report.
    #[doc(hidden)]
    pub fn scribble(&mut self, write: &str, seek: &str) -> Result<String> {
        if self.poisoned() {
            return Err(Error::Poisoned);
        }
        let frame: String = self
            .sandbox
            .call(guest_fn::SCRIBBLE, (write.to_owned(), seek.to_owned()))
            .map_err(error_map::from_hyperlight)?;
        error_map::reply_checked("", frame).map_err(|(e, fatal)| {
            self.faulted |= fatal;
            e
        })
    }

    /// Benchmark hook: kernel entries (faults and system calls) from guest
    /// user mode since the runtime was loaded, up to the start of this query.
    #[doc(hidden)]
    pub fn guest_kernel_entries(&mut self) -> Result<u64> {
        self.sandbox
            .call(guest_fn::TRAP_COUNT, ())
            .map_err(error_map::from_hyperlight)
    }

    /// Benchmark hook: the previous call's kernel entries from guest user
    /// mode, per kind (see [`hyperlight_js_abi::KERNEL_ENTRY_KINDS`]), with
    /// the time the guest kernel's handler spent on them. Empty in kernel mode,
    /// and on the first query, which turns counting on (it costs every call
    /// some emulated kernel work): query once before taking the snapshot
    /// that the measured sandboxes restore.
    #[doc(hidden)]
    pub fn guest_kernel_stats(&mut self) -> Result<Vec<KernelEntries>> {
        let text: String = self
            .sandbox
            .call(guest_fn::KERNEL_STATS, ())
            .map_err(error_map::from_hyperlight)?;
        let hz = crate::clock::tsc_hz().max(1) as f64;
        text.lines()
            .map(|line| {
                let mut parts = line.split(' ');
                let (Some(kind), Some(count), Some(cycles), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(Error::Internal(format!("bad kernel stats line {line:?}")));
                };
                let number = |s: &str| {
                    s.parse::<u64>()
                        .map_err(|_| Error::Internal(format!("bad kernel stats line {line:?}")))
                };
                Ok(KernelEntries {
                    kind: kind.to_owned(),
                    count: number(count)?,
                    handler_micros: number(cycles)? as f64 * 1e6 / hz,
                })
            })
            .collect()
    }

    /// Test hook: how deep the guest kernel's stack and its exception stack
    /// have been since the last restore (or the start), and their sizes, in
    /// bytes: `[[kernel used, kernel size], [exception used, exception size]]`.
    /// No guard page bounds either stack (both lie in pages hyperlight
    /// reserves at the top of scratch): tests prove the margin with this.
    #[doc(hidden)]
    pub fn guest_stack_use(&mut self) -> Result<[[u64; 2]; 2]> {
        let text: String = self
            .sandbox
            .call(guest_fn::STACK_USE, ())
            .map_err(error_map::from_hyperlight)?;
        let bad = || Error::Internal(format!("bad stack use reply {text:?}"));
        let field = |name: &str| -> Result<[u64; 2]> {
            let value = text
                .split(' ')
                .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
                .ok_or_else(bad)?;
            let (used, size) = value.split_once('/').ok_or_else(bad)?;
            Ok([
                used.parse().map_err(|_| bad())?,
                size.parse().map_err(|_| bad())?,
            ])
        };
        Ok([field("kernel")?, field("exception")?])
    }

    /// The sizes this sandbox was built with.
    pub fn config(&self) -> &SandboxConfig {
        &self.shared.config
    }
}

/// A non-zero seed that differs per call site and per process.
fn fresh_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() | 1
}

/// One kind of kernel entry from guest user mode during a call (benchmarks).
#[doc(hidden)]
#[derive(Clone, Debug, PartialEq)]
pub struct KernelEntries {
    /// The kind, one of [`hyperlight_js_abi::KERNEL_ENTRY_KINDS`].
    pub kind: String,
    /// How many entries of the kind.
    pub count: u64,
    /// Microseconds the guest kernel's handler spent on them (exception
    /// delivery and the trap path's register save not included).
    pub handler_micros: f64,
}

/// What the guest recorded of a call's working set, for the engine to learn.
#[derive(Clone, Copy, Debug)]
enum Learn {
    /// The whole of it: the first call of a key after a restore, no list.
    Record,
    /// The faults a call that replayed the list still took.
    Refine,
}
