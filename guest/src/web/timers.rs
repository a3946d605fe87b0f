//! `setTimeout`, `setInterval` and their `clear*` (HTML timers) on virtual
//! time: a handler's call runs its timers while its returned promise is
//! pending and no job is queued, earliest due time first and, among equal
//! times, in order of scheduling. Running a timer moves the virtual clock to
//! its due time, so `await new Promise(r => setTimeout(r, 50))` completes at
//! once instead of idling the CPU; `Date.now()` stays real time. Timers still
//! pending when the call's promise settles (or when a handler returns a
//! non-promise) are dropped, and the clock restarts at 0 for the next call.
//! Nesting deeper than 5 clamps delays to 4 ms, as in HTML.

use core::cell::Cell;

use rquickjs::promise::PromiseState;
use rquickjs::{Ctx, Function, Object, Value};

/// Shim. It keeps the queue and registers `__hl_timers(pending)`, which runs
/// the next timer (`true` when one ran) or, with `pending` false, drops all.
pub const JS: &str = r#"(function (native) {
  const indirectEval = eval;
  let now = 0, lastId = 0, nesting = 0;
  const queue = [], active = new Map();
  const add = (handler, timeout, args, repeat) => {
    const fn = typeof handler === 'function' ? handler : ((code) => () => indirectEval(code))(`${handler}`);
    let delay = timeout | 0;
    if (delay < 0) delay = 0;
    if (nesting >= 5 && delay < 4) delay = 4;
    const entry = { id: ++lastId, fn, args, delay, repeat, nesting: nesting + 1, due: now + delay, cancelled: false };
    active.set(entry.id, entry);
    enqueue(entry);
    native.arm();
    return entry.id;
  };
  const enqueue = (entry) => {
    let i = queue.length;
    while (i > 0 && queue[i - 1].due > entry.due) i--;
    queue.splice(i, 0, entry);
  };
  const clear = (id) => {
    const entry = active.get(id | 0);
    if (entry !== undefined) { entry.cancelled = true; active.delete(entry.id); }
  };
  const drive = (pending) => {
    if (!pending) { queue.length = 0; active.clear(); now = 0; nesting = 0; return false; }
    while (queue.length > 0) {
      const entry = queue.shift();
      if (entry.cancelled) continue;
      if (entry.due > now) now = entry.due;
      if (!entry.repeat) active.delete(entry.id);
      nesting = entry.nesting;
      try { entry.fn.apply(globalThis, entry.args); } catch (e) { try { console.error('Uncaught', e); } catch (_) {} }
      nesting = 0;
      if (entry.repeat && !entry.cancelled) {
        if (entry.nesting >= 5 && entry.delay < 4) entry.delay = 4;
        entry.nesting++;
        entry.due = now + entry.delay;
        enqueue(entry);
      }
      return true;
    }
    return false;
  };
  Object.defineProperty(globalThis, '__hl_timers', { value: drive });
  return {
    setTimeout: function setTimeout(handler, timeout = 0, ...args) { return add(handler, timeout, args, false); },
    setInterval: function setInterval(handler, timeout = 0, ...args) { return add(handler, timeout, args, true); },
    clearTimeout: function clearTimeout(id = 0) { clear(id); },
    clearInterval: function clearInterval(id = 0) { clear(id); },
  };
})"#;

/// Whether any timer may be queued, so that calls that never used timers
/// skip the JS driver entirely.
struct Armed(Cell<bool>);

// SAFETY: a hyperlight guest has one vCPU and no threads.
unsafe impl Sync for Armed {}

static ARMED: Armed = Armed(Cell::new(false));

/// The natives the shim calls.
pub fn natives<'js>(ctx: &Ctx<'js>) -> rquickjs::Result<Object<'js>> {
    let o = Object::new(ctx.clone())?;
    o.set("arm", Function::new(ctx.clone(), || ARMED.0.set(true))?)?;
    Ok(o)
}

/// Drops every timer an earlier call left queued (its handler threw before
/// a promise could settle), so that no callback crosses into this call.
pub fn drop_pending(ctx: &Ctx<'_>) {
    run_next(ctx, &Value::new_undefined(ctx.clone()));
}

/// Runs the next due timer while `value` (the handler's result) is a pending
/// promise; returns whether one ran. Otherwise drops every queued timer.
/// Called by the handler's settle loop whenever no job is pending.
pub fn run_next<'js>(ctx: &Ctx<'js>, value: &Value<'js>) -> bool {
    if !ARMED.0.get() {
        return false;
    }
    let pending = value
        .as_promise()
        .is_some_and(|p| p.state() == PromiseState::Pending);
    if !pending {
        ARMED.0.set(false);
    }
    let ran = ctx
        .globals()
        .get::<_, Function<'js>>("__hl_timers")
        .and_then(|drive| drive.call::<_, bool>((pending,)));
    match ran {
        Ok(ran) => ran,
        Err(_) => {
            // Only an engine failure (the callbacks' own errors are reported
            // by the shim); drop it rather than leave a pending exception.
            let _ = ctx.catch();
            false
        }
    }
}
