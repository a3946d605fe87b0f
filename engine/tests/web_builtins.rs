//! Web-standard built-ins in handlers, checked against the specs' own
//! examples and published test vectors: WHATWG Encoding and URL, HTML base64,
//! structured clone and timers, W3C WebCrypto (FIPS 180 digests, RFC 4231
//! HMAC). Checks are grouped into few calls: a call is cheap, a sandbox is not.
//!
//! With `HYPERLIGHT_JS_GUEST_MODE=kernel` every guest instruction is emulated
//! (~1 µs each) and compiling the detailed handlers alone would take minutes,
//! so that mode runs the smoke call (every group once, on standard vectors),
//! the randomness and the timer tests; the detailed checks cover JS semantics,
//! which do not depend on the guest's privilege mode.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;

use hyperlight_js_engine::{CallOptions, LoadedJSSandbox, SandboxBuilder, Snapshot};
use serde_json::{Value, json};

/// Touches every lazily installed global at registration, so that the
/// snapshot holds them compiled and each test's sandbox starts warm.
const WARM: &str = "void [TextEncoder, atob, URL, crypto, structuredClone, setTimeout];\n";

const SMOKE: &str = r#"async function handler() {
  const enc = new TextEncoder();
  const hex = (b) => Array.from(new Uint8Array(b), (x) => x.toString(16).padStart(2, '0')).join('');
  const digests = [];
  for (const alg of ['SHA-1', 'SHA-256', 'SHA-384', 'SHA-512']) digests.push(hex(await crypto.subtle.digest(alg, enc.encode('abc'))).slice(0, 16));
  const key = await crypto.subtle.importKey('raw', enc.encode('Jefe'), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  const m = new Map(); m.set('self', m);
  const c = structuredClone(m);
  return [
    new TextDecoder().decode(enc.encode('\u{1D11E}\uD800')), btoa('\x00\xff'), atob('AP8'),
    new URL('../d?e f', 'https://a.test/b/c').href, new URL('https://m\u00FCnchen.de:443/').href,
    String(new URLSearchParams({ 'a b': '\u00E9' })), digests,
    hex(await crypto.subtle.sign('HMAC', key, enc.encode('what do ya want for nothing?'))),
    c.get('self') === c && c !== m, crypto.randomUUID().length,
    await new Promise((r) => setTimeout(() => r('timer'), 10)),
  ];
}"#;

const ENCODING: &str = r#"function handler() {
  const enc = new TextEncoder(), dec = new TextDecoder();
  const arr = (b) => Array.from(b);
  const err = (f) => { try { f(); return 'none'; } catch (e) { return e.name; } };
  const d = new TextDecoder();
  const streamed = d.decode(new Uint8Array([0xF0, 0x9D]), { stream: true }) + '|' + d.decode(new Uint8Array([0x84, 0x9E]));
  const bytes = new Uint8Array([0x68, 0xC3, 0xA9, 0x21]);
  const into = new Uint8Array(3);
  const allBytes = String.fromCharCode(...Array.from({ length: 256 }, (_, i) => i));
  return {
    encoding: [enc.encoding, dec.encoding, new TextDecoder(' UTF8 ').encoding, err(() => new TextDecoder('latin2'))],
    fourByte: arr(enc.encode('\u20AC\u{1D11E}')),
    lone: arr(enc.encode('a\uD800b')),
    empty: arr(enc.encode()),
    roundTrip: dec.decode(enc.encode('h\u00E9llo \u{1D11E} \u4E16')),
    invalid: [dec.decode(new Uint8Array([0xFF, 0x61])), dec.decode(new Uint8Array([0xF0, 0x9D, 0x84])),
      dec.decode(new Uint8Array([0xE0, 0x80])), dec.decode(new Uint8Array([0xED, 0xA0, 0x80]))],
    fatal: [err(() => new TextDecoder('utf-8', { fatal: true }).decode(new Uint8Array([0xC3]))),
      new TextDecoder('utf-8', { fatal: true }).decode(bytes), new TextDecoder('utf-8', { fatal: true }).fatal],
    bom: [dec.decode(new Uint8Array([0xEF, 0xBB, 0xBF, 0x41])),
      new TextDecoder('utf-8', { ignoreBOM: true }).decode(new Uint8Array([0xEF, 0xBB, 0xBF, 0x41]))],
    views: [dec.decode(bytes.buffer), dec.decode(new DataView(bytes.buffer, 1, 2)), dec.decode(bytes.subarray(3)),
      err(() => dec.decode('abc'))],
    streamed,
    into: [enc.encodeInto('a\u20AC', into), arr(into), enc.encodeInto('\u{1D11E}', new Uint8Array(4))],
    btoa: [btoa(''), btoa('\x00\xFF'), btoa('Hello, world!'), err(() => btoa('\u20AC')), btoa(allBytes).length],
    atob: [atob('AP8='), atob(' AP 8\n'), atob('AP9'), atob(''), atob(btoa(allBytes)) === allBytes,
      err(() => atob('A')), err(() => atob('AP8==')), err(() => atob('A=P8')), err(() => atob('AP*8'))],
    domException: (() => { try { atob('!'); } catch (e) { return [e instanceof DOMException, e instanceof Error, e.code]; } })(),
    enumerable: ['TextEncoder', 'URL', 'crypto', 'structuredClone', 'setTimeout'].filter((k) => Object.keys(globalThis).includes(k)),
  };
}"#;

const URLS: &str = r#"function handler() {
  const err = (f) => { try { f(); return 'none'; } catch (e) { return e.name; } };
  const parts = (u) => ({ href: u.href, origin: u.origin, protocol: u.protocol, username: u.username,
    password: u.password, host: u.host, hostname: u.hostname, port: u.port, pathname: u.pathname,
    search: u.search, hash: u.hash });
  const base = 'https://example.org/a/b/c?x#y';
  const full = new URL('HTTP://user:pa%20ss@EXAMPLE.com:8080/p/../q?a=1#frag');
  const u = new URL('https://example.com/?a=1&b=2&a=3');
  const sp = u.searchParams;
  const before = [sp.get('a'), sp.getAll('a'), sp.has('b'), sp.has('a', '3'), sp.get('zz'), sp.size];
  sp.append('c', 'x y&z');
  const appended = u.href;
  sp.delete('a');
  const deleted = u.search;
  u.search = '?k=%20v+w';
  const fromSearch = [sp.get('k'), sp.size];
  const set = new URL('http://example.com/x');
  set.pathname = '/a b/\u00E9'; set.port = '80'; set.hash = 'h h'; set.search = 'q=1';
  const setA = set.href;
  set.port = '8081'; set.hostname = 'other.test'; set.protocol = 'https'; set.username = 'me';
  const sorted = new URLSearchParams('z=b&a=a&z=a&%C3%A9=1'); sorted.sort();
  const fromRecord = new URLSearchParams({ a: '1', 'b c': '\u00E9&=' });
  const fromPairs = new URLSearchParams([['x', '1'], ['y', '+']]);
  return {
    relative: [new URL('d', base).href, new URL('../d', base).href, new URL('/d', base).href,
      new URL('?z', base).href, new URL('#z', base).href, new URL('//other.net/p', base).href,
      new URL('g;x?y#s', 'http://a/b/c/d;p?q').href, new URL('../../../g', 'http://a/b/c/d;p?q').href],
    full: parts(full),
    space: new URL('https://example.com/a b/c d?e f#g h').href,
    defaultPort: [new URL('https://example.com:443/').href, new URL('http://example.com:80/').port,
      new URL('ws://example.com:81/').port],
    hosts: [new URL('http://0x7f.1/').hostname, new URL('http://[::1]:3000/').host, new URL('HTTP://ExAmPlE.CoM/').host],
    idna: new URL('https://m\u00FCnchen.de/').hostname,
    special: [new URL('file:///tmp/x').href, new URL('mailto:a@b.c').pathname, new URL('blob:https://a.b/c').origin,
      new URL('data:text/plain,hi').origin],
    invalid: [err(() => new URL('not a url')), err(() => new URL('https://exa mple.com/')), err(() => new URL('http://[::1/')),
      err(() => new URL('d', 'not a base')), err(() => new URL())],
    canParse: [URL.canParse('https://a/'), URL.canParse('d', base), URL.canParse('d'), URL.parse('x'),
      URL.parse('d', base).href],
    json: JSON.stringify({ u: new URL('https://a.test/p') }),
    string: String(new URL('https://a.test')),
    params: { before, appended, deleted, after: u.href, fromSearch, same: u.searchParams === sp },
    setA, setB: set.href,
    sorted: sorted.toString(),
    fromRecord: fromRecord.toString(),
    fromPairs: [fromPairs.toString(), [...fromPairs], [...fromPairs.keys()], [...fromPairs.values()], fromPairs.size],
    fromString: [...new URLSearchParams('?a=b+c&d=%41%zz&&e&=f')],
    each: (() => { const out = []; new URLSearchParams('p=1&q=2').forEach((v, k) => out.push(k + v)); return out; })(),
    badPair: err(() => new URLSearchParams([['a']])),
    setDupes: (() => { const p = new URLSearchParams('a=1&b=2&a=3'); p.set('a', 'x'); return p.toString(); })(),
  };
}"#;

const CRYPTO: &str = r#"async function handler() {
  const enc = new TextEncoder();
  const hex = (b) => Array.from(new Uint8Array(b), (x) => x.toString(16).padStart(2, '0')).join('');
  const rejects = async (f) => { try { await f(); return 'resolved'; } catch (e) { return e.name; } };
  const digests = {};
  for (const alg of ['SHA-1', 'SHA-256', 'SHA-384', 'SHA-512']) {
    digests[alg] = [hex(await crypto.subtle.digest(alg, enc.encode('abc'))),
      hex(await crypto.subtle.digest({ name: alg.toLowerCase() }, new ArrayBuffer(0)))];
  }
  const key1 = await crypto.subtle.importKey('raw', new Uint8Array(20).fill(0x0b), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign', 'verify']);
  const sig1 = await crypto.subtle.sign('HMAC', key1, enc.encode('Hi There'));
  const key2 = await crypto.subtle.importKey('raw', enc.encode('Jefe'), { name: 'HMAC', hash: { name: 'SHA-256' } }, true, ['verify', 'sign']);
  const data2 = enc.encode('what do ya want for nothing?');
  const sig2 = await crypto.subtle.sign({ name: 'HMAC' }, key2, data2);
  const tampered = new Uint8Array(sig2.slice(0)); tampered[31] ^= 1;
  const verifyOnly = await crypto.subtle.importKey('raw', enc.encode('k'), { name: 'HMAC', hash: 'SHA-1' }, false, ['verify']);
  const generated = await crypto.subtle.generateKey({ name: 'HMAC', hash: 'SHA-512' }, true, ['sign']);
  return {
    digests, sig1: hex(sig1), sig2: hex(sig2),
    verify: [await crypto.subtle.verify('HMAC', key2, sig2, data2), await crypto.subtle.verify('HMAC', key2, tampered, data2),
      await crypto.subtle.verify('HMAC', key2, sig2.slice(0, 16), data2)],
    key: [String(key2), key2.type, key2.extractable, key2.algorithm, key2.usages],
    exported: hex(await crypto.subtle.exportKey('raw', key2)),
    generated: [(await crypto.subtle.exportKey('raw', generated)).byteLength, generated.algorithm.length],
    promise: crypto.subtle.digest('SHA-1', new Uint8Array(0)) instanceof Promise,
    errors: [await rejects(() => crypto.subtle.digest('MD5', new Uint8Array(1))),
      await rejects(() => crypto.subtle.digest('SHA-256', 'abc')),
      await rejects(() => crypto.subtle.sign('HMAC', verifyOnly, data2)),
      await rejects(() => crypto.subtle.exportKey('raw', key1)),
      await rejects(() => crypto.subtle.importKey('raw', enc.encode('k'), { name: 'HMAC', hash: 'SHA-256' }, false, ['encrypt'])),
      await rejects(() => crypto.subtle.importKey('raw', enc.encode('k'), { name: 'HMAC', hash: 'SHA-256' }, false, [])),
      await rejects(() => crypto.subtle.importKey('jwk', {}, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign'])),
      await rejects(() => crypto.subtle.importKey('raw', new Uint8Array(0), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']))],
    illegal: (() => { try { new CryptoKey(); return 'none'; } catch (e) { return e.name; } })(),
  };
}"#;

const RANDOM: &str = r#"function handler() {
  const err = (f) => { try { f(); return 'none'; } catch (e) { return e.name; } };
  const a = new Uint8Array(16);
  const same = crypto.getRandomValues(a) === a;
  const wide = crypto.getRandomValues(new BigUint64Array(2));
  const uuids = Array.from({ length: 8 }, () => crypto.randomUUID());
  return {
    bytes: Array.from(a), same, wide: wide.length, uuids,
    errors: [err(() => crypto.getRandomValues(new Float32Array(1))), err(() => crypto.getRandomValues(new DataView(new ArrayBuffer(1)))),
      err(() => crypto.getRandomValues([1, 2])), err(() => crypto.getRandomValues(new Uint8Array(65537))),
      err(() => crypto.getRandomValues(new Uint32Array(16384)))],
  };
}"#;

const CLONE: &str = r#"function handler() {
  const err = (f) => { try { f(); return 'none'; } catch (e) { return e.name; } };
  const m = new Map();
  const o = { m, list: [1, 'x', null, undefined, 2n], nested: { deep: true } };
  m.set('self', m); m.set('o', o); m.set(o, 'object key');
  o.self = o; o.twice = [o.nested, o.nested];
  const c = structuredClone(o);
  const cm = c.m;
  const buf = new ArrayBuffer(8);
  const views = structuredClone([new Uint8Array(buf, 2, 4), new Uint16Array(buf), new DataView(buf, 1)]);
  new Uint8Array(buf)[2] = 7;
  class Point { constructor() { this.x = 1; } get y() { return 2; } }
  const misc = structuredClone([new Date(Date.UTC(2020, 0, 2)), /a+b/gi, new Set([1, 'a', o]), new RangeError('out'),
    Object(5), Object('s'), new Point(), { __proto__: null, k: 1 }, [1, , 3], new DOMException('m', 'DataCloneError')]);
  const ab = new ArrayBuffer(4);
  const moved = structuredClone({ ab }, { transfer: [ab] });
  return {
    distinct: c !== o && cm !== m,
    cycles: [c.self === c, cm.get('self') === cm, cm.get('o') === c, c.twice[0] === c.twice[1], c.twice[0] !== o.nested],
    objectKey: [...cm.keys()].filter((k) => typeof k === 'object').map((k) => [k === c, cm.get(k)]),
    values: [c.list.length, c.list[1], c.list[2], c.list[3] === undefined && 3 in c.list, typeof c.list[4], c.nested.deep],
    views: [views[0].buffer === views[1].buffer && views[1].buffer === views[2].buffer, views[0].byteOffset, views[0].length,
      views[2].byteLength, views[0][0], views[0] instanceof Uint8Array, views[2] instanceof DataView],
    misc: [misc[0] instanceof Date && misc[0].toISOString(), misc[1] instanceof RegExp && misc[1].source, misc[1].flags,
      misc[2] instanceof Set && misc[2].size, [...misc[2]][2] !== o, misc[3] instanceof RangeError && misc[3].message,
      typeof misc[4], misc[4] + 1, misc[5] instanceof String, Object.getPrototypeOf(misc[6]) === Object.prototype,
      misc[6].x, 'y' in misc[6], Object.getPrototypeOf(misc[7]) === Object.prototype, misc[7].k, 1 in misc[8], misc[8].length,
      misc[9] instanceof DOMException && misc[9].name],
    transfer: [ab.byteLength, moved.ab.byteLength],
    primitives: [structuredClone(1.5), structuredClone('s'), structuredClone(null), structuredClone(true)],
    errors: [err(() => structuredClone(() => 1)), err(() => structuredClone(Symbol('s'))),
      err(() => structuredClone({ f() {} })), err(() => structuredClone(new WeakMap())), err(() => structuredClone()),
      err(() => structuredClone(Promise.resolve()))],
  };
}"#;

const TIMERS: &str = r#"async function handler() {
  const log = [];
  setTimeout(() => log.push('c30'), 30);
  setTimeout(() => log.push('a10'), 10);
  setTimeout(() => log.push('b10'), 10);
  const cancelled = setTimeout(() => log.push('never'), 5);
  clearTimeout(cancelled);
  setTimeout((x, y) => log.push(x + y), 0, 'ar', 'gs');
  setTimeout(() => { log.push('outer'); setTimeout(() => log.push('inner'), 0); }, 20);
  setTimeout(() => { throw new Error('reported, not fatal'); }, 1);
  Promise.resolve().then(() => log.push('micro'));
  let n = 0;
  const iv = setInterval(() => { n += 1; log.push('i' + n); if (n === 3) clearInterval(iv); }, 15);
  await new Promise((r) => setTimeout(r, 50));
  log.push('done');
  // Virtual time: a day-long wait completes without waiting.
  await new Promise((r) => setTimeout(r, 86400000));
  setTimeout(() => log.push('dropped'), 0);
  return { log, ids: typeof iv === 'number' && iv > 0 };
}"#;

const SYNC_TIMER: &str = "let fired = 0;
function handler(e) {
  if (e.check) return fired;
  // An async call runs due timers: one left by an earlier call must not be among them.
  if (e.checkAsync) return new Promise((r) => setTimeout(() => r(fired), 5));
  setTimeout(() => { fired += 1; }, 0);
  if (e.throw) throw new Error('after scheduling');
  return 'scheduled';
}";

/// A snapshot with the handlers above, built once per test binary.
fn base() -> &'static Snapshot {
    static BASE: OnceLock<Snapshot> = OnceLock::new();
    BASE.get_or_init(|| {
        assert!(
            hyperlight_js_engine::hypervisor_available(),
            "these tests need a usable /dev/kvm (or /dev/mshv)"
        );
        let mut js = SandboxBuilder::new()
            .build()
            .unwrap()
            .load_runtime()
            .unwrap();
        let detailed = [
            ("encoding", ENCODING),
            ("url", URLS),
            ("crypto", CRYPTO),
            ("clone", CLONE),
        ];
        let everywhere = [
            ("smoke", SMOKE),
            ("random", RANDOM),
            ("timers", TIMERS),
            ("sync_timer", SYNC_TIMER),
        ];
        let detailed = if kernel_mode() {
            &[][..]
        } else {
            &detailed[..]
        };
        for &(key, code) in everywhere.iter().chain(detailed) {
            js.add_handler(key, &format!("{WARM}{code}")).unwrap();
        }
        js.get_loaded_sandbox().unwrap().snapshot().unwrap()
    })
}

/// Whether the guest runs in kernel mode (see the module comment).
fn kernel_mode() -> bool {
    std::env::var("HYPERLIGHT_JS_GUEST_MODE").is_ok_and(|m| m == "kernel")
}

fn sandbox() -> LoadedJSSandbox {
    LoadedJSSandbox::from_snapshot(base()).unwrap()
}

fn call(sb: &mut LoadedJSSandbox, key: &str, event: Value) -> Value {
    sb.call_handler(key, &event, &CallOptions::default())
        .unwrap()
}

#[test]
fn every_group_works_on_standard_vectors() {
    let out = call(&mut sandbox(), "smoke", json!(null));
    assert_eq!(
        out,
        json!([
            "\u{1D11E}\u{FFFD}",
            "AP8=",
            "\u{0}\u{ff}",
            "https://a.test/d?e%20f",
            "https://xn--mnchen-3ya.de/",
            "a+b=%C3%A9",
            [
                "a9993e364706816a",
                "ba7816bf8f01cfea",
                "cb00753f45a35e8b",
                "ddaf35a193617aba"
            ],
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            true,
            36,
            "timer"
        ])
    );
}

#[test]
fn text_encoder_decoder_and_base64() {
    if kernel_mode() {
        return;
    }
    let out = call(&mut sandbox(), "encoding", json!(null));
    assert_eq!(
        out["encoding"],
        json!(["utf-8", "utf-8", "utf-8", "RangeError"])
    );
    // U+20AC is 3 bytes, U+1D11E (a surrogate pair in JS) 4 bytes.
    assert_eq!(
        out["fourByte"],
        json!([0xE2, 0x82, 0xAC, 0xF0, 0x9D, 0x84, 0x9E])
    );
    assert_eq!(out["lone"], json!([0x61, 0xEF, 0xBF, 0xBD, 0x62]));
    assert_eq!(out["empty"], json!([]));
    assert_eq!(out["roundTrip"], json!("h\u{e9}llo \u{1D11E} \u{4E16}"));
    // One U+FFFD per maximal subpart (WHATWG / Unicode "best practice").
    assert_eq!(
        out["invalid"],
        json!([
            "\u{FFFD}a",
            "\u{FFFD}",
            "\u{FFFD}\u{FFFD}",
            "\u{FFFD}\u{FFFD}\u{FFFD}"
        ])
    );
    assert_eq!(out["fatal"], json!(["TypeError", "h\u{e9}!", true]));
    assert_eq!(out["bom"], json!(["A", "\u{FEFF}A"]));
    assert_eq!(
        out["views"],
        json!(["h\u{e9}!", "\u{e9}", "!", "TypeError"])
    );
    assert_eq!(out["streamed"], json!("|\u{1D11E}"));
    assert_eq!(
        out["into"],
        json!([{"read": 1, "written": 1}, [0x61, 0, 0], {"read": 2, "written": 4}])
    );
    assert_eq!(
        out["btoa"],
        json!([
            "",
            "AP8=",
            "SGVsbG8sIHdvcmxkIQ==",
            "InvalidCharacterError",
            344
        ])
    );
    assert_eq!(
        out["atob"],
        json!([
            "\u{0}\u{ff}",
            "\u{0}\u{ff}",
            "\u{0}\u{ff}",
            "",
            true,
            "InvalidCharacterError",
            "InvalidCharacterError",
            "InvalidCharacterError",
            "InvalidCharacterError"
        ])
    );
    assert_eq!(out["domException"], json!([true, true, 5]));
    assert_eq!(out["enumerable"], json!([]));
}

#[test]
fn url_and_search_params_follow_whatwg() {
    if kernel_mode() {
        return;
    }
    let out = call(&mut sandbox(), "url", json!(null));
    assert_eq!(
        out["relative"],
        json!([
            "https://example.org/a/b/d",
            "https://example.org/a/d",
            "https://example.org/d",
            "https://example.org/a/b/c?z",
            "https://example.org/a/b/c?x#z",
            "https://other.net/p",
            // RFC 3986 section 5.4 examples, as WHATWG URL resolves them.
            "http://a/b/c/g;x?y#s",
            "http://a/g"
        ])
    );
    assert_eq!(
        out["full"],
        json!({
            "href": "http://user:pa%20ss@example.com:8080/q?a=1#frag",
            "origin": "http://example.com:8080",
            "protocol": "http:",
            "username": "user",
            "password": "pa%20ss",
            "host": "example.com:8080",
            "hostname": "example.com",
            "port": "8080",
            "pathname": "/q",
            "search": "?a=1",
            "hash": "#frag"
        })
    );
    assert_eq!(
        out["space"],
        json!("https://example.com/a%20b/c%20d?e%20f#g%20h")
    );
    assert_eq!(
        out["defaultPort"],
        json!(["https://example.com/", "", "81"])
    );
    assert_eq!(
        out["hosts"],
        json!(["127.0.0.1", "[::1]:3000", "example.com"])
    );
    assert_eq!(out["idna"], json!("xn--mnchen-3ya.de"));
    assert_eq!(
        out["special"],
        json!(["file:///tmp/x", "a@b.c", "https://a.b", "null"])
    );
    assert_eq!(out["invalid"], json!(vec!["TypeError"; 5]));
    assert_eq!(
        out["canParse"],
        json!([true, true, false, null, "https://example.org/a/b/d"])
    );
    assert_eq!(out["json"], json!(r#"{"u":"https://a.test/p"}"#));
    assert_eq!(out["string"], json!("https://a.test/"));
    assert_eq!(
        out["params"],
        json!({
            "before": ["1", ["1", "3"], true, true, null, 3],
            "appended": "https://example.com/?a=1&b=2&a=3&c=x+y%26z",
            "deleted": "?b=2&c=x+y%26z",
            "after": "https://example.com/?k=%20v+w",
            "fromSearch": [" v w", 1],
            "same": true
        })
    );
    assert_eq!(
        out["setA"],
        json!("http://example.com/a%20b/%C3%A9?q=1#h%20h")
    );
    assert_eq!(
        out["setB"],
        json!("https://me@other.test:8081/a%20b/%C3%A9?q=1#h%20h")
    );
    assert_eq!(out["sorted"], json!("a=a&z=b&z=a&%C3%A9=1"));
    assert_eq!(out["fromRecord"], json!("a=1&b+c=%C3%A9%26%3D"));
    assert_eq!(
        out["fromPairs"],
        json!([
            "x=1&y=%2B",
            [["x", "1"], ["y", "+"]],
            ["x", "y"],
            ["1", "+"],
            2
        ])
    );
    assert_eq!(
        out["fromString"],
        json!([["a", "b c"], ["d", "A%zz"], ["e", ""], ["", "f"]])
    );
    assert_eq!(out["each"], json!(["p1", "q2"]));
    assert_eq!(out["badPair"], json!("TypeError"));
    assert_eq!(out["setDupes"], json!("a=x&b=2"));
}

#[test]
fn subtle_digest_and_hmac_match_the_standard_vectors() {
    if kernel_mode() {
        return;
    }
    let out = call(&mut sandbox(), "crypto", json!(null));
    // FIPS 180 examples ("abc") and the digests of the empty message.
    assert_eq!(
        out["digests"],
        json!({
            "SHA-1": ["a9993e364706816aba3e25717850c26c9cd0d89d",
                      "da39a3ee5e6b4b0d3255bfef95601890afd80709"],
            "SHA-256": ["ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"],
            "SHA-384": ["cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7",
                        "38b060a751ac96384cd9327eb1b1e36a21fdb71114be07434c0cc7bf63f6e1da274edebfe76f65fbd51ad2f14898b95b"],
            "SHA-512": ["ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
                        "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"]
        })
    );
    // RFC 4231 test cases 1 and 2, HMAC-SHA-256.
    assert_eq!(
        out["sig1"],
        json!("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
    );
    assert_eq!(
        out["sig2"],
        json!("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    );
    assert_eq!(out["verify"], json!([true, false, false]));
    assert_eq!(
        out["key"],
        json!([
            "[object CryptoKey]",
            "secret",
            true,
            {"name": "HMAC", "hash": {"name": "SHA-256"}, "length": 32},
            ["sign", "verify"]
        ])
    );
    assert_eq!(out["exported"], json!("4a656665"));
    // The default HMAC key length is the hash's block size.
    assert_eq!(out["generated"], json!([128, 1024]));
    assert_eq!(out["promise"], json!(true));
    assert_eq!(
        out["errors"],
        json!([
            "NotSupportedError",
            "TypeError",
            "InvalidAccessError",
            "InvalidAccessError",
            "SyntaxError",
            "SyntaxError",
            "NotSupportedError",
            "DataError"
        ])
    );
    assert_eq!(out["illegal"], json!("TypeError"));
}

fn assert_uuid_v4(u: &str) {
    let b = u.as_bytes();
    assert_eq!(b.len(), 36, "{u}");
    for (i, c) in u.char_indices() {
        match i {
            8 | 13 | 18 | 23 => assert_eq!(c, '-', "{u}"),
            14 => assert_eq!(c, '4', "version nibble of {u}"),
            19 => assert!("89ab".contains(c), "variant of {u}"),
            _ => assert!(c.is_ascii_hexdigit() && !c.is_ascii_uppercase(), "{u}"),
        }
    }
}

#[test]
fn random_values_and_uuids_never_repeat_across_sandboxes_or_restores() {
    let mut a = sandbox();
    let mut b = sandbox();
    let ra = call(&mut a, "random", json!(null));
    let rb = call(&mut b, "random", json!(null));
    assert_ne!(ra["bytes"], rb["bytes"], "two sandboxes share a stream");
    a.restore(base()).unwrap();
    let ra2 = call(&mut a, "random", json!(null));
    assert_ne!(ra["bytes"], ra2["bytes"], "a restore replays the stream");
    let mut uuids: Vec<&str> = [&ra, &rb, &ra2]
        .iter()
        .flat_map(|r| r["uuids"].as_array().unwrap())
        .map(|u| u.as_str().unwrap())
        .collect();
    uuids.iter().for_each(|u| assert_uuid_v4(u));
    let n = uuids.len();
    uuids.sort_unstable();
    uuids.dedup();
    assert_eq!(uuids.len(), n, "a UUID repeated");
    assert_eq!(ra["same"], json!(true));
    assert_eq!(ra["wide"], json!(2));
    assert_eq!(
        ra["errors"],
        json!([
            "TypeMismatchError",
            "TypeMismatchError",
            "TypeError",
            "QuotaExceededError",
            "none"
        ])
    );
}

#[test]
fn structured_clone_keeps_cycles_and_types() {
    if kernel_mode() {
        return;
    }
    let out = call(&mut sandbox(), "clone", json!(null));
    assert_eq!(out["distinct"], json!(true));
    assert_eq!(out["cycles"], json!([true, true, true, true, true]));
    assert_eq!(out["objectKey"], json!([[true, "object key"]]));
    assert_eq!(out["values"], json!([5, "x", null, true, "bigint", true]));
    assert_eq!(out["views"], json!([true, 2, 4, 7, 0, true, true]));
    assert_eq!(
        out["misc"],
        json!([
            "2020-01-02T00:00:00.000Z",
            "a+b",
            "gi",
            3,
            true,
            "out",
            "object",
            6,
            true,
            true,
            1,
            false,
            true,
            1,
            false,
            3,
            "DataCloneError"
        ])
    );
    assert_eq!(out["transfer"], json!([0, 4]));
    assert_eq!(out["primitives"], json!([1.5, "s", null, true]));
    assert_eq!(
        out["errors"],
        json!([
            "DataCloneError",
            "DataCloneError",
            "DataCloneError",
            "DataCloneError",
            "TypeError",
            "DataCloneError"
        ])
    );
}

#[test]
fn timers_run_in_due_order_on_virtual_time_within_the_call() {
    let mut sb = sandbox();
    let start = std::time::Instant::now();
    let out = call(&mut sb, "timers", json!(null));
    let expected = json!({
        "log": ["micro", "args", "a10", "b10", "i1", "outer", "inner", "c30", "i2", "i3", "done"],
        "ids": true
    });
    assert_eq!(out, expected);
    // Timers left pending are dropped; the next call starts afresh.
    assert_eq!(call(&mut sb, "timers", json!(null)), expected);
    assert!(
        start.elapsed() < std::time::Duration::from_secs(30),
        "virtual time still waited"
    );
    // A synchronous handler's timers never run, in this call or later ones.
    assert_eq!(call(&mut sb, "sync_timer", json!({})), json!("scheduled"));
    assert_eq!(
        call(&mut sb, "sync_timer", json!({"check": true})),
        json!(0)
    );
    // Nor do the timers of a handler that threw after setting them.
    let threw = sb.call_handler(
        "sync_timer",
        &json!({"throw": true}),
        &CallOptions::default(),
    );
    assert_eq!(threw.unwrap_err().code(), "ERR_HANDLER_THREW");
    assert_eq!(
        call(&mut sb, "sync_timer", json!({"checkAsync": true})),
        json!(0)
    );
}

/// The globals are installed lazily: a fresh runtime compiles a group only
/// when a handler first touches it, at call time too.
#[test]
fn globals_load_on_first_use_in_a_fresh_runtime() {
    if kernel_mode() {
        return;
    }
    let mut js = SandboxBuilder::new()
        .build()
        .unwrap()
        .load_runtime()
        .unwrap();
    js.add_handler(
        "h",
        "function handler() { const d = Object.getOwnPropertyDescriptor(globalThis, 'btoa'); const r = [typeof d.get, btoa('hi'), typeof Object.getOwnPropertyDescriptor(globalThis, 'btoa').value]; globalThis.URL = 1; return [...r, URL]; }",
    )
    .unwrap();
    let mut sb = js.get_loaded_sandbox().unwrap();
    assert_eq!(
        call(&mut sb, "h", json!(null)),
        json!(["function", "aGk=", "function", 1])
    );
}
