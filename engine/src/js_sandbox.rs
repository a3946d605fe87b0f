//! `JSSandbox`: the JavaScript runtime is loaded; handlers are being collected.

use std::collections::BTreeMap;
use std::sync::Arc;

use hyperlight_host::Sandbox;
use hyperlight_host::sandbox::snapshot::Snapshot as HlSnapshot;
use hyperlight_js_abi::guest_fn;
use tracing::instrument;

use crate::builder::SandboxConfig;
use crate::error::{Error, Result, TransitionError};
use crate::error_map;
use crate::host_functions::HostRegistry;
use crate::loaded::{LoadedJSSandbox, Shared};

/// A sandbox with the JavaScript runtime loaded. Add handlers by routing key,
/// then [`get_loaded_sandbox`](Self::get_loaded_sandbox) compiles them in the VM.
pub struct JSSandbox {
    /// Boxed: hyperlight's sandbox is ~2 KB and every transition moves it.
    sandbox: Box<Sandbox>,
    shared: Arc<Shared>,
    handlers: BTreeMap<String, String>,
}

impl std::fmt::Debug for JSSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JSSandbox")
            .field("handlers", &self.handlers.keys())
            .finish_non_exhaustive()
    }
}

impl JSSandbox {
    pub(crate) fn new(
        sandbox: Box<Sandbox>,
        config: SandboxConfig,
        registry: HostRegistry,
        runtime_snapshot: Arc<HlSnapshot>,
    ) -> Self {
        let shared = Arc::new(Shared {
            config,
            registry,
            runtime_snapshot,
        });
        Self::from_parts(sandbox, shared)
    }

    pub(crate) fn from_parts(sandbox: Box<Sandbox>, shared: Arc<Shared>) -> Self {
        Self {
            sandbox,
            shared,
            handlers: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) the handler for `key`. The code must define
    /// `function handler(event)`; it is compiled by `get_loaded_sandbox`.
    pub fn add_handler(&mut self, key: &str, code: &str) -> Result<()> {
        check_key(key)?;
        self.handlers.insert(key.to_string(), code.to_string());
        Ok(())
    }

    /// Removes the handler for `key`; returns whether there was one.
    pub fn remove_handler(&mut self, key: &str) -> Result<bool> {
        check_key(key)?;
        Ok(self.handlers.remove(key).is_some())
    }

    /// Removes every handler.
    pub fn clear_handlers(&mut self) {
        self.handlers.clear();
    }

    /// The routing keys added so far.
    pub fn handler_keys(&self) -> impl Iterator<Item = &str> {
        self.handlers.keys().map(String::as_str)
    }

    /// Compiles every handler in the VM. A handler that does not compile is
    /// named in an `ERR_COMPILE` error, and this sandbox comes back unchanged.
    #[instrument(name = "sandbox.get_loaded", skip_all, fields(handlers = self.handlers.len()), err(Display))]
    pub fn get_loaded_sandbox(mut self) -> Result<LoadedJSSandbox, TransitionError<JSSandbox>> {
        if let Err(error) = self.compile_all() {
            // Drop whatever was compiled before the failure.
            return match self.sandbox.restore(self.shared.runtime_snapshot.clone()) {
                Ok(()) => Err(TransitionError { error, state: self }),
                Err(e) => Err(TransitionError {
                    error: error_map::from_hyperlight(e),
                    state: self,
                }),
            };
        }
        let keys = self.handlers.into_keys().collect();
        Ok(LoadedJSSandbox::new(self.sandbox, self.shared, keys))
    }

    fn compile_all(&mut self) -> Result<()> {
        for (key, code) in &self.handlers {
            let frame: String = self
                .sandbox
                .call(guest_fn::REGISTER_HANDLER, (key.clone(), code.clone()))
                .map_err(error_map::from_hyperlight)?;
            error_map::reply(key, frame)?;
        }
        Ok(())
    }
}

pub(crate) fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument(
            "the routing key must not be empty".into(),
        ));
    }
    Ok(())
}
