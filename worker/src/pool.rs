//! A pool of loaded sandboxes for one routing key.
//!
//! One sandbox is built and loaded (the expensive runtime init), its state is
//! snapshotted, and the rest of the pool is cloned from that snapshot. Every
//! sandbox goes back to the snapshot after each message, so no state leaks
//! between events and a sandbox killed by a timeout is healthy again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use hyperlight_js_config::HandlerConfig;
use hyperlight_js_engine::{CallOptions, CallStats, LoadedJSSandbox, Snapshot};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{Instrument, info, info_span, warn};

use crate::error::WorkerError;
use crate::metrics::Metrics;
use crate::snapshot_cache::{Lookup, SnapshotCache};

/// Loaded sandboxes of one key, all in the state of one snapshot.
pub struct Pool {
    key: String,
    snapshot: Snapshot,
    idle: Mutex<Vec<LoadedJSSandbox>>,
    permits: Arc<Semaphore>,
    size: usize,
    lost: AtomicUsize,
    metrics: Metrics,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("key", &self.key)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// What one call produced, and how the sandbox came back.
#[derive(Debug)]
pub struct CallResult {
    /// The handler's JSON result or the engine's error.
    pub result: Result<String, hyperlight_js_engine::Error>,
    /// Time inside the sandbox call.
    pub call_seconds: f64,
    /// The engine's statistics of the call, when it entered the VM.
    pub stats: Option<CallStats>,
}

impl Pool {
    /// Builds the pools of `handlers`, which must share one sandbox
    /// configuration (heap, stack, buffer sizes), on a blocking thread.
    ///
    /// The JavaScript runtime is initialised once for the group (the
    /// expensive part) and snapshotted without handlers. Each key then gets
    /// a sandbox cloned from that snapshot in which only its own handler is
    /// compiled (so a handler never sees another key's code; one that does
    /// not compile fails here, at start), a snapshot of that state, and
    /// `pool_size - 1` clones of it. With `[snapshots] dir`, a key whose
    /// snapshot is cached is loaded from there instead (no runtime init, no
    /// compile), and a key built here is stored there.
    pub async fn load_group(
        handlers: Vec<HandlerConfig>,
        metrics: Metrics,
    ) -> Result<Vec<Arc<Self>>, WorkerError> {
        let keys: Vec<String> = handlers.iter().map(|h| h.key.clone()).collect();
        let files: Vec<String> = handlers
            .iter()
            .map(|h| h.file.display().to_string())
            .collect();
        let span = info_span!("pool.load", keys = ?keys);
        let started = Instant::now();
        let group = handlers.clone();
        let group_metrics = metrics.clone();
        let built = tokio::task::spawn_blocking(move || {
            span.in_scope(|| build_group(&group, &group_metrics))
        })
        .await
        .map_err(|e| WorkerError::Pool {
            key: keys.join(", "),
            file: files.join(", "),
            source: hyperlight_js_engine::Error::Internal(format!("pool loader panicked: {e}")),
        })?;
        let built = built.map_err(|(index, source)| {
            let (key, file) = match index {
                Some(i) => (keys[i].clone(), files[i].clone()),
                None => (keys.join(", "), files.join(", ")),
            };
            WorkerError::Pool { key, file, source }
        })?;
        let mut pools = Vec::with_capacity(built.len());
        for (h, (snapshot, sandboxes)) in handlers.iter().zip(built) {
            let size = sandboxes.len();
            metrics
                .pool_size
                .with_label_values(&[h.key.as_str()])
                .set(size as i64);
            // Creates the series at 0; never resets it: on a hot reload the old
            // pool's in-flight calls still decrement the same gauge.
            let _ = metrics.pool_busy.with_label_values(&[h.key.as_str()]);
            info!(key = %h.key, size, elapsed_ms = started.elapsed().as_millis() as u64, "sandbox pool loaded");
            pools.push(Arc::new(Self {
                key: h.key.clone(),
                snapshot,
                idle: Mutex::new(sandboxes),
                permits: Arc::new(Semaphore::new(size)),
                size,
                lost: AtomicUsize::new(0),
                metrics: metrics.clone(),
            }));
        }
        Ok(pools)
    }

    /// Builds the pool of one key from its handler source (runtime init,
    /// compile, snapshot, clones) on a blocking thread: the hot-reload path
    /// ([`crate::reload`]), which builds a key's new pool beside its old one.
    /// A handler that does not compile fails here with `ERR_COMPILE`.
    pub async fn build(
        handler: &HandlerConfig,
        metrics: Metrics,
    ) -> Result<Arc<Self>, WorkerError> {
        let mut pools = Self::load_group(vec![handler.clone()], metrics).await?;
        pools.pop().ok_or_else(|| WorkerError::Pool {
            key: handler.key.clone(),
            file: handler.file.display().to_string(),
            source: hyperlight_js_engine::Error::Internal("no pool was built".into()),
        })
    }

    /// The routing key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Configured size.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Sandboxes that exist (busy or idle); lower than [`size`](Self::size)
    /// only after a sandbox could neither be restored nor rebuilt.
    pub fn capacity(&self) -> usize {
        self.size.saturating_sub(self.lost())
    }

    fn lost(&self) -> usize {
        self.lost.load(Ordering::SeqCst)
    }

    fn forget(&self, permit: OwnedSemaphorePermit) {
        permit.forget();
        self.lost.fetch_add(1, Ordering::SeqCst);
    }

    /// Waits for an idle sandbox, runs `event` through the handler, restores
    /// the sandbox to the snapshot and puts it back.
    pub async fn call(self: &Arc<Self>, event: String, options: CallOptions) -> CallResult {
        let lease = match self
            .acquire()
            .instrument(info_span!("pool.acquire", key = %self.key))
            .await
        {
            Some(l) => l,
            None => {
                return CallResult {
                    result: Err(hyperlight_js_engine::Error::Internal(format!(
                        "the sandbox pool of '{}' is closed",
                        self.key
                    ))),
                    call_seconds: 0.0,
                    stats: None,
                };
            }
        };
        let Lease { sandbox, permit } = lease;
        let pool = Arc::clone(self);
        let span = tracing::Span::current();
        let joined = tokio::task::spawn_blocking(move || {
            span.in_scope(|| {
                let mut sandbox = sandbox;
                let started = Instant::now();
                let result = sandbox.call_handler_json(&pool.key, &event, &options);
                let call_seconds = started.elapsed().as_secs_f64();
                let stats = sandbox.last_call_stats();
                let sandbox = pool.restore(sandbox);
                (
                    sandbox,
                    CallResult {
                        result,
                        call_seconds,
                        stats,
                    },
                )
            })
        })
        .await;
        let busy = self
            .metrics
            .pool_busy
            .with_label_values(&[self.key.as_str()]);
        busy.dec();
        match joined {
            Ok((sandbox, result)) => {
                self.give_back(sandbox, permit);
                result
            }
            Err(e) => {
                // The blocking task panicked and took the sandbox with it.
                self.metrics
                    .restores
                    .with_label_values(&[self.key.as_str(), "lost"])
                    .inc();
                self.forget(permit);
                warn!(key = %self.key, error = %e, "sandbox lost: the call panicked");
                CallResult {
                    result: Err(hyperlight_js_engine::Error::Internal(format!(
                        "the sandbox call panicked: {e}"
                    ))),
                    call_seconds: 0.0,
                    stats: None,
                }
            }
        }
    }

    async fn acquire(&self) -> Option<Lease> {
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok()?;
        let sandbox = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()?;
        self.metrics
            .pool_busy
            .with_label_values(&[self.key.as_str()])
            .inc();
        Some(Lease { sandbox, permit })
    }

    fn give_back(&self, sandbox: Option<LoadedJSSandbox>, permit: OwnedSemaphorePermit) {
        match sandbox {
            Some(sb) => {
                self.idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(sb);
                drop(permit);
            }
            None => self.forget(permit),
        }
    }

    /// Restores on the blocking thread; rebuilds from the snapshot if the
    /// restore fails; gives up (the pool shrinks) if that fails too.
    fn restore(&self, mut sandbox: LoadedJSSandbox) -> Option<LoadedJSSandbox> {
        let key = self.key.as_str();
        match sandbox.restore(&self.snapshot) {
            Ok(()) => {
                self.metrics.restores.with_label_values(&[key, "ok"]).inc();
                Some(sandbox)
            }
            Err(e) => {
                warn!(key, code = %e.code(), error = %e, "restore failed; rebuilding the sandbox from the snapshot");
                drop(sandbox);
                match LoadedJSSandbox::from_snapshot(&self.snapshot) {
                    Ok(sb) => {
                        self.metrics
                            .restores
                            .with_label_values(&[key, "rebuilt"])
                            .inc();
                        Some(sb)
                    }
                    Err(e) => {
                        self.metrics
                            .restores
                            .with_label_values(&[key, "lost"])
                            .inc();
                        tracing::error!(key, code = %e.code(), error = %e, "sandbox lost: cannot rebuild it");
                        None
                    }
                }
            }
        }
    }
}

struct Lease {
    sandbox: LoadedJSSandbox,
    permit: OwnedSemaphorePermit,
}

type Built = (Snapshot, Vec<LoadedJSSandbox>);

/// See [`Pool::load_group`]. An error carries the index of the handler it
/// belongs to (`None`: the shared runtime). A key whose snapshot is in the
/// [`SnapshotCache`] skips the runtime init and the compile; the runtime is
/// initialised only if some key of the group misses.
fn build_group(
    handlers: &[HandlerConfig],
    metrics: &Metrics,
) -> Result<Vec<Built>, (Option<usize>, hyperlight_js_engine::Error)> {
    let Some(first) = handlers.first() else {
        return Ok(Vec::new());
    };
    let shared = |e: hyperlight_js_engine::Error| (None, e);
    // (the runtime sandbox, not yet used; its snapshot), built on first miss.
    let mut runtime: Option<(Option<LoadedJSSandbox>, Snapshot)> = None;
    let mut built = Vec::with_capacity(handlers.len());
    for (i, h) in handlers.iter().enumerate() {
        let at = |e: hyperlight_js_engine::Error| (Some(i), e);
        let cache = SnapshotCache::of(h);
        let lookup = cache.as_ref().map(|c| c.load(h));
        if let Some(l) = &lookup {
            metrics
                .snapshot_cache
                .with_label_values(&[h.key.as_str(), l.label()])
                .inc();
            info!(key = %h.key, outcome = l.label(), "snapshot cache lookup");
        }
        // The sandbox the snapshot was taken in serves as the pool's first.
        let (snapshot, first_sandbox) = match lookup {
            Some(Lookup::Hit(snapshot)) => (snapshot, None),
            _ => {
                if runtime.is_none() {
                    let mut sb = SnapshotCache::builder(first)
                        .build()
                        .map_err(shared)?
                        .load_runtime()
                        .map_err(shared)?
                        .get_loaded_sandbox()
                        .map_err(|e| shared(e.into()))?;
                    let snap = sb.snapshot().map_err(shared)?;
                    runtime = Some((Some(sb), snap));
                }
                let (spare, runtime_snapshot) = runtime.as_mut().ok_or_else(|| {
                    shared(hyperlight_js_engine::Error::Internal("no runtime".into()))
                })?;
                let base = match spare.take() {
                    Some(sb) => sb,
                    None => LoadedJSSandbox::from_snapshot(runtime_snapshot).map_err(at)?,
                };
                let mut js = base.unload().map_err(|e| at(e.into()))?;
                js.add_handler(&h.key, &h.source).map_err(at)?;
                let mut loaded = js.get_loaded_sandbox().map_err(|e| at(e.into()))?;
                let snapshot = loaded.snapshot().map_err(at)?;
                if let Some(c) = &cache
                    && c.store(h, &snapshot)
                {
                    metrics
                        .snapshot_cache
                        .with_label_values(&[h.key.as_str(), "stored"])
                        .inc();
                }
                (snapshot, Some(loaded))
            }
        };
        let mut sandboxes = Vec::with_capacity(h.pool_size);
        sandboxes.extend(first_sandbox);
        while sandboxes.len() < h.pool_size {
            sandboxes.push(LoadedJSSandbox::from_snapshot(&snapshot).map_err(at)?);
        }
        built.push((snapshot, sandboxes));
    }
    Ok(built)
}
