//! Handlers by routing key: compile, call, and turn JS outcomes into replies.

use alloc::format;
use alloc::string::{String, ToString};

use hyperlight_js_abi::{GuestErrorKind, encode_err_with_detail, encode_ok};
use rquickjs::promise::PromiseState;
use rquickjs::{Ctx, Function, Persistent, Promise, Value};

use crate::runtime::{BYTES_TAG, Js, with_js};

// Declared here rather than in main.rs: modules are part of compiling handlers.
#[path = "modules.rs"]
pub mod modules;

/// A failure on its way to the host.
pub struct Failure {
    kind: GuestErrorKind,
    message: String,
    stack: String,
    /// The frame's detail field (a `RetryError`'s delay).
    detail: Option<String>,
}

impl Failure {
    /// A failure with no JS stack.
    pub fn new(kind: GuestErrorKind, message: &str) -> Self {
        Self {
            kind,
            message: message.to_string(),
            stack: String::new(),
            detail: None,
        }
    }

    /// The framed reply for this failure.
    pub fn encode(&self) -> String {
        encode_err_with_detail(
            self.kind,
            &self.message,
            &self.stack,
            self.detail.as_deref(),
        )
    }

    /// Gives a thrown error (a plain throw or a `RetryError`) another kind,
    /// for throws that are not the handler's answer to an event.
    fn rethrown_as(&mut self, kind: GuestErrorKind) {
        if matches!(
            self.kind,
            GuestErrorKind::HandlerThrew | GuestErrorKind::Retry
        ) {
            self.kind = kind;
            self.detail = None;
        }
    }
}

/// The hidden global holding [`RETRY_PRELUDE`]'s check.
const RETRY_CHECK: &str = "__hl_retry_delay";

/// `RetryError`, and a check that closes over the class as loaded: a handler
/// may replace the writable global, but only real `RetryError`s ask for a
/// retry. The check gives `null` for anything else, `undefined` when no
/// `delayMs` was given, else the delay as a number's text (non-numbers are
/// `NaN`). It never throws (a Proxy or a getter could).
const RETRY_PRELUDE: &str = r#"(function () {
  class RetryError extends Error {
    constructor(message, options) {
      super(message, options);
      this.delayMs = options?.delayMs;
    }
  }
  Object.defineProperty(RetryError.prototype, 'name', { value: 'RetryError', writable: true, configurable: true });
  Object.defineProperty(globalThis, 'RetryError', { value: RetryError, writable: true, configurable: true });
  Object.defineProperty(globalThis, 'CHECK', { value: (e) => {
    try { if (!(e instanceof RetryError)) return null; } catch (_) { return null; }
    let d;
    try { d = e.delayMs; } catch (_) { return 'NaN'; }
    return d === undefined ? undefined : (typeof d === 'number' ? String(d) : 'NaN');
  } });
})"#;

/// Installs the global `RetryError` class (called once, at runtime load).
pub fn install_retry_error(ctx: &Ctx<'_>) -> rquickjs::Result<()> {
    let install: Function<'_> = ctx.eval(RETRY_PRELUDE.replace("CHECK", RETRY_CHECK))?;
    install.call::<_, ()>(())
}

/// `Some(delay)` when `thrown` is a `RetryError` of the class installed at load.
fn retry_delay<'js>(ctx: &Ctx<'js>, thrown: &Value<'js>) -> Option<Option<String>> {
    let check: Function<'js> = ctx.globals().get(RETRY_CHECK).ok()?;
    match check.call::<_, Value<'js>>((thrown.clone(),)) {
        Ok(v) if v.is_null() => None,
        Ok(v) if v.is_undefined() => Some(None),
        Ok(v) => Some(Some(
            v.as_string()
                .and_then(|s| s.to_string().ok())
                .unwrap_or_else(|| "NaN".to_string()),
        )),
        Err(_) => {
            // Only an out-of-memory gets here; report the throw as it was.
            let _ = ctx.catch();
            None
        }
    }
}

/// Appended to a handler module: gives the guest its `handler`, exported or
/// not (a later line, so that every declaration has run).
const MODULE_EPILOGUE: &str =
    "\n;export const __hl_handler = typeof handler === 'function' ? handler : undefined;\n";

/// Stores an embedded module's source under its canonical name; modules are
/// compiled by [`load_module`] once all are stored, so that they may import
/// each other in any order.
pub fn add_module(name: &str, source: &str) -> Result<(), Failure> {
    with_js(|_| {
        modules::add(name, source);
        Ok(())
    })
}

/// Compiles and evaluates the embedded module `name` (canonical), with
/// everything it imports.
pub fn load_module(name: &str) -> Result<(), Failure> {
    with_js(|js| {
        js.ctx.with(|ctx| {
            let promise =
                rquickjs::Module::import(&ctx, name).map_err(|e| failure_from(&ctx, e))?;
            settle(&ctx, promise.into_value())
                .map(|_| ())
                .map_err(|f| load_failure(f, &modules::describe(name)))
        })
    })
}

/// A failure while a handler or module loads is `ERR_COMPILE`, naming it.
fn load_failure(mut f: Failure, what: &str) -> Failure {
    // A top-level `RetryError` is a broken file too.
    f.rethrown_as(GuestErrorKind::Compile);
    f.message = format!("{what} failed to load: {}", f.message);
    f
}

/// Compiles a handler written as an ES module: its own module, so that its
/// top-level bindings stay its own; `handler` may be exported or not, or be
/// the default export.
fn register_module(key: &str, code: &str) -> Result<(), Failure> {
    with_js(|js| {
        let compiled = js.ctx.with(|ctx| {
            let name = format!("{}{key}", modules::HANDLER_PREFIX);
            let what = format!("handler '{key}'");
            let fail = |ctx: &Ctx<'_>, e| load_failure(failure_from(ctx, e), &what);
            let declared =
                rquickjs::Module::declare(ctx.clone(), name, format!("{code}{MODULE_EPILOGUE}"))
                    .map_err(|e| fail(&ctx, e))?;
            let (module, promise) = declared.eval().map_err(|e| fail(&ctx, e))?;
            settle(&ctx, promise.into_value()).map_err(|f| load_failure(f, &what))?;
            let ns = module.namespace().map_err(|e| fail(&ctx, e))?;
            let mut f: Value<'_> = ns.get("__hl_handler").map_err(|e| fail(&ctx, e))?;
            if !f.is_function() {
                f = ns.get("default").map_err(|e| fail(&ctx, e))?;
            }
            match f.into_function() {
                Some(f) => Ok(Persistent::save(&ctx, f)),
                None => Err(Failure::new(
                    GuestErrorKind::Compile,
                    &format!(
                        "handler '{key}' does not define or export a function named 'handler'"
                    ),
                )),
            }
        })?;
        js.handlers.insert(key.to_string(), compiled);
        Ok(())
    })
}

/// Compiles `code` under `key`. The code runs inside its own function scope,
/// so every handler can define its own `handler` without clashing; code with
/// `import`/`export` is compiled as a module instead.
pub fn register(key: &str, code: &str) -> Result<(), Failure> {
    if modules::is_module(code) {
        return register_module(key, code);
    }
    with_js(|js| {
        let compiled = js.ctx.with(|ctx| {
            // The prefix shares the first line with the user's code so that
            // line numbers in syntax errors and stacks match the source.
            let wrapped = format!(
                "(function () {{{code}\n;return typeof handler === 'function' ? handler : undefined;\n}})()"
            );
            match ctx.eval::<Value<'_>, _>(wrapped) {
                Ok(v) => match v.into_function() {
                    Some(f) => Ok(Persistent::save(&ctx, f)),
                    None => Err(Failure::new(
                        GuestErrorKind::Compile,
                        &format!("handler '{key}' does not define a function named 'handler'"),
                    )),
                },
                Err(e) => {
                    let mut f = failure_from(&ctx, e);
                    // A top-level `RetryError` is a broken handler file too.
                    f.rethrown_as(GuestErrorKind::Compile);
                    f.message = format!("handler '{key}' failed to load: {}", f.message);
                    Err(f)
                }
            }
        })?;
        js.handlers.insert(key.to_string(), compiled);
        Ok(())
    })
}

/// Runs the handler under `key` on the JSON `event` (and `context`, empty for
/// none) and returns its JSON result.
pub fn call(key: &str, event: &str, context: &str, gc: bool) -> Result<String, Failure> {
    with_js(|js| {
        let Js {
            handlers,
            ctx,
            output_limit,
            ..
        } = js;
        let handler = handlers.get(key).cloned().ok_or_else(|| {
            Failure::new(
                GuestErrorKind::UnknownHandler,
                &format!("no handler is registered under '{key}'"),
            )
        })?;
        let result = ctx.with(|ctx| {
            crate::web::timers::drop_pending(&ctx);
            let f: Function<'_> = handler.restore(&ctx).map_err(|e| failure_from(&ctx, e))?;
            let event: Value<'_> = if event.contains(BYTES_TAG) {
                let parse: Function<'_> = ctx
                    .globals()
                    .get("__hl_parse")
                    .map_err(|e| failure_from(&ctx, e))?;
                parse.call((event,)).map_err(|e| failure_from(&ctx, e))?
            } else {
                ctx.json_parse(event).map_err(|e| failure_from(&ctx, e))?
            };
            // The context is the host's own data: no `__hl_bytes` decoding.
            let context: Value<'_> = if context.is_empty() {
                Value::new_undefined(ctx.clone())
            } else {
                ctx.json_parse(context).map_err(|e| failure_from(&ctx, e))?
            };
            let value: Value<'_> = f
                .call((event, context))
                .map_err(|e| failure_from(&ctx, e))?;
            let value = settle(&ctx, value)?;
            let json = match ctx.json_stringify(value) {
                Ok(Some(s)) => s.to_string().map_err(|e| failure_from(&ctx, e))?,
                Ok(None) => "null".to_string(),
                Err(e) => {
                    let mut f = failure_from(&ctx, e);
                    f.rethrown_as(GuestErrorKind::ResultNotJson);
                    f.message = format!(
                        "the handler's result is not JSON-serializable: {}",
                        f.message
                    );
                    return Err(f);
                }
            };
            if json.len() > *output_limit {
                return Err(Failure::new(
                    GuestErrorKind::OutputTooLarge,
                    &format!(
                        "the result is {} bytes, over the output limit of {} bytes",
                        json.len(),
                        output_limit
                    ),
                ));
            }
            Ok(json)
        });
        if gc {
            ctx.with(|ctx| ctx.run_gc());
        }
        result
    })
}

/// Runs queued jobs until the returned value (when a promise) has settled.
fn settle<'js>(ctx: &Ctx<'js>, value: Value<'js>) -> Result<Value<'js>, Failure> {
    while ctx.execute_pending_job() || crate::web::timers::run_next(ctx, &value) {}
    let Some(promise) = value.as_promise().cloned() else {
        return Ok(value);
    };
    match promise.state() {
        PromiseState::Resolved => promise
            .result::<Value<'_>>()
            .unwrap_or_else(|| Ok(Value::new_undefined(ctx.clone())))
            .map_err(|e| failure_from(ctx, e)),
        PromiseState::Rejected => {
            let reason = rejection(&promise);
            Err(failure_from_value(ctx, reason))
        }
        PromiseState::Pending => Err(Failure::new(
            GuestErrorKind::HandlerThrew,
            "the handler's promise never settled (it awaits something that cannot complete in the sandbox)",
        )),
    }
}

fn rejection<'js>(promise: &Promise<'js>) -> Value<'js> {
    match promise.result::<Value<'_>>() {
        Some(Err(rquickjs::Error::Exception)) => promise.ctx().catch(),
        Some(Ok(v)) => v,
        _ => Value::new_undefined(promise.ctx().clone()),
    }
}

/// Classifies an rquickjs error, taking the pending exception when there is one.
fn failure_from(ctx: &Ctx<'_>, e: rquickjs::Error) -> Failure {
    match e {
        rquickjs::Error::Exception => failure_from_value(ctx, ctx.catch()),
        rquickjs::Error::Allocation => Failure::new(
            GuestErrorKind::OutOfMemory,
            "the JavaScript heap is exhausted",
        ),
        other => Failure::new(GuestErrorKind::Internal, &other.to_string()),
    }
}

/// Classifies a thrown value. QuickJS reports its own stack and heap limits as
/// a `RangeError` and an `InternalError` with fixed messages.
fn failure_from_value<'js>(ctx: &Ctx<'js>, thrown: Value<'js>) -> Failure {
    if let Some(obj) = thrown.as_object() {
        let name: String = obj.get("name").unwrap_or_default();
        let message: String = obj.get("message").unwrap_or_default();
        let stack: String = obj.get("stack").unwrap_or_default();
        let kind = match (name.as_str(), message.as_str()) {
            ("RangeError", "Maximum call stack size exceeded") => GuestErrorKind::StackOverflow,
            ("InternalError", "out of memory") => GuestErrorKind::OutOfMemory,
            _ => GuestErrorKind::HandlerThrew,
        };
        if kind == GuestErrorKind::HandlerThrew
            && let Some(delay) = retry_delay(ctx, &thrown)
        {
            return Failure {
                kind: GuestErrorKind::Retry,
                message,
                stack,
                detail: delay,
            };
        }
        if !name.is_empty() || !message.is_empty() {
            let message = if name.is_empty() {
                message
            } else {
                format!("{name}: {message}")
            };
            return Failure {
                kind,
                message,
                stack,
                detail: None,
            };
        }
    }
    if thrown.is_null() && ctx.catch().is_null() {
        // QuickJS could not even allocate the exception object.
        return Failure::new(
            GuestErrorKind::OutOfMemory,
            "the JavaScript heap is exhausted",
        );
    }
    let text = ctx
        .json_stringify(thrown.clone())
        .ok()
        .flatten()
        .and_then(|s| s.to_string().ok())
        .unwrap_or_else(|| "undefined".to_string());
    Failure {
        kind: GuestErrorKind::HandlerThrew,
        message: format!("Uncaught {text}"),
        stack: String::new(),
        detail: None,
    }
}

/// Frames a call outcome for the host.
pub fn reply(r: Result<String, Failure>) -> String {
    match r {
        Ok(json) => encode_ok(&json),
        Err(f) => f.encode(),
    }
}
