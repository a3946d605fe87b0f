'use strict';
// @hyperlight/js-host-api: run JavaScript event handlers in Hyperlight micro-VMs.
//
// The classes come from the native addon (src/*.rs). This file adds what is
// simpler in JavaScript: JSON encoding of events and results (with Buffer /
// Uint8Array / ArrayBuffer carried as `{"__hl_bytes": "<base64>"}`), the
// options of callHandler(), host-function callbacks (sync or async), and
// argument checks that report `ERR_INVALID_ARG` like the native ones.

const native = require('./lib/binding.js');

const {
  SandboxBuilder,
  ProtoJSSandbox,
  JSSandbox,
  LoadedJSSandbox,
  InterruptHandle,
  Snapshot,
  SandboxRestorer,
  HostModule,
} = native;

/** The tag of binary values in JSON (shared with the guest). */
const BYTES_TAG = '__hl_bytes';

/** Every `error.code` the API can produce. */
const ErrorCode = Object.freeze({
  INVALID_ARG: 'ERR_INVALID_ARG',
  CONSUMED: 'ERR_CONSUMED',
  POISONED: 'ERR_POISONED',
  CANCELLED: 'ERR_CANCELLED',
  STACK_OVERFLOW: 'ERR_STACK_OVERFLOW',
  GUEST_ABORT: 'ERR_GUEST_ABORT',
  INTERNAL: 'ERR_INTERNAL',
  NO_HYPERVISOR: 'ERR_NO_HYPERVISOR',
  HANDLER_THREW: 'ERR_HANDLER_THREW',
  RETRY: 'ERR_RETRY',
  COMPILE: 'ERR_COMPILE',
  UNKNOWN_HANDLER: 'ERR_UNKNOWN_HANDLER',
  INVALID_JSON: 'ERR_INVALID_JSON',
  RESULT_NOT_JSON: 'ERR_RESULT_NOT_JSON',
  INPUT_TOO_LARGE: 'ERR_INPUT_TOO_LARGE',
  OUTPUT_TOO_LARGE: 'ERR_OUTPUT_TOO_LARGE',
  HEAP_EXHAUSTED: 'ERR_HEAP_EXHAUSTED',
  SNAPSHOT_NOT_FOUND: 'ERR_SNAPSHOT_NOT_FOUND',
  SNAPSHOT_CORRUPT: 'ERR_SNAPSHOT_CORRUPT',
  SNAPSHOT_INCOMPATIBLE: 'ERR_SNAPSHOT_INCOMPATIBLE',
});

const KNOWN_CODES = new Set(Object.values(ErrorCode));

function codedError(code, message) {
  const err = new Error(message);
  err.code = code;
  return err;
}

function invalidArg(message) {
  return codedError(ErrorCode.INVALID_ARG, `invalid argument: ${message}`);
}

/**
 * Errors raised by the addon's own argument conversion (a number where a
 * string was expected, ...) carry napi's status as `code`: report them as
 * ERR_INVALID_ARG so that every error has a code from the table.
 */
function normalizeError(err) {
  if (err instanceof Error && !KNOWN_CODES.has(err.code)) {
    const wrapped = invalidArg(err.message);
    wrapped.cause = err;
    return wrapped;
  }
  return err;
}

// ---------------------------------------------------------------- JSON ----

function bytesReplacer(key, value) {
  // `this[key]` is the value before `toJSON` (Buffer has one).
  const raw = this[key];
  if (raw instanceof Uint8Array) {
    return { [BYTES_TAG]: Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength).toString('base64') };
  }
  if (raw instanceof ArrayBuffer) {
    return { [BYTES_TAG]: Buffer.from(raw).toString('base64') };
  }
  return value;
}

function bytesReviver(key, value) {
  if (value !== null && typeof value === 'object' && typeof value[BYTES_TAG] === 'string') {
    const keys = Object.keys(value);
    if (keys.length === 1) return Buffer.from(value[BYTES_TAG], 'base64');
  }
  return value;
}

/** Encodes a value as JSON text for the guest; `undefined` becomes `null`. */
function toJson(value) {
  let text;
  try {
    text = JSON.stringify(value, bytesReplacer);
  } catch (e) {
    throw invalidArg(`the value is not JSON-serializable: ${e.message}`);
  }
  if (text === undefined) {
    if (value === undefined) return 'null';
    throw invalidArg(`a ${typeof value} is not JSON-serializable`);
  }
  return text;
}

/** Decodes JSON text from the guest; tagged binary values become Buffers. */
function fromJson(text) {
  return text.includes(`"${BYTES_TAG}"`) ? JSON.parse(text, bytesReviver) : JSON.parse(text);
}

// --------------------------------------------------------- wrappers ----

function wrapSync(cls, name, check) {
  const original = cls.prototype[name];
  Object.defineProperty(cls.prototype, name, {
    value: function (...args) {
      if (check) check(...args);
      try {
        return original.apply(this, args);
      } catch (e) {
        throw normalizeError(e);
      }
    },
    writable: true,
    configurable: true,
  });
}

function wrapAsync(target, name, check) {
  const original = target[name];
  Object.defineProperty(target, name, {
    value: function (...args) {
      try {
        if (check) check(...args);
        return original.apply(this, args).catch((e) => {
          throw normalizeError(e);
        });
      } catch (e) {
        return Promise.reject(normalizeError(e));
      }
    },
    writable: true,
    configurable: true,
  });
}

function checkName(what, value) {
  if (typeof value !== 'string') throw invalidArg(`${what} must be a string, got ${typeof value}`);
}

function checkSnapshot(snapshot) {
  if (!(snapshot instanceof Snapshot)) throw invalidArg('expected a Snapshot from snapshot()');
}

for (const setter of ['setHeapSize', 'setStackSize', 'setScratchSize', 'setInputBufferSize', 'setOutputBufferSize']) {
  wrapSync(SandboxBuilder, setter);
}
wrapAsync(SandboxBuilder.prototype, 'build');
wrapAsync(SandboxBuilder.prototype, 'buildFromSnapshot', checkSnapshot);

function checkNonEmptyName(what, value) {
  checkName(what, value);
  if (value.length === 0) throw invalidArg(`${what} must not be empty`);
}

wrapSync(ProtoJSSandbox, 'hostModule', (name) => checkNonEmptyName('the host module name', name));
/**
 * Upstream hyperlight-js's form: `proto.register(moduleName, functionName,
 * callback)` is `proto.hostModule(moduleName).register(functionName, callback)`.
 */
Object.defineProperty(ProtoJSSandbox.prototype, 'register', {
  value: function register(moduleName, functionName, callback) {
    this.hostModule(moduleName).register(functionName, callback);
    return this;
  },
  writable: true,
  configurable: true,
});
wrapAsync(ProtoJSSandbox.prototype, 'loadRuntime');

// ------------------------------------------------ persisted snapshots ----

wrapAsync(Snapshot.prototype, 'save', (dir, tag) => {
  checkNonEmptyName('the snapshot directory', dir);
  checkNonEmptyName('the snapshot tag', tag);
});
for (const [name, native] of [
  ['load', '_load'],
  ['loadUnverified', '_loadUnverified'],
]) {
  Object.defineProperty(Snapshot, name, {
    value: function (dir, tagOrDigest) {
      return Snapshot[native](dir, tagOrDigest);
    },
    writable: true,
    configurable: true,
  });
  wrapAsync(Snapshot, name, (dir, tagOrDigest) => {
    checkNonEmptyName('the snapshot directory', dir);
    checkName('the snapshot tag or digest', tagOrDigest);
  });
}
wrapSync(SandboxRestorer, 'hostModule', (name) => checkNonEmptyName('the host module name', name));
Object.defineProperty(SandboxRestorer.prototype, 'register', {
  value: function register(moduleName, functionName, callback) {
    this.hostModule(moduleName).register(functionName, callback);
    return this;
  },
  writable: true,
  configurable: true,
});
wrapAsync(SandboxRestorer.prototype, 'restoreLoadedSandbox');
wrapAsync(SandboxRestorer.prototype, 'restoreJsSandbox');

wrapSync(JSSandbox, 'addHandler', (name, code) => {
  checkName('the handler name', name);
  checkName('the handler code', code);
});
wrapSync(JSSandbox, 'removeHandler', (name) => checkName('the handler name', name));
wrapSync(JSSandbox, 'clearHandlers');
wrapSync(JSSandbox, 'addModule', (name, source, namespace) => {
  checkName('the module name', name);
  checkName('the module source', source);
  if (namespace !== undefined && namespace !== null) checkName('the module namespace', namespace);
});
wrapSync(JSSandbox, 'removeModule', (name, namespace) => {
  checkName('the module name', name);
  if (namespace !== undefined && namespace !== null) checkName('the module namespace', namespace);
});
wrapSync(JSSandbox, 'clearModules');
wrapAsync(JSSandbox.prototype, 'getLoadedSandbox');

wrapAsync(LoadedJSSandbox.prototype, 'callHandlerJson', (name, json) => {
  checkName('the handler name', name);
  checkName('the event JSON', json);
});
// `null`, not a missing field, when no limit stopped the call.
{
  const native = Object.getOwnPropertyDescriptor(LoadedJSSandbox.prototype, 'lastCallStats');
  Object.defineProperty(LoadedJSSandbox.prototype, 'lastCallStats', {
    get() {
      const s = native.get.call(this);
      if (s === null || s === undefined) return null;
      return { wallClockMs: s.wallClockMs, cpuTimeMs: s.cpuTimeMs, terminatedBy: s.terminatedBy ?? null };
    },
    configurable: true,
  });
}
wrapAsync(LoadedJSSandbox.prototype, 'unload');
wrapAsync(LoadedJSSandbox.prototype, 'snapshot');
wrapAsync(LoadedJSSandbox.prototype, 'restore', checkSnapshot);
Object.defineProperty(LoadedJSSandbox, 'fromSnapshot', {
  value: function fromSnapshot(snapshot) {
    return LoadedJSSandbox._fromSnapshot(snapshot);
  },
  writable: true,
  configurable: true,
});
wrapAsync(LoadedJSSandbox, 'fromSnapshot', checkSnapshot);

function timeoutOption(options, key) {
  const v = options[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
    throw invalidArg(`${key} must be a positive number of milliseconds, got ${String(v)}`);
  }
  return v;
}

/**
 * Calls a handler with any JSON-serializable event and resolves with the
 * handler's result as a JavaScript value.
 */
Object.defineProperty(LoadedJSSandbox.prototype, 'callHandler', {
  value: function callHandler(handlerName, eventData, options) {
    let json, wall, cpu, gc;
    try {
      checkName('the handler name', handlerName);
      if (handlerName.length === 0) throw invalidArg('the handler name must not be empty');
      if (options !== undefined && options !== null && typeof options !== 'object') {
        throw invalidArg('options must be an object');
      }
      const opts = options || {};
      wall = timeoutOption(opts, 'wallClockTimeoutMs');
      cpu = timeoutOption(opts, 'cpuTimeoutMs');
      if (opts.gc !== undefined && opts.gc !== null && typeof opts.gc !== 'boolean') {
        throw invalidArg('gc must be a boolean');
      }
      gc = opts.gc === undefined || opts.gc === null ? undefined : opts.gc;
      json = toJson(eventData);
    } catch (e) {
      return Promise.reject(normalizeError(e));
    }
    return this.callHandlerJson(handlerName, json, wall, cpu, gc).then(fromJson);
  },
  writable: true,
  configurable: true,
});

// ---------------------------------------------------- host functions ----

function describe(err) {
  if (err instanceof Error) return err.message || err.name || 'Error';
  try {
    return typeof err === 'string' ? err : JSON.stringify(err) ?? String(err);
  } catch {
    return String(err);
  }
}

function settleValue(id, value) {
  let json;
  try {
    json = toJson(value);
  } catch (e) {
    native._settleHostCall(id, `the host function's result is not JSON-serializable: ${e.message}`, null);
    return;
  }
  native._settleHostCall(id, null, json);
}

/**
 * Registers `callback` as `host.<module>.<fnName>(...args)` for handlers.
 * The callback receives the handler's arguments (JSON values, binary data as
 * Buffers) and returns a JSON-serializable value or a Promise of one; a
 * thrown error or rejection is thrown in the handler. Returns this module,
 * for chaining.
 */
Object.defineProperty(HostModule.prototype, 'register', {
  value: function register(fnName, callback) {
    checkNonEmptyName('the function name', fnName);
    if (typeof callback !== 'function') throw invalidArg('the host function callback must be a function');
    const dispatch = (id, argsJson) => {
      let out;
      try {
        const args = fromJson(argsJson);
        out = callback(...(Array.isArray(args) ? args : [args]));
      } catch (e) {
        native._settleHostCall(id, describe(e), null);
        return;
      }
      if (out !== null && (typeof out === 'object' || typeof out === 'function') && typeof out.then === 'function') {
        Promise.resolve(out).then(
          (value) => settleValue(id, value),
          (e) => native._settleHostCall(id, describe(e), null)
        );
      } else {
        settleValue(id, out);
      }
    };
    try {
      this._register(fnName, dispatch);
    } catch (e) {
      throw normalizeError(e);
    }
    return this;
  },
  writable: true,
  configurable: true,
});

module.exports = {
  SandboxBuilder,
  ProtoJSSandbox,
  JSSandbox,
  LoadedJSSandbox,
  InterruptHandle,
  Snapshot,
  SandboxRestorer,
  HostModule,
  ErrorCode,
};
