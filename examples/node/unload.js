// Unload/reload: handler lifecycle management. Unload handlers, which resets
// all JavaScript state, then load new handlers into the same sandbox.
const { SandboxBuilder } = require('@hyperlight/js-host-api');

const COUNTER_V1 = 'let count = 0; function handler(event) { count += event.step; return { version: 1, count }; }';
const COUNTER_V2 = 'let count = 100; function handler(event) { count -= event.step; return { version: 2, count }; }';

async function main() {
  let jsSandbox = await (await new SandboxBuilder().build()).loadRuntime();

  jsSandbox.addHandler('counter', COUNTER_V1);
  let loaded = await jsSandbox.getLoadedSandbox();
  console.log('v1:', await loaded.callHandler('counter', { step: 1 }));
  console.log('v1:', await loaded.callHandler('counter', { step: 1 }));
  const last = await loaded.callHandler('counter', { step: 1 });
  console.log('v1:', last);
  if (last.count !== 3) throw new Error('v1 did not keep its state between calls');

  // Unload: back to a JSSandbox with a fresh runtime and no handlers.
  jsSandbox = await loaded.unload();
  try {
    await loaded.callHandler('counter', { step: 1 });
    throw new Error('the unloaded sandbox should be consumed');
  } catch (error) {
    if (error.code !== 'ERR_CONSUMED') throw error;
    console.log(`the old LoadedJSSandbox is consumed: [${error.code}]`);
  }

  // Load a new version under the same routing key, plus another handler.
  jsSandbox.addHandler('counter', COUNTER_V2);
  jsSandbox.addHandler('probe', 'function handler() { return typeof count; }');
  loaded = await jsSandbox.getLoadedSandbox();
  const v2 = await loaded.callHandler('counter', { step: 5 });
  console.log('v2:', v2);
  if (v2.version !== 2 || v2.count !== 95) throw new Error('v2 did not start from fresh state');

  // Swap handlers once more: remove one before loading.
  jsSandbox = await loaded.unload();
  jsSandbox.addHandler('counter', COUNTER_V1);
  jsSandbox.addHandler('temporary', 'function handler() { return 0; }');
  jsSandbox.removeHandler('temporary');
  loaded = await jsSandbox.getLoadedSandbox();
  console.log('v1 again:', await loaded.callHandler('counter', { step: 10 }));
  try {
    await loaded.callHandler('temporary', {});
  } catch (error) {
    if (error.code !== 'ERR_UNKNOWN_HANDLER') throw error;
    console.log(`removed handler is gone: [${error.code}]`);
  }
}

main().catch((err) => {
  console.error(`unload.js failed [${err.code}]: ${err.message}`);
  process.exit(1);
});
