// {"op": "add" | "sub" | "mul" | "div", "a": number, "b": number} -> {"op", "a", "b", "result"}
// Bad input throws, which the worker reports as ERR_HANDLER_THREW.
const OPS = {
  add: (a, b) => a + b,
  sub: (a, b) => a - b,
  mul: (a, b) => a * b,
  div: (a, b) => {
    if (b === 0) throw new RangeError('division by zero');
    return a / b;
  },
};

function handler(event) {
  const { op, a, b } = event;
  const f = OPS[op];
  if (!f) throw new TypeError('unknown op ' + JSON.stringify(op) + ', expected one of ' + Object.keys(OPS).join(', '));
  if (typeof a !== 'number' || typeof b !== 'number') throw new TypeError('a and b must be numbers');
  return { op, a, b, result: f(a, b) };
}
