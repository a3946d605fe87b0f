//! `LoadedJSSandbox`: call handlers, snapshot, restore, unload, interrupt.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyperlight_js_engine as engine;
use napi::Env;
use napi::bindgen_prelude::Object;
use napi_derive::napi;

use crate::error::Failure;
use crate::interrupt::InterruptHandle;
use crate::js_sandbox::JSSandbox;
use crate::lane::{Lane, Slot, rejected};
use crate::snapshot::Snapshot;

/// A sandbox with handlers loaded, ready to process events.
///
/// Operations queue on the sandbox's own thread in the order they were
/// made, so concurrent `callHandler()`s on one sandbox run one after another.
#[napi(js_name = "LoadedJSSandbox")]
pub struct LoadedJSSandbox {
    lane: Arc<Lane>,
    slot: Slot<engine::LoadedJSSandbox>,
    interrupt: engine::InterruptHandle,
    /// The engine's `poisoned()` after the last operation, readable without
    /// waiting for the sandbox thread.
    poisoned: Arc<AtomicBool>,
    /// Set as soon as `unload()` is called, so later calls fail at once.
    unloaded: Arc<AtomicBool>,
    /// The engine's `last_call_stats()` after the last operation.
    stats: Arc<Mutex<Option<engine::CallStats>>>,
}

/// What the last `callHandler()` cost (`lastCallStats`).
#[napi(object)]
pub struct CallStats {
    /// Wall-clock time of the call inside the VM, in milliseconds.
    pub wall_clock_ms: f64,
    /// CPU time of the sandbox's vCPU thread over the call, in milliseconds.
    pub cpu_time_ms: f64,
    /// What stopped the call: `'cpu'`, `'wall'` or `'kill'`; `null` if it ran to its end.
    #[napi(ts_type = "'cpu' | 'wall' | 'kill' | null")]
    pub terminated_by: Option<String>,
}

impl LoadedJSSandbox {
    pub(crate) fn new(lane: Arc<Lane>, loaded: engine::LoadedJSSandbox) -> Self {
        Self {
            lane,
            interrupt: loaded.interrupt_handle(),
            poisoned: Arc::new(AtomicBool::new(loaded.poisoned())),
            unloaded: Arc::new(AtomicBool::new(false)),
            stats: Arc::new(Mutex::new(loaded.last_call_stats())),
            slot: Slot::new(loaded),
        }
    }

    /// Runs `f` on the sandbox thread with the sandbox, then records whether
    /// it is poisoned.
    fn run<'env, T, V, F, C>(&self, env: &'env Env, f: F, to_js: C) -> napi::Result<Object<'env>>
    where
        T: Send + 'static,
        V: napi::bindgen_prelude::ToNapiValue + 'static,
        F: FnOnce(&mut engine::LoadedJSSandbox) -> Result<T, engine::Error> + Send + 'static,
        C: FnOnce(&Env, T) -> napi::Result<V> + Send + 'static,
    {
        if self.unloaded.load(Ordering::SeqCst) {
            return rejected(env, Failure::consumed("LoadedJSSandbox"));
        }
        let slot = self.slot.clone();
        let poisoned = self.poisoned.clone();
        let stats = self.stats.clone();
        self.lane.promise(
            env,
            move || {
                let mut guard = slot.lock();
                let loaded = guard
                    .as_mut()
                    .ok_or_else(|| Failure::consumed("LoadedJSSandbox"))?;
                let out = f(loaded);
                poisoned.store(loaded.poisoned(), Ordering::SeqCst);
                *stats.lock().unwrap_or_else(|p| p.into_inner()) = loaded.last_call_stats();
                out.map_err(Failure::from)
            },
            to_js,
        )
    }
}

impl Drop for LoadedJSSandbox {
    fn drop(&mut self) {
        self.slot.release_on(&self.lane);
    }
}

/// A timeout in milliseconds from JavaScript: absent, or a positive finite
/// number (zero is passed on for the engine to reject with its message).
fn timeout(name: &str, ms: Option<f64>) -> Result<Option<Duration>, Failure> {
    match ms {
        None => Ok(None),
        Some(ms) if !ms.is_finite() || ms < 0.0 => Err(Failure::invalid_arg(format!(
            "{name} must be a positive number of milliseconds, got {ms}"
        ))),
        Some(ms) => Duration::try_from_secs_f64(ms / 1000.0)
            .map(Some)
            .map_err(|_| Failure::invalid_arg(format!("{name} of {ms} ms is out of range"))),
    }
}

#[napi]
impl LoadedJSSandbox {
    /// Calls the handler `name` with an event given as JSON text and resolves
    /// with the result as JSON text. `callHandler()` (defined in index.js)
    /// wraps this with JSON encoding and decoding.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn call_handler_json<'env>(
        &self,
        env: &'env Env,
        name: String,
        event_json: String,
        wall_clock_timeout_ms: Option<f64>,
        cpu_timeout_ms: Option<f64>,
        gc: Option<bool>,
    ) -> napi::Result<Object<'env>> {
        let options = match (|| {
            let mut o = engine::CallOptions::default().gc(gc.unwrap_or(true));
            o.wall_clock_timeout = timeout("wallClockTimeoutMs", wall_clock_timeout_ms)?;
            o.cpu_timeout = timeout("cpuTimeoutMs", cpu_timeout_ms)?;
            Ok::<_, Failure>(o)
        })() {
            Ok(o) => o,
            Err(f) => return rejected(env, f),
        };
        // A stop reaches a call waiting in a host function through the
        // engine, so no deadline of our own is needed here.
        self.run(
            env,
            move |loaded| loaded.call_handler_json(&name, &event_json, &options),
            |_env, json| Ok(json),
        )
    }

    /// Unloads every handler and returns to a fresh runtime:
    /// `Promise<JSSandbox>`. This object is consumed as soon as it is called.
    #[napi(ts_return_type = "Promise<JSSandbox>")]
    pub fn unload<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        if self.unloaded.swap(true, Ordering::SeqCst) {
            return rejected(env, Failure::consumed("LoadedJSSandbox"));
        }
        let slot = self.slot.clone();
        let unloaded = self.unloaded.clone();
        let poisoned = self.poisoned.clone();
        let lane = self.lane.clone();
        self.lane.promise(
            env,
            move || {
                let loaded = slot
                    .take()
                    .ok_or_else(|| Failure::consumed("LoadedJSSandbox"))?;
                match loaded.unload() {
                    Ok(js) => Ok(js),
                    Err(engine::TransitionError { error, state }) => {
                        // Not consumed after all: the sandbox stays loaded.
                        poisoned.store(state.poisoned(), Ordering::SeqCst);
                        slot.put(state);
                        unloaded.store(false, Ordering::SeqCst);
                        Err(error.into())
                    }
                }
            },
            move |_env, js| Ok(JSSandbox::new(lane, js)),
        )
    }

    /// Captures the sandbox's state: `Promise<Snapshot>`.
    #[napi(ts_return_type = "Promise<Snapshot>")]
    pub fn snapshot<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        self.run(
            env,
            |loaded| loaded.snapshot(),
            |_env, snap| Ok(Snapshot::new(snap)),
        )
    }

    /// Rolls the sandbox back to `snapshot` and clears the poisoned state:
    /// `Promise<void>`.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn restore<'env>(&self, env: &'env Env, snapshot: &Snapshot) -> napi::Result<Object<'env>> {
        let snap = match snapshot.inner() {
            Ok(s) => s.clone(),
            Err(f) => return rejected(env, f),
        };
        self.run(env, move |loaded| loaded.restore(&snap), |_env, ()| Ok(()))
    }

    /// A handle that kills the running handler (a getter).
    #[napi(getter)]
    pub fn interrupt_handle(&self) -> InterruptHandle {
        InterruptHandle::new(self.interrupt.clone(), self.lane.id())
    }

    /// Whether the sandbox is poisoned (a call was killed, timed out or the
    /// guest aborted): calls fail with `ERR_POISONED` until `restore()`.
    #[napi(getter)]
    pub fn poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    /// What the last `callHandler()` cost and what stopped it (also after one
    /// that threw or was stopped); `null` before the first call and after one
    /// refused before it entered the VM. Upstream hyperlight-js's API.
    #[napi(getter)]
    pub fn last_call_stats(&self) -> Option<CallStats> {
        let stats = (*self.stats.lock().unwrap_or_else(|p| p.into_inner()))?;
        Some(CallStats {
            wall_clock_ms: stats.wall_clock.as_secs_f64() * 1000.0,
            cpu_time_ms: stats.cpu_time.as_secs_f64() * 1000.0,
            terminated_by: stats.terminated_by.map(|r| {
                match r {
                    engine::CancelReason::CpuTime(_) => "cpu",
                    engine::CancelReason::WallClock(_) => "wall",
                    engine::CancelReason::Killed => "kill",
                }
                .to_string()
            }),
        })
    }

    /// A new, independent sandbox in the state `snapshot` captured (same
    /// handlers, same JavaScript state, its own micro-VM and thread), without
    /// loading the runtime again: `Promise<LoadedJSSandbox>`.
    #[napi(js_name = "_fromSnapshot", ts_return_type = "Promise<LoadedJSSandbox>")]
    pub fn from_snapshot<'env>(env: &'env Env, snapshot: &Snapshot) -> napi::Result<Object<'env>> {
        let snap = match snapshot.inner() {
            Ok(s) => s.clone(),
            Err(f) => return rejected(env, f),
        };
        Lane::promise_on_new(
            env,
            move || engine::LoadedJSSandbox::from_snapshot(&snap).map_err(Failure::from),
            |lane, loaded| Ok(LoadedJSSandbox::new(lane, loaded)),
        )
    }

    /// Benchmark helper: calls handler `name` with `eventJson` `iterations`
    /// times through the engine's Rust API directly (`call_handler` with a
    /// `serde_json::Value`, on this sandbox's thread) and resolves with each
    /// call's duration in milliseconds. Used by `bench/bench.mjs`.
    #[napi(js_name = "_benchEngineCalls", ts_return_type = "Promise<number[]>")]
    pub fn bench_engine_calls<'env>(
        &self,
        env: &'env Env,
        name: String,
        event_json: String,
        iterations: u32,
    ) -> napi::Result<Object<'env>> {
        let event = match serde_json::from_str::<serde_json::Value>(&event_json) {
            Ok(v) => v,
            Err(e) => return rejected(env, Failure::invalid_arg(e.to_string())),
        };
        self.run(
            env,
            move |loaded| crate::bench::engine_calls(loaded, &name, &event, iterations),
            |_env, times| Ok(times),
        )
    }
}
