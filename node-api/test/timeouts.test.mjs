// Wall-clock and CPU monitors, kill() from a timer, recovery by restore(),
// and the event loop staying free while a handler runs.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { loadedWith, rejectsWithCode, SPIN, FOREVER } from './helpers.mjs';

let loaded;
let snap;

before(async () => {
  loaded = await loadedWith({
    spin: SPIN,
    forever: FOREVER,
    echo: 'function handler(e) { return e; }',
  });
  snap = await loaded.snapshot();
});

async function recover() {
  assert.equal(loaded.poisoned, true, 'a cancelled call poisons the sandbox');
  await rejectsWithCode(loaded.callHandler('echo', 1), 'ERR_POISONED');
  await rejectsWithCode(loaded.snapshot(), 'ERR_POISONED');
  await loaded.restore(snap);
  assert.equal(loaded.poisoned, false);
  assert.equal(await loaded.callHandler('echo', 'back'), 'back');
}

test('wall-clock timeout cancels a long handler with ERR_CANCELLED; restore() recovers', async () => {
  const t0 = Date.now();
  const err = await rejectsWithCode(
    loaded.callHandler('spin', { ms: 20000 }, { wallClockTimeoutMs: 500 }),
    'ERR_CANCELLED',
    /wall-clock/
  );
  const elapsed = Date.now() - t0;
  assert.ok(elapsed >= 450, `fired after ${elapsed} ms`);
  assert.ok(elapsed < 10000, `fired after ${elapsed} ms`);
  assert.ok(err.message.includes('500 ms'));
  await recover();
});

test('CPU timeout cancels a compute-bound handler with ERR_CANCELLED; restore() recovers', async () => {
  const t0 = Date.now();
  await rejectsWithCode(loaded.callHandler('forever', {}, { cpuTimeoutMs: 400 }), 'ERR_CANCELLED', /CPU/);
  const elapsed = Date.now() - t0;
  assert.ok(elapsed >= 350 && elapsed < 15000, `fired after ${elapsed} ms`);
  await recover();
});

test('both monitors: the CPU monitor fires first for compute-bound work (OR semantics)', async () => {
  const t0 = Date.now();
  await rejectsWithCode(
    loaded.callHandler('forever', {}, { wallClockTimeoutMs: 20000, cpuTimeoutMs: 400 }),
    'ERR_CANCELLED',
    /CPU-time/
  );
  assert.ok(Date.now() - t0 < 15000);
  await recover();
});

test('both monitors: the wall-clock monitor fires first when it is the shorter one', async () => {
  await rejectsWithCode(
    loaded.callHandler('forever', {}, { wallClockTimeoutMs: 300, cpuTimeoutMs: 20000 }),
    'ERR_CANCELLED',
    /wall-clock/
  );
  await recover();
});

test('a handler that finishes within its limits is not affected by them', async () => {
  assert.equal(await loaded.callHandler('echo', 5, { wallClockTimeoutMs: 30000, cpuTimeoutMs: 30000 }), 5);
  assert.equal(loaded.poisoned, false);
});

test('interruptHandle.kill() from a timer stops a running handler', async () => {
  const handle = loaded.interruptHandle;
  const t0 = Date.now();
  const timer = setTimeout(() => handle.kill(), 300);
  await rejectsWithCode(loaded.callHandler('spin', { ms: 20000 }), 'ERR_CANCELLED', /kill/);
  clearTimeout(timer);
  const elapsed = Date.now() - t0;
  assert.ok(elapsed >= 250 && elapsed < 10000, `killed after ${elapsed} ms`);
  await recover();
});

test('the event loop keeps running while a handler runs', async () => {
  let ticks = 0;
  const interval = setInterval(() => ticks++, 10);
  const t0 = Date.now();
  const result = await loaded.callHandler('spin', { ms: 1500 });
  const elapsed = Date.now() - t0;
  clearInterval(interval);
  assert.equal(typeof result, 'number');
  // ~150 ticks are possible; a blocked loop would give 0 or 1.
  assert.ok(ticks >= 20, `only ${ticks} ticks in ${elapsed} ms`);
});

test('a kill does not leak into the next call', async () => {
  const handle = loaded.interruptHandle;
  setTimeout(() => handle.kill(), 200);
  await rejectsWithCode(loaded.callHandler('forever', {}), 'ERR_CANCELLED');
  await loaded.restore(snap);
  assert.equal(await loaded.callHandler('spin', { ms: 300 }) > 0, true);
});
