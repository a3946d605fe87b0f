// Type definitions for @hyperlight/js-host-api.
//
// Every method that touches the hypervisor returns a Promise and runs off the
// JavaScript thread; every error is an `Error` with a `code` (see `ErrorCode`).

/** The `code` of every error this package throws or rejects with. */
export type ErrorCodeValue =
  | 'ERR_INVALID_ARG'
  | 'ERR_CONSUMED'
  | 'ERR_POISONED'
  | 'ERR_CANCELLED'
  | 'ERR_STACK_OVERFLOW'
  | 'ERR_GUEST_ABORT'
  | 'ERR_INTERNAL'
  | 'ERR_NO_HYPERVISOR'
  | 'ERR_HANDLER_THREW'
  | 'ERR_RETRY'
  | 'ERR_COMPILE'
  | 'ERR_UNKNOWN_HANDLER'
  | 'ERR_INVALID_JSON'
  | 'ERR_RESULT_NOT_JSON'
  | 'ERR_INPUT_TOO_LARGE'
  | 'ERR_OUTPUT_TOO_LARGE'
  | 'ERR_HEAP_EXHAUSTED'
  | 'ERR_SNAPSHOT_NOT_FOUND'
  | 'ERR_SNAPSHOT_CORRUPT'
  | 'ERR_SNAPSHOT_INCOMPATIBLE';

/** The error codes by name, e.g. `ErrorCode.CANCELLED === 'ERR_CANCELLED'`. */
export declare const ErrorCode: Readonly<{
  /** Bad argument (empty handler name, zero timeout, etc.). */
  INVALID_ARG: 'ERR_INVALID_ARG';
  /** Object already consumed (e.g. calling `loadRuntime()` twice). */
  CONSUMED: 'ERR_CONSUMED';
  /** Sandbox is poisoned (after a timeout kill, guest abort, ...): restore a snapshot or unload. */
  POISONED: 'ERR_POISONED';
  /** Execution was cancelled (by a monitor timeout or `kill()`). */
  CANCELLED: 'ERR_CANCELLED';
  /** Guest code caused a stack overflow. */
  STACK_OVERFLOW: 'ERR_STACK_OVERFLOW';
  /** Guest code aborted. */
  GUEST_ABORT: 'ERR_GUEST_ABORT';
  /** Unexpected internal error. */
  INTERNAL: 'ERR_INTERNAL';
  /** No usable hypervisor (`/dev/kvm` missing or not accessible). */
  NO_HYPERVISOR: 'ERR_NO_HYPERVISOR';
  /** The handler threw or its promise rejected. */
  HANDLER_THREW: 'ERR_HANDLER_THREW';
  /** The handler threw a `RetryError` (`error.message` is its message). */
  RETRY: 'ERR_RETRY';
  /** A handler does not compile or does not define `handler`. */
  COMPILE: 'ERR_COMPILE';
  /** No handler is registered under the routing key. */
  UNKNOWN_HANDLER: 'ERR_UNKNOWN_HANDLER';
  /** The event is not valid JSON. */
  INVALID_JSON: 'ERR_INVALID_JSON';
  /** The handler's result cannot be represented as JSON (BigInt, cycle, ...). */
  RESULT_NOT_JSON: 'ERR_RESULT_NOT_JSON';
  /** The event is larger than the sandbox's input buffer. */
  INPUT_TOO_LARGE: 'ERR_INPUT_TOO_LARGE';
  /** The result is larger than the sandbox's output buffer. */
  OUTPUT_TOO_LARGE: 'ERR_OUTPUT_TOO_LARGE';
  /** The guest's JavaScript heap limit was reached. */
  HEAP_EXHAUSTED: 'ERR_HEAP_EXHAUSTED';
  SNAPSHOT_NOT_FOUND: 'ERR_SNAPSHOT_NOT_FOUND';
  SNAPSHOT_CORRUPT: 'ERR_SNAPSHOT_CORRUPT';
  SNAPSHOT_INCOMPATIBLE: 'ERR_SNAPSHOT_INCOMPATIBLE';
}>;

/** An error thrown or rejected by this package. */
export interface HyperlightError extends Error {
  /** Stable code for programmatic handling; never match on `message`. */
  code: ErrorCodeValue;
  /** For `ERR_HANDLER_THREW`: the guest's JavaScript stack, when it gave one. */
  guestStack?: string;
}

/**
 * Creates and configures a new sandbox.
 *
 * ```js
 * const builder = new SandboxBuilder().setHeapSize(8 * 1024 * 1024).setStackSize(512 * 1024);
 * const protoSandbox = await builder.build();
 * ```
 */
export declare class SandboxBuilder {
  /** A builder with the default sizes (heap 32 MiB, stack 1 MiB, buffers 1 MiB). */
  constructor();
  /**
   * Sets the guest heap size in bytes. Chainable.
   * @throws `ERR_INVALID_ARG` unless a positive integer; `ERR_CONSUMED` after `build()`.
   */
  setHeapSize(bytes: number): this;
  /**
   * Sets the guest stack size in bytes (bounds JavaScript recursion). Chainable.
   * @throws `ERR_INVALID_ARG` unless a positive integer; `ERR_CONSUMED` after `build()`.
   */
  setStackSize(bytes: number): this;
  /**
   * Sets Hyperlight's scratch region in bytes: all memory the guest may write
   * between snapshots (copies of written heap pages, the stack, the transport
   * buffers). Values below what the other sizes need are raised to that.
   * Upstream hyperlight-js's name; see the README for how it differs from
   * `setStackSize`. Chainable.
   * @throws `ERR_INVALID_ARG` unless a positive integer; `ERR_CONSUMED` after `build()`.
   */
  setScratchSize(bytes: number): this;
  /**
   * Sets the input buffer size in bytes: the largest event, as JSON, a call accepts. Chainable.
   * @throws `ERR_INVALID_ARG` unless a positive integer; `ERR_CONSUMED` after `build()`.
   */
  setInputBufferSize(bytes: number): this;
  /**
   * Sets the output buffer size in bytes: the largest result, as JSON, a call returns. Chainable.
   * @throws `ERR_INVALID_ARG` unless a positive integer; `ERR_CONSUMED` after `build()`.
   */
  setOutputBufferSize(bytes: number): this;
  /**
   * Builds a proto sandbox (a micro-VM) ready to load the JavaScript runtime.
   * Consumes the builder. Rejects with `ERR_CONSUMED` if called twice,
   * `ERR_INVALID_ARG` for sizes the runtime cannot use, `ERR_NO_HYPERVISOR`
   * without a usable hypervisor.
   */
  build(): Promise<ProtoJSSandbox>;
  /**
   * Prepares sandboxes from a snapshot loaded by `Snapshot.load()`: register
   * its host functions on the restorer, then restore. The sizes are the
   * snapshot's. Consumes this builder.
   * @throws (rejects) `ERR_INVALID_ARG` for an in-memory snapshot or a builder
   * set to other sizes; `ERR_CONSUMED` after `build()`.
   */
  buildFromSnapshot(snapshot: Snapshot): Promise<SandboxRestorer>;
}

/** What the last `callHandler()` cost and what stopped it. */
export interface CallStats {
  /** Wall-clock time of the call inside the VM, in milliseconds. */
  wallClockMs: number;
  /** CPU time of the sandbox's vCPU thread over the call, in milliseconds (host functions not counted). */
  cpuTimeMs: number;
  /** The limit or kill that stopped the call; `null` if it ran to its end (returned or threw). */
  terminatedBy: 'cpu' | 'wall' | 'kill' | null;
}

/** A proto sandbox ready to load the JavaScript runtime. */
export declare class ProtoJSSandbox {
  private constructor();
  /**
   * The host module `name`. Functions registered on it can be called by
   * handlers as `host.<name>.<fnName>(...args)`. Register before `loadRuntime()`.
   * @throws `ERR_CONSUMED` after `loadRuntime()`; `ERR_INVALID_ARG` if `name` is not a string.
   */
  hostModule(name: string): HostModule;
  /**
   * Upstream hyperlight-js's form of `hostModule(moduleName).register(functionName, callback)`.
   * @throws `ERR_INVALID_ARG` at once for an empty or non-string name; `ERR_CONSUMED` after `loadRuntime()`.
   */
  register(moduleName: string, functionName: string, callback: HostFunction): this;
  /**
   * Loads the JavaScript runtime into the sandbox. Consumes this object:
   * a second call rejects with `ERR_CONSUMED`.
   */
  loadRuntime(): Promise<JSSandbox>;
}

/** A function the host offers to handlers: it receives the handler's arguments. */
export type HostFunction = (...args: any[]) => unknown | Promise<unknown>;

/** A module of host functions, from `ProtoJSSandbox.hostModule(name)`. */
export declare class HostModule {
  private constructor();
  /** The module's name (`host.<name>` in the guest). */
  readonly name: string;
  /**
   * Registers `callback` as `host.<module>.<fnName>(...args)`. The callback
   * runs on the Node.js event loop while the handler waits (synchronously,
   * from the handler's view). It gets the handler's arguments as JSON values
   * (binary data as `Buffer`) and returns a JSON-serializable value or a
   * Promise of one. A thrown error or rejected promise is thrown inside the
   * handler as an `Error` with the same message. Host functions belong to
   * this sandbox (and sandboxes made from its snapshots) only.
   *
   * @returns this module, for chaining.
   * @throws `ERR_INVALID_ARG` if `fnName` or the module name is not a JavaScript
   * identifier or `callback` is not a function; `ERR_CONSUMED` after `loadRuntime()`.
   */
  register(fnName: string, callback: HostFunction): this;
}

/** A sandbox with the JavaScript runtime loaded, ready for handlers. */
export declare class JSSandbox {
  private constructor();
  /**
   * Adds (or replaces) a handler. Synchronous. `name` is the routing key;
   * `code` must define a function named `handler` (it may be `async`).
   * @throws `ERR_INVALID_ARG` for an empty name; `ERR_CONSUMED` after a successful `getLoadedSandbox()`.
   */
  addHandler(name: string, code: string): void;
  /**
   * Removes the handler registered under `name`. Synchronous.
   * @returns whether there was one.
   */
  removeHandler(name: string): boolean;
  /** Removes every handler. Synchronous. */
  clearHandlers(): void;
  /**
   * Adds (or replaces) an embedded ES module. Synchronous; compiled by
   * `getLoadedSandbox()`, where a module that fails to parse or to resolve
   * rejects with `ERR_COMPILE` naming it. Handlers and other modules import
   * it as `"<namespace>:<name>"` (`namespace` defaults to `user`; a bare
   * `"name"` reaches a `user` module); host functions are `"host:<module>"`.
   * @throws `ERR_INVALID_ARG` for an empty name or namespace, one with `:`,
   * or the reserved namespaces `host` and `handler`.
   */
  addModule(name: string, source: string, namespace?: string): void;
  /** Removes a module added by `addModule`; returns whether there was one. */
  removeModule(name: string, namespace?: string): boolean;
  /** Removes every module. Synchronous. */
  clearModules(): void;
  /** The routing keys added so far. */
  readonly handlerNames: string[];
  /** Always `false`: a `JSSandbox` runs no calls (upstream's API). */
  readonly poisoned: boolean;
  /**
   * Compiles the handlers in the sandbox. On success this object is consumed
   * (`ERR_CONSUMED` afterwards). If a handler does not compile, rejects with
   * `ERR_COMPILE` and this object stays usable with its handlers unchanged.
   */
  getLoadedSandbox(): Promise<LoadedJSSandbox>;
}

/**
 * Execution monitors for one call. Without timeouts the handler runs without
 * monitors. With both, whichever fires first cancels the call (OR semantics).
 */
export interface CallHandlerOptions {
  /** Wall-clock timeout in milliseconds (> 0). */
  wallClockTimeoutMs?: number;
  /** CPU-time timeout in milliseconds (> 0). Catches compute-bound abuse (tight loops, etc). */
  cpuTimeoutMs?: number;
  /** Whether to run the garbage collector after the call. Defaults to `true`. */
  gc?: boolean;
}

/**
 * A sandbox with handlers loaded, ready to process events. Calls on one
 * sandbox run one at a time, in call order; different sandboxes run in parallel.
 */
export declare class LoadedJSSandbox {
  private constructor();
  /**
   * A new, independent sandbox in the state `snapshot` captured: same
   * handlers and JavaScript state, its own micro-VM. Much cheaper than
   * building and loading a sandbox (no runtime load).
   */
  static fromSnapshot(snapshot: Snapshot): Promise<LoadedJSSandbox>;
  /**
   * Calls the handler registered under `handlerName` with `eventData` (any
   * JSON-serializable value; `Buffer`/`Uint8Array`/`ArrayBuffer` values
   * arrive as `Uint8Array`) and resolves with the handler's return value (or
   * the value its promise resolves to) as a JavaScript value. `Uint8Array`
   * results come back as `Buffer`s.
   *
   * Rejects with `ERR_CANCELLED` when a monitor or `kill()` stops the call
   * (the sandbox is then poisoned), `ERR_POISONED` until `restore()`,
   * `ERR_HANDLER_THREW`, `ERR_UNKNOWN_HANDLER`, `ERR_STACK_OVERFLOW`,
   * `ERR_HEAP_EXHAUSTED`, `ERR_RESULT_NOT_JSON`, `ERR_INPUT_TOO_LARGE`,
   * `ERR_OUTPUT_TOO_LARGE`, `ERR_INVALID_ARG`, or `ERR_CONSUMED` after `unload()`.
   */
  callHandler<T = any>(handlerName: string, eventData: any, options?: CallHandlerOptions): Promise<T>;
  /**
   * Like `callHandler` with the event and the result as JSON text (no
   * binary-data conversion). Timeouts in milliseconds; `gc` defaults to true.
   */
  callHandlerJson(
    handlerName: string,
    eventJson: string,
    wallClockTimeoutMs?: number | null,
    cpuTimeoutMs?: number | null,
    gc?: boolean | null
  ): Promise<string>;
  /**
   * Unloads all handlers and returns to JSSandbox state (a fresh runtime).
   * This object is consumed as soon as `unload()` is called: later calls
   * reject with `ERR_CONSUMED`; calls made before it still complete.
   */
  unload(): Promise<JSSandbox>;
  /** Takes a snapshot of the sandbox state. Rejects with `ERR_POISONED` on a poisoned sandbox. */
  snapshot(): Promise<Snapshot>;
  /**
   * Restores the sandbox state from a snapshot of this sandbox (or of the
   * sandbox it was made from); clears the poisoned state.
   * Rejects with `ERR_INVALID_ARG` for a snapshot of an unrelated sandbox.
   */
  restore(snapshot: Snapshot): Promise<void>;
  /** A handle to interrupt/kill handler execution (a getter, not a method). */
  readonly interruptHandle: InterruptHandle;
  /** Whether the sandbox is poisoned (inconsistent) after a kill, timeout or guest abort. */
  readonly poisoned: boolean;
  /**
   * What the last `callHandler()` cost and what stopped it, also after one that
   * threw or was stopped; `null` before the first call and after one refused
   * before it entered the VM (bad argument, poisoned, unknown handler).
   */
  readonly lastCallStats: CallStats | null;
}

/** Handle for interrupting/killing handler execution. */
export declare class InterruptHandle {
  private constructor();
  /**
   * Immediately stops the handler currently executing in the sandbox: its
   * `callHandler()` rejects with `ERR_CANCELLED` and the sandbox is poisoned
   * until `restore()`. Does nothing when no handler is running. Never blocks
   * the event loop; call it from a timer, a signal handler or any callback.
   */
  kill(): void;
}

/**
 * A point-in-time snapshot of a sandbox's state, from
 * `LoadedJSSandbox.snapshot()` (in memory) or `Snapshot.load()` (from disk).
 */
export declare class Snapshot {
  private constructor();
  /**
   * Saves the snapshot into the OCI image layout at `dir` (created if absent;
   * its parent must exist) under `tag`; resolves with the digest
   * (`sha256:…`), which `Snapshot.load()` also accepts. The runtime the
   * sandbox unloads to is saved beside it as `<tag>.runtime`.
   * @throws (rejects) `ERR_INVALID_ARG` for a bad tag; `ERR_INTERNAL` if the files cannot be written.
   */
  save(dir: string, tag: string): Promise<string>;
  /**
   * Loads a saved snapshot by tag or digest, checking every blob against its
   * digest. Rejects with `ERR_SNAPSHOT_NOT_FOUND` (no such tag or digest, no
   * layout), `ERR_SNAPSHOT_CORRUPT` (a damaged blob) or
   * `ERR_SNAPSHOT_INCOMPATIBLE` (another guest build or hyperlight version).
   */
  static load(dir: string, tagOrDigest: string): Promise<Snapshot>;
  /** Like `load()` without the digest checks: for trusted local layouts. */
  static loadUnverified(dir: string, tagOrDigest: string): Promise<Snapshot>;
  /** The digest it was loaded as; `null` for an in-memory snapshot. */
  readonly digest: string | null;
  /** The routing keys of its handlers. */
  readonly handlerNames: string[];
  /** For a snapshot from `load()`: the host functions (`module.function`) to register again. */
  readonly requiredHostFunctions: string[];
}

/**
 * From `SandboxBuilder.buildFromSnapshot()`: register the host functions the
 * snapshot needs again, then restore a sandbox from it.
 */
export declare class SandboxRestorer {
  private constructor();
  /** The host module `name`, as on `ProtoJSSandbox`. */
  hostModule(name: string): HostModule;
  /** `hostModule(moduleName).register(functionName, callback)`, chainable. */
  register(moduleName: string, functionName: string, callback: HostFunction): this;
  /** The required host functions not registered yet (`module.function`). */
  readonly missingHostFunctions: string[];
  /**
   * A sandbox in the saved state: same handlers, same JavaScript state;
   * `unload()` goes back to the saved runtime. Consumes the restorer; if it
   * rejects (`ERR_SNAPSHOT_INCOMPATIBLE` naming host functions not
   * registered) the restorer stays usable.
   */
  restoreLoadedSandbox(): Promise<LoadedJSSandbox>;
  /** A sandbox with the saved runtime and no handlers, to add handlers to. Consumes the restorer unless it rejects. */
  restoreJsSandbox(): Promise<JSSandbox>;
}
