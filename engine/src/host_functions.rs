//! Host functions: the ones every sandbox gets (clock, console) and the
//! user-registered ones that handlers call as `host.<module>.<function>(...)`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use hyperlight_js_abi::{GuestErrorKind, console_level, encode_err, encode_ok, host_fn};
use serde_json::Value;

/// A user host function: JSON arguments (an array) in, a JSON value or an
/// error message out. It runs on the thread that runs the sandbox's vCPU,
/// while the handler waits for it.
pub type HostFn = Arc<dyn Fn(Value) -> Result<Value, String> + Send + Sync>;

/// Host functions by module and name. Shared by a sandbox and every sandbox
/// built from its snapshots.
#[derive(Clone, Default)]
pub(crate) struct HostRegistry(Arc<RwLock<BTreeMap<(String, String), HostFn>>>);

impl HostRegistry {
    pub(crate) fn register(&self, module: &str, function: &str, f: HostFn) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((module.to_string(), function.to_string()), f);
    }

    /// `module.function` names, one per line, for the guest's `host` object.
    pub(crate) fn manifest(&self) -> String {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        map.keys().map(|(m, f)| format!("{m}.{f}\n")).collect()
    }

    fn call(&self, module: &str, function: &str, args_json: &str) -> String {
        let f = {
            let map = self.0.read().unwrap_or_else(|p| p.into_inner());
            map.get(&(module.to_string(), function.to_string()))
                .cloned()
        };
        let Some(f) = f else {
            return encode_err(GuestErrorKind::UnknownHandler, "no such host function", "");
        };
        let args: Value = match serde_json::from_str(args_json) {
            Ok(v) => v,
            Err(e) => return encode_err(GuestErrorKind::Internal, &e.to_string(), ""),
        };
        let span = tracing::debug_span!("host_function", module, function);
        let _entered = span.enter();
        match f(args) {
            Ok(v) => encode_ok(&v.to_string()),
            Err(message) => encode_err(GuestErrorKind::HandlerThrew, &message, ""),
        }
    }
}

/// Registers the built-in host functions and the user-function dispatcher.
pub(crate) fn install(
    builder: hyperlight_host::SandboxBuilder,
    registry: &HostRegistry,
) -> hyperlight_host::SandboxBuilder {
    let registry = registry.clone();
    builder
        .host_function(host_fn::NOW_MICROS, || -> u64 {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64)
        })
        .host_function(host_fn::CONSOLE, |level: i32, line: String| -> i32 {
            match level {
                console_level::ERROR => tracing::error!(target: "hyperlight_js::console", "{line}"),
                console_level::WARN => tracing::warn!(target: "hyperlight_js::console", "{line}"),
                console_level::DEBUG => tracing::debug!(target: "hyperlight_js::console", "{line}"),
                _ => tracing::info!(target: "hyperlight_js::console", "{line}"),
            }
            0
        })
        .host_function(
            host_fn::CALL,
            move |module: String, function: String, args: String| -> String {
                registry.call(&module, &function, &args)
            },
        )
        .host_print(|s: String| -> i32 {
            tracing::info!(target: "hyperlight_js::guest", "{s}");
            s.len() as i32
        })
}
