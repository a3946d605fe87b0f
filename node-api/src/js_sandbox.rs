//! `JSSandbox`: add handlers (sync), then `getLoadedSandbox()`.

use std::sync::Arc;

use hyperlight_js_engine as engine;
use napi::Env;
use napi::bindgen_prelude::Object;
use napi_derive::napi;

use crate::error::Failure;
use crate::lane::{Lane, Slot, rejected};
use crate::loaded::LoadedJSSandbox;

/// A sandbox with the JavaScript runtime loaded, ready for handlers.
#[napi(js_name = "JSSandbox")]
pub struct JSSandbox {
    lane: Arc<Lane>,
    slot: Slot<engine::JSSandbox>,
}

impl JSSandbox {
    pub(crate) fn new(lane: Arc<Lane>, js: engine::JSSandbox) -> Self {
        Self {
            lane,
            slot: Slot::new(js),
        }
    }

    fn with<R>(
        &self,
        f: impl FnOnce(&mut engine::JSSandbox) -> Result<R, engine::Error>,
    ) -> napi::Result<R, String> {
        let mut guard = self.slot.lock();
        let js = guard
            .as_mut()
            .ok_or_else(|| Failure::consumed("JSSandbox"))?;
        f(js).map_err(|e| Failure::from(e).into())
    }
}

impl Drop for JSSandbox {
    fn drop(&mut self) {
        self.slot.release_on(&self.lane);
    }
}

#[napi]
impl JSSandbox {
    /// Adds (or replaces) the handler for routing key `name`. The code must
    /// define `function handler(event)`. Synchronous; compiled by
    /// `getLoadedSandbox()`.
    #[napi]
    pub fn add_handler(&self, name: String, code: String) -> napi::Result<(), String> {
        self.with(|js| js.add_handler(&name, &code))
    }

    /// Adds (or replaces) an embedded ES module that handlers and other
    /// modules import as `"<namespace>:<name>"` (`namespace` defaults to
    /// `user`; `"name"` alone also reaches a `user` module). Synchronous;
    /// compiled by `getLoadedSandbox()`.
    #[napi]
    pub fn add_module(
        &self,
        name: String,
        source: String,
        namespace: Option<String>,
    ) -> napi::Result<(), String> {
        self.with(|js| match namespace.as_deref() {
            Some(ns) => js.add_module_in(ns, &name, &source),
            None => js.add_module(&name, &source),
        })
    }

    /// Removes a module added by `addModule`; returns whether there was one.
    #[napi]
    pub fn remove_module(
        &self,
        name: String,
        namespace: Option<String>,
    ) -> napi::Result<bool, String> {
        self.with(|js| js.remove_module(&name, namespace.as_deref()))
    }

    /// Removes every module.
    #[napi]
    pub fn clear_modules(&self) -> napi::Result<(), String> {
        self.with(|js| {
            js.clear_modules();
            Ok(())
        })
    }

    /// Removes the handler for routing key `name`; returns whether there was one.
    #[napi]
    pub fn remove_handler(&self, name: String) -> napi::Result<bool, String> {
        self.with(|js| js.remove_handler(&name))
    }

    /// Removes every handler.
    #[napi]
    pub fn clear_handlers(&self) -> napi::Result<(), String> {
        self.with(|js| {
            js.clear_handlers();
            Ok(())
        })
    }

    /// Whether the sandbox is poisoned (upstream's API). A `JSSandbox` runs no
    /// handler calls, and every transition that could poison it hands back a
    /// usable state, so this is always `false`.
    #[napi(getter)]
    pub fn poisoned(&self) -> bool {
        false
    }

    /// The routing keys added so far.
    #[napi(getter)]
    pub fn handler_names(&self) -> napi::Result<Vec<String>, String> {
        self.with(|js| Ok(js.handler_keys().map(str::to_string).collect()))
    }

    /// Compiles the handlers in the VM: `Promise<LoadedJSSandbox>`. On
    /// success this object is consumed; if a handler does not compile
    /// (`ERR_COMPILE`) it stays usable, handlers unchanged.
    #[napi(ts_return_type = "Promise<LoadedJSSandbox>")]
    pub fn get_loaded_sandbox<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        let Some(js) = self.slot.take() else {
            return rejected(env, Failure::consumed("JSSandbox"));
        };
        let slot = self.slot.clone();
        let lane = self.lane.clone();
        self.lane.promise(
            env,
            move || match js.get_loaded_sandbox() {
                Ok(loaded) => Ok(loaded),
                Err(engine::TransitionError { error, state }) => {
                    slot.put(state);
                    Err(error.into())
                }
            },
            move |_env, loaded| Ok(LoadedJSSandbox::new(lane, loaded)),
        )
    }
}
