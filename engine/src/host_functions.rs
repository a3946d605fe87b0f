//! Host functions: the ones every sandbox gets (clock, console) and the
//! user-registered ones that handlers call as `host.<module>.<function>(...)`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use hyperlight_js_abi::{GuestErrorKind, console_level, encode_err, encode_ok, host_fn};
use serde_json::Value;

use crate::monitor::CancelToken;

/// A user host function: JSON arguments (an array) in, a JSON value or an
/// error message out. During a handler call it runs on a helper thread while
/// the vCPU thread waits for it, so that a stop (monitor or kill) ends the
/// wait at once; a stopped call's host function finishes on its own and its
/// result is dropped.
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
        self.names().iter().map(|n| format!("{n}\n")).collect()
    }

    /// The registered functions as `module.function`, sorted.
    pub(crate) fn names(&self) -> Vec<String> {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        map.keys().map(|(m, f)| format!("{m}.{f}")).collect()
    }

    /// Checks the names and registers `f` as `host.<module>.<function>`.
    pub(crate) fn register_checked(
        &self,
        module: &str,
        function: &str,
        f: HostFn,
    ) -> crate::error::Result<()> {
        for (what, name) in [("module", module), ("function", function)] {
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(crate::error::Error::InvalidArgument(format!(
                    "host {what} name '{name}' must be a JavaScript identifier"
                )));
            }
        }
        self.register(module, function, f);
        Ok(())
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
        let token = CALL.with(|c| c.borrow().as_ref().map(|c| c.token.clone()));
        let outcome = match token {
            Some(token) => run_cancellable(&token, span, move || f(args)),
            // Outside a handler call (handler compilation): nothing can stop it.
            None => Some(span.in_scope(|| f(args))),
        };
        match outcome {
            Some(Ok(v)) => encode_ok(&v.to_string()),
            Some(Err(message)) => encode_err(GuestErrorKind::HandlerThrew, &message, ""),
            None => encode_err(
                GuestErrorKind::HandlerThrew,
                &format!("host function {module}.{function} abandoned: the call was stopped"),
                "",
            ),
        }
    }
}

/// Runs `f` on a helper thread and waits for it or for a stop (`None`).
fn run_cancellable(
    token: &CancelToken,
    span: tracing::Span,
    f: impl FnOnce() -> Result<Value, String> + Send + 'static,
) -> Option<Result<Value, String>> {
    type Slot = Arc<Mutex<Option<Result<Value, String>>>>;
    let slot: Slot = Arc::default();
    let (out, wake) = (slot.clone(), token.clone());
    let spawned = std::thread::Builder::new()
        .name("hyperlight-js-host-call".into())
        .spawn(move || {
            let r = span.in_scope(f);
            *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
            wake.notify();
        });
    if let Err(e) = spawned {
        return Some(Err(format!("cannot start the host function's thread: {e}")));
    }
    token.wait_for(|| slot.lock().unwrap_or_else(|p| p.into_inner()).take())
}

/// Console limits for one call, and what the call has written so far.
struct ConsoleBudget {
    max_bytes: u64,
    max_lines: u64,
    bytes: u64,
    lines: u64,
    truncated: bool,
}

impl ConsoleBudget {
    /// Counts `line` against the budget; `false`: drop it.
    fn admit(&mut self, line: &str) -> bool {
        if self.truncated {
            return false;
        }
        let lines = 1 + line.bytes().filter(|b| *b == b'\n').count() as u64;
        let bytes = line.len() as u64;
        if self.lines + lines > self.max_lines || self.bytes + bytes > self.max_bytes {
            self.truncated = true;
            return false;
        }
        self.lines += lines;
        self.bytes += bytes;
        true
    }
}

/// What the host functions need to know about the handler call running on
/// this thread (the vCPU runs on the caller's thread, and so do they).
struct CallContext {
    token: CancelToken,
    console: ConsoleBudget,
}

thread_local! {
    static CALL: RefCell<Option<CallContext>> = const { RefCell::new(None) };
}

/// Marks a handler call as running on this thread until dropped: host
/// functions become cancellable through `token`, and console output is
/// counted against the limits.
pub(crate) struct CallScope(());

impl CallScope {
    pub(crate) fn enter(token: CancelToken, max_bytes: u64, max_lines: u64) -> Self {
        let console = ConsoleBudget {
            max_bytes,
            max_lines,
            bytes: 0,
            lines: 0,
            truncated: false,
        };
        CALL.with(|c| *c.borrow_mut() = Some(CallContext { token, console }));
        Self(())
    }
}

impl Drop for CallScope {
    fn drop(&mut self) {
        CALL.with(|c| c.borrow_mut().take());
    }
}

/// Whether `line` may be logged; logs the one truncation notice of the call.
fn console_admit(line: &str) -> bool {
    CALL.with(|c| {
        let mut c = c.borrow_mut();
        let Some(budget) = c.as_mut().map(|c| &mut c.console) else {
            return true;
        };
        let was = budget.truncated;
        if budget.admit(line) {
            return true;
        }
        if !was {
            tracing::warn!(
                target: "hyperlight_js::console",
                "console output truncated: over {} bytes or {} lines in this call; the rest is dropped",
                budget.max_bytes,
                budget.max_lines
            );
        }
        false
    })
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
            if !console_admit(&line) {
                return 0;
            }
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
