// Host functions: proto.hostModule(name).register(fnName, callback).
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { SandboxBuilder, HostModule } from '@hyperlight/js-host-api';
import { rejectsWithCode, throwsWithCode } from './helpers.mjs';

let loaded;
let snap;
const calls = [];

before(async () => {
  const proto = await new SandboxBuilder().build();
  const math = proto.hostModule('math');
  assert.ok(math instanceof HostModule);
  assert.equal(math.name, 'math');
  const chained = math
    .register('add', (a, b) => {
      calls.push(['add', a, b]);
      return a + b;
    })
    .register('slowDouble', async (x) => {
      await new Promise((r) => setTimeout(r, 50));
      return x * 2;
    });
  assert.equal(chained, math);
  proto
    .hostModule('util')
    .register('fail', () => {
      throw new RangeError('host says no');
    })
    .register('reject', async () => {
      throw new Error('async host says no');
    })
    .register('rejectString', () => Promise.reject('plain string'))
    .register('object', (o) => ({ got: o, keys: Object.keys(o).sort() }))
    .register('nothing', () => undefined)
    .register('bytes', (b) => ({ isBuffer: Buffer.isBuffer(b), sum: [...b].reduce((x, y) => x + y, 0) }))
    .register('notJson', () => 10n)
    .register('hang', () => new Promise(() => {}));

  throwsWithCode(() => proto.hostModule('m').register('f', 'not a function'), 'ERR_INVALID_ARG');
  throwsWithCode(() => proto.hostModule('m').register('not an identifier', () => 1), 'ERR_INVALID_ARG');
  throwsWithCode(() => proto.hostModule('bad module').register('f', () => 1), 'ERR_INVALID_ARG');
  throwsWithCode(() => proto.hostModule(5), 'ERR_INVALID_ARG');

  const js = await proto.loadRuntime();
  js.addHandler(
    'calc',
    `function handler(e) {
       return { sum: host.math.add(e.a, e.b), doubled: host.math.slowDouble(e.a) };
     }`
  );
  js.addHandler(
    'errors',
    `function handler(e) {
       const out = {};
       for (const f of ['fail', 'reject', 'rejectString', 'notJson']) {
         try { host.util[f](); out[f] = 'no error'; } catch (x) { out[f] = String(x.message); }
       }
       return out;
     }`
  );
  js.addHandler('passthrough', 'function handler(e) { return [host.util.object(e), host.util.nothing()]; }');
  js.addHandler('bigArgs', 'function handler(e) { return host.util.object({ text: e.text }).got.text.length; }');
  js.addHandler('bytes', 'function handler(e) { return host.util.bytes(new Uint8Array([1, 2, 3, 250])); }');
  js.addHandler('unknown', 'function handler(e) { return typeof host.nope; }');
  js.addHandler('hang', 'function handler(e) { try { return host.util.hang(); } catch (x) { return "caught: " + x.message; } }');
  loaded = await js.getLoadedSandbox();
  snap = await loaded.snapshot();
});

test('sync and async host functions return values to the handler', async () => {
  assert.deepEqual(await loaded.callHandler('calc', { a: 20, b: 22 }), { sum: 42, doubled: 40 });
  assert.deepEqual(calls.at(-1), ['add', 20, 22]);
});

test('errors thrown or rejected by host functions reach the handler as exceptions', async () => {
  const out = await loaded.callHandler('errors', {});
  assert.match(out.fail, /host says no/);
  assert.match(out.reject, /async host says no/);
  assert.match(out.rejectString, /plain string/);
  assert.match(out.notJson, /not JSON-serializable/);
});

test('host functions receive and return JSON values', async () => {
  const event = { x: 1, nested: { y: [1, 2] } };
  assert.deepEqual(await loaded.callHandler('passthrough', event), [{ got: event, keys: ['nested', 'x'] }, null]);
});

test('binary arguments reach host functions as Buffers', async () => {
  assert.deepEqual(await loaded.callHandler('bytes', {}), { isBuffer: true, sum: 256 });
});

test('a module that was not registered is not defined in the guest', async () => {
  assert.equal(await loaded.callHandler('unknown', {}), 'undefined');
});

test('the event loop serves other work while a host function is awaited', async () => {
  let ticks = 0;
  const interval = setInterval(() => ticks++, 5);
  await Promise.all([loaded.callHandler('calc', { a: 1, b: 2 }), loaded.callHandler('calc', { a: 3, b: 4 })]);
  clearInterval(interval);
  assert.ok(ticks > 0);
});

test('a wall-clock timeout stops a handler waiting on a host function that never settles', async () => {
  const t0 = Date.now();
  await rejectsWithCode(loaded.callHandler('hang', {}, { wallClockTimeoutMs: 400 }), 'ERR_CANCELLED', /wall-clock/);
  const elapsed = Date.now() - t0;
  assert.ok(elapsed >= 350 && elapsed < 10000, `cancelled after ${elapsed} ms`);
  assert.equal(loaded.poisoned, true);
  await loaded.restore(snap);
  assert.deepEqual(await loaded.callHandler('calc', { a: 1, b: 1 }), { sum: 2, doubled: 2 });
});

test('kill() stops a handler waiting on a host function', async () => {
  const handle = loaded.interruptHandle;
  setTimeout(() => handle.kill(), 300);
  const t0 = Date.now();
  await rejectsWithCode(loaded.callHandler('hang', {}), 'ERR_CANCELLED', /kill/);
  assert.ok(Date.now() - t0 < 10000);
  await loaded.restore(snap);
  assert.equal(loaded.poisoned, false);
});

test('host function state is isolated per sandbox', async () => {
  async function counterSandbox(label) {
    const proto = await new SandboxBuilder().build();
    let count = 0;
    proto.hostModule('state').register('next', () => `${label}:${++count}`);
    const js = await proto.loadRuntime();
    js.addHandler('next', 'function handler() { return host.state.next(); }');
    return js.getLoadedSandbox();
  }
  const [a, b] = await Promise.all([counterSandbox('a'), counterSandbox('b')]);
  assert.equal(await a.callHandler('next', {}), 'a:1');
  assert.equal(await a.callHandler('next', {}), 'a:2');
  assert.equal(await b.callHandler('next', {}), 'b:1');
});

test('registering after loadRuntime() fails with ERR_CONSUMED', async () => {
  const proto = await new SandboxBuilder().build();
  const mod = proto.hostModule('late');
  await proto.loadRuntime();
  throwsWithCode(() => mod.register('f', () => 1), 'ERR_CONSUMED');
  await rejectsWithCode(proto.loadRuntime(), 'ERR_CONSUMED');
});

test('host functions take and return arguments of hundreds of kilobytes', async () => {
  // Arguments and answer each need an output-sized transport buffer at once.
  const text = 'x'.repeat(200_000);
  assert.equal(await loaded.callHandler('bigArgs', { text }), 200_000);
});
