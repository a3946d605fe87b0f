// Host functions: handlers call back into Node.js as host.<module>.<fn>(...).
// Sync and async callbacks, errors thrown into the handler, per-sandbox host
// state, and binary data (Buffer in, Uint8Array in the handler, Buffer out).
const crypto = require('node:crypto');
const { SandboxBuilder } = require('@hyperlight/js-host-api');

async function sandboxFor(tenant) {
  const proto = await new SandboxBuilder().build();

  // Host state private to this sandbox.
  const audit = [];
  const prices = { apple: 3, pear: 4 };

  proto
    .hostModule('shop')
    .register('price', (item) => {
      // sync
      if (!(item in prices)) throw new Error(`no such item: ${item}`);
      return prices[item];
    })
    .register('stock', async (item) => {
      // async: the handler waits while the event loop runs
      await new Promise((resolve) => setTimeout(resolve, 20));
      return { item, inStock: item !== 'pear' };
    });
  proto.hostModule('log').register('audit', (line) => {
    audit.push(`${tenant}: ${line}`);
    return audit.length;
  });
  proto.hostModule('crypto').register('sha256', (bytes) => crypto.createHash('sha256').update(bytes).digest());

  const js = await proto.loadRuntime();
  js.addHandler(
    'order',
    `function handler(event) {
       host.log.audit('order for ' + event.item);
       let price;
       try {
         price = host.shop.price(event.item);
       } catch (e) {
         return { ok: false, reason: e.message };
       }
       const stock = host.shop.stock(event.item);
       return { ok: stock.inStock, total: price * event.qty };
     }`
  );
  js.addHandler(
    'digest',
    `function handler(event) {
       const hash = host.crypto.sha256(event.data);   // arrives as bytes in the host
       return { input: event.data.length, isBytes: event.data instanceof Uint8Array, hash };
     }`
  );
  return { loaded: await js.getLoadedSandbox(), audit };
}

async function main() {
  const [a, b] = await Promise.all([sandboxFor('tenant-a'), sandboxFor('tenant-b')]);

  const results = await Promise.all([
    a.loaded.callHandler('order', { item: 'apple', qty: 2 }),
    a.loaded.callHandler('order', { item: 'kiwi', qty: 1 }),
    b.loaded.callHandler('order', { item: 'pear', qty: 3 }),
  ]);
  console.log('orders:', results);
  if (results[0].total !== 6 || results[1].ok !== false || results[2].ok !== false) {
    throw new Error('unexpected order results');
  }

  // Each sandbox only touched its own host state.
  console.log('audit a:', a.audit);
  console.log('audit b:', b.audit);
  if (a.audit.length !== 2 || b.audit.length !== 1) throw new Error('host state leaked between sandboxes');

  const data = Buffer.from('hello, hyperlight');
  const out = await a.loaded.callHandler('digest', { data });
  const expected = crypto.createHash('sha256').update(data).digest();
  console.log('digest:', { ...out, hash: out.hash.toString('hex') });
  if (!Buffer.isBuffer(out.hash) || !out.isBytes) throw new Error('binary data did not round-trip');
  if (!out.hash.equals(expected)) throw new Error('wrong digest');
}

main().catch((err) => {
  console.error(`host-functions.js failed [${err.code}]: ${err.message}`);
  process.exit(1);
});
