//! Lanes: one worker thread per sandbox lineage, and Promises settled from it.
//!
//! A lane owns the thread that runs a sandbox's vCPU. Every hypervisor
//! operation on that sandbox (build, load, compile, call, snapshot, restore,
//! unload) is queued on its lane, so operations on one sandbox never overlap
//! and always run on the same OS thread (KVM pays for a vCPU changing
//! threads), while different sandboxes run on different lanes in parallel.
//! The JavaScript thread never waits for a lane: it gets a Promise, settled
//! through a napi deferred when the work is done.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

use napi::Env;
use napi::bindgen_prelude::{Object, ToNapiValue};

use crate::error::Failure;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Stack of a lane thread: the vCPU and host-function callbacks run on it.
const LANE_STACK_SIZE: usize = 8 * 1024 * 1024;

/// A worker thread that runs queued jobs in order. The thread ends when the
/// last `Arc<Lane>` is dropped and its queue is empty.
pub(crate) struct Lane {
    tx: Sender<Job>,
    id: u64,
}

impl Lane {
    /// Starts a lane thread.
    pub(crate) fn start() -> Result<Arc<Self>, Failure> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = channel::<Job>();
        thread::Builder::new()
            .name("hyperlight-js-lane".into())
            .stack_size(LANE_STACK_SIZE)
            .spawn(move || {
                crate::host::enter_lane(id);
                while let Some(job) = next_job(&rx) {
                    job();
                }
            })
            .map_err(|e| Failure::internal(format!("cannot start a sandbox thread: {e}")))?;
        Ok(Arc::new(Self { tx, id }))
    }

    /// This lane's id (host calls waiting on it are abandoned by a kill).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Queues a job. If the lane's thread is gone (it never ends while a
    /// sender lives, so this is a safety net), the job runs on a new thread.
    pub(crate) fn submit(&self, job: impl FnOnce() + Send + 'static) {
        if let Err(returned) = self.tx.send(Box::new(job)) {
            let job = returned.0;
            let _ = thread::Builder::new()
                .stack_size(LANE_STACK_SIZE)
                .spawn(job);
        }
    }

    /// Runs `work` on the lane and returns a Promise for its outcome:
    /// resolved with `to_js(env, value)` on the JavaScript thread, or rejected
    /// with an `Error` carrying the failure's code. A panic in `work` becomes
    /// `ERR_INTERNAL`.
    pub(crate) fn promise<'env, T, V, W, C>(
        &self,
        env: &'env Env,
        work: W,
        to_js: C,
    ) -> napi::Result<Object<'env>>
    where
        T: Send + 'static,
        V: ToNapiValue + 'static,
        W: FnOnce() -> Result<T, Failure> + Send + 'static,
        C: FnOnce(&Env, T) -> napi::Result<V> + Send + 'static,
    {
        let (deferred, promise) = env.create_deferred::<V, Resolver<V>>()?;
        self.submit(move || {
            let outcome = catch_unwind(AssertUnwindSafe(work))
                .unwrap_or_else(|panic| Err(Failure::internal(panic_message(panic.as_ref()))));
            deferred.resolve(Box::new(move |env: Env| match outcome {
                Ok(value) => to_js(&env, value),
                Err(failure) => Err(failure.into_napi(&env)),
            }));
        });
        Ok(promise)
    }

    /// Starts a new lane, runs `work` on it, and resolves with
    /// `to_js(lane, value)`: how every new sandbox gets its own thread.
    pub(crate) fn promise_on_new<'env, T, V, W, C>(
        env: &'env Env,
        work: W,
        to_js: C,
    ) -> napi::Result<Object<'env>>
    where
        T: Send + 'static,
        V: ToNapiValue + 'static,
        W: FnOnce() -> Result<T, Failure> + Send + 'static,
        C: FnOnce(Arc<Lane>, T) -> napi::Result<V> + Send + 'static,
    {
        let lane = match Lane::start() {
            Ok(lane) => lane,
            Err(f) => return rejected(env, f),
        };
        let owner = lane.clone();
        lane.promise(env, work, move |_env, value| to_js(owner, value))
    }
}

/// How long a lane waits for its next job awake before it sleeps.
const LANE_SPIN: std::time::Duration = std::time::Duration::from_micros(200);

/// The next job: polled for a short while first, because the JavaScript
/// thread usually sends the next operation right after the last one settles
/// (a `restore` after a call, the next call after a `restore`), and a vCPU
/// thread that slept runs its next call slower: on kvm-pvm, 200 µs of
/// polling took the peers bench's call + restore from ~2.2 to ~1.8 ms, where
/// 50 µs did not cover the JavaScript side's turn. Polling yields the CPU.
fn next_job(rx: &std::sync::mpsc::Receiver<Job>) -> Option<Job> {
    let until = std::time::Instant::now() + LANE_SPIN;
    loop {
        match rx.try_recv() {
            Ok(job) => return Some(job),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => return None,
            Err(std::sync::mpsc::TryRecvError::Empty) if std::time::Instant::now() < until => {
                std::thread::yield_now();
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => return rx.recv().ok(),
        }
    }
}

type Resolver<V> = Box<dyn FnOnce(Env) -> napi::Result<V> + Send>;

/// A Promise already rejected with `failure` (async methods report argument
/// and state errors through their Promise, never by throwing).
pub(crate) fn rejected<'env>(env: &'env Env, failure: Failure) -> napi::Result<Object<'env>> {
    let (deferred, promise) = env.create_deferred::<(), Resolver<()>>()?;
    deferred.resolve(Box::new(move |env: Env| Err(failure.into_napi(&env))));
    Ok(promise)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("the binding panicked: {what}")
}

/// Where a sandbox state lives between operations: taken out by an operation
/// that consumes it, put back if that operation hands it back.
pub(crate) struct Slot<T>(Arc<Mutex<Option<T>>>);

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Slot<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(Arc::new(Mutex::new(Some(value))))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Option<T>> {
        // A panic while the lock was held cannot leave the Option half-written.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn take(&self) -> Option<T> {
        self.lock().take()
    }

    pub(crate) fn put(&self, value: T) {
        *self.lock() = Some(value);
    }
}

impl<T: Send + 'static> Slot<T> {
    /// Drops whatever state is left on the lane thread rather than on the
    /// JavaScript thread (used when the JavaScript object is collected).
    pub(crate) fn release_on(&self, lane: &Lane) {
        let slot = self.clone();
        lane.submit(move || drop(slot.take()));
    }
}
