// Test handler: event.mode picks a way to succeed or fail, one per error code.
function handler(event) {
  switch (event.mode) {
    case 'ok':
      return { ok: true, mode: event.mode };
    case 'throw':
      throw new TypeError('bad input: ' + event.detail);
    case 'loop':
      for (;;) {}
    case 'recurse': {
      const down = (n) => down(n + 1) + 1;
      return down(0);
    }
    case 'big':
      return { s: 'x'.repeat(event.size || 8192) };
    case 'bigint':
      return { n: 10n };
    case 'function':
      return function () {};
    case 'alloc': {
      const keep = [];
      for (;;) keep.push(new ArrayBuffer(1 << 20));
    }
    default:
      throw new Error('unknown mode ' + event.mode);
  }
}
