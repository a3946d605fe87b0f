// This project against two other ways of running untrusted JavaScript from Node,
// side by side in one process and one run, printed as a markdown table (issue 12):
//
//   - quickjs-emscripten: QuickJS compiled to WebAssembly, in this process;
//   - isolated-vm: a V8 isolate of this process's own V8, in this process.
//
// Rows, each p50 (and p99 where the sample is large enough) in milliseconds:
//   1. A pristine state for every message, as the worker runs them:
//      ours = callHandler + restore(snapshot);
//      quickjs-emscripten = new runtime + new context + eval the handler + call + dispose;
//      isolated-vm = new context (in one shared isolate) + compile + run + call + release.
//   2. The same handler warm: one loaded sandbox / context, called again and again.
//   3. A warm call of a 1e5-iteration integer loop (the engine bench's "loop" handler).
//   4. A warm call of a 1e5-iteration Math.sqrt loop.
// The handler of rows 1 and 2 totals an order's 20 line items (the engine bench's
// "order" handler and event).
//
// Fairness rules:
//   - Every engine gets the event as JSON text and returns JSON text, which the
//     host parses: the JSON work on both sides of the boundary is inside the timing
//     for all three (ours does it in callHandler).
//   - Ours runs with gc: false, like the worker (no collection forced after a call;
//     QuickJS's own collector still runs when its threshold is hit); the peers force none.
//   - One-off set-up is outside the timing for all: building and loading our sandbox
//     and taking its snapshot, compiling quickjs-emscripten's wasm module, creating
//     isolated-vm's isolate. Per-message work is inside it.
//   - isolated-vm and quickjs-emscripten are driven through their synchronous APIs
//     (their fastest); ours is asynchronous (each call hands off to the sandbox's thread
//     and back, ~0.04 ms).
//   - The three are measured in alternating blocks, so that load from other processes
//     (this project's machines are shared 2-core VMs) hits all of them alike. Every
//     ratio is against a peer measured in the same run.
//   - Each row starts with one unmeasured block per engine (JIT warm-up, first-touch
//     page faults), and quickjs-emscripten's wasm is compiled by V8's optimizing
//     compiler up front (--no-liftoff, set below before the module is compiled): its
//     timings are then its steady state, not how soon V8's background tier-up got a
//     CPU on a busy machine.
//   - All three must return the same result for every row, or the run fails.
//
// The peers live in a package of their own (bench/peers/, see install.sh there for why).
//   npm run bench:peers        # in node-api/: installs them when needed, then runs this
//   node bench/peers.mjs       # fails, saying how to install them, when they are missing
// Env: PEERS_ROUNDS (blocks per engine and row, default 6), PEERS_SCALE (multiplies
// every block's size, default 1).
import fs from 'node:fs';
import os from 'node:os';
import { createRequire } from 'node:module';
import v8 from 'node:v8';
import { SandboxBuilder } from '@hyperlight/js-host-api';

const ROUNDS = Number(process.env.PEERS_ROUNDS ?? 6);
const SCALE = Number(process.env.PEERS_SCALE ?? 1);
// Messages per block, per row: ROUNDS × this many samples per engine.
const BLOCK = {
  fresh: Math.max(1, Math.round(20 * SCALE)),
  warm: Math.max(1, Math.round(100 * SCALE)),
  loop: Math.max(1, Math.round(4 * SCALE)),
};
/** Below this many samples a p99 is no more than the maximum: not printed. */
const P99_MIN_SAMPLES = 100;
const LOOP_N = 1e5;

// ---------------------------------------------------------------------------
// The peers, loaded from bench/peers/node_modules; a loud failure when absent.
const peersDir = new URL('./peers/', import.meta.url);
const requirePeer = createRequire(new URL('package.json', peersDir));
function loadPeer(name) {
  try {
    const mod = requirePeer(name);
    const { version } = JSON.parse(fs.readFileSync(requirePeer.resolve(`${name}/package.json`), 'utf8'));
    return { mod, version };
  } catch (e) {
    console.error(
      `bench/peers.mjs: cannot load the peer '${name}' (${e.code ?? e.message}).\n` +
        'The peers are not installed (or were built for another Node.js). Install them with\n' +
        '  npm run bench:peers:install     (in node-api/), or: bash node-api/bench/peers/install.sh\n' +
        'or run `npm run bench:peers`, which installs them when needed. isolated-vm compiles from\n' +
        "source (a few minutes) against this Node's headers; see bench/peers/install.sh."
    );
    process.exit(1);
  }
}
// Before quickjs-emscripten compiles its wasm module (in getQuickJS): optimized code
// from the first call on (see the fairness rules above).
v8.setFlagsFromString('--no-liftoff');
const ivm = loadPeer('isolated-vm');
const qjs = loadPeer('quickjs-emscripten');

// ---------------------------------------------------------------------------
// The handlers and the event: the same source text runs in all three engines.
const ORDER =
  'function handler(o) { let t = 0; for (const l of o.items) t += l.qty * l.cents; return { id: o.id, total: t }; }';
const LOOP = 'function handler(e) { let s = 0; for (let i = 0; i < e.n; i++) s += i; return s; }';
const SQRT = 'function handler(e) { let s = 0; for (let i = 0; i < e.n; i++) s += Math.sqrt(i); return s; }';
const ORDER_EVENT = {
  id: 'order-1',
  items: Array.from({ length: 20 }, (_, i) => ({ sku: `sku-${i}`, qty: 1 + (i % 3), cents: 199 + 10 * i })),
};
const LOOP_EVENT = { n: LOOP_N };
const HANDLERS = { order: ORDER, loop: LOOP, sqrt: SQRT };

/**
 * Source for a peer: the handler under a name of its own plus the entry point the
 * host calls with JSON text, `__call_<name>(json) -> json`.
 */
const peerSource = (name, src) =>
  `const ${name} = (function () { ${src}; return handler; })();\n` +
  `function __call_${name}(json) { return JSON.stringify(${name}(JSON.parse(json))); }\n`;
/** What a warm peer context holds: every handler. A fresh one gets only the message's. */
const ALL_SOURCE = Object.entries(HANDLERS)
  .map(([name, src]) => peerSource(name, src))
  .join('');

// ---------------------------------------------------------------------------
// The three engines behind one interface: set-up once, then `fresh(name, event)`
// (a pristine state for this message) and `warm(name, event)` (a loaded one).

async function ours() {
  const js = await (await new SandboxBuilder().build()).loadRuntime();
  for (const [name, src] of Object.entries(HANDLERS)) js.addHandler(name, src);
  const sb = await js.getLoadedSandbox();
  const snap = await sb.snapshot();
  const opts = { gc: false };
  return {
    name: 'this project',
    // The worker's path: the call, then back to the snapshot's exact memory.
    async fresh(name, event) {
      const out = await sb.callHandler(name, event, opts);
      await sb.restore(snap);
      return out;
    },
    warm: (name, event) => sb.callHandler(name, event, opts),
  };
}

async function quickjsEmscripten() {
  const QuickJS = await qjs.mod.getQuickJS(); // compiles the wasm module, once
  const MEMORY = 32 * 1024 * 1024; // our sandbox's default heap

  /** Calls `__call_<name>` in `ctx` with the event as JSON, returns the parsed result. */
  function call(ctx, name, event) {
    const fn = ctx.getProp(ctx.global, `__call_${name}`);
    const arg = ctx.newString(JSON.stringify(event));
    const res = ctx.unwrapResult(ctx.callFunction(fn, ctx.undefined, arg));
    const json = ctx.getString(res);
    res.dispose();
    arg.dispose();
    fn.dispose();
    return JSON.parse(json);
  }
  function newContext(source) {
    const rt = QuickJS.newRuntime();
    rt.setMemoryLimit(MEMORY);
    const ctx = rt.newContext();
    ctx.unwrapResult(ctx.evalCode(source)).dispose();
    return { rt, ctx };
  }

  const loaded = newContext(ALL_SOURCE);
  return {
    name: `quickjs-emscripten ${qjs.version}`,
    fresh(name, event) {
      const { rt, ctx } = newContext(peerSource(name, HANDLERS[name]));
      try {
        return call(ctx, name, event);
      } finally {
        ctx.dispose();
        rt.dispose();
      }
    },
    warm: (name, event) => call(loaded.ctx, name, event),
  };
}

async function isolatedVm() {
  // One isolate for the whole run, as a host would keep one (or a few) per process;
  // a message gets a new context in it. 32 MiB heap, as our sandbox's default.
  const isolate = new ivm.mod.Isolate({ memoryLimit: 32 });

  function newContext(source) {
    const context = isolate.createContextSync();
    const script = isolate.compileScriptSync(source);
    script.runSync(context);
    script.release();
    return context;
  }
  const call = (fn, event) => JSON.parse(fn.applySync(undefined, [JSON.stringify(event)]));
  const entryPoint = (context, name) => context.global.getSync(`__call_${name}`, { reference: true });

  const loaded = newContext(ALL_SOURCE);
  // Warm calls go through a reference kept across calls.
  const warmFns = Object.fromEntries(Object.keys(HANDLERS).map((n) => [n, entryPoint(loaded, n)]));
  return {
    name: `isolated-vm ${ivm.version}`,
    fresh(name, event) {
      const context = newContext(peerSource(name, HANDLERS[name]));
      const fn = entryPoint(context, name);
      try {
        return call(fn, event);
      } finally {
        fn.release();
        context.release();
      }
    },
    warm: (name, event) => call(warmFns[name], event),
  };
}

// ---------------------------------------------------------------------------
// Measurement.

const sorted = (xs) => [...xs].sort((a, b) => a - b);
/** Nearest-rank percentile. */
const pct = (xs, p) => {
  const s = sorted(xs);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
};

/** Times `block` messages of `fn`, checking each result against `expect`. */
async function timeBlock(fn, block, expect, label) {
  const ms = [];
  for (let i = 0; i < block; i++) {
    const t0 = process.hrtime.bigint();
    const out = await fn();
    ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
    const got = JSON.stringify(out);
    if (got !== expect) throw new Error(`${label}: returned ${got}, expected ${expect}`);
  }
  return ms;
}

/**
 * One row: ROUNDS blocks per engine, the engines alternating block by block,
 * after one unmeasured warm-up block per engine. Returns the samples (ms) per engine.
 */
async function row(engines, mode, name, event, block) {
  // Reference result: the host's own V8 running the same source.
  const expect = JSON.stringify(runLocally(name, event));
  const samples = engines.map(() => []);
  for (const e of engines) await timeBlock(() => e[mode](name, event), block, expect, `${e.name} ${name}`);
  for (let r = 0; r < ROUNDS; r++) {
    for (const [i, e] of engines.entries()) {
      samples[i].push(...(await timeBlock(() => e[mode](name, event), block, expect, `${e.name} ${name}`)));
    }
  }
  return samples;
}

/** The handler run by this process's own V8: the result every engine must match. */
function runLocally(name, event) {
  const handler = new Function(`${HANDLERS[name]}; return handler;`)();
  return JSON.parse(JSON.stringify(handler(JSON.parse(JSON.stringify(event)))));
}

// ---------------------------------------------------------------------------
// The run.

const cpuModel = os.cpus()[0]?.model ?? 'unknown CPU';
const kvm = fs.existsSync('/sys/module/kvm_pvm')
  ? 'paravirtual KVM (kvm_pvm)'
  : fs.existsSync('/sys/module/kvm_intel') || fs.existsSync('/sys/module/kvm_amd')
    ? 'hardware KVM'
    : fs.existsSync('/dev/mshv')
      ? 'MSHV'
      : 'no KVM module found';
/** Busy and total jiffies of all CPUs since boot (Linux /proc/stat), or null elsewhere. */
function machineCpu() {
  try {
    const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    const idle = f[3] + (f[4] ?? 0); // idle + iowait
    const total = f.reduce((a, b) => a + b, 0);
    return { busy: total - idle, total };
  } catch {
    return null;
  }
}
const load0 = os.loadavg()[0];
const cpu0 = machineCpu();
const ownCpu0 = process.cpuUsage();
const started = new Date();

const engines = [await ours(), await quickjsEmscripten(), await isolatedVm()];

const rows = [
  {
    label: 'from a pristine state every message, p50',
    what: ['callHandler + restore', 'new runtime + eval + call', 'new context + compile + call'],
    samples: await row(engines, 'fresh', 'order', ORDER_EVENT, BLOCK.fresh),
    goal: { ratio: 4, text: '≤ 4× quickjs-emscripten' },
  },
  {
    label: 'the same handler warm, p50',
    samples: await row(engines, 'warm', 'order', ORDER_EVENT, BLOCK.warm),
  },
  {
    label: '1e5-iteration integer loop (one warm call), p50',
    samples: await row(engines, 'warm', 'loop', LOOP_EVENT, BLOCK.loop),
  },
  {
    label: '1e5 `Math.sqrt` loop (one warm call), p50',
    samples: await row(engines, 'warm', 'sqrt', LOOP_EVENT, BLOCK.loop),
    goal: { ratio: 1.5, text: '≤ 1.5× quickjs-emscripten (stretch)' },
  },
];
const load1 = os.loadavg()[0];
// How busy the whole machine was during the run, against this process's own share
// (its JavaScript thread, the sandbox's vCPU thread, V8's helpers): the rest is other
// processes competing for the same CPUs, the noise in these figures.
const cpu1 = machineCpu();
const ownCpu = process.cpuUsage(ownCpu0);
const busy = (() => {
  if (!cpu0 || !cpu1 || cpu1.total === cpu0.total) return '';
  const wallMs = Date.now() - started.getTime();
  const machine = ((cpu1.busy - cpu0.busy) / (cpu1.total - cpu0.total)) * os.cpus().length;
  const own = (ownCpu.user + ownCpu.system) / 1000 / wallMs;
  return `; CPUs busy during the run: ${machine.toFixed(2)} of ${os.cpus().length}, ${own.toFixed(2)} of them this process`;
})();

// ---------------------------------------------------------------------------
// The table.

const fmtMs = (x) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x >= 1 ? x.toFixed(2) : x.toFixed(3));
const cell = (xs, what) => {
  const p99 = xs.length >= P99_MIN_SAMPLES ? `, p99 ${fmtMs(pct(xs, 99))}` : '';
  return `${fmtMs(pct(xs, 50))} ms${p99}${what ? ` (${what})` : ''}`;
};
const ratio = (a, b) => {
  const r = pct(a, 50) / pct(b, 50);
  return `${r >= 10 ? r.toFixed(0) : r.toFixed(1)}×`;
};

const header = ['', ...engines.map((e) => e.name), 'ours ÷ quickjs-emscripten', 'ours ÷ isolated-vm', 'goal (issue 12)', 'n per engine'];
const lines = [header, header.map((h, i) => (i === 0 ? '---' : '---:'))];
for (const r of rows) {
  const [o, q, v] = r.samples;
  const met = r.goal ? (pct(o, 50) / pct(q, 50) <= r.goal.ratio ? 'met' : 'not met') : '';
  lines.push([
    r.label,
    ...r.samples.map((xs, i) => cell(xs, r.what?.[i])),
    ratio(o, q),
    ratio(o, v),
    r.goal ? `${r.goal.text}: ${met}` : '',
    String(o.length),
  ]);
}

console.log(
  `Peers benchmark, ${started.toISOString().slice(0, 16).replace('T', ' ')} UTC: node ${process.version}, ` +
    `${os.cpus().length} × ${cpuModel}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, ${kvm}; ` +
    `load average ${load0.toFixed(2)} at the start, ${load1.toFixed(2)} at the end${busy}`
);
console.log();
for (const l of lines) console.log(`| ${l.join(' | ')} |`);
console.log();
console.log(
  `p99 printed for rows with at least ${P99_MIN_SAMPLES} samples per engine. A load average above ` +
    `${os.cpus().length}, or CPUs busy well beyond this process's share, means other processes competed ` +
    'for the CPUs during the run: expect noise.'
);
