// Upstream hyperlight-js's names beside the spec's: setScratchSize, proto.register,
// empty names, JSSandbox.poisoned, lastCallStats; and host-call cancellation.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SandboxBuilder } from '@hyperlight/js-host-api';
import { FOREVER, loadedWith, rejectsWithCode, throwsWithCode } from './helpers.mjs';

test('setScratchSize is chainable, validated, and beside setStackSize', async () => {
  const b = new SandboxBuilder();
  assert.equal(b.setScratchSize(64 * 1024 * 1024).setStackSize(512 * 1024), b);
  throwsWithCode(() => new SandboxBuilder().setScratchSize(0), 'ERR_INVALID_ARG');
  throwsWithCode(() => new SandboxBuilder().setScratchSize(-1), 'ERR_INVALID_ARG');
  const loaded = await loadedWith({ echo: 'function handler(e) { return e; }' }, (x) => x.setScratchSize(1));
  assert.deepEqual(await loaded.callHandler('echo', { a: 1 }), { a: 1 });
});

test('proto.register(module, fn, cb) is hostModule(module).register(fn, cb)', async () => {
  const proto = await new SandboxBuilder().build();
  assert.equal(proto.register('math', 'add', (a, b) => a + b), proto);
  throwsWithCode(() => proto.hostModule(''), 'ERR_INVALID_ARG');
  throwsWithCode(() => proto.register('', 'f', () => 0), 'ERR_INVALID_ARG');
  throwsWithCode(() => proto.register('m', '', () => 0), 'ERR_INVALID_ARG');
  throwsWithCode(() => proto.hostModule('m').register('', () => 0), 'ERR_INVALID_ARG');
  const js = await proto.loadRuntime();
  assert.equal(js.poisoned, false);
  js.addHandler('sum', 'function handler(e) { return host.math.add(e.a, e.b); }');
  const loaded = await js.getLoadedSandbox();
  assert.equal(await loaded.callHandler('sum', { a: 2, b: 3 }), 5);
});

test('lastCallStats after a normal call, a throw, a CPU stop and a wall stop', async () => {
  const loaded = await loadedWith({
    echo: 'function handler(e) { return e; }',
    throws: 'function handler(e) { throw new Error("no"); }',
    forever: FOREVER,
  });
  assert.equal(loaded.lastCallStats, null);
  await loaded.callHandler('echo', {});
  let s = loaded.lastCallStats;
  assert.deepEqual(Object.keys(s).sort(), ['cpuTimeMs', 'terminatedBy', 'wallClockMs']);
  assert.equal(s.terminatedBy, null);
  assert.ok(s.wallClockMs > 0 && s.cpuTimeMs <= s.wallClockMs + 5, JSON.stringify(s));
  await rejectsWithCode(loaded.callHandler('throws', {}), 'ERR_HANDLER_THREW');
  assert.equal(loaded.lastCallStats.terminatedBy, null);
  const snap = await loaded.snapshot();
  await rejectsWithCode(loaded.callHandler('forever', {}, { cpuTimeoutMs: 200 }), 'ERR_CANCELLED');
  s = loaded.lastCallStats;
  assert.equal(s.terminatedBy, 'cpu');
  assert.ok(s.cpuTimeMs >= 200, JSON.stringify(s));
  await loaded.restore(snap);
  await rejectsWithCode(loaded.callHandler('forever', {}, { wallClockTimeoutMs: 200 }), 'ERR_CANCELLED');
  s = loaded.lastCallStats;
  assert.equal(s.terminatedBy, 'wall');
  assert.ok(s.wallClockMs >= 200, JSON.stringify(s));
});

test('a wall-clock stop reaches a call stuck in a host function at once', async () => {
  const proto = await new SandboxBuilder().build();
  proto.register('slow', 'wait', () => new Promise((r) => setTimeout(() => r('late'), 3000).unref()));
  const js = await proto.loadRuntime();
  js.addHandler('stuck', 'function handler(e) { return host.slow.wait(); }');
  js.addHandler('echo', 'function handler(e) { return e; }');
  const stuck = await js.getLoadedSandbox();
  const snap = await stuck.snapshot();
  const other = await (await import('@hyperlight/js-host-api')).LoadedJSSandbox.fromSnapshot(snap);
  const start = Date.now();
  const pending = rejectsWithCode(stuck.callHandler('stuck', {}, { wallClockTimeoutMs: 200 }), 'ERR_CANCELLED');
  // The other sandbox keeps serving meanwhile.
  assert.deepEqual(await other.callHandler('echo', { n: 1 }), { n: 1 });
  await pending;
  const took = Date.now() - start;
  assert.ok(took < 400, `took ${took} ms`);
  assert.equal(stuck.poisoned, true);
  assert.equal(stuck.lastCallStats.terminatedBy, 'wall');
});
