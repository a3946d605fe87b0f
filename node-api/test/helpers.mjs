// Shared helpers for the test suite (node --test).
import assert from 'node:assert/strict';
import { SandboxBuilder } from '@hyperlight/js-host-api';

/** Builds a sandbox, loads the runtime, adds `handlers` ({ key: code }) and loads them. */
export async function loadedWith(handlers, configure = (b) => b) {
  const proto = await configure(new SandboxBuilder()).build();
  const js = await proto.loadRuntime();
  for (const [key, code] of Object.entries(handlers)) js.addHandler(key, code);
  return js.getLoadedSandbox();
}

/** Asserts that `promiseOrFn` rejects (or throws) an Error whose `code` is `code`. */
export async function rejectsWithCode(promiseOrFn, code, messageRe) {
  let err;
  try {
    await (typeof promiseOrFn === 'function' ? promiseOrFn() : promiseOrFn);
  } catch (e) {
    err = e;
  }
  assert.ok(err, `expected an error with code ${code}, got success`);
  assert.ok(err instanceof Error, `expected an Error, got ${String(err)}`);
  assert.equal(err.code, code, `expected ${code}, got ${err.code}: ${err.message}`);
  if (messageRe) assert.match(err.message, messageRe);
  return err;
}

/** Asserts that `fn()` throws synchronously an Error whose `code` is `code`. */
export function throwsWithCode(fn, code) {
  let err;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  assert.ok(err, `expected a synchronous throw with code ${code}`);
  assert.ok(err instanceof Error);
  assert.equal(err.code, code, `expected ${code}, got ${err.code}: ${err.message}`);
  return err;
}

/** A handler that busy-loops for `event.ms` milliseconds (reads the clock). */
export const SPIN = 'function handler(e) { const end = Date.now() + e.ms; let i = 0; while (Date.now() < end) { i++; } return i; }';
/** A handler that loops forever without calling out of the VM. */
export const FOREVER = 'function handler(e) { let i = 0; for (;;) { i++; } }';
