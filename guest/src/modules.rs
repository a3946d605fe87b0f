//! ES modules: embedded modules added by the host (`user:<name>`, or a
//! namespace of the host's choosing), host-function modules (`host:<m>`),
//! and the module check for handler code.
//!
//! Imports go through QuickJS's own module loader: a normalize hook (our
//! resolver) maps a specifier to a canonical name or throws, and a load hook
//! compiles the module the first time it is imported. We set the hooks with
//! `JS_SetModuleLoaderFunc` because rquickjs's `Resolver`/`Loader` pair sits
//! behind its `loader` feature, which the guest does not build.

use alloc::collections::BTreeMap;
use alloc::ffi::CString;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;
use core::ffi::{CStr, c_char, c_void};

use rquickjs::{Ctx, Exception, qjs};

/// The namespace of modules added without one.
pub const DEFAULT_NAMESPACE: &str = "user";
/// The prefix of host-function modules.
const HOST_PREFIX: &str = "host:";
/// The prefix of handler modules' names (never importable).
pub const HANDLER_PREFIX: &str = "handler:";
/// The hidden global holding the `host` object as loaded, for `host:` modules.
pub const HOST_GLOBAL: &str = "__hl_host";

struct Table {
    /// Embedded module sources by canonical name (`ns:name`).
    sources: BTreeMap<String, String>,
    /// Host functions by module.
    host: BTreeMap<String, Vec<String>>,
}

struct Modules(RefCell<Table>);

// SAFETY: one vCPU, no threads (see `runtime::Global`).
unsafe impl Sync for Modules {}

static MODULES: Modules = Modules(RefCell::new(Table {
    sources: BTreeMap::new(),
    host: BTreeMap::new(),
}));

/// Records the host functions (`module.function` lines) and installs the
/// module hooks on the context's runtime.
pub fn install(ctx: &Ctx<'_>, host_fns: &str) {
    let mut t = MODULES.0.borrow_mut();
    for (m, f) in host_fns.lines().filter_map(|l| l.split_once('.')) {
        t.host.entry(m.to_string()).or_default().push(f.to_string());
    }
    // SAFETY: the context pointer is live; the hooks take no opaque data.
    unsafe {
        qjs::JS_SetModuleLoaderFunc(
            qjs::JS_GetRuntime(ctx.as_raw().as_ptr()),
            Some(normalize),
            Some(load),
            core::ptr::null_mut(),
        );
    }
}

/// The canonical name of module `name` in `namespace`.
pub fn canonical(namespace: &str, name: &str) -> String {
    format!("{namespace}:{name}")
}

/// Stores an embedded module's source under its canonical name.
pub fn add(canonical: &str, source: &str) {
    MODULES
        .0
        .borrow_mut()
        .sources
        .insert(canonical.to_string(), source.to_string());
}

/// How a module is named in messages.
pub fn describe(canonical: &str) -> String {
    if let Some(key) = canonical.strip_prefix(HANDLER_PREFIX) {
        format!("handler '{key}'")
    } else if let Some(name) = canonical
        .strip_prefix(DEFAULT_NAMESPACE)
        .and_then(|r| r.strip_prefix(':'))
    {
        format!("module '{name}'")
    } else {
        format!("module '{canonical}'")
    }
}

/// The canonical name `specifier` refers to, or why it refers to none.
fn resolve(specifier: &str) -> Result<String, String> {
    let t = MODULES.0.borrow();
    if let Some(m) = specifier.strip_prefix(HOST_PREFIX) {
        return if t.host.contains_key(m) {
            Ok(specifier.to_string())
        } else {
            Err(format!("no host module '{m}' is registered"))
        };
    }
    let name = if specifier.contains(':') {
        specifier.to_string()
    } else {
        canonical(DEFAULT_NAMESPACE, specifier)
    };
    if t.sources.contains_key(&name) {
        Ok(name)
    } else {
        Err(format!("no module '{specifier}' was added"))
    }
}

/// The source of module `name` (canonical): embedded, or generated for a
/// host module from the `host` object as loaded.
fn source(name: &str) -> Option<String> {
    let t = MODULES.0.borrow();
    if let Some(m) = name.strip_prefix(HOST_PREFIX) {
        let fns = t.host.get(m)?;
        let mut s = format!("const m = globalThis.{HOST_GLOBAL}[{m:?}];\n");
        for (i, f) in fns.iter().enumerate() {
            s.push_str(&format!(
                "const f{i} = m[{f:?}];\nexport {{ f{i} as {f} }};\n"
            ));
        }
        return Some(s);
    }
    t.sources.get(name).cloned()
}

/// QuickJS's normalize hook: the canonical name as a `js_malloc` string, or
/// NULL with an exception naming the importer.
unsafe extern "C" fn normalize(
    ctx: *mut qjs::JSContext,
    base: *const c_char,
    name: *const c_char,
    _opaque: *mut c_void,
) -> *mut c_char {
    // SAFETY: QuickJS passes NUL-terminated strings and a live context.
    let (base, name) = unsafe { (CStr::from_ptr(base), CStr::from_ptr(name)) };
    let (base, name) = (base.to_string_lossy(), name.to_string_lossy());
    match resolve(&name) {
        // SAFETY: the copy is owned by QuickJS, which frees it.
        Ok(c) => unsafe { qjs::js_strndup(ctx, c.as_ptr().cast(), c.len() as _) },
        Err(why) => {
            throw(ctx, &format!("{} imports '{name}': {why}", describe(&base)));
            core::ptr::null_mut()
        }
    }
}

/// QuickJS's load hook: compiles module `name` (already canonical), which
/// resolves its own imports in turn.
unsafe extern "C" fn load(
    ctx: *mut qjs::JSContext,
    name: *const c_char,
    _opaque: *mut c_void,
) -> *mut qjs::JSModuleDef {
    // SAFETY: as in `normalize`.
    let cname = unsafe { CStr::from_ptr(name) };
    let name = cname.to_string_lossy();
    // The table's borrow ends here: compiling re-enters these hooks.
    let Some(src) = source(&name) else {
        throw(ctx, &format!("{} is not defined", describe(&name)));
        return core::ptr::null_mut();
    };
    let Ok(src) = CString::new(src) else {
        throw(
            ctx,
            &format!("{} contains a NUL character", describe(&name)),
        );
        return core::ptr::null_mut();
    };
    let flags = (qjs::JS_EVAL_TYPE_MODULE | qjs::JS_EVAL_FLAG_COMPILE_ONLY) as i32;
    // SAFETY: NUL-terminated input and name; a compiled module is owned by
    // the context's module list, so the value's reference can be dropped,
    // as QuickJS's own loader does.
    unsafe {
        let v = qjs::JS_Eval(
            ctx,
            src.as_ptr(),
            src.as_bytes().len() as _,
            cname.as_ptr(),
            flags,
        );
        if qjs::JS_IsException(v) {
            rethrow_naming(ctx, &name);
            return core::ptr::null_mut();
        }
        let m = qjs::JS_VALUE_GET_PTR(v).cast::<qjs::JSModuleDef>();
        qjs::JS_FreeValue(ctx, v);
        m
    }
}

/// Replaces the pending exception of a failed compile with one that names
/// the module (the innermost one, when modules import broken modules).
fn rethrow_naming(ctx: *mut qjs::JSContext, name: &str) {
    const MARK: &str = " failed to compile: ";
    let Some(ptr) = core::ptr::NonNull::new(ctx) else {
        return;
    };
    // SAFETY: a live context from QuickJS; `from_raw` takes its own reference.
    let ctx = unsafe { Ctx::from_raw(ptr) };
    let thrown = ctx.catch();
    let text = match thrown.as_object() {
        Some(o) => {
            let n: String = o.get("name").unwrap_or_default();
            let m: String = o.get("message").unwrap_or_default();
            if m.contains(MARK) {
                let _ = ctx.throw(thrown);
                return;
            }
            format!("{n}: {m}")
        }
        None => String::from("unknown error"),
    };
    let _ = Exception::throw_syntax(&ctx, &format!("{}{MARK}{text}", describe(name)));
}

fn throw(ctx: *mut qjs::JSContext, message: &str) {
    let Some(ptr) = core::ptr::NonNull::new(ctx) else {
        return;
    };
    // SAFETY: a live context from QuickJS; `from_raw` takes its own reference.
    let ctx = unsafe { Ctx::from_raw(ptr) };
    let _ = Exception::throw_reference(&ctx, message);
}

/// Whether `code` uses module syntax: an `import` or `export` keyword
/// outside strings and comments that is not `import(`, `import.meta`, a
/// property (`.import`) or a key (`import:`). Both are reserved words, so a
/// script cannot otherwise contain them as tokens.
pub fn is_module(code: &str) -> bool {
    let b = code.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$';
    let mut i = 0;
    let mut prev = b' '; // last significant byte
    while i < b.len() {
        let c = b[i];
        match c {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
                continue;
            }
            b'\'' | b'"' | b'`' => {
                i += 1;
                while i < b.len() && b[i] != c {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                prev = c;
                continue;
            }
            _ if ident(c) => {
                let start = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                let word = &b[start..i];
                if (word == b"import" || word == b"export") && prev != b'.' {
                    let next = b[i..].iter().find(|c| !c.is_ascii_whitespace()).copied();
                    let dynamic = word == b"import" && matches!(next, Some(b'(' | b'.'));
                    if !dynamic && !matches!(next, Some(b':' | b'(')) {
                        return true;
                    }
                }
                prev = b'a';
                continue;
            }
            _ if c.is_ascii_whitespace() => {}
            _ => prev = c,
        }
        i += 1;
    }
    false
}
