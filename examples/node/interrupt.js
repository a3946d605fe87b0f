// Interrupt/timeout: a handler that would run for 4 seconds is killed after
// 1 second by the wall-clock monitor of callHandler(). The sandbox is then
// poisoned, and restore() from a snapshot brings it back. Finally the same
// thing by hand, with interruptHandle.kill() from a timer.
const { SandboxBuilder } = require('@hyperlight/js-host-api');

// Busy-waits for event.ms milliseconds of wall-clock time.
const SLOW = `
function handler(event) {
  const end = Date.now() + event.ms;
  let spins = 0;
  while (Date.now() < end) spins++;
  return { spins };
}`;

async function main() {
  const jsSandbox = await (await new SandboxBuilder().build()).loadRuntime();
  jsSandbox.addHandler('slow', SLOW);
  jsSandbox.addHandler('ping', 'function handler() { return "pong"; }');
  const loaded = await jsSandbox.getLoadedSandbox();
  const snapshot = await loaded.snapshot();

  // The event loop stays free while the handler runs: this timer keeps ticking.
  let ticks = 0;
  const ticker = setInterval(() => ticks++, 100);

  console.log('calling a 4-second handler with a 1-second wall-clock timeout...');
  const started = Date.now();
  try {
    await loaded.callHandler('slow', { ms: 4000 }, { wallClockTimeoutMs: 1000 });
    throw new Error('the handler should have been killed');
  } catch (error) {
    if (error.code !== 'ERR_CANCELLED') throw error; // unexpected — don't swallow it
    const elapsed = Date.now() - started;
    console.log(`killed after ${elapsed} ms: [${error.code}] ${error.message}`);
    if (elapsed > 3500) throw new Error('the timeout did not stop the handler early');
  }
  console.log(`event loop ticks meanwhile: ${ticks}`);
  console.log('poisoned:', loaded.poisoned); // true

  await loaded.restore(snapshot);
  console.log('after restore, poisoned:', loaded.poisoned); // false
  console.log('ping:', await loaded.callHandler('ping', {}));

  // By hand: kill from a timer through the interrupt handle (a getter).
  const handle = loaded.interruptHandle;
  const timer = setTimeout(() => handle.kill(), 1000);
  const t0 = Date.now();
  try {
    await loaded.callHandler('slow', { ms: 4000 });
    throw new Error('the handler should have been killed');
  } catch (error) {
    if (error.code !== 'ERR_CANCELLED') throw error;
    console.log(`kill() from a timer stopped it after ${Date.now() - t0} ms: ${error.message}`);
  } finally {
    clearTimeout(timer);
    clearInterval(ticker);
  }
  await loaded.restore(snapshot);
  console.log('ping:', await loaded.callHandler('ping', {}));
}

main().catch((err) => {
  console.error(`interrupt.js failed [${err.code}]: ${err.message}`);
  process.exit(1);
});
