// Binary data: Buffer / Uint8Array / ArrayBuffer in events and results.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { loadedWith } from './helpers.mjs';

let loaded;

before(async () => {
  loaded = await loadedWith({
    inspect: `function handler(e) {
      return { isU8: e.data instanceof Uint8Array, length: e.data.length, first: e.data[0], last: e.data[e.data.length - 1] };
    }`,
    invert: 'function handler(e) { return e.data.map((b) => 255 - b); }',
    nested: 'function handler(e) { return { list: [new Uint8Array([1]), { deep: new Uint8Array([2, 3]) }], buf: new Uint8Array([4]).buffer, plain: "x" }; }',
    echo: 'function handler(e) { return e; }',
  });
});

test('a Buffer in the event arrives as a Uint8Array in the handler', async () => {
  const data = Buffer.from([0, 1, 2, 254, 255]);
  assert.deepEqual(await loaded.callHandler('inspect', { data }), { isU8: true, length: 5, first: 0, last: 255 });
});

test('Uint8Array (also a view into a larger buffer) and ArrayBuffer are sent', async () => {
  const big = new Uint8Array([9, 9, 7, 8, 9, 9]);
  const view = big.subarray(2, 4);
  assert.deepEqual(await loaded.callHandler('inspect', { data: view }), { isU8: true, length: 2, first: 7, last: 8 });
  const ab = new Uint8Array([5, 6, 7]).buffer;
  assert.deepEqual(await loaded.callHandler('inspect', { data: ab }), { isU8: true, length: 3, first: 5, last: 7 });
});

test('a Uint8Array result comes back as a Buffer', async () => {
  const out = await loaded.callHandler('invert', { data: Buffer.from([0, 10, 255]) });
  assert.ok(Buffer.isBuffer(out));
  assert.deepEqual([...out], [255, 245, 0]);
});

test('binary values nested in results are decoded recursively', async () => {
  const out = await loaded.callHandler('nested', {});
  assert.deepEqual([...out.list[0]], [1]);
  assert.deepEqual([...out.list[1].deep], [2, 3]);
  assert.ok(Buffer.isBuffer(out.buf));
  assert.deepEqual([...out.buf], [4]);
  assert.equal(out.plain, 'x');
});

test('binary round trip of a larger and an empty payload', async () => {
  const payload = Buffer.alloc(100 * 1024);
  for (let i = 0; i < payload.length; i++) payload[i] = (i * 31) & 0xff;
  const out = await loaded.callHandler('echo', { payload, empty: Buffer.alloc(0) });
  assert.ok(out.payload.equals(payload));
  assert.equal(out.empty.length, 0);
});

test('objects that merely look like the tag with other keys stay plain objects', async () => {
  const v = { __hl_bytes: 'AAAA', other: 1 };
  assert.deepEqual(await loaded.callHandler('echo', v), v);
});
