// Persisted snapshots: snapshot.save(dir, tag) → digest, Snapshot.load(dir,
// tagOrDigest) (checked) and loadUnverified, SandboxBuilder.buildFromSnapshot
// → SandboxRestorer (host functions again) → restoreLoadedSandbox() /
// restoreJsSandbox(); unload() of a restored sandbox; the error codes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, readdir, readFile, writeFile, rename, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SandboxBuilder, Snapshot, SandboxRestorer, LoadedJSSandbox, ErrorCode } from '@hyperlight/js-host-api';
import { rejectsWithCode } from './helpers.mjs';

const COUNTER = 'let count = 0; function handler(e) { count += 1; return { count }; }';
const SUM = 'function handler(e) { return host.math.add(e.a, e.b); }';

async function withDir(fn) {
  const dir = await mkdtemp(join(tmpdir(), 'hljs-node-snap-'));
  try {
    return await fn(join(dir, 'layout'), dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** A sandbox with `counter` (run once) and `sum` (uses host.math.add). */
async function original() {
  const proto = await new SandboxBuilder().build();
  proto.hostModule('math').register('add', (a, b) => a + b);
  const js = await proto.loadRuntime();
  js.addHandler('counter', COUNTER);
  js.addHandler('sum', SUM);
  const loaded = await js.getLoadedSandbox();
  assert.deepEqual(await loaded.callHandler('counter', {}), { count: 1 });
  return loaded;
}

async function saved(layout) {
  const loaded = await original();
  return (await loaded.snapshot()).save(layout, 'app');
}

test('save → load → restoreLoadedSandbox gives the state that was saved', { timeout: 120_000 }, () =>
  withDir(async (layout) => {
    const loaded = await original();
    const snapshot = await loaded.snapshot();
    assert.equal(snapshot.digest, null);
    const digest = await snapshot.save(layout, 'app');
    assert.match(digest, /^sha256:[0-9a-f]{64}$/);

    for (const persisted of [
      await Snapshot.load(layout, 'app'),
      await Snapshot.load(layout, digest),
      await Snapshot.loadUnverified(layout, 'app'),
    ]) {
      assert.ok(persisted instanceof Snapshot);
      assert.equal(persisted.digest, digest);
      assert.deepEqual(persisted.handlerNames, ['counter', 'sum']);
      assert.deepEqual(persisted.requiredHostFunctions, ['math.add']);
      const restorer = await new SandboxBuilder().buildFromSnapshot(persisted);
      assert.ok(restorer instanceof SandboxRestorer);
      assert.deepEqual(restorer.missingHostFunctions, ['math.add']);
      restorer.register('math', 'add', (a, b) => a + b);
      assert.deepEqual(restorer.missingHostFunctions, []);
      const restored = await restorer.restoreLoadedSandbox();
      assert.ok(restored instanceof LoadedJSSandbox);
      assert.deepEqual(await restored.callHandler('counter', {}), { count: 2 });
      assert.equal(await restored.callHandler('sum', { a: 2, b: 3 }), 5);
      // Its own snapshots work as for any sandbox.
      const again = await restored.snapshot();
      await restored.callHandler('counter', {});
      await restored.restore(again);
      assert.deepEqual(await restored.callHandler('counter', {}), { count: 3 });
      await rejectsWithCode(restorer.restoreLoadedSandbox(), ErrorCode.CONSUMED);
    }
    // An in-memory snapshot is not for buildFromSnapshot, a loaded one not for restore.
    await rejectsWithCode(new SandboxBuilder().buildFromSnapshot(snapshot), ErrorCode.INVALID_ARG);
    const persisted = await Snapshot.load(layout, 'app');
    await rejectsWithCode(loaded.restore(persisted), ErrorCode.INVALID_ARG);
    await rejectsWithCode(LoadedJSSandbox.fromSnapshot(persisted), ErrorCode.INVALID_ARG);
  }));

test('unload() of a restored sandbox goes back to the saved runtime; restoreJsSandbox()', { timeout: 120_000 }, () =>
  withDir(async (layout) => {
    await saved(layout);
    const persisted = await Snapshot.load(layout, 'app');
    const restorer = await new SandboxBuilder().buildFromSnapshot(persisted);
    restorer.register('math', 'add', (a, b) => a + b);
    const restored = await restorer.restoreLoadedSandbox();
    const js = await restored.unload();
    assert.deepEqual(js.handlerNames, []);
    js.addHandler('counter', COUNTER);
    js.addHandler('sum', SUM);
    const fresh = await js.getLoadedSandbox();
    assert.deepEqual(await fresh.callHandler('counter', {}), { count: 1 });
    assert.equal(await fresh.callHandler('sum', { a: 1, b: 1 }), 2);

    const r2 = await new SandboxBuilder().buildFromSnapshot(persisted);
    r2.hostModule('math').register('add', (a, b) => a * 100 + b);
    const js2 = await r2.restoreJsSandbox();
    js2.addHandler('sum', SUM);
    const l2 = await js2.getLoadedSandbox();
    assert.equal(await l2.callHandler('sum', { a: 1, b: 2 }), 102);
  }));

test('missing host functions reject with ERR_SNAPSHOT_INCOMPATIBLE and hand the restorer back', { timeout: 120_000 }, () =>
  withDir(async (layout) => {
    await saved(layout);
    const persisted = await Snapshot.load(layout, 'app');
    const restorer = await new SandboxBuilder().buildFromSnapshot(persisted);
    await rejectsWithCode(restorer.restoreLoadedSandbox(), ErrorCode.SNAPSHOT_INCOMPATIBLE, /math\.add/);
    restorer.register('math', 'add', (a, b) => a + b);
    const restored = await restorer.restoreLoadedSandbox();
    assert.equal(await restored.callHandler('sum', { a: 1, b: 2 }), 3);
    await rejectsWithCode(
      new SandboxBuilder().setHeapSize(64 * 1024 * 1024).buildFromSnapshot(persisted),
      ErrorCode.INVALID_ARG
    );
  }));

test('a missing tag, a corrupted blob and another guest build fail with their codes', { timeout: 120_000 }, () =>
  withDir(async (layout, root) => {
    await saved(layout);
    await rejectsWithCode(Snapshot.load(layout, 'nope'), ErrorCode.SNAPSHOT_NOT_FOUND);
    await rejectsWithCode(Snapshot.load(join(root, 'missing'), 'app'), ErrorCode.SNAPSHOT_NOT_FOUND);
    await rejectsWithCode(Snapshot.load(layout, 'bad tag'), ErrorCode.INVALID_ARG);
    await rejectsWithCode(Snapshot.load(layout, 42), ErrorCode.INVALID_ARG);

    // Tampered metadata (another guest build): incompatible.
    const index = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8'));
    const entry = index.manifests.find((d) => d.annotations['org.opencontainers.image.ref.name'] === 'app');
    const blob = (digest) => join(layout, 'blobs', 'sha256', digest.slice('sha256:'.length));
    const manifest = JSON.parse(await readFile(blob(entry.digest), 'utf8'));
    const configPath = blob(manifest.config.digest);
    const original = await readFile(configPath);
    const config = JSON.parse(original);
    config.metadata['hyperlight-js-workers.engine'].guest_build = '0'.repeat(64);
    await replace(configPath, JSON.stringify(config));
    await rejectsWithCode(Snapshot.load(layout, 'app'), ErrorCode.SNAPSHOT_INCOMPATIBLE, /guest build/);
    await replace(configPath, original);

    // A flipped byte in the memory images: corrupt (checked load).
    for (const name of await readdir(join(layout, 'blobs', 'sha256'))) {
      const path = join(layout, 'blobs', 'sha256', name);
      if ((await stat(path)).size > 1 << 20) {
        const bytes = await readFile(path);
        bytes[bytes.length >> 1] ^= 0x5a;
        await replace(path, bytes);
      }
    }
    await rejectsWithCode(Snapshot.load(layout, 'app'), ErrorCode.SNAPSHOT_CORRUPT);
  }));

/** Writes a new file over `path` (a new inode, never in place). */
async function replace(path, bytes) {
  await writeFile(`${path}.tmp`, bytes);
  await rename(`${path}.tmp`, path);
}
