//! The QuickJS runtime and its global objects: `console`, `host`, `Math.random`.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use core::cell::{Cell, RefCell};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hyperlight_js_abi::{GuestErrorKind, console_level};
use rquickjs::allocator::RustAllocator;
use rquickjs::function::Rest;
use rquickjs::{Context, Ctx, Exception, Function, Object, Persistent, Runtime, TypedArray, Value};

use crate::handlers::Failure;

/// Everything the guest keeps between calls.
pub struct Js {
    /// Compiled handlers by routing key. Declared before the runtime so that
    /// they are dropped first.
    pub handlers: BTreeMap<String, Persistent<Function<'static>>>,
    /// The QuickJS context that every handler runs in.
    pub ctx: Context,
    /// Largest JSON result, in bytes, that a call may return.
    pub output_limit: usize,
    /// The runtime must outlive the context.
    _rt: Runtime,
}

/// The guest's only mutable global.
struct Global(RefCell<Option<Js>>);

// SAFETY: a hyperlight guest has exactly one vCPU and no threads, so the cell
// is never touched concurrently.
unsafe impl Sync for Global {}

static JS: Global = Global(RefCell::new(None));

/// The `Math.random` state: xorshift64*, reseeded by the host.
struct Rng(Cell<u64>);

// SAFETY: one vCPU, no threads (see `Global`).
unsafe impl Sync for Rng {}

/// Zero until the first seed (so in .bss, with the other small statics a call
/// writes, not alone on a page of .data: each such page costs a copy per call).
static RNG: Rng = Rng(Cell::new(0));

/// The state `Math.random` starts from if no seed came.
const UNSEEDED: u64 = 0x9E37_79B9_7F4A_7C15;

/// Reseeds `Math.random`; the host sends a fresh seed to every new sandbox and
/// after every restore, so two sandboxes never share a sequence.
pub fn reseed(seed: u64) {
    if seed != 0 {
        RNG.0.set(seed);
        crate::web::crypto::reseed(seed);
    }
}

fn next_random() -> f64 {
    let mut x = match RNG.0.get() {
        0 => UNSEEDED,
        x => x,
    };
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    RNG.0.set(x);
    // 53 random bits scaled into [0, 1).
    (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs `f` with the loaded runtime, or fails if `LoadRuntime` has not run.
pub fn with_js<T>(f: impl FnOnce(&mut Js) -> Result<T, Failure>) -> Result<T, Failure> {
    let mut guard = JS.0.borrow_mut();
    match guard.as_mut() {
        Some(js) => f(js),
        None => Err(Failure::new(
            GuestErrorKind::RuntimeState,
            "the JavaScript runtime is not loaded",
        )),
    }
}

/// Creates the runtime. `host_fns` lists `module.function` names, one per line.
pub fn load(
    max_stack: usize,
    memory_limit: usize,
    output_limit: usize,
    host_fns: &str,
) -> Result<(), Failure> {
    let mut guard = JS.0.borrow_mut();
    if guard.is_some() {
        return Err(Failure::new(
            GuestErrorKind::RuntimeState,
            "the JavaScript runtime is already loaded",
        ));
    }
    // QuickJS allocates through Rust's allocator so that exhaustion returns
    // NULL (a catchable "out of memory") instead of libc malloc's abort.
    let rt = Runtime::new_with_alloc(RustAllocator).map_err(internal)?;
    rt.set_memory_limit(memory_limit);
    rt.set_max_stack_size(max_stack);
    let ctx = Context::full(&rt).map_err(internal)?;
    ctx.with(|ctx| install_globals(&ctx, host_fns))
        .map_err(internal)?;
    *guard = Some(Js {
        handlers: BTreeMap::new(),
        ctx,
        output_limit,
        _rt: rt,
    });
    Ok(())
}

fn internal(e: rquickjs::Error) -> Failure {
    Failure::new(GuestErrorKind::Internal, &e.to_string())
}

/// Formats `console.*` arguments the way Node prints them, closely enough:
/// strings verbatim, errors with their stack, everything else as JSON.
const CONSOLE_PRELUDE: &str = r#"(function (out) {
  const fmt = (args) => args.map((v) => {
    if (typeof v === 'string') return v;
    if (v instanceof Error) return v.stack ? `${v.name}: ${v.message}\n${v.stack}` : String(v);
    try { const s = JSON.stringify(v); return s === undefined ? String(v) : s; } catch (_) { return String(v); }
  }).join(' ');
  const mk = (level) => (...args) => { out(level, fmt(args)); };
  globalThis.console = { debug: mk(DEBUG), log: mk(INFO), info: mk(INFO), warn: mk(WARN), error: mk(ERROR) };
})"#;

/// Binary data crosses the JSON boundary as `{"__hl_bytes": "<base64>"}`:
/// `toJSON` on Uint8Array/ArrayBuffer encodes results at no cost to other
/// values, and a reviver (used only when the event mentions the tag) decodes.
const BYTES_PRELUDE: &str = r#"(function (enc, dec) {
  const def = (proto, f) => Object.defineProperty(proto, 'toJSON', { value: f, writable: true, configurable: true });
  def(Uint8Array.prototype, function () { return { 'TAG': enc(this) }; });
  def(ArrayBuffer.prototype, function () { return { 'TAG': enc(new Uint8Array(this)) }; });
  const revive = (k, v) => (v !== null && typeof v === 'object' && typeof v['TAG'] === 'string'
    && Object.keys(v).length === 1) ? dec(v['TAG']) : v;
  Object.defineProperty(globalThis, '__hl_parse', { value: (text) => JSON.parse(text, revive) });
})"#;

/// The tag of binary values in JSON (see [`BYTES_PRELUDE`]).
pub const BYTES_TAG: &str = "__hl_bytes";

fn install_globals<'js>(ctx: &Ctx<'js>, host_fns: &str) -> rquickjs::Result<()> {
    let globals = ctx.globals();

    let out = Function::new(ctx.clone(), |level: i32, line: String| {
        crate::host::console(level, line)
    })?;
    let prelude = CONSOLE_PRELUDE
        .replace("DEBUG", &console_level::DEBUG.to_string())
        .replace("INFO", &console_level::INFO.to_string())
        .replace("WARN", &console_level::WARN.to_string())
        .replace("ERROR", &console_level::ERROR.to_string());
    let install: Function<'_> = ctx.eval(prelude)?;
    install.call::<_, ()>((out,))?;

    let encode = Function::new(ctx.clone(), |bytes: TypedArray<'js, u8>| -> String {
        BASE64.encode(bytes.as_bytes().unwrap_or_default())
    })?;
    let decode = Function::new(
        ctx.clone(),
        |ctx: Ctx<'js>, text: String| -> rquickjs::Result<TypedArray<'js, u8>> {
            let bytes = BASE64.decode(text.as_bytes()).map_err(|e| {
                Exception::throw_type(&ctx, &format!("invalid base64 in {BYTES_TAG}: {e}"))
            })?;
            TypedArray::new(ctx.clone(), bytes)
        },
    )?;
    let install: Function<'_> = ctx.eval(BYTES_PRELUDE.replace("TAG", BYTES_TAG))?;
    install.call::<_, ()>((encode, decode))?;

    let math: Object<'_> = globals.get("Math")?;
    math.set("random", Function::new(ctx.clone(), next_random)?)?;
    crate::web::install(ctx)?;
    crate::handlers::install_retry_error(ctx)?;

    let host = Object::new(ctx.clone())?;
    for line in host_fns.lines().filter(|l| !l.is_empty()) {
        let Some((module, function)) = line.split_once('.') else {
            continue;
        };
        let module_obj: Object<'_> = match host.get::<_, Option<Object<'_>>>(module)? {
            Some(o) => o,
            None => {
                let o = Object::new(ctx.clone())?;
                host.set(module, o.clone())?;
                o
            }
        };
        let (m, f) = (module.to_string(), function.to_string());
        let stub = Function::new(ctx.clone(), move |ctx: Ctx<'js>, args: Rest<Value<'js>>| {
            call_host(&ctx, &m, &f, args)
        })?;
        module_obj.set(function, stub)?;
    }
    globals.set("host", host.clone())?;
    // `host:` modules read the object as loaded, whatever `host` holds later.
    let define: Function<'_> = ctx.eval(format!(
        "(h) => {{ Object.defineProperty(globalThis, '{}', {{ value: h }}); }}",
        crate::handlers::modules::HOST_GLOBAL
    ))?;
    define.call::<_, ()>((host,))?;
    crate::handlers::modules::install(ctx, host_fns);
    Ok(())
}

fn call_host<'js>(
    ctx: &Ctx<'js>,
    module: &str,
    function: &str,
    args: Rest<Value<'js>>,
) -> rquickjs::Result<Value<'js>> {
    let array = rquickjs::Array::new(ctx.clone())?;
    for (i, v) in args.0.into_iter().enumerate() {
        array.set(i, v)?;
    }
    let args_json = ctx
        .json_stringify(array)?
        .map(|s| s.to_string())
        .transpose()?
        .unwrap_or_else(|| "[]".to_string());
    let reply = match crate::host::call(module.to_string(), function.to_string(), args_json) {
        Ok(frame) => hyperlight_js_abi::decode(frame),
        Err(why) => {
            return Err(Exception::throw_message(
                ctx,
                &format!("host function {module}.{function} could not be called: {why}"),
            ));
        }
    };
    match reply {
        // Binary results (`{"__hl_bytes": ...}`) become Uint8Arrays, as in events.
        Some(Ok(json)) if json.contains(BYTES_TAG) => {
            let parse: Function<'js> = ctx.globals().get("__hl_parse")?;
            parse.call((json,))
        }
        Some(Ok(json)) => ctx.json_parse(json),
        Some(Err(failure)) => Err(Exception::throw_message(
            ctx,
            &format!(
                "host function {module}.{function} failed: {}",
                failure.message
            ),
        )),
        None => Err(Exception::throw_message(
            ctx,
            &format!("host function {module}.{function} gave a malformed reply"),
        )),
    }
}
