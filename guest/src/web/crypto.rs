//! `crypto` (W3C WebCrypto): `getRandomValues`, `randomUUID`, and
//! `crypto.subtle` with `digest` (SHA-1/256/384/512) and HMAC keys
//! (`importKey`/`exportKey` "raw", `generateKey`, `sign`, `verify`).
//!
//! Randomness is ChaCha20 keyed from the host seed that `Math.random` also
//! gets (hashed with a label, so the two streams are unrelated), and rekeyed
//! on every reseed: every new sandbox and every restore.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt::Write as _;

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rquickjs::{ArrayBuffer, Ctx, Function, Object, TypedArray};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha384, Sha512};

/// Shim: Web IDL conversions, algorithm normalization, `CryptoKey`, and the
/// DOMExceptions WebCrypto specifies. `subtle` methods are async functions,
/// so every failure becomes a rejected promise.
pub const JS: &str = r#"(function (native) {
  const HASHES = ['SHA-1', 'SHA-256', 'SHA-384', 'SHA-512'];
  const INTEGER_ARRAYS = ['Int8Array', 'Uint8Array', 'Uint8ClampedArray', 'Int16Array', 'Uint16Array',
    'Int32Array', 'Uint32Array', 'BigInt64Array', 'BigUint64Array'];
  const tagOf = Object.getOwnPropertyDescriptor(Object.getPrototypeOf(Int8Array.prototype), Symbol.toStringTag).get;
  const err = (message, name) => new DOMException(message, name);
  const token = Symbol('internal');
  const illegal = () => { throw new TypeError('Illegal constructor'); };
  const bytes = (data) => {
    if (data instanceof ArrayBuffer) return new Uint8Array(data);
    if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    throw new TypeError('The data must be an ArrayBuffer or an ArrayBufferView');
  };
  const nameOf = (alg) => {
    if (typeof alg === 'string') return alg;
    if (alg === null || typeof alg !== 'object') return `${alg}`;
    if (alg.name === undefined) throw new TypeError('The algorithm must have a name');
    return `${alg.name}`;
  };
  const hashName = (alg) => {
    const name = nameOf(alg).toUpperCase();
    if (!HASHES.includes(name)) throw err(`Unrecognized algorithm name: ${nameOf(alg)}`, 'NotSupportedError');
    return name;
  };
  const hmacAlg = (alg) => {
    if (nameOf(alg).toUpperCase() !== 'HMAC') throw err(`Unrecognized algorithm name: ${nameOf(alg)}`, 'NotSupportedError');
    return alg;
  };
  const BLOCK_BITS = { 'SHA-1': 512, 'SHA-256': 512, 'SHA-384': 1024, 'SHA-512': 1024 };
  const secrets = new WeakMap();
  class CryptoKey {
    #type; #extractable; #algorithm; #usages;
    constructor(t, extractable, algorithm, usages) {
      if (t !== token) illegal();
      this.#type = 'secret'; this.#extractable = extractable; this.#algorithm = algorithm; this.#usages = usages;
    }
    get type() { return this.#type; }
    get extractable() { return this.#extractable; }
    get algorithm() { return this.#algorithm; }
    get usages() { return this.#usages; }
  }
  const hmacKey = (alg, raw, extractable, usages) => {
    if (alg.hash === undefined) throw new TypeError('HmacImportParams needs a hash');
    const hash = hashName(alg.hash);
    const list = [...usages].map((u) => `${u}`);
    for (const u of list) if (u !== 'sign' && u !== 'verify') throw err(`Unsupported key usage for an HMAC key: ${u}`, 'SyntaxError');
    if (raw.length === 0) throw err('The key data is empty', 'DataError');
    let length = raw.length * 8;
    if (alg.length !== undefined) {
      const l = Number(alg.length) >>> 0;
      if (l > length || l <= length - 8) throw err('The key length does not match the key data', 'DataError');
      length = l;
    }
    if (list.length === 0) throw err('Usages cannot be empty when creating a key.', 'SyntaxError');
    const key = new CryptoKey(token, !!extractable, { name: 'HMAC', hash: { name: hash }, length },
      ['sign', 'verify'].filter((u) => list.includes(u)));
    secrets.set(key, Uint8Array.from(raw));
    return key;
  };
  const usable = (alg, key, usage) => {
    hmacAlg(alg);
    if (!secrets.has(key)) throw new TypeError('The key is not a CryptoKey');
    if (key.algorithm.name !== 'HMAC' || !key.usages.includes(usage)) throw err(`The key cannot be used to ${usage}`, 'InvalidAccessError');
    return secrets.get(key);
  };
  class SubtleCrypto {
    constructor(t) { if (t !== token) illegal(); }
    async digest(algorithm, data) { return native.digest(hashName(algorithm), bytes(data)); }
    async importKey(format, keyData, algorithm, extractable, keyUsages) {
      const f = `${format}`;
      if (f === 'jwk' || f === 'spki' || f === 'pkcs8') throw err(`Unsupported key format for HMAC: ${f}`, 'NotSupportedError');
      if (f !== 'raw') throw new TypeError(`Invalid key format: ${f}`);
      return hmacKey(hmacAlg(algorithm), bytes(keyData), extractable, keyUsages);
    }
    async exportKey(format, key) {
      if (!secrets.has(key)) throw new TypeError('The key is not a CryptoKey');
      if (`${format}` !== 'raw') throw err(`Unsupported key format: ${format}`, 'NotSupportedError');
      if (!key.extractable) throw err('The key is not extractable', 'InvalidAccessError');
      return Uint8Array.from(secrets.get(key)).buffer;
    }
    async generateKey(algorithm, extractable, keyUsages) {
      hmacAlg(algorithm);
      const hash = hashName(algorithm.hash);
      const bits = algorithm.length === undefined ? BLOCK_BITS[hash] : Number(algorithm.length) >>> 0;
      if (bits === 0) throw err('The key length cannot be zero', 'OperationError');
      const raw = native.random(Math.ceil(bits / 8));
      if (bits % 8) raw[raw.length - 1] &= 0xFF << (8 - bits % 8);
      return hmacKey({ name: 'HMAC', hash, length: bits }, raw, extractable, keyUsages);
    }
    async sign(algorithm, key, data) {
      const secret = usable(algorithm, key, 'sign');
      return native.hmac(key.algorithm.hash.name, secret, bytes(data));
    }
    async verify(algorithm, key, signature, data) {
      const secret = usable(algorithm, key, 'verify');
      return native.hmacVerify(key.algorithm.hash.name, secret, bytes(data), Uint8Array.from(bytes(signature)));
    }
  }
  const subtle = new SubtleCrypto(token);
  class Crypto {
    constructor(t) { if (t !== token) illegal(); }
    get subtle() { return subtle; }
    getRandomValues(array) {
      if (!ArrayBuffer.isView(array)) throw new TypeError('The argument must be an integer typed array');
      if (!INTEGER_ARRAYS.includes(tagOf.call(array))) throw err('The data must be an integer typed array', 'TypeMismatchError');
      if (array.byteLength > 65536) throw err(`The ArrayBufferView's byte length (${array.byteLength}) exceeds the number of bytes of entropy available via this API (65536)`, 'QuotaExceededError');
      new Uint8Array(array.buffer, array.byteOffset, array.byteLength).set(native.random(array.byteLength));
      return array;
    }
    randomUUID() { return native.uuid(); }
  }
  const crypto = new Crypto(token);
  for (const C of [Crypto, SubtleCrypto, CryptoKey]) Object.defineProperty(C.prototype, Symbol.toStringTag, { value: C.name, configurable: true });
  return { crypto, Crypto, SubtleCrypto, CryptoKey };
})"#;

/// The generator, `None` until the first reseed.
struct Csprng(RefCell<Option<ChaCha20Rng>>);

// SAFETY: a hyperlight guest has one vCPU and no threads, so the cell is
// never touched concurrently.
unsafe impl Sync for Csprng {}

static RNG: Csprng = Csprng(RefCell::new(None));

/// Rekeys the generator from the host's seed (see `runtime::reseed`).
pub fn reseed(seed: u64) {
    let key = Sha256::new()
        .chain_update(b"hyperlight-js crypto.getRandomValues\0")
        .chain_update(seed.to_le_bytes())
        .finalize();
    *RNG.0.borrow_mut() = Some(ChaCha20Rng::from_seed(key.into()));
}

fn random(n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    RNG.0
        .borrow_mut()
        .get_or_insert_with(|| ChaCha20Rng::from_seed([0x5a; 32]))
        .fill_bytes(&mut out);
    out
}

/// An RFC 4122 version 4 UUID in its lowercase text form.
fn uuid() -> String {
    let mut b = random(16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{byte:02x}");
    }
    s
}

fn digest(alg: &str, data: &[u8]) -> Option<Vec<u8>> {
    Some(match alg {
        "SHA-1" => Sha1::digest(data).to_vec(),
        "SHA-256" => Sha256::digest(data).to_vec(),
        "SHA-384" => Sha384::digest(data).to_vec(),
        "SHA-512" => Sha512::digest(data).to_vec(),
        _ => return None,
    })
}

fn keyed<M: Mac + KeyInit>(key: &[u8], data: &[u8]) -> Option<M> {
    let mut mac = <M as KeyInit>::new_from_slice(key).ok()?;
    mac.update(data);
    Some(mac)
}

fn hmac(alg: &str, key: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    fn sign<M: Mac + KeyInit>(key: &[u8], data: &[u8]) -> Option<Vec<u8>> {
        Some(keyed::<M>(key, data)?.finalize().into_bytes().to_vec())
    }
    match alg {
        "SHA-1" => sign::<Hmac<Sha1>>(key, data),
        "SHA-256" => sign::<Hmac<Sha256>>(key, data),
        "SHA-384" => sign::<Hmac<Sha384>>(key, data),
        "SHA-512" => sign::<Hmac<Sha512>>(key, data),
        _ => None,
    }
}

/// Constant-time comparison (`verify_slice`).
fn hmac_verify(alg: &str, key: &[u8], data: &[u8], sig: &[u8]) -> bool {
    fn check<M: Mac + KeyInit>(key: &[u8], data: &[u8], sig: &[u8]) -> bool {
        keyed::<M>(key, data).is_some_and(|m| m.verify_slice(sig).is_ok())
    }
    match alg {
        "SHA-1" => check::<Hmac<Sha1>>(key, data, sig),
        "SHA-256" => check::<Hmac<Sha256>>(key, data, sig),
        "SHA-384" => check::<Hmac<Sha384>>(key, data, sig),
        "SHA-512" => check::<Hmac<Sha512>>(key, data, sig),
        _ => false,
    }
}

fn buffer<'js>(ctx: &Ctx<'js>, bytes: Option<Vec<u8>>) -> rquickjs::Result<ArrayBuffer<'js>> {
    match bytes {
        Some(b) => ArrayBuffer::new(ctx.clone(), b),
        None => Err(rquickjs::Exception::throw_type(
            ctx,
            "unsupported hash algorithm",
        )),
    }
}

/// The natives the shim calls.
pub fn natives<'js>(ctx: &Ctx<'js>) -> rquickjs::Result<Object<'js>> {
    let o = Object::new(ctx.clone())?;
    o.set(
        "random",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'js>, n: usize| -> rquickjs::Result<TypedArray<'js, u8>> {
                TypedArray::new(ctx, random(n))
            },
        )?,
    )?;
    o.set("uuid", Function::new(ctx.clone(), uuid)?)?;
    o.set(
        "digest",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'js>, alg: String, data: TypedArray<'js, u8>| {
                buffer(&ctx, digest(&alg, data.as_bytes().unwrap_or_default()))
            },
        )?,
    )?;
    o.set(
        "hmac",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'js>, alg: String, key: TypedArray<'js, u8>, data: TypedArray<'js, u8>| {
                let (key, data) = (key.as_bytes().unwrap_or_default(), data.as_bytes());
                buffer(&ctx, hmac(&alg, key, data.unwrap_or_default()))
            },
        )?,
    )?;
    o.set(
        "hmacVerify",
        Function::new(
            ctx.clone(),
            |alg: String,
             key: TypedArray<'js, u8>,
             data: TypedArray<'js, u8>,
             sig: TypedArray<'js, u8>| {
                hmac_verify(
                    &alg,
                    key.as_bytes().unwrap_or_default(),
                    data.as_bytes().unwrap_or_default(),
                    sig.as_bytes().unwrap_or_default(),
                )
            },
        )?,
    )?;
    Ok(o)
}
