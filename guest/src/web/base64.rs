//! `atob` and `btoa` (HTML): binary strings (one char per byte) to and from
//! base64. `atob` implements forgiving-base64 decode: ASCII whitespace is
//! ignored, padding is optional, non-zero trailing bits are accepted.

use alloc::string::String;
use alloc::vec::Vec;

use base64::Engine as _;
use base64::alphabet::STANDARD as ALPHABET;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use rquickjs::{Ctx, Function, Object};

/// Shim: argument conversion and the `InvalidCharacterError`s.
pub const JS: &str = r#"(function (native) {
  const bad = (what) => new DOMException(`The string to be ${what} contains invalid characters.`, 'InvalidCharacterError');
  function btoa(data) {
    if (arguments.length < 1) throw new TypeError('btoa requires 1 argument');
    const out = native.btoa(`${data}`.toWellFormed());
    if (out == null) throw bad('encoded');
    return out;
  }
  function atob(data) {
    if (arguments.length < 1) throw new TypeError('atob requires 1 argument');
    const out = native.atob(`${data}`.toWellFormed());
    if (out == null) throw bad('decoded');
    return out;
  }
  return { atob, btoa };
})"#;

/// Decodes without padding (stripped beforehand) and with any trailing bits.
const FORGIVING: GeneralPurpose = GeneralPurpose::new(
    &ALPHABET,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true),
);

/// `btoa`: `None` when a character is above U+00FF.
fn btoa(data: &str) -> Option<String> {
    let bytes = data
        .chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some(STANDARD.encode(bytes))
}

/// `atob` by the forgiving-base64 decode algorithm; `None` on failure.
fn atob(data: &str) -> Option<String> {
    let mut text: Vec<u8> = data
        .bytes()
        .filter(|b| !matches!(b, b'\t' | b'\n' | b'\x0c' | b'\r' | b' '))
        .collect();
    if text.len().is_multiple_of(4) {
        for _ in 0..2 {
            if text.last() == Some(&b'=') {
                text.pop();
            }
        }
    }
    if text.len() % 4 == 1 {
        return None;
    }
    // Anything outside the alphabet (including a stray '=') fails here.
    let bytes = FORGIVING.decode(&text).ok()?;
    Some(bytes.into_iter().map(char::from).collect())
}

/// The natives the shim calls.
pub fn natives<'js>(ctx: &Ctx<'js>) -> rquickjs::Result<Object<'js>> {
    let o = Object::new(ctx.clone())?;
    o.set("btoa", Function::new(ctx.clone(), |s: String| btoa(&s))?)?;
    o.set("atob", Function::new(ctx.clone(), |s: String| atob(&s))?)?;
    Ok(o)
}
