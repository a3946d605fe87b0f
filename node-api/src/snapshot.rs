//! `Snapshot`: a point-in-time copy of a loaded sandbox, in memory or loaded
//! from disk; `save()`, `Snapshot.load()`, `Snapshot.loadUnverified()`.

use hyperlight_js_engine as engine;
use napi::Env;
use napi::bindgen_prelude::Object;
use napi_derive::napi;

use crate::error::Failure;
use crate::lane::Lane;

/// What a JavaScript `Snapshot` holds.
#[derive(Clone)]
pub(crate) enum Inner {
    /// From `snapshot()`: restores into its lineage, builds twins.
    Live(engine::Snapshot),
    /// From `Snapshot.load()`: becomes sandboxes through `buildFromSnapshot`.
    Persisted(engine::PersistedSnapshot),
}

/// An opaque handle to a point-in-time snapshot of a sandbox's state. Pass it
/// to `restore()` of the sandbox it came from, or to
/// `LoadedJSSandbox.fromSnapshot()` for a new sandbox in that state; `save()`
/// writes it to disk, `Snapshot.load()` reads it back.
#[napi]
pub struct Snapshot {
    inner: Inner,
}

impl Snapshot {
    pub(crate) fn new(inner: engine::Snapshot) -> Self {
        Self {
            inner: Inner::Live(inner),
        }
    }

    /// The in-memory snapshot, or `ERR_INVALID_ARG` for one loaded from disk.
    pub(crate) fn inner(&self) -> Result<&engine::Snapshot, Failure> {
        match &self.inner {
            Inner::Live(s) => Ok(s),
            Inner::Persisted(_) => Err(Failure::invalid_arg(
                "a snapshot loaded from disk becomes sandboxes through SandboxBuilder.buildFromSnapshot()",
            )),
        }
    }

    /// The snapshot loaded from disk, or `ERR_INVALID_ARG` for an in-memory one.
    pub(crate) fn persisted(&self) -> Result<&engine::PersistedSnapshot, Failure> {
        match &self.inner {
            Inner::Persisted(p) => Ok(p),
            Inner::Live(_) => Err(Failure::invalid_arg(
                "buildFromSnapshot() takes a snapshot from Snapshot.load(); restore an in-memory one with restore() or LoadedJSSandbox.fromSnapshot()",
            )),
        }
    }

    fn load<'env>(
        env: &'env Env,
        dir: String,
        reference: String,
        verify: bool,
    ) -> napi::Result<Object<'env>> {
        Lane::promise_on_new(
            env,
            move || {
                let loaded = if verify {
                    engine::Snapshot::load(&dir, &reference)
                } else {
                    engine::Snapshot::load_unverified(&dir, &reference)
                };
                loaded.map_err(Failure::from)
            },
            |_lane, p| {
                Ok(Snapshot {
                    inner: Inner::Persisted(p),
                })
            },
        )
    }
}

#[napi]
impl Snapshot {
    /// Saves the snapshot into the OCI image layout at `dir` (created if
    /// absent) under `tag`: `Promise<string>`, the digest (`sha256:…`).
    #[napi(ts_return_type = "Promise<string>")]
    pub fn save<'env>(
        &self,
        env: &'env Env,
        dir: String,
        tag: String,
    ) -> napi::Result<Object<'env>> {
        let inner = self.inner.clone();
        Lane::promise_on_new(
            env,
            move || {
                match &inner {
                    Inner::Live(s) => s.save(&dir, &tag),
                    Inner::Persisted(p) => p.save(&dir, &tag),
                }
                .map_err(Failure::from)
            },
            |_lane, digest| Ok(digest),
        )
    }

    /// Loads a saved snapshot by tag or digest, checking every blob against
    /// its digest: `Promise<Snapshot>`.
    #[napi(js_name = "_load", ts_return_type = "Promise<Snapshot>")]
    pub fn load_checked<'env>(
        env: &'env Env,
        dir: String,
        reference: String,
    ) -> napi::Result<Object<'env>> {
        Self::load(env, dir, reference, true)
    }

    /// Like `load` without the digest checks, for trusted local layouts.
    #[napi(js_name = "_loadUnverified", ts_return_type = "Promise<Snapshot>")]
    pub fn load_unverified<'env>(
        env: &'env Env,
        dir: String,
        reference: String,
    ) -> napi::Result<Object<'env>> {
        Self::load(env, dir, reference, false)
    }

    /// The digest it was loaded as; `null` for an in-memory snapshot.
    #[napi(getter)]
    pub fn digest(&self) -> Option<String> {
        match &self.inner {
            Inner::Persisted(p) => Some(p.digest().to_string()),
            Inner::Live(_) => None,
        }
    }

    /// The routing keys of its handlers.
    #[napi(getter)]
    pub fn handler_names(&self) -> Vec<String> {
        match &self.inner {
            Inner::Persisted(p) => p.handler_keys().map(str::to_string).collect(),
            Inner::Live(s) => s.handler_keys().map(str::to_string).collect(),
        }
    }

    /// For a snapshot loaded from disk, the host functions
    /// (`module.function`) to register again before restoring; empty otherwise.
    #[napi(getter)]
    pub fn required_host_functions(&self) -> Vec<String> {
        match &self.inner {
            Inner::Persisted(p) => p.required_host_functions().map(str::to_string).collect(),
            Inner::Live(_) => Vec::new(),
        }
    }
}
