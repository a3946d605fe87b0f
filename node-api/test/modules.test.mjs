// ES module and CommonJS entry points, and the spec's Quick Start verbatim.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, symlinkSync, writeFileSync, readFileSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import * as esm from '@hyperlight/js-host-api';

const pkgDir = join(dirname(fileURLToPath(import.meta.url)), '..');

/** A scratch project whose node_modules links to this package, as `npm install` would. */
function scratchProject() {
  const dir = mkdtempSync(join(tmpdir(), 'js-host-api-'));
  mkdirSync(join(dir, 'node_modules', '@hyperlight'), { recursive: true });
  symlinkSync(pkgDir, join(dir, 'node_modules', '@hyperlight', 'js-host-api'), 'dir');
  return dir;
}

test('ESM named exports and CommonJS require give the same classes', () => {
  const require = createRequire(import.meta.url);
  const cjs = require('@hyperlight/js-host-api');
  for (const name of ['SandboxBuilder', 'ProtoJSSandbox', 'JSSandbox', 'LoadedJSSandbox', 'InterruptHandle', 'Snapshot']) {
    assert.equal(typeof esm[name], 'function', name);
    assert.equal(esm[name], cjs[name], name);
  }
});

test('the README Quick Start runs verbatim as an .mjs file', () => {
  const readme = readFileSync(join(pkgDir, 'README.md'), 'utf8');
  const quickStart = readme.split('## Quick Start')[1].match(/```javascript\n([\s\S]*?)```/)[1];
  assert.match(quickStart, /import \{ SandboxBuilder \} from '@hyperlight\/js-host-api';/);
  const dir = scratchProject();
  try {
    writeFileSync(join(dir, 'quickstart.mjs'), quickStart);
    const out = execFileSync(process.execPath, ['quickstart.mjs'], { cwd: dir, encoding: 'utf8' });
    assert.equal(out.trim(), "{ name: 'World', message: 'Hello, World!' }");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('CommonJS require works in a .cjs file', () => {
  const dir = scratchProject();
  try {
    writeFileSync(
      join(dir, 'main.cjs'),
      `const { SandboxBuilder } = require('@hyperlight/js-host-api');
       (async () => {
         const js = await (await new SandboxBuilder().build()).loadRuntime();
         js.addHandler('h', 'function handler(e) { return e.n + 1; }');
         const l = await js.getLoadedSandbox();
         console.log(await l.callHandler('h', { n: 41 }));
       })();`
    );
    const out = execFileSync(process.execPath, ['main.cjs'], { cwd: dir, encoding: 'utf8' });
    assert.equal(out.trim(), '42');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('TypeScript declarations ship with the package', () => {
  const dts = readFileSync(join(pkgDir, 'index.d.ts'), 'utf8');
  for (const name of ['SandboxBuilder', 'ProtoJSSandbox', 'JSSandbox', 'LoadedJSSandbox', 'InterruptHandle', 'Snapshot', 'CallHandlerOptions', 'HostModule']) {
    assert.match(dts, new RegExp(`(class|interface) ${name}\\b`), name);
  }
  const pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8'));
  assert.equal(pkg.exports['.'].types, './index.d.ts');
  assert.ok(existsSync(join(pkgDir, 'index.mjs')));
});

test('without access to /dev/kvm, build() fails with ERR_NO_HYPERVISOR', { skip: process.getuid?.() !== 0 && 'needs root to run a child as an unprivileged user' }, () => {
  const script = `require(${JSON.stringify(pkgDir)}).SandboxBuilder && new (require(${JSON.stringify(pkgDir)}).SandboxBuilder)().build()
    .then(() => console.log('built'), (e) => console.log(e instanceof Error, e.code))`;
  const out = execFileSync(process.execPath, ['-e', script], { uid: 65534, gid: 65534, encoding: 'utf8', cwd: tmpdir() });
  assert.equal(out.trim(), 'true ERR_NO_HYPERVISOR');
});
