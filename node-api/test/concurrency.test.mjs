// Many sandboxes from one event loop, and concurrent calls on one sandbox.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { LoadedJSSandbox } from '@hyperlight/js-host-api';
import { loadedWith, rejectsWithCode, SPIN } from './helpers.mjs';

const HANDLERS = {
  remember: 'let mine = null; let n = 0; function handler(e) { if (mine === null) mine = e.id; n += 1; return { mine, n, id: e.id }; }',
  spin: SPIN,
  echo: 'function handler(e) { return e; }',
};

let seed;
let snap;

before(async () => {
  seed = await loadedWith(HANDLERS);
  snap = await seed.snapshot();
});

test('20 sandboxes used concurrently through Promise.all stay isolated', async () => {
  const N = 20;
  const sandboxes = await Promise.all(Array.from({ length: N }, () => LoadedJSSandbox.fromSnapshot(snap)));
  assert.equal(new Set(sandboxes).size, N);
  for (let round = 1; round <= 3; round++) {
    const results = await Promise.all(sandboxes.map((s, i) => s.callHandler('remember', { id: i })));
    results.forEach((r, i) => assert.deepEqual(r, { mine: i, n: round, id: i }));
  }
  // The seed sandbox is untouched by its copies.
  assert.deepEqual(await seed.callHandler('remember', { id: 'seed' }), { mine: 'seed', n: 1, id: 'seed' });
  await seed.restore(snap);
});

test('freshly built sandboxes load and run concurrently', async () => {
  const [a, b] = await Promise.all([loadedWith(HANDLERS), loadedWith(HANDLERS)]);
  const [ra, rb] = await Promise.all([a.callHandler('echo', 'a'), b.callHandler('echo', 'b')]);
  assert.equal(ra, 'a');
  assert.equal(rb, 'b');
});

test('concurrent calls on one sandbox are serialized in call order', async () => {
  const results = await Promise.all(Array.from({ length: 10 }, (_, i) => seed.callHandler('remember', { id: i })));
  assert.deepEqual(
    results.map((r) => r.n),
    Array.from({ length: 10 }, (_, i) => i + 1)
  );
  assert.ok(results.every((r) => r.mine === 0));
  await seed.restore(snap);
});

test('mixed concurrent operations on one sandbox never crash', async () => {
  const copy = await LoadedJSSandbox.fromSnapshot(snap);
  const ops = [];
  for (let i = 0; i < 6; i++) {
    ops.push(copy.callHandler('echo', i));
    ops.push(copy.snapshot().then((s) => copy.restore(s)));
  }
  ops.push(copy.callHandler('missing', 1).catch((e) => e.code));
  const out = await Promise.all(ops);
  assert.equal(out.at(-1), 'ERR_UNKNOWN_HANDLER');
  assert.deepEqual(out.filter((_, i) => i % 2 === 0 && i < 12), [0, 1, 2, 3, 4, 5]);
});

test('a killed sandbox does not disturb others running at the same time', async () => {
  const [victim, bystander] = await Promise.all([LoadedJSSandbox.fromSnapshot(snap), LoadedJSSandbox.fromSnapshot(snap)]);
  setTimeout(() => victim.interruptHandle.kill(), 300);
  const [killed, fine] = await Promise.allSettled([
    victim.callHandler('spin', { ms: 20000 }),
    bystander.callHandler('spin', { ms: 800 }),
  ]);
  assert.equal(killed.status, 'rejected');
  assert.equal(killed.reason.code, 'ERR_CANCELLED');
  assert.equal(fine.status, 'fulfilled');
  assert.equal(victim.poisoned, true);
  assert.equal(bystander.poisoned, false);
  await rejectsWithCode(victim.callHandler('echo', 1), 'ERR_POISONED');
});
