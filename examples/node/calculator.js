// Calculator: JSON event processing with multiple operations, errors included.
const { SandboxBuilder } = require('@hyperlight/js-host-api');

const CALCULATOR = `
function handler(event) {
  const { op, a, b } = event;
  if (typeof a !== 'number' || typeof b !== 'number') throw new TypeError('a and b must be numbers');
  switch (op) {
    case 'add': return { op, a, b, result: a + b };
    case 'subtract': return { op, a, b, result: a - b };
    case 'multiply': return { op, a, b, result: a * b };
    case 'divide':
      if (b === 0) throw new RangeError('division by zero');
      return { op, a, b, result: a / b };
    case 'power': return { op, a, b, result: Math.pow(a, b) };
    default: throw new Error('unknown operation: ' + op);
  }
}`;

// A second handler: the sum of a list, with a summary.
const STATS = `
function handler(event) {
  const xs = event.values;
  const sum = xs.reduce((s, x) => s + x, 0);
  return { count: xs.length, sum, min: Math.min(...xs), max: Math.max(...xs) };
}`;

async function main() {
  const jsSandbox = await (await new SandboxBuilder().build()).loadRuntime();
  jsSandbox.addHandler('calculate', CALCULATOR);
  jsSandbox.addHandler('stats', STATS);
  const loaded = await jsSandbox.getLoadedSandbox();

  const events = [
    { op: 'add', a: 2, b: 3 },
    { op: 'subtract', a: 10, b: 4 },
    { op: 'multiply', a: 6, b: 7 },
    { op: 'divide', a: 1, b: 8 },
    { op: 'power', a: 2, b: 10 },
  ];
  const expected = [5, 6, 42, 0.125, 1024];
  for (const [i, event] of events.entries()) {
    const out = await loaded.callHandler('calculate', event);
    console.log(`${event.a} ${event.op} ${event.b} = ${out.result}`);
    if (out.result !== expected[i]) throw new Error(`wrong result for ${event.op}`);
  }

  // Errors thrown by the handler come back as ERR_HANDLER_THREW.
  for (const bad of [{ op: 'divide', a: 1, b: 0 }, { op: 'modulo', a: 1, b: 2 }, { op: 'add', a: 'x', b: 1 }]) {
    try {
      await loaded.callHandler('calculate', bad);
      throw new Error('expected an error');
    } catch (error) {
      if (error.code !== 'ERR_HANDLER_THREW') throw error;
      console.log(`rejected ${JSON.stringify(bad)}: [${error.code}] ${error.message}`);
    }
  }

  console.log('stats:', await loaded.callHandler('stats', { values: [3, 1, 4, 1, 5, 9, 2, 6] }));
}

main().catch((err) => {
  console.error(`calculator.js failed [${err.code}]: ${err.message}`);
  process.exit(1);
});
