// CPU timeout: combined CPU-time and wall-clock monitors, the recommended
// pattern. With OR semantics the first monitor to fire cancels the call: for
// compute-bound work the CPU monitor (500 ms) fires long before the
// wall-clock backstop (5 s).
const { SandboxBuilder } = require('@hyperlight/js-host-api');

const COMPUTE = `
function handler(event) {
  // A tight loop that never ends: pure CPU, no I/O.
  let x = 0;
  for (;;) { x = (x * 31 + 7) % 1000003; }
}`;

const QUICK = 'function handler(event) { let s = 0; for (let i = 0; i < event.n; i++) s += i; return s; }';

async function main() {
  const jsSandbox = await (await new SandboxBuilder().build()).loadRuntime();
  jsSandbox.addHandler('compute', COMPUTE);
  jsSandbox.addHandler('quick', QUICK);
  const loaded = await jsSandbox.getLoadedSandbox();
  const snapshot = await loaded.snapshot();

  const limits = { wallClockTimeoutMs: 5000, cpuTimeoutMs: 500 };

  // Well-behaved work finishes under both limits.
  console.log('quick:', await loaded.callHandler('quick', { n: 100 }, limits));

  console.log('calling a compute-bound handler with', limits);
  const started = Date.now();
  try {
    await loaded.callHandler('compute', {}, limits);
    throw new Error('the handler should have been stopped');
  } catch (error) {
    if (error.code !== 'ERR_CANCELLED') throw error;
    const elapsed = Date.now() - started;
    console.log(`stopped after ${elapsed} ms: ${error.message}`);
    if (!/CPU/.test(error.message)) throw new Error('expected the CPU monitor to fire first');
    console.log('the CPU monitor fired first; the wall-clock monitor was the backstop');
  }

  // Recover and carry on.
  await loaded.restore(snapshot);
  console.log('after restore:', await loaded.callHandler('quick', { n: 10 }, limits));
}

main().catch((err) => {
  console.error(`cpu-timeout.js failed [${err.code}]: ${err.message}`);
  process.exit(1);
});
