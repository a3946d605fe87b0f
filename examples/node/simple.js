// Simple usage: the sandbox lifecycle, from builder to handler call.
//   SandboxBuilder → build() → ProtoJSSandbox → loadRuntime() → JSSandbox
//   → addHandler() → getLoadedSandbox() → LoadedJSSandbox → callHandler()
const { SandboxBuilder } = require('@hyperlight/js-host-api');

async function main() {
  const builder = new SandboxBuilder().setHeapSize(16 * 1024 * 1024).setStackSize(512 * 1024);
  const protoSandbox = await builder.build();
  console.log('built a micro-VM');

  const jsSandbox = await protoSandbox.loadRuntime();
  console.log('loaded the JavaScript runtime');

  // The routing key is 'hello'; the function must be named 'handler'.
  jsSandbox.addHandler(
    'hello',
    `function handler(event) {
       return { greeting: 'Hello, ' + event.name + '!', at: new Date(event.when).toISOString() };
     }`
  );
  const loaded = await jsSandbox.getLoadedSandbox();

  const result = await loaded.callHandler('hello', { name: 'World', when: 0 });
  console.log('result:', result);
  if (result.greeting !== 'Hello, World!') throw new Error('unexpected result');
}

main().catch((err) => {
  console.error(`simple.js failed [${err.code}]: ${err.message}`);
  process.exit(1);
});
