//! `structuredClone` (HTML StructuredSerialize/Deserialize in one pass):
//! primitives, wrapper objects, Date, RegExp, ArrayBuffer, typed arrays and
//! DataView, Map, Set, Error types, DOMException, arrays and plain objects,
//! with cycles and shared references kept. Everything else (functions,
//! symbols, weak collections, promises) throws a `DataCloneError`.
//! `options.transfer` moves ArrayBuffers (detaching the originals).
//!
//! Types are recognised by their internal slots (brand-checking built-in
//! getters), not by prototype, as the spec requires; the one shortcut is that
//! an object whose prototype is `Object.prototype` or null is taken as an
//! ordinary object.

/// Shim (no natives).
pub const JS: &str = r#"(function () {
  const DOMException = globalThis.DOMException;
  const fail = (what) => { throw new DOMException(`${what} could not be cloned.`, 'DataCloneError'); };
  const getter = (proto, name) => Object.getOwnPropertyDescriptor(proto, name).get;
  const has = (f, v) => { try { f.call(v); return true; } catch (_) { return false; } };
  const TA = Object.getPrototypeOf(Int8Array.prototype);
  const taTag = getter(TA, Symbol.toStringTag), taBuffer = getter(TA, 'buffer');
  const taOffset = getter(TA, 'byteOffset'), taLength = getter(TA, 'length');
  const dvBuffer = getter(DataView.prototype, 'buffer'), dvOffset = getter(DataView.prototype, 'byteOffset');
  const dvLength = getter(DataView.prototype, 'byteLength');
  const abLength = getter(ArrayBuffer.prototype, 'byteLength'), abSlice = ArrayBuffer.prototype.slice;
  const reSource = getter(RegExp.prototype, 'source'), reFlags = getter(RegExp.prototype, 'flags');
  const mapSize = getter(Map.prototype, 'size'), mapEntries = Map.prototype.entries;
  const setSize = getter(Set.prototype, 'size'), setValues = Set.prototype.values;
  const getTime = Date.prototype.getTime;
  const WRAPPERS = [[Boolean.prototype.valueOf, Boolean], [Number.prototype.valueOf, Number],
    [String.prototype.valueOf, String], [BigInt.prototype.valueOf, BigInt]];
  const ERRORS = { Error, EvalError, RangeError, ReferenceError, SyntaxError, TypeError, URIError };
  const isError = typeof Error.isError === 'function' ? Error.isError : (v) => v instanceof Error;
  const UNCLONABLE = [[WeakMap.prototype.has, 'WeakMap'], [WeakSet.prototype.has, 'WeakSet'],
    [Symbol.prototype.valueOf, 'Symbol'], [WeakRef.prototype.deref, 'WeakRef']];
  const put = (o, k, value) => Object.defineProperty(o, k, { value, writable: true, enumerable: true, configurable: true });
  const props = (from, to, memory) => {
    for (const k of Object.keys(from)) if (Object.hasOwn(from, k)) put(to, k, clone(from[k], memory));
  };
  function clone(v, memory) {
    if (typeof v === 'symbol') fail('Symbol()');
    if (typeof v === 'function') fail(`function ${v.name || ''}`.trim());
    if (v === null || typeof v !== 'object') return v;
    if (memory.has(v)) return memory.get(v);
    let out;
    // Checks that cannot throw come first; objects whose prototype is
    // Object.prototype or null are taken as ordinary objects without the
    // brand checks below, each of which throws (and so costs a stack trace)
    // on a miss.
    const proto = Array.isArray(v) || isError(v) || ArrayBuffer.isView(v) ? undefined : Object.getPrototypeOf(v);
    if (Array.isArray(v)) {
      out = new Array(v.length); memory.set(v, out); props(v, out, memory);
      return out;
    } else if (DOMException !== undefined && v instanceof DOMException) {
      out = new DOMException(v.message, v.name);
    } else if (isError(v)) {
      const name = v.name;
      const Ctor = typeof name === 'string' && Object.hasOwn(ERRORS, name) ? ERRORS[name] : Error;
      const msg = Object.getOwnPropertyDescriptor(v, 'message');
      out = msg !== undefined && 'value' in msg ? new Ctor(`${msg.value}`) : new Ctor();
      const stack = Object.getOwnPropertyDescriptor(v, 'stack');
      if (stack !== undefined && 'value' in stack) Object.defineProperty(out, 'stack', { value: `${stack.value}`, writable: true, configurable: true });
    } else if (ArrayBuffer.isView(v)) {
      const tag = taTag.call(v);
      out = tag === undefined
        ? new DataView(clone(dvBuffer.call(v), memory), dvOffset.call(v), dvLength.call(v))
        : new globalThis[tag](clone(taBuffer.call(v), memory), taOffset.call(v), taLength.call(v));
    } else if (proto !== Object.prototype && proto !== null) {
      const wrapper = WRAPPERS.find(([f]) => has(f, v));
      if (wrapper) out = Object(wrapper[0].call(v));
      else if (has(getTime, v)) out = new Date(getTime.call(v));
      else if (v !== RegExp.prototype && has(reSource, v)) out = new RegExp(reSource.call(v), reFlags.call(v));
      else if (has(abLength, v)) {
        try { out = abSlice.call(v, 0); } catch (_) { fail('A detached ArrayBuffer'); }
      } else if (has(mapSize, v)) {
        out = new Map(); memory.set(v, out);
        for (const [k, x] of [...mapEntries.call(v)]) out.set(clone(k, memory), clone(x, memory));
        return out;
      } else if (has(setSize, v)) {
        out = new Set(); memory.set(v, out);
        for (const x of [...setValues.call(v)]) out.add(clone(x, memory));
        return out;
      } else {
        const bad = UNCLONABLE.find(([f]) => has(f, v));
        if (bad) fail(`#<${bad[1]}>`);
        if (v instanceof Promise) fail('#<Promise>');
      }
    }
    if (out === undefined) {
      out = {}; memory.set(v, out); props(v, out, memory);
      return out;
    }
    memory.set(v, out);
    return out;
  }
  function structuredClone(value, options = undefined) {
    if (arguments.length < 1) throw new TypeError('structuredClone requires 1 argument');
    const memory = new Map();
    const transfer = options === undefined || options === null || options.transfer === undefined ? [] : [...options.transfer];
    for (const t of transfer) {
      if (t === null || typeof t !== 'object' || !has(abLength, t)) fail('A value in the transfer list');
      if (memory.has(t)) fail('An ArrayBuffer listed twice for transfer');
      if (t.detached) fail('A detached ArrayBuffer');
      memory.set(t, undefined);
    }
    for (const t of transfer) memory.set(t, t.transfer());
    return clone(value, memory);
  }
  return { structuredClone };
})"#;
