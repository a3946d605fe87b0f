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
    /// Boxed: keeps `TransitionError<JSSandbox>` small.
    code: Box<Code>,
}

/// What `get_loaded_sandbox` compiles.
#[derive(Default)]
struct Code {
    handlers: BTreeMap<String, String>,
    /// Embedded ES modules by canonical name (`namespace:name`).
    modules: BTreeMap<String, String>,
}

impl std::fmt::Debug for JSSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JSSandbox")
            .field("handlers", &self.code.handlers.keys())
            .field("modules", &self.code.modules.keys())
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
            code: Box::default(),
        }
    }

    /// Adds (or replaces) the handler for `key`. The code must define
    /// `function handler(event)`; code with `import`/`export` is an ES
    /// module, where `handler` may also be exported or the default export.
    /// It is compiled by `get_loaded_sandbox`.
    pub fn add_handler(&mut self, key: &str, code: &str) -> Result<()> {
        check_key(key)?;
        self.code.handlers.insert(key.to_string(), code.to_string());
        Ok(())
    }

    /// Removes the handler for `key`; returns whether there was one.
    pub fn remove_handler(&mut self, key: &str) -> Result<bool> {
        check_key(key)?;
        Ok(self.code.handlers.remove(key).is_some())
    }

    /// Removes every handler.
    pub fn clear_handlers(&mut self) {
        self.code.handlers.clear();
    }

    /// The routing keys added so far.
    pub fn handler_keys(&self) -> impl Iterator<Item = &str> {
        self.code.handlers.keys().map(String::as_str)
    }

    /// Adds (or replaces) the embedded ES module `name`, which handlers and
    /// other modules import as `"name"` or `"user:name"`. Compiled by
    /// `get_loaded_sandbox`, in any order (modules may import each other and
    /// `host:<module>`).
    pub fn add_module(&mut self, name: &str, source: &str) -> Result<()> {
        self.add_module_in(DEFAULT_NAMESPACE, name, source)
    }

    /// Adds (or replaces) module `name` in `namespace`, imported as
    /// `"namespace:name"`. The namespaces `host` and `handler` are reserved.
    pub fn add_module_in(&mut self, namespace: &str, name: &str, source: &str) -> Result<()> {
        let canonical = module_name(namespace, name)?;
        self.code.modules.insert(canonical, source.to_string());
        Ok(())
    }

    /// Removes module `name` from `namespace` (`None`: `user`); returns
    /// whether there was one.
    pub fn remove_module(&mut self, name: &str, namespace: Option<&str>) -> Result<bool> {
        let canonical = module_name(namespace.unwrap_or(DEFAULT_NAMESPACE), name)?;
        Ok(self.code.modules.remove(&canonical).is_some())
    }

    /// Removes every module.
    pub fn clear_modules(&mut self) {
        self.code.modules.clear();
    }

    /// The modules added so far, as `namespace:name`.
    pub fn module_names(&self) -> impl Iterator<Item = &str> {
        self.code.modules.keys().map(String::as_str)
    }

    /// Compiles every handler in the VM. A handler that does not compile is
    /// named in an `ERR_COMPILE` error, and this sandbox comes back unchanged.
    #[instrument(name = "sandbox.get_loaded", skip_all, fields(handlers = self.code.handlers.len()), err(Display))]
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
        let keys = self.code.handlers.into_keys().collect();
        Ok(LoadedJSSandbox::new(self.sandbox, self.shared, keys))
    }

    fn compile_all(&mut self) -> Result<()> {
        // All sources first, so that modules may import each other in any order.
        for (name, source) in &self.code.modules {
            let frame: String = self
                .sandbox
                .call(guest_fn::ADD_MODULE, (name.clone(), source.clone()))
                .map_err(error_map::from_hyperlight)?;
            error_map::reply(name, frame)?;
        }
        for name in self.code.modules.keys() {
            let frame: String = self
                .sandbox
                .call(guest_fn::LOAD_MODULE, (name.clone(),))
                .map_err(error_map::from_hyperlight)?;
            error_map::reply(name, frame)?;
        }
        for (key, code) in &self.code.handlers {
            let frame: String = self
                .sandbox
                .call(guest_fn::REGISTER_HANDLER, (key.clone(), code.clone()))
                .map_err(error_map::from_hyperlight)?;
            error_map::reply(key, frame)?;
        }
        Ok(())
    }
}

/// The namespace of modules added without one.
const DEFAULT_NAMESPACE: &str = "user";

/// The canonical name of module `name` in `namespace`, after checking both.
fn module_name(namespace: &str, name: &str) -> Result<String> {
    for (what, part) in [("module name", name), ("module namespace", namespace)] {
        if part.is_empty() || part.contains(':') {
            return Err(Error::InvalidArgument(format!(
                "the {what} '{part}' must be non-empty and contain no ':'"
            )));
        }
    }
    if matches!(namespace, "host" | "handler") {
        return Err(Error::InvalidArgument(format!(
            "the module namespace '{namespace}' is reserved"
        )));
    }
    Ok(format!("{namespace}:{name}"))
}

pub(crate) fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument(
            "the routing key must not be empty".into(),
        ));
    }
    Ok(())
}
