// Handlers as ES modules: `host:<module>` imports, JSSandbox.addModule(),
// export forms of `handler`, isolation between keys, snapshot/restore, and
// ERR_COMPILE for modules that do not load.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { SandboxBuilder } from '@hyperlight/js-host-api';
import { rejectsWithCode, throwsWithCode } from './helpers.mjs';

async function runtime() {
  const proto = await new SandboxBuilder().build();
  proto.hostModule('math').register('add', (a, b) => a + b).register('mul', (a, b) => a * b);
  return proto.loadRuntime();
}

let loaded;

before(async () => {
  const js = await runtime();
  // "a_geo" imports "z_consts", added (and compiled) after it.
  js.addModule('a_geo', `import { PI } from "z_consts"; import * as math from "host:math";
    export function area(r) { return math.mul(PI, math.mul(r, r)); }`);
  js.addModule('z_consts', 'export const PI = 3;');
  js.addModule('strings', 'export const up = (s) => s.toUpperCase();', 'mylib');
  js.addHandler('star', 'import * as m from "host:math"; function handler(e) { return m.add(e.a, e.b); }');
  js.addHandler('named', 'import { add } from "host:math"; export function handler(e) { return { sum: add(e.a, e.b), legacy: host.math.add(1, 2) }; }');
  js.addHandler('default', "export default function (e) { return 'default:' + e.x; }");
  js.addHandler('embedded', `import { area } from "a_geo"; import { PI } from "user:z_consts"; import { up } from "mylib:strings";
    export function handler(e) { return [area(e.r), PI, up('x')]; }`);
  js.addHandler('count_a', 'let n = 0; export function handler() { n += 1; return n; }');
  js.addHandler('count_b', 'export function handler() { return typeof n; }');
  loaded = await js.getLoadedSandbox();
});

test('import * as m / import { f } from "host:m" reach host functions; host.m.f still works', async () => {
  assert.equal(await loaded.callHandler('star', { a: 2, b: 40 }), 42);
  assert.deepEqual(await loaded.callHandler('named', { a: 1, b: 2 }), { sum: 3, legacy: 3 });
});

test('export default function works as the handler', async () => {
  assert.equal(await loaded.callHandler('default', { x: 7 }), 'default:7');
});

test('addModule: modules import each other, host modules and namespaces', async () => {
  assert.deepEqual(await loaded.callHandler('embedded', { r: 2 }), [12, 3, 'X']);
});

test('module-local state stays per key and is rolled back by restore', async () => {
  const snap = await loaded.snapshot();
  assert.equal(await loaded.callHandler('count_a', {}), 1);
  assert.equal(await loaded.callHandler('count_a', {}), 2);
  assert.equal(await loaded.callHandler('count_b', {}), 'undefined');
  await loaded.restore(snap);
  assert.equal(await loaded.callHandler('count_a', {}), 1);
  assert.deepEqual(await loaded.callHandler('embedded', { r: 1 }), [3, 3, 'X']);
});

test('modules that do not parse or resolve are ERR_COMPILE naming them; the sandbox stays usable', async () => {
  const js = await runtime();
  throwsWithCode(() => js.addModule('', 'export {}'), 'ERR_INVALID_ARG');
  throwsWithCode(() => js.addModule('m', 'export {}', 'host'), 'ERR_INVALID_ARG');
  throwsWithCode(() => js.addModule('m', 42), 'ERR_INVALID_ARG');
  js.addHandler('h', 'export function handler() { return 1; }');
  js.addModule('broken', 'export const = 1;');
  await rejectsWithCode(js.getLoadedSandbox(), 'ERR_COMPILE', /module 'broken'.*SyntaxError/);
  assert.equal(js.removeModule('broken'), true);
  js.addModule('uses', 'import { y } from "missing"; export const z = 1;');
  await rejectsWithCode(js.getLoadedSandbox(), 'ERR_COMPILE', /module 'uses'.*'missing'/);
  js.clearModules();
  js.addHandler('h', 'import * as m from "host:nope"; export function handler() {}');
  await rejectsWithCode(js.getLoadedSandbox(), 'ERR_COMPILE', /handler 'h'.*host module 'nope'/);
  js.addHandler('h', 'import { sub } from "host:math"; export function handler() {}');
  await rejectsWithCode(js.getLoadedSandbox(), 'ERR_COMPILE', /handler 'h'.*'sub'/);
  js.addModule('m', 'export const v = 5;');
  js.addHandler('h', 'import { v } from "m"; export function handler() { return v; }');
  const l = await js.getLoadedSandbox();
  assert.equal(await l.callHandler('h', {}), 5);
});
