//! Web-standard built-ins: WHATWG Encoding and URL, HTML base64, structured
//! clone and timers, W3C WebCrypto, and the `DOMException` they throw.
//!
//! Each concern is a small JS shim over Rust natives (the parsing, hashing and
//! encoding run in Rust crates). The shims are compiled only when a handler
//! first touches one of their globals: [`install`] defines lazy accessors, so
//! runtime init pays only for those and sandboxes that never use these
//! globals pay nothing more.

use rquickjs::object::{Accessor, Property};
use rquickjs::{Ctx, Exception, Function, Object, Value};

mod base64;
mod clone;
pub mod crypto;
mod dom;
mod encoding;
pub mod timers;
mod url;

/// The globals of each group (see [`load`]).
const GROUPS: &[(&str, &[&str])] = &[
    ("dom", &["DOMException"]),
    ("encoding", &["TextEncoder", "TextDecoder"]),
    ("base64", &["atob", "btoa"]),
    ("url", &["URL", "URLSearchParams"]),
    ("crypto", &["crypto", "Crypto", "SubtleCrypto", "CryptoKey"]),
    ("clone", &["structuredClone"]),
    (
        "timers",
        &["setTimeout", "clearTimeout", "setInterval", "clearInterval"],
    ),
];

/// Defines every global of this module as an accessor that loads its group
/// on first use (get or set) and is then replaced by a plain data property
/// (writable, configurable, not enumerable, like Web IDL interface objects).
/// Done from Rust: in kernel mode, where every guest instruction is emulated,
/// compiling even a small installer script would double this step's cost.
pub fn install<'js>(ctx: &Ctx<'js>) -> rquickjs::Result<()> {
    let globals = ctx.globals();
    for &(group, names) in GROUPS {
        for &name in names {
            let get = move |ctx: Ctx<'js>| -> rquickjs::Result<Value<'js>> {
                define_group(&ctx, group, names)?;
                ctx.globals().get(name)
            };
            let set = move |ctx: Ctx<'js>, value: Value<'js>| -> rquickjs::Result<()> {
                define_group(&ctx, group, names)?;
                define(&ctx, name, value)
            };
            globals.prop(name, Accessor::new(get, set).configurable())?;
        }
    }
    Ok(())
}

fn define<'js>(ctx: &Ctx<'js>, name: &str, value: Value<'js>) -> rquickjs::Result<()> {
    ctx.globals()
        .prop(name, Property::from(value).writable().configurable())
}

/// Loads `group` and replaces its accessors by the values it exports.
fn define_group<'js>(ctx: &Ctx<'js>, group: &str, names: &[&str]) -> rquickjs::Result<()> {
    let exports: Object<'js> = load(ctx, group)?;
    for &name in names {
        define(ctx, name, exports.get(name)?)?;
    }
    Ok(())
}

/// Compiles one group's shim and runs it with its natives; returns its exports.
fn load<'js>(ctx: &Ctx<'js>, group: &str) -> rquickjs::Result<Object<'js>> {
    let (source, natives): (&str, Option<Object<'js>>) = match group {
        "dom" => (dom::JS, None),
        "encoding" => (encoding::JS, Some(encoding::natives(ctx)?)),
        "base64" => (base64::JS, Some(base64::natives(ctx)?)),
        "url" => (url::JS, Some(url::natives(ctx)?)),
        "crypto" => (crypto::JS, Some(crypto::natives(ctx)?)),
        "clone" => (clone::JS, None),
        "timers" => (timers::JS, Some(timers::natives(ctx)?)),
        _ => return Err(Exception::throw_internal(ctx, "unknown built-in group")),
    };
    let shim: Function<'js> = ctx.eval(source)?;
    shim.call((natives,))
}
