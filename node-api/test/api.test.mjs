// Every class, method, property and error code of the spec (docs: js-host-api.md).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  SandboxBuilder,
  ProtoJSSandbox,
  JSSandbox,
  LoadedJSSandbox,
  InterruptHandle,
  Snapshot,
  ErrorCode,
} from '@hyperlight/js-host-api';
import { createRequire } from 'node:module';
import { loadedWith, rejectsWithCode, throwsWithCode } from './helpers.mjs';

const HANDLERS = {
  echo: 'function handler(e) { return e; }',
  greet: `function handler(event) { event.message = 'Hello, ' + event.name + '!'; return event; }`,
  counter: 'let n = 0; function handler(e) { n += 1; return n; }',
  throws: 'function handler(e) { throw new TypeError("bad input " + e.x); }',
  rejects: 'async function handler(e) { throw new Error("async nope"); }',
  asyncEcho: 'async function handler(e) { return { awaited: await Promise.resolve(e) }; }',
  recurse: 'function handler(e) { function f(n) { return f(n + 1) + 1; } return f(0); }',
  bigint: 'function handler(e) { return 10n; }',
  circular: 'function handler(e) { const a = {}; a.self = a; return a; }',
  undef: 'function handler(e) { return undefined; }',
  oom: 'function handler(e) { return new ArrayBuffer(256 * 1024 * 1024).byteLength; }',
  large: 'function handler(e) { return "x".repeat(e.n); }',
};

let loaded;
let base;

before(async () => {
  loaded = await loadedWith(HANDLERS);
  base = await loaded.snapshot();
});

after(async () => {
  // Nothing to close: sandboxes are freed with their objects.
});

test('the module exports every class of the spec', () => {
  for (const cls of [SandboxBuilder, ProtoJSSandbox, JSSandbox, LoadedJSSandbox, InterruptHandle, Snapshot]) {
    assert.equal(typeof cls, 'function');
  }
  assert.equal(ErrorCode.CANCELLED, 'ERR_CANCELLED');
});

test('SandboxBuilder setters are chainable and build() resolves to a ProtoJSSandbox', async () => {
  const builder = new SandboxBuilder();
  const same = builder
    .setHeapSize(8 * 1024 * 1024)
    .setStackSize(512 * 1024)
    .setInputBufferSize(64 * 1024)
    .setOutputBufferSize(64 * 1024);
  assert.equal(same, builder);
  const buildPromise = builder.build();
  assert.ok(buildPromise instanceof Promise);
  const proto = await buildPromise;
  assert.ok(proto instanceof ProtoJSSandbox);
});

test('SandboxBuilder setters reject zero, negative, fractional and non-numbers with ERR_INVALID_ARG', () => {
  const builder = new SandboxBuilder();
  for (const setter of ['setHeapSize', 'setStackSize', 'setInputBufferSize', 'setOutputBufferSize']) {
    for (const bad of [0, -1, 1.5, NaN, Infinity, '1024', undefined, null, 2 ** 60]) {
      throwsWithCode(() => builder[setter](bad), 'ERR_INVALID_ARG');
    }
  }
  // Still usable after the rejected values.
  assert.equal(builder.setHeapSize(16 * 1024 * 1024), builder);
});

test('a builder is consumed by build(): setters and a second build() fail with ERR_CONSUMED', async () => {
  const builder = new SandboxBuilder();
  await builder.build();
  throwsWithCode(() => builder.setHeapSize(1024 * 1024), 'ERR_CONSUMED');
  await rejectsWithCode(builder.build(), 'ERR_CONSUMED');
});

test('a heap too small for the runtime is ERR_INVALID_ARG from build()', async () => {
  await rejectsWithCode(new SandboxBuilder().setHeapSize(4096).build(), 'ERR_INVALID_ARG');
});

test('loadRuntime() twice fails with ERR_CONSUMED', async () => {
  const proto = await new SandboxBuilder().build();
  const first = proto.loadRuntime();
  await rejectsWithCode(proto.loadRuntime(), 'ERR_CONSUMED');
  assert.ok((await first) instanceof JSSandbox);
  throwsWithCode(() => proto.hostModule('m'), 'ERR_CONSUMED');
});

test('the Quick Start flow returns the handler value as a JS object', async () => {
  const result = await loaded.callHandler('greet', { name: 'World' });
  assert.deepEqual(result, { name: 'World', message: 'Hello, World!' });
});

test('callHandler passes any JSON value in and returns JS values, not strings', async () => {
  for (const v of [{ a: [1, 2, { b: null }] }, [1, 'two', false], 42, -1.5, 'text', true, null]) {
    assert.deepEqual(await loaded.callHandler('echo', v), v);
  }
  assert.equal(await loaded.callHandler('echo', undefined), null);
  assert.equal(await loaded.callHandler('undef', {}), null);
  assert.deepEqual(await loaded.callHandler('asyncEcho', { x: 1 }), { awaited: { x: 1 } });
  const p = loaded.callHandler('echo', 1);
  assert.ok(p instanceof Promise);
  await p;
});

test('callHandler options: gc false, both timeouts, and ERR_INVALID_ARG for bad values', async () => {
  assert.equal(await loaded.callHandler('echo', 1, { gc: false }), 1);
  assert.equal(await loaded.callHandler('echo', 2, { wallClockTimeoutMs: 60000, cpuTimeoutMs: 60000, gc: true }), 2);
  assert.equal(await loaded.callHandler('echo', 3, {}), 3);
  for (const bad of [
    { wallClockTimeoutMs: 0 },
    { cpuTimeoutMs: 0 },
    { wallClockTimeoutMs: -5 },
    { cpuTimeoutMs: 'soon' },
    { wallClockTimeoutMs: Infinity },
    { wallClockTimeoutMs: 10 * 3600 * 1000 },
    { gc: 'yes' },
  ]) {
    await rejectsWithCode(loaded.callHandler('echo', 1, bad), 'ERR_INVALID_ARG');
  }
  await rejectsWithCode(loaded.callHandler('echo', 1, 'fast'), 'ERR_INVALID_ARG');
});

test('callHandler argument errors: ERR_INVALID_ARG for an empty or non-string name and non-JSON events', async () => {
  await rejectsWithCode(loaded.callHandler('', {}), 'ERR_INVALID_ARG');
  await rejectsWithCode(loaded.callHandler(42, {}), 'ERR_INVALID_ARG');
  const circular = {};
  circular.self = circular;
  await rejectsWithCode(loaded.callHandler('echo', circular), 'ERR_INVALID_ARG');
  await rejectsWithCode(loaded.callHandler('echo', 10n), 'ERR_INVALID_ARG');
  await rejectsWithCode(loaded.callHandler('echo', () => 1), 'ERR_INVALID_ARG');
});

test('handler failures carry their codes', async () => {
  const threw = await rejectsWithCode(loaded.callHandler('throws', { x: 7 }), 'ERR_HANDLER_THREW', /bad input 7/);
  assert.match(threw.message, /TypeError/);
  await rejectsWithCode(loaded.callHandler('rejects', {}), 'ERR_HANDLER_THREW', /async nope/);
  await rejectsWithCode(loaded.callHandler('missing', {}), 'ERR_UNKNOWN_HANDLER');
  await rejectsWithCode(loaded.callHandler('bigint', {}), 'ERR_RESULT_NOT_JSON');
  await rejectsWithCode(loaded.callHandler('circular', {}), 'ERR_RESULT_NOT_JSON');
  await rejectsWithCode(loaded.callHandler('oom', {}), 'ERR_HEAP_EXHAUSTED');
  assert.equal(loaded.poisoned, false);
  // The sandbox still works after each of them.
  assert.equal(await loaded.callHandler('echo', 'ok'), 'ok');
});

test('callHandlerJson takes and returns JSON text; invalid JSON is ERR_INVALID_JSON', async () => {
  assert.equal(await loaded.callHandlerJson('echo', '{"b":1,"a":[true,null]}'), '{"b":1,"a":[true,null]}');
  assert.equal(await loaded.callHandlerJson('echo', '5', 60000, 60000, false), '5');
  await rejectsWithCode(loaded.callHandlerJson('echo', '{not json'), 'ERR_INVALID_JSON');
  await rejectsWithCode(loaded.callHandlerJson('echo', 42), 'ERR_INVALID_ARG');
});

test('deep recursion is ERR_STACK_OVERFLOW', async () => {
  await rejectsWithCode(loaded.callHandler('recurse', {}, { wallClockTimeoutMs: 60000 }), 'ERR_STACK_OVERFLOW');
  if (loaded.poisoned) await loaded.restore(base);
  assert.equal(await loaded.callHandler('echo', 1), 1);
});

test('input and output buffer sizes are enforced: ERR_INPUT_TOO_LARGE, ERR_OUTPUT_TOO_LARGE', async () => {
  const small = await loadedWith(HANDLERS, (b) => b.setInputBufferSize(1024).setOutputBufferSize(2048));
  await rejectsWithCode(small.callHandler('echo', 'x'.repeat(4096)), 'ERR_INPUT_TOO_LARGE');
  await rejectsWithCode(small.callHandler('large', { n: 8192 }), 'ERR_OUTPUT_TOO_LARGE');
  assert.equal(await small.callHandler('large', { n: 10 }), 'x'.repeat(10));
});

test('JSSandbox: addHandler/removeHandler/clearHandlers are synchronous', async () => {
  const proto = await new SandboxBuilder().build();
  const js = await proto.loadRuntime();
  assert.equal(js.addHandler('a', 'function handler(e) { return "a"; }'), undefined);
  js.addHandler('b', 'function handler(e) { return "b"; }');
  js.addHandler('c', 'function handler(e) { return "c"; }');
  assert.deepEqual(js.handlerNames, ['a', 'b', 'c']);
  assert.equal(js.removeHandler('b'), true);
  assert.equal(js.removeHandler('b'), false);
  js.clearHandlers();
  assert.deepEqual(js.handlerNames, []);
  throwsWithCode(() => js.addHandler('', 'function handler() {}'), 'ERR_INVALID_ARG');
  throwsWithCode(() => js.addHandler('x', 42), 'ERR_INVALID_ARG');
  throwsWithCode(() => js.removeHandler(''), 'ERR_INVALID_ARG');

  // A handler that does not compile: ERR_COMPILE, and the JSSandbox stays usable.
  js.addHandler('broken', 'function handler(e) { return ; ; }} oops');
  await rejectsWithCode(js.getLoadedSandbox(), 'ERR_COMPILE', /broken/);
  js.addHandler('nohandler', 'function notHandler() {}');
  js.removeHandler('broken');
  await rejectsWithCode(js.getLoadedSandbox(), 'ERR_COMPILE');
  js.removeHandler('nohandler');
  js.addHandler('good', 'function handler(e) { return e * 2; }');
  const l = await js.getLoadedSandbox();
  assert.ok(l instanceof LoadedJSSandbox);
  assert.equal(await l.callHandler('good', 21), 42);

  // Consumed by getLoadedSandbox().
  throwsWithCode(() => js.addHandler('x', 'function handler() {}'), 'ERR_CONSUMED');
  throwsWithCode(() => js.removeHandler('x'), 'ERR_CONSUMED');
  throwsWithCode(() => js.clearHandlers(), 'ERR_CONSUMED');
  await rejectsWithCode(js.getLoadedSandbox(), 'ERR_CONSUMED');
});

test('unload() returns a JSSandbox with fresh state; the unloaded sandbox is consumed', async () => {
  const l = await loadedWith({ counter: HANDLERS.counter });
  assert.equal(await l.callHandler('counter', {}), 1);
  assert.equal(await l.callHandler('counter', {}), 2);
  const js = await l.unload();
  assert.ok(js instanceof JSSandbox);
  await rejectsWithCode(l.callHandler('counter', {}), 'ERR_CONSUMED');
  await rejectsWithCode(l.unload(), 'ERR_CONSUMED');
  await rejectsWithCode(l.snapshot(), 'ERR_CONSUMED');
  assert.deepEqual(js.handlerNames, []);
  js.addHandler('counter', HANDLERS.counter);
  js.addHandler('other', 'function handler(e) { return typeof n; }');
  const again = await js.getLoadedSandbox();
  assert.equal(await again.callHandler('counter', {}), 1, 'handler state was reset by unload');
  assert.equal(await again.callHandler('other', {}), 'undefined');
});

test('calls queued before unload() still complete; calls after it fail with ERR_CONSUMED', async () => {
  const l = await loadedWith({ echo: HANDLERS.echo });
  const before = l.callHandler('echo', 'queued');
  const unloading = l.unload();
  // Settled later: catch now so the rejection is handled.
  const afterCall = l.callHandler('echo', 'late').then(
    () => assert.fail('a call after unload() must fail'),
    (e) => e
  );
  assert.equal(await before, 'queued');
  assert.ok((await unloading) instanceof JSSandbox);
  assert.equal((await afterCall).code, 'ERR_CONSUMED');
});

test('snapshot() and restore() roll JavaScript state back', async () => {
  await loaded.restore(base);
  assert.equal(await loaded.callHandler('counter', {}), 1);
  const snap = await loaded.snapshot();
  assert.ok(snap instanceof Snapshot);
  assert.equal(await loaded.callHandler('counter', {}), 2);
  assert.equal(await loaded.callHandler('counter', {}), 3);
  const restored = loaded.restore(snap);
  assert.ok(restored instanceof Promise);
  assert.equal(await restored, undefined);
  assert.equal(await loaded.callHandler('counter', {}), 2);
  await loaded.restore(base);
  assert.equal(await loaded.callHandler('counter', {}), 1);
});

test('restore() rejects a foreign snapshot or a non-snapshot with ERR_INVALID_ARG', async () => {
  const other = await loadedWith({ echo: HANDLERS.echo });
  const foreign = await other.snapshot();
  await rejectsWithCode(loaded.restore(foreign), 'ERR_INVALID_ARG');
  await rejectsWithCode(loaded.restore({}), 'ERR_INVALID_ARG');
  await rejectsWithCode(loaded.restore(undefined), 'ERR_INVALID_ARG');
  await rejectsWithCode(LoadedJSSandbox.fromSnapshot('nope'), 'ERR_INVALID_ARG');
});

test('interruptHandle is a getter returning an InterruptHandle; poisoned is a boolean property', () => {
  const desc = Object.getOwnPropertyDescriptor(LoadedJSSandbox.prototype, 'interruptHandle');
  assert.equal(typeof desc.get, 'function');
  const handle = loaded.interruptHandle;
  assert.ok(handle instanceof InterruptHandle);
  assert.equal(typeof handle.kill, 'function');
  // kill() with nothing running does nothing and does not affect the next call.
  handle.kill();
  assert.equal(typeof loaded.poisoned, 'boolean');
  assert.equal(loaded.poisoned, false);
});

test('kill() with no call running is harmless', async () => {
  loaded.interruptHandle.kill();
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(await loaded.callHandler('echo', 'still fine'), 'still fine');
});

test('fromSnapshot() gives an independent sandbox in the captured state', async () => {
  await loaded.restore(base);
  await loaded.callHandler('counter', {});
  const snap = await loaded.snapshot(); // counter = 1
  const copy = await LoadedJSSandbox.fromSnapshot(snap);
  assert.ok(copy instanceof LoadedJSSandbox);
  assert.equal(await copy.callHandler('counter', {}), 2);
  assert.equal(await copy.callHandler('counter', {}), 3);
  assert.equal(await loaded.callHandler('counter', {}), 2, 'the original is not affected by the copy');
  await copy.restore(snap);
  assert.equal(await copy.callHandler('counter', {}), 2);
});

test('every engine error reaches JavaScript as an Error with its code (sync throw and rejection)', async () => {
  const require = createRequire(import.meta.url);
  const native = require('../lib/binding.js');
  const codes = native._engineErrorCodes();
  // The spec's table, and every code the engine has, are known to ErrorCode.
  for (const code of ['ERR_INVALID_ARG', 'ERR_CONSUMED', 'ERR_POISONED', 'ERR_CANCELLED', 'ERR_STACK_OVERFLOW', 'ERR_GUEST_ABORT', 'ERR_INTERNAL']) {
    assert.ok(codes.includes(code), code);
  }
  assert.deepEqual([...codes].sort(), Object.values(ErrorCode).sort());
  for (const code of codes) {
    const thrown = throwsWithCode(() => native._throwEngineError(code), code);
    assert.ok(thrown.message.length > 0);
    const rejected = await rejectsWithCode(native._rejectEngineError(code), code);
    assert.equal(rejected.message, thrown.message);
  }
  const threw = await rejectsWithCode(native._rejectEngineError('ERR_HANDLER_THREW'), 'ERR_HANDLER_THREW');
  assert.equal(threw.guestStack, 'at handler');
});
