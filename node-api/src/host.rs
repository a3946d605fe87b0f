//! Host functions: JavaScript callbacks that handlers call as
//! `host.<module>.<function>(...args)`.
//!
//! The engine calls a host function on the sandbox's thread while the vCPU
//! waits. Here that call is forwarded to the JavaScript thread through a
//! threadsafe function (to the dispatcher that index.js wraps around the
//! user's callback), and the sandbox thread waits until the dispatcher
//! settles the call with `_settleHostCall(id, error, json)`, after the
//! callback's value or promise has settled. The event loop runs meanwhile.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use hyperlight_js_engine as engine;
use napi::bindgen_prelude::{FnArgs, Function};
use napi::threadsafe_function::ThreadsafeFunctionCallMode;
use napi_derive::napi;
use serde_json::Value;

use crate::error::Failure;
use crate::lane::Slot;

type Reply = Result<String, String>;

/// A host call waiting for the JavaScript thread: the lane it waits on and
/// where its reply goes.
struct Waiter {
    lane: u64,
    tx: SyncSender<Reply>,
}

/// Host calls waiting for the JavaScript thread, by id.
fn pending() -> &'static Mutex<HashMap<u32, Waiter>> {
    static PENDING: OnceLock<Mutex<HashMap<u32, Waiter>>> = OnceLock::new();
    PENDING.get_or_init(Default::default)
}

fn take_waiter(id: u32) -> Option<Waiter> {
    pending()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id)
}

thread_local! {
    /// The lane this thread runs (0 on other threads, including the engine's
    /// host-call threads: a stop reaches a waiting host call through the
    /// engine itself, so lane tracking only serves `abandon_lane`).
    static LANE: Cell<u64> = const { Cell::new(0) };
}

/// Marks the current thread as running lane `id`.
pub(crate) fn enter_lane(id: u64) {
    LANE.with(|l| l.set(id));
}

/// Fails every host call waiting on lane `lane` (after a kill): the sandbox
/// thread stops waiting for the JavaScript callback, so the kill takes effect.
pub(crate) fn abandon_lane(lane: u64, why: &str) {
    let waiters: Vec<Waiter> = {
        let mut map = pending().lock().unwrap_or_else(|p| p.into_inner());
        let ids: Vec<u32> = map
            .iter()
            .filter(|(_, w)| w.lane == lane)
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter().filter_map(|id| map.remove(&id)).collect()
    };
    for w in waiters {
        let _ = w.tx.send(Err(why.to_string()));
    }
}

fn next_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Where a host module's functions are registered.
#[derive(Clone)]
pub(crate) enum Target {
    /// A proto sandbox, before `loadRuntime()`.
    Proto(Slot<engine::ProtoJSSandbox>),
    /// A restorer, before `restoreLoadedSandbox()` / `restoreJsSandbox()`.
    Restorer(Slot<engine::SandboxRestorer>),
}

type UserFn = Box<dyn Fn(Value) -> Result<Value, String> + Send + Sync + 'static>;

impl Target {
    fn register(&self, module: &str, function: &str, f: UserFn) -> Result<(), Failure> {
        match self {
            Self::Proto(slot) => slot
                .lock()
                .as_mut()
                .ok_or_else(|| Failure::consumed("ProtoJSSandbox"))?
                .register_host_function(module, function, f),
            Self::Restorer(slot) => slot
                .lock()
                .as_mut()
                .ok_or_else(|| Failure::consumed("SandboxRestorer"))?
                .register_host_function(module, function, f),
        }
        .map_err(Failure::from)
    }
}

/// A host module of a proto sandbox (or of a restorer): `register(fnName,
/// callback)` adds a function to it.
#[napi]
pub struct HostModule {
    name: String,
    target: Target,
}

impl HostModule {
    pub(crate) fn new(name: String, target: Target) -> Self {
        Self { name, target }
    }
}

#[napi]
impl HostModule {
    /// The module's name.
    #[napi(getter)]
    pub fn name(&self) -> String {
        self.name.clone()
    }

    /// Registers `dispatch(id, argsJson)` as function `function_name`: the
    /// dispatcher must eventually call `_settleHostCall(id, ...)` exactly
    /// once. `register()` (in index.js) builds the dispatcher around the
    /// user's callback.
    #[napi(js_name = "_register")]
    pub fn register_dispatcher(
        &self,
        function_name: String,
        dispatch: Function<'_, FnArgs<(u32, String)>, ()>,
    ) -> napi::Result<(), String> {
        // Weak: a registered function must not keep the process alive; an
        // in-flight call is kept alive by its own promise.
        let tsfn = dispatch
            .build_threadsafe_function::<FnArgs<(u32, String)>>()
            .weak::<true>()
            .build()
            .map_err(|e| Failure::internal(format!("cannot register host function: {e}")))?;
        let label = format!("{}.{}", self.name, function_name);
        self.target
            .register(&self.name, &function_name, Box::new(move |args: Value| -> Result<Value, String> {
                let (tx, rx) = sync_channel::<Reply>(1);
                let id = next_id();
                let lane = LANE.with(Cell::get);
                pending().lock().unwrap_or_else(|p| p.into_inner()).insert(id, Waiter { lane, tx });
                let status = tsfn.call(FnArgs::from((id, args.to_string())), ThreadsafeFunctionCallMode::NonBlocking);
                if status != napi::Status::Ok {
                    take_waiter(id);
                    return Err(format!("host function {label} is unavailable ({status})"));
                }
                // A stop (monitor or kill) ends the engine's wait for this
                // function at once; this thread then waits on until the
                // callback settles, and its reply is dropped.
                let reply = loop {
                    match rx.recv_timeout(Duration::from_millis(250)) {
                        Ok(reply) => break reply,
                        Err(RecvTimeoutError::Timeout) if !tsfn.aborted() => continue,
                        Err(_) => {
                            take_waiter(id);
                            break Err(format!("host function {label} was abandoned: the JavaScript environment is gone"));
                        }
                    }
                };
                let json = reply?;
                serde_json::from_str(&json).map_err(|e| format!("host function {label} returned invalid JSON: {e}"))
            }))?;
        Ok(())
    }
}

/// Settles host call `id` with an error message, or with a result as JSON
/// text. Called by the dispatcher in index.js.
#[napi(js_name = "_settleHostCall")]
pub fn settle_host_call(id: u32, error: Option<String>, result_json: Option<String>) {
    if let Some(Waiter { tx, .. }) = take_waiter(id) {
        let reply = match error {
            Some(message) => Err(message),
            None => Ok(result_json.unwrap_or_else(|| "null".into())),
        };
        // The waiting side may have given up; nothing to do then.
        let _ = tx.send(reply);
    }
}
