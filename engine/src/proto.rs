//! `ProtoJSSandbox`: a running micro-VM whose JavaScript runtime is not loaded yet.

use std::sync::Arc;

use hyperlight_host::Sandbox;
use hyperlight_js_abi::guest_fn;
use serde_json::Value;
use tracing::instrument;

use crate::builder::SandboxConfig;
use crate::error::Result;
use crate::error_map;
use crate::host_functions::{HostFn, HostRegistry};
use crate::js_sandbox::JSSandbox;

/// A micro-VM with the guest started. Register host functions here, then
/// [`load_runtime`](Self::load_runtime).
pub struct ProtoJSSandbox {
    /// Boxed: hyperlight's sandbox is ~2 KB and every transition moves it.
    sandbox: Box<Sandbox>,
    config: SandboxConfig,
    registry: HostRegistry,
}

impl std::fmt::Debug for ProtoJSSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProtoJSSandbox")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ProtoJSSandbox {
    pub(crate) fn new(
        sandbox: Box<Sandbox>,
        config: SandboxConfig,
        registry: HostRegistry,
    ) -> Self {
        Self {
            sandbox,
            config,
            registry,
        }
    }

    /// Registers a host function that handlers call as
    /// `host.<module>.<function>(...args)`. It receives the arguments as a
    /// JSON array and returns a JSON value, or an error message that the
    /// handler sees as a thrown `Error`. It runs on the vCPU thread while the
    /// handler waits.
    pub fn register_host_function(
        &mut self,
        module: &str,
        function: &str,
        f: impl Fn(Value) -> std::result::Result<Value, String> + Send + Sync + 'static,
    ) -> Result<()> {
        let f: HostFn = Arc::new(f);
        self.registry.register_checked(module, function, f)
    }

    /// Loads the JavaScript runtime (QuickJS and its globals) into the VM.
    #[instrument(name = "sandbox.load_runtime", skip_all, err(Display))]
    pub fn load_runtime(mut self) -> Result<JSSandbox> {
        let c = &self.config;
        let frame: String = self
            .sandbox
            .call(
                guest_fn::LOAD_RUNTIME,
                (
                    c.js_stack_limit(),
                    c.js_memory_limit(),
                    c.output_buffer_size,
                    self.registry.manifest(),
                    c.guest_mode == crate::GuestMode::User,
                ),
            )
            .map_err(error_map::from_hyperlight)?;
        error_map::reply("", frame)?;
        let runtime_snapshot = self
            .sandbox
            .snapshot()
            .map_err(error_map::from_hyperlight)?;
        Ok(JSSandbox::new(
            self.sandbox,
            self.config,
            self.registry,
            runtime_snapshot,
        ))
    }
}
