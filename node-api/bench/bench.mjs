// Benchmarks of @hyperlight/js-host-api, printed as one table.
//
// 1. Binding overhead: callHandler() on an echo handler through Node, against
//    the same call through the Rust engine directly (LoadedJSSandbox::call_handler
//    timed in Rust, on the same sandbox and thread, via _benchEngineCalls).
//    The two are measured in alternating blocks so drift hits both alike.
//    Target: Node / Rust <= 1.1x.
// 2. Throughput: 20 sandboxes driven concurrently from one event loop against
//    one sandbox driven sequentially. Target: >= 1.8x on 2 cores.
//
// Usage: node bench/bench.mjs   (env: BENCH_ROUNDS, BENCH_BLOCK, BENCH_SANDBOXES, BENCH_CALLS)
import os from 'node:os';
import { SandboxBuilder, LoadedJSSandbox } from '@hyperlight/js-host-api';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 4);
const BLOCK = Number(process.env.BENCH_BLOCK ?? 10);
const SANDBOXES = Number(process.env.BENCH_SANDBOXES ?? 20);
const CALLS_PER_SANDBOX = Number(process.env.BENCH_CALLS ?? 3);

const EVENT = { id: 42, name: 'echo', tags: ['a', 'b', 'c'], nested: { ok: true, n: 3.5 } };

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
/** CPU time of this process (every thread, vCPUs included) per wall-clock time. */
const cores = (usage, ms) => (usage.user + usage.system) / 1000 / ms;
const p90 = (xs) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * 0.9))];

async function setup() {
  const js = await (await new SandboxBuilder().build()).loadRuntime();
  js.addHandler('echo', 'function handler(e) { return e; }');
  return js.getLoadedSandbox();
}

async function latency(loaded) {
  const json = JSON.stringify(EVENT);
  // Warm up both paths (page faults after load, JIT of the JS layer).
  for (let i = 0; i < 3; i++) await loaded.callHandler('echo', EVENT);
  await loaded._benchEngineCalls('echo', json, 3);
  const node = [];
  const rust = [];
  for (let r = 0; r < ROUNDS; r++) {
    for (let i = 0; i < BLOCK; i++) {
      const t0 = process.hrtime.bigint();
      const out = await loaded.callHandler('echo', EVENT);
      node.push(Number(process.hrtime.bigint() - t0) / 1e6);
      if (out.id !== 42) throw new Error('bad echo');
    }
    rust.push(...(await loaded._benchEngineCalls('echo', json, BLOCK)));
  }
  return { node, rust };
}

async function throughput(seed) {
  const snap = await seed.snapshot();
  // One sandbox, calls one after another.
  const single = await LoadedJSSandbox.fromSnapshot(snap);
  await single.callHandler('echo', EVENT); // warm-up: first call after a snapshot pays copy-on-write faults
  const total = SANDBOXES * CALLS_PER_SANDBOX;
  let cpu0 = process.cpuUsage();
  let t0 = performance.now();
  for (let i = 0; i < total; i++) await single.callHandler('echo', EVENT);
  const singleMs = performance.now() - t0;
  const singleCores = cores(process.cpuUsage(cpu0), singleMs);

  // SANDBOXES sandboxes, each running CALLS_PER_SANDBOX calls, all at once.
  const many = await Promise.all(Array.from({ length: SANDBOXES }, () => LoadedJSSandbox.fromSnapshot(snap)));
  await Promise.all(many.map((s) => s.callHandler('echo', EVENT)));
  cpu0 = process.cpuUsage();
  t0 = performance.now();
  await Promise.all(
    many.map(async (s) => {
      for (let i = 0; i < CALLS_PER_SANDBOX; i++) await s.callHandler('echo', EVENT);
    })
  );
  const manyMs = performance.now() - t0;
  const manyCores = cores(process.cpuUsage(cpu0), manyMs);
  return { total, singleMs, manyMs, singleCores, manyCores };
}

const fmt = (x, d = 2) => x.toFixed(d);

const loaded = await setup();
const lat = await latency(loaded);
const tp = await throughput(loaded);

const nodeMed = median(lat.node);
const rustMed = median(lat.rust);
const ratio = nodeMed / rustMed;
const singleRate = (tp.total / tp.singleMs) * 1000;
const manyRate = (tp.total / tp.manyMs) * 1000;
const speedup = manyRate / singleRate;

const rows = [
  ['benchmark', 'measure', 'value', 'baseline', 'ratio', 'target', 'ok'],
  [
    'echo callHandler latency',
    `median ms (p90), n=${lat.node.length}`,
    `${fmt(nodeMed)} (${fmt(p90(lat.node))}) node`,
    `${fmt(rustMed)} (${fmt(p90(lat.rust))}) rust`,
    `${fmt(ratio, 3)}x`,
    '<= 1.1x',
    ratio <= 1.1 ? 'yes' : 'NO',
  ],
  [
    'echo binding overhead',
    'median ms per call',
    `${fmt(nodeMed - rustMed, 3)}`,
    '',
    '',
    '',
    '',
  ],
  [
    `throughput ${SANDBOXES} sandboxes`,
    `calls/s, ${tp.total} calls`,
    `${fmt(manyRate)} concurrent (${fmt(tp.manyCores)} cores)`,
    `${fmt(singleRate)} one sandbox (${fmt(tp.singleCores)} cores)`,
    `${fmt(speedup, 2)}x`,
    '>= 1.8x',
    speedup >= 1.8 ? 'yes' : 'NO',
  ],
];
const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
const line = (r) => '| ' + r.map((v, c) => v.padEnd(widths[c])).join(' | ') + ' |';
console.log(`@hyperlight/js-host-api benchmark (node ${process.version}, ${os.cpus().length} CPUs, ${os.loadavg()[0].toFixed(2)} load)`);
console.log(line(rows[0]));
console.log('|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|');
for (const r of rows.slice(1)) console.log(line(r));
console.log(
  `cores = CPU time of this process / wall time; the throughput ratio can only reach ${os.cpus().length}x when ` +
    'no other process competes for the CPUs (load average above).'
);
