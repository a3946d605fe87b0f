//! `URL` and `URLSearchParams` (WHATWG URL) over the url crate: parsing,
//! setters (`url::quirks`, which implements the URL API's setters) and
//! application/x-www-form-urlencoded (`form_urlencoded`).
//!
//! A `URL` keeps its components as strings; a setter hands the href back to
//! Rust, which reparses it, applies the setter and returns every component.

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use rquickjs::function::Opt;
use rquickjs::{Ctx, Function, Object};
use url::{Url, quirks};

/// Shim. Components arrays are ordered as [`components`] returns them.
pub const JS: &str = r#"(function (native) {
  const usv = (v) => `${v}`.toWellFormed();
  const NAMES = ['href', 'origin', 'protocol', 'username', 'password', 'host', 'hostname', 'port', 'pathname', 'search', 'hash'];
  const SEARCH = 9;
  const pairs = (flat) => { const out = []; for (let i = 0; i < flat.length; i += 2) out.push([flat[i], flat[i + 1]]); return out; };
  const parseQuery = (s) => pairs(native.parseParams(s.startsWith('?') ? s.slice(1) : s));
  let attach, listOf, componentsOf, setComponents, setPart;
  class URLSearchParams {
    #list = []; #url = null;
    static { attach = (p, url) => { p.#url = url; p.#list = parseQuery(componentsOf(url)[SEARCH]); }; listOf = (p, list) => { p.#list = list; }; }
    constructor(init = '') {
      if (init !== null && (typeof init === 'object' || typeof init === 'function')) {
        const iter = init[Symbol.iterator];
        if (iter !== undefined && iter !== null) {
          if (typeof iter !== 'function') throw new TypeError('The init value is not iterable');
          for (const pair of init) {
            if (pair === null || (typeof pair !== 'object' && typeof pair !== 'function')) throw new TypeError('Each pair must be an iterable of two values');
            const p = [...pair];
            if (p.length !== 2) throw new TypeError('Each pair must have exactly two values');
            this.#list.push([usv(p[0]), usv(p[1])]);
          }
        } else {
          for (const key of Reflect.ownKeys(init)) {
            const d = Reflect.getOwnPropertyDescriptor(init, key);
            if (d !== undefined && d.enumerable) this.#list.push([usv(key), usv(init[key])]);
          }
        }
      } else {
        this.#list = parseQuery(usv(init));
      }
    }
    #update() {
      if (this.#url !== null) setComponents(this.#url, native.set(componentsOf(this.#url)[0], 'query', native.serializeParams(this.#list.flat())));
    }
    get size() { return this.#list.length; }
    append(name, value) { this.#list.push([usv(name), usv(value)]); this.#update(); }
    delete(name, value = undefined) {
      const n = usv(name), v = value === undefined ? undefined : usv(value);
      this.#list = this.#list.filter(([k, x]) => !(k === n && (v === undefined || x === v)));
      this.#update();
    }
    get(name) { const n = usv(name); const e = this.#list.find(([k]) => k === n); return e === undefined ? null : e[1]; }
    getAll(name) { const n = usv(name); return this.#list.filter(([k]) => k === n).map(([, x]) => x); }
    has(name, value = undefined) {
      const n = usv(name), v = value === undefined ? undefined : usv(value);
      return this.#list.some(([k, x]) => k === n && (v === undefined || x === v));
    }
    set(name, value) {
      const n = usv(name), v = usv(value);
      const i = this.#list.findIndex(([k]) => k === n);
      if (i < 0) this.#list.push([n, v]);
      else { this.#list[i][1] = v; this.#list = this.#list.filter(([k], j) => j <= i || k !== n); }
      this.#update();
    }
    sort() {
      // Stable, by UTF-16 code units of the names.
      this.#list.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
      this.#update();
    }
    forEach(callback, thisArg = undefined) {
      if (typeof callback !== 'function') throw new TypeError('The callback must be a function');
      for (let i = 0; i < this.#list.length; i++) callback.call(thisArg, this.#list[i][1], this.#list[i][0], this);
    }
    *entries() { for (let i = 0; i < this.#list.length; i++) yield [this.#list[i][0], this.#list[i][1]]; }
    *keys() { for (let i = 0; i < this.#list.length; i++) yield this.#list[i][0]; }
    *values() { for (let i = 0; i < this.#list.length; i++) yield this.#list[i][1]; }
    toString() { return native.serializeParams(this.#list.flat()); }
  }
  URLSearchParams.prototype[Symbol.iterator] = URLSearchParams.prototype.entries;
  class URL {
    #c; #params;
    static {
      componentsOf = (u) => u.#c;
      setComponents = (u, c) => { u.#c = c; };
      setPart = (u, part, value) => u.#set(part, value);
    }
    constructor(url, base = undefined) {
      if (arguments.length < 1) throw new TypeError('URL requires 1 argument');
      const c = base === undefined ? native.parse(usv(url)) : native.parse(usv(url), usv(base));
      if (c == null) throw new TypeError(`Invalid URL: ${usv(url)}`);
      this.#c = c;
      this.#params = new URLSearchParams();
      attach(this.#params, this);
    }
    static canParse(url, base = undefined) {
      if (arguments.length < 1) throw new TypeError('URL.canParse requires 1 argument');
      return (base === undefined ? native.parse(usv(url)) : native.parse(usv(url), usv(base))) != null;
    }
    static parse(url, base = undefined) {
      if (arguments.length < 1) throw new TypeError('URL.parse requires 1 argument');
      try { return new URL(url, base); } catch (_) { return null; }
    }
    get searchParams() { return this.#params; }
    toString() { return this.#c[0]; }
    toJSON() { return this.#c[0]; }
    #set(part, value) {
      const c = native.set(this.#c[0], part, usv(value));
      if (c == null) throw new TypeError(`Invalid URL: ${usv(value)}`);
      this.#c = c;
      if (part === 'href' || part === 'search') listOf(this.#params, parseQuery(c[SEARCH]));
    }
  }
  NAMES.forEach((name, i) => {
    const desc = { get() { return componentsOf(this)[i]; }, enumerable: true, configurable: true };
    if (name !== 'origin') desc.set = function (v) { setPart(this, name, v); };
    Object.defineProperty(URL.prototype, name, desc);
  });
  for (const C of [URL, URLSearchParams]) Object.defineProperty(C.prototype, Symbol.toStringTag, { value: C.name, configurable: true });
  return { URL, URLSearchParams };
})"#;

/// A URL's components in the shim's order.
fn components(u: &Url) -> Vec<String> {
    vec![
        quirks::href(u).to_string(),
        quirks::origin(u),
        quirks::protocol(u).to_string(),
        quirks::username(u).to_string(),
        quirks::password(u).to_string(),
        quirks::host(u).to_string(),
        quirks::hostname(u).to_string(),
        quirks::port(u).to_string(),
        quirks::pathname(u).to_string(),
        quirks::search(u).to_string(),
        quirks::hash(u).to_string(),
    ]
}

/// Parses `input` against an optional base; `None` if either fails.
fn parse(input: &str, base: Option<&str>) -> Option<Vec<String>> {
    let base = match base {
        Some(b) => Some(Url::parse(b).ok()?),
        None => None,
    };
    let url = Url::options().base_url(base.as_ref()).parse(input).ok()?;
    Some(components(&url))
}

/// Applies one setter. Failing setters leave the URL unchanged, as the API
/// requires; only `href` reports failure (`None`, a TypeError in the shim).
fn set(href: &str, part: &str, value: &str) -> Option<Vec<String>> {
    let mut url = Url::parse(href).ok()?;
    let u = &mut url;
    match part {
        "href" => quirks::set_href(u, value).ok()?,
        "protocol" => drop(quirks::set_protocol(u, value)),
        "username" => drop(quirks::set_username(u, value)),
        "password" => drop(quirks::set_password(u, value)),
        "host" => drop(quirks::set_host(u, value)),
        "hostname" => drop(quirks::set_hostname(u, value)),
        "port" => drop(quirks::set_port(u, value)),
        "pathname" => quirks::set_pathname(u, value),
        "search" => quirks::set_search(u, value),
        "hash" => quirks::set_hash(u, value),
        // URLSearchParams' update steps: an empty list means no query.
        "query" => u.set_query((!value.is_empty()).then_some(value)),
        _ => {}
    }
    Some(components(&url))
}

/// The natives the shim calls.
pub fn natives<'js>(ctx: &Ctx<'js>) -> rquickjs::Result<Object<'js>> {
    let o = Object::new(ctx.clone())?;
    o.set(
        "parse",
        Function::new(ctx.clone(), |input: String, base: Opt<String>| {
            parse(&input, base.0.as_deref())
        })?,
    )?;
    o.set(
        "set",
        Function::new(ctx.clone(), |href: String, part: String, value: String| {
            set(&href, &part, &value)
        })?,
    )?;
    o.set(
        "parseParams",
        Function::new(ctx.clone(), |query: String| -> Vec<String> {
            form_urlencoded::parse(query.as_bytes())
                .flat_map(|(k, v)| [k.into_owned(), v.into_owned()])
                .collect()
        })?,
    )?;
    o.set(
        "serializeParams",
        Function::new(ctx.clone(), |flat: Vec<String>| -> String {
            let mut out = form_urlencoded::Serializer::new(String::new());
            for pair in flat.chunks_exact(2) {
                out.append_pair(&pair[0], &pair[1]);
            }
            out.finish()
        })?,
    )?;
    Ok(o)
}
