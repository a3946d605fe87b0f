//! `SandboxRestorer`: a snapshot loaded from disk waiting for its host
//! functions, then `restoreLoadedSandbox()` / `restoreJsSandbox()`.

use std::sync::Arc;

use hyperlight_js_engine as engine;
use napi::Env;
use napi::bindgen_prelude::Object;
use napi_derive::napi;

use crate::error::Failure;
use crate::host::{HostModule, Target};
use crate::js_sandbox::JSSandbox;
use crate::lane::{Lane, Slot, rejected};
use crate::loaded::LoadedJSSandbox;

/// From `SandboxBuilder.buildFromSnapshot(snapshot)`: register the host
/// functions the snapshot needs again, then restore a sandbox from it.
#[napi(js_name = "SandboxRestorer")]
pub struct SandboxRestorer {
    lane: Arc<Lane>,
    slot: Slot<engine::SandboxRestorer>,
}

impl SandboxRestorer {
    pub(crate) fn new(lane: Arc<Lane>, restorer: engine::SandboxRestorer) -> Self {
        Self {
            lane,
            slot: Slot::new(restorer),
        }
    }

    /// Runs `restore` on the lane; on failure the restorer is handed back
    /// (so a missing host function can be registered and the call retried).
    fn restore<'env, T, V>(
        &self,
        env: &'env Env,
        restore: fn(
            engine::SandboxRestorer,
        ) -> Result<T, engine::TransitionError<engine::SandboxRestorer>>,
        to_js: fn(Arc<Lane>, T) -> V,
    ) -> napi::Result<Object<'env>>
    where
        T: Send + 'static,
        V: napi::bindgen_prelude::ToNapiValue + 'static,
    {
        let Some(restorer) = self.slot.take() else {
            return rejected(env, Failure::consumed("SandboxRestorer"));
        };
        let slot = self.slot.clone();
        let lane = self.lane.clone();
        self.lane.promise(
            env,
            move || {
                restore(restorer).map_err(|engine::TransitionError { error, state }| {
                    slot.put(state);
                    Failure::from(error)
                })
            },
            move |_env, value| Ok(to_js(lane, value)),
        )
    }
}

impl Drop for SandboxRestorer {
    fn drop(&mut self) {
        self.slot.release_on(&self.lane);
    }
}

#[napi]
impl SandboxRestorer {
    /// The host module `name`, as on `ProtoJSSandbox`: register on it every
    /// function the snapshot's handlers use (`snapshot.requiredHostFunctions`).
    #[napi]
    pub fn host_module(&self, name: String) -> napi::Result<HostModule, String> {
        if self.slot.lock().is_none() {
            return Err(Failure::consumed("SandboxRestorer").into());
        }
        if name.is_empty() {
            return Err(Failure::invalid_arg("the host module name must not be empty").into());
        }
        Ok(HostModule::new(name, Target::Restorer(self.slot.clone())))
    }

    /// The required host functions not registered yet (`module.function`).
    #[napi(getter)]
    pub fn missing_host_functions(&self) -> napi::Result<Vec<String>, String> {
        let guard = self.slot.lock();
        let r = guard
            .as_ref()
            .ok_or_else(|| Failure::consumed("SandboxRestorer"))?;
        Ok(r.missing_host_functions())
    }

    /// A sandbox in the saved state (same handlers, same JavaScript state):
    /// `Promise<LoadedJSSandbox>`. Consumes this object unless it fails.
    #[napi(ts_return_type = "Promise<LoadedJSSandbox>")]
    pub fn restore_loaded_sandbox<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        self.restore(
            env,
            engine::SandboxRestorer::restore_loaded_sandbox,
            LoadedJSSandbox::new,
        )
    }

    /// A sandbox with the saved runtime and no handlers: `Promise<JSSandbox>`.
    /// Consumes this object unless it fails.
    #[napi(ts_return_type = "Promise<JSSandbox>")]
    pub fn restore_js_sandbox<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        self.restore(
            env,
            engine::SandboxRestorer::restore_js_sandbox,
            JSSandbox::new,
        )
    }
}
