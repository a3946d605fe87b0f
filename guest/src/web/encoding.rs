//! `TextEncoder` and `TextDecoder` (WHATWG Encoding), UTF-8 only.
//!
//! Strings reach Rust well-formed (`toWellFormed` turns lone surrogates into
//! U+FFFD, as the USVString conversion requires). Rust's lossy UTF-8 decoding
//! replaces maximal subparts, which is exactly WHATWG's replacement rule.

use alloc::string::String;

use rquickjs::{Array, Ctx, Function, Object, TypedArray, Value};

/// Shim: labels, options, BOM handling and streaming state.
pub const JS: &str = r#"(function (native) {
  const LABELS = ['unicode-1-1-utf-8', 'unicode11utf8', 'unicode20utf8', 'utf-8', 'utf8', 'x-unicode20utf8'];
  const bytesOf = (input) => {
    if (input instanceof ArrayBuffer || (typeof SharedArrayBuffer === 'function' && input instanceof SharedArrayBuffer)) return new Uint8Array(input);
    if (ArrayBuffer.isView(input)) return new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
    throw new TypeError('The input must be an ArrayBuffer or an ArrayBufferView');
  };
  const dict = (o) => {
    if (o === undefined || o === null) return {};
    if (typeof o !== 'object' && typeof o !== 'function') throw new TypeError('The options must be an object');
    return o;
  };
  class TextEncoder {
    get encoding() { return 'utf-8'; }
    encode(input = '') { return native.encode(`${input}`.toWellFormed()); }
    encodeInto(source, destination) {
      if (!(destination instanceof Uint8Array)) throw new TypeError('The destination must be a Uint8Array');
      const [read, bytes] = native.encodeInto(`${source}`.toWellFormed(), destination.length);
      destination.set(bytes);
      return { read, written: bytes.length };
    }
  }
  class TextDecoder {
    #fatal; #ignoreBOM; #pending = null; #bomSeen = false;
    constructor(label = 'utf-8', options = undefined) {
      const name = `${label}`.replace(/^[\t\n\f\r ]+|[\t\n\f\r ]+$/g, '').toLowerCase();
      if (!LABELS.includes(name)) throw new RangeError(`The encoding label provided ('${label}') is not supported.`);
      const o = dict(options);
      this.#fatal = !!o.fatal;
      this.#ignoreBOM = !!o.ignoreBOM;
    }
    get encoding() { return 'utf-8'; }
    get fatal() { return this.#fatal; }
    get ignoreBOM() { return this.#ignoreBOM; }
    decode(input = undefined, options = undefined) {
      const stream = !!dict(options).stream;
      let bytes = input === undefined ? new Uint8Array(0) : bytesOf(input);
      if (this.#pending !== null) {
        const joined = new Uint8Array(this.#pending.length + bytes.length);
        joined.set(this.#pending);
        joined.set(bytes, this.#pending.length);
        bytes = joined;
        this.#pending = null;
      }
      const [text, held] = native.decode(bytes, this.#fatal, stream);
      if (text === null) {
        this.#bomSeen = false;
        throw new TypeError('The encoded data was not valid utf-8');
      }
      if (held > 0) this.#pending = bytes.slice(bytes.length - held);
      let out = text;
      if (!this.#ignoreBOM && !this.#bomSeen && out.length > 0) {
        this.#bomSeen = true;
        if (out.charCodeAt(0) === 0xFEFF) out = out.slice(1);
      }
      if (!stream) this.#bomSeen = false;
      return out;
    }
  }
  for (const C of [TextEncoder, TextDecoder]) Object.defineProperty(C.prototype, Symbol.toStringTag, { value: C.name, configurable: true });
  return { TextEncoder, TextDecoder };
})"#;

/// Length of a truncated (but so far valid) UTF-8 sequence at the end of
/// `data`, which a streaming decode keeps for the next chunk.
fn incomplete_tail(data: &[u8]) -> usize {
    for n in 1..=data.len().min(3) {
        let start = data.len() - n;
        if data[start] & 0xC0 != 0x80 {
            return match core::str::from_utf8(&data[start..]) {
                Err(e) if e.valid_up_to() == 0 && e.error_len().is_none() => n,
                _ => 0,
            };
        }
    }
    0
}

/// The natives the shim calls.
pub fn natives<'js>(ctx: &Ctx<'js>) -> rquickjs::Result<Object<'js>> {
    let o = Object::new(ctx.clone())?;
    o.set(
        "encode",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'js>, s: String| -> rquickjs::Result<TypedArray<'js, u8>> {
                TypedArray::new_copy(ctx, s.as_bytes())
            },
        )?,
    )?;
    o.set(
        "encodeInto",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'js>, s: String, room: usize| -> rquickjs::Result<Array<'js>> {
                // Whole characters only; `read` counts UTF-16 code units.
                let (mut read, mut written) = (0usize, 0usize);
                for c in s.chars() {
                    if written + c.len_utf8() > room {
                        break;
                    }
                    written += c.len_utf8();
                    read += c.len_utf16();
                }
                let out = Array::new(ctx.clone())?;
                out.set(0, read)?;
                out.set(
                    1,
                    TypedArray::<u8>::new_copy(ctx, &s.as_bytes()[..written])?,
                )?;
                Ok(out)
            },
        )?,
    )?;
    o.set(
        "decode",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'js>,
             bytes: TypedArray<'js, u8>,
             fatal: bool,
             stream: bool|
             -> rquickjs::Result<Array<'js>> {
                let data = bytes.as_bytes().unwrap_or_default();
                let held = if stream { incomplete_tail(data) } else { 0 };
                let body = &data[..data.len() - held];
                let out = Array::new(ctx.clone())?;
                let text: Option<String> = if fatal {
                    core::str::from_utf8(body).ok().map(String::from)
                } else {
                    Some(String::from_utf8_lossy(body).into_owned())
                };
                match text {
                    Some(t) => out.set(0, t)?,
                    None => out.set(0, Value::new_null(ctx))?,
                }
                out.set(1, held)?;
                Ok(out)
            },
        )?,
    )?;
    Ok(o)
}
