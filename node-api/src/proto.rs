//! `ProtoJSSandbox`: register host functions, then `loadRuntime()`.

use std::sync::Arc;

use hyperlight_js_engine as engine;
use napi::Env;
use napi::bindgen_prelude::Object;
use napi_derive::napi;

use crate::error::Failure;
use crate::host::{HostModule, Target};
use crate::js_sandbox::JSSandbox;
use crate::lane::{Lane, Slot, rejected};

/// A proto sandbox ready to load the JavaScript runtime.
#[napi(js_name = "ProtoJSSandbox")]
pub struct ProtoJSSandbox {
    lane: Arc<Lane>,
    slot: Slot<engine::ProtoJSSandbox>,
}

impl ProtoJSSandbox {
    pub(crate) fn new(lane: Arc<Lane>, proto: engine::ProtoJSSandbox) -> Self {
        Self {
            lane,
            slot: Slot::new(proto),
        }
    }
}

impl Drop for ProtoJSSandbox {
    fn drop(&mut self) {
        self.slot.release_on(&self.lane);
    }
}

#[napi]
impl ProtoJSSandbox {
    /// The host module `name`: functions registered on it are callable by
    /// handlers as `host.<name>.<function>(...)`.
    #[napi]
    pub fn host_module(&self, name: String) -> napi::Result<HostModule, String> {
        if self.slot.lock().is_none() {
            return Err(Failure::consumed("ProtoJSSandbox").into());
        }
        if name.is_empty() {
            return Err(Failure::invalid_arg("the host module name must not be empty").into());
        }
        Ok(HostModule::new(name, Target::Proto(self.slot.clone())))
    }

    /// Loads the JavaScript runtime: `Promise<JSSandbox>`. Consumes this object.
    #[napi(ts_return_type = "Promise<JSSandbox>")]
    pub fn load_runtime<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        let Some(proto) = self.slot.take() else {
            return rejected(env, Failure::consumed("ProtoJSSandbox"));
        };
        let lane = self.lane.clone();
        self.lane.promise(
            env,
            move || proto.load_runtime().map_err(Failure::from),
            move |_env, js| Ok(JSSandbox::new(lane, js)),
        )
    }
}
