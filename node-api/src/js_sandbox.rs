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
