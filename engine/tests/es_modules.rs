//! Handlers as ES modules: `host:<module>` imports, embedded modules from
//! `add_module`, the export forms of `handler`, isolation between handler
//! keys, snapshot/restore, and `ERR_COMPILE` for modules that do not load.
//! Two sandboxes in all, so that kernel mode (every guest instruction
//! emulated) stays quick.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hyperlight_js_engine::{CallOptions, ErrorCode, JSSandbox, SandboxBuilder};
use serde_json::{Value, json};

fn runtime() -> JSSandbox {
    assert!(
        hyperlight_js_engine::hypervisor_available(),
        "needs /dev/kvm"
    );
    let mut proto = SandboxBuilder::new().build().expect("build");
    proto
        .register_host_function("math", "add", |a| {
            Ok(json!(
                a[0].as_f64().unwrap_or(0.0) + a[1].as_f64().unwrap_or(0.0)
            ))
        })
        .expect("add");
    proto
        .register_host_function("math", "mul", |a| {
            Ok(json!(
                a[0].as_f64().unwrap_or(0.0) * a[1].as_f64().unwrap_or(0.0)
            ))
        })
        .expect("mul");
    proto.load_runtime().expect("load_runtime")
}

#[test]
fn module_handlers_reach_host_and_embedded_modules_and_survive_restore() {
    let mut js = runtime();
    // "a_geo" imports "z_consts", which sorts (and is compiled) after it.
    js.add_module(
        "a_geo",
        r#"import { PI } from "z_consts"; import * as math from "host:math";
           export function area(r) { return math.mul(PI, math.mul(r, r)); }"#,
    )
    .unwrap();
    js.add_module("z_consts", "export const PI = 3;").unwrap();
    js.add_module_in(
        "mylib",
        "strings",
        "export const up = (s) => s.toUpperCase();",
    )
    .unwrap();
    let handlers = [
        // Upstream's README form: a namespace import, `handler` not exported.
        (
            "star",
            r#"import * as m from "host:math"; function handler(e) { return m.add(e.a, e.b); }"#,
        ),
        (
            "named",
            r#"import { add } from "host:math";
               export function handler(e, ctx) { return { sum: add(e.a, e.b), ctx: ctx ?? null, legacy: host.math.add(1, 2) }; }"#,
        ),
        (
            "default",
            "export default function (e) { return 'default:' + e.x; }",
        ),
        (
            "embedded",
            r#"import { area } from "a_geo"; import { PI } from "user:z_consts"; import { up } from "mylib:strings";
               export async function handler(e) { return [area(e.r), PI, up('x')]; }"#,
        ),
        (
            "count_a",
            "let n = 0; export function handler() { n += 1; return n; }",
        ),
        ("count_b", "export function handler() { return typeof n; }"),
        // Module words in strings, comments, properties and keys keep script
        // mode (where `await` is still an identifier; a module rejects it).
        (
            "plain",
            "// export\nfunction handler() { const s = 'import * as x from \"y\"'; const o = { export: 1, import: 2 }; var await = s.length + o.export + o.import; return await; }",
        ),
    ];
    for (key, code) in handlers {
        js.add_handler(key, code).unwrap();
    }
    let mut sb = js.get_loaded_sandbox().expect("get_loaded_sandbox");
    let opts = CallOptions::default();
    let call = |sb: &mut hyperlight_js_engine::LoadedJSSandbox, key: &str, e: Value| {
        sb.call_handler(key, &e, &opts).unwrap()
    };

    assert_eq!(call(&mut sb, "star", json!({"a": 2, "b": 40})), json!(42));
    let out = sb
        .call_handler(
            "named",
            &json!({"a": 1, "b": 2}),
            &CallOptions::default().context(json!({"id": "m1"})),
        )
        .unwrap();
    assert_eq!(out, json!({"sum": 3, "ctx": {"id": "m1"}, "legacy": 3}));
    assert_eq!(
        call(&mut sb, "default", json!({"x": 7})),
        json!("default:7")
    );
    assert_eq!(call(&mut sb, "plain", json!(null)), json!(25));
    let snapshot = sb.snapshot().unwrap();
    assert_eq!(call(&mut sb, "count_a", json!(null)), json!(1));
    assert_eq!(call(&mut sb, "count_a", json!(null)), json!(2));
    assert_eq!(call(&mut sb, "count_b", json!(null)), json!("undefined"));

    sb.restore(&snapshot).unwrap();
    assert_eq!(call(&mut sb, "count_a", json!(null)), json!(1));
    assert_eq!(
        call(&mut sb, "embedded", json!({"r": 2})),
        json!([12, 3, "X"])
    );
}

/// Modules (name, source), the handler's code, words the message must contain.
type Case = (
    &'static [(&'static str, &'static str)],
    &'static str,
    &'static [&'static str],
);

#[test]
fn modules_that_do_not_load_are_err_compile_naming_them() {
    let mut js = runtime();
    for (namespace, name) in [
        ("user", ""),
        ("host", "m"),
        ("handler", "m"),
        ("a:b", "m"),
        ("user", "a:b"),
    ] {
        let err = js.add_module_in(namespace, name, "export {}").unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArg, "{namespace}:{name}");
    }
    let ok = "export function handler() { return 'ok'; }";
    let cases: [Case; 6] = [
        (
            &[("broken", "export const = 1;")],
            ok,
            &["module 'broken'", "SyntaxError"],
        ),
        (
            &[(
                "uses",
                r#"import { y } from "missing"; export const z = 1;"#,
            )],
            ok,
            &["module 'uses'", "'missing'"],
        ),
        (
            // A good module importing a broken one names the broken one.
            &[
                ("a_ok", r#"import { v } from "z_bad"; export const w = v;"#),
                ("z_bad", "export let = ;"),
            ],
            ok,
            &["module 'z_bad'", "SyntaxError"],
        ),
        (
            &[],
            r#"import { x } from "nope"; export function handler() {}"#,
            &["handler 'h'", "'nope'"],
        ),
        (
            &[],
            r#"import * as m from "host:nope"; export function handler() {}"#,
            &["handler 'h'", "host module 'nope'"],
        ),
        (
            &[],
            r#"import { sub } from "host:math"; export function handler() {}"#,
            &["handler 'h'", "'sub'", "host:math"],
        ),
    ];
    for (modules, handler, words) in cases {
        js.clear_modules();
        for (name, source) in modules {
            js.add_module(name, source).unwrap();
        }
        js.add_handler("h", handler).unwrap();
        let err = js.get_loaded_sandbox().expect_err("must not load");
        assert_eq!(err.error.code(), ErrorCode::Compile, "{}", err.error);
        let message = err.error.to_string();
        for word in words {
            assert!(message.contains(word), "{word:?} not in {message:?}");
        }
        js = err.state;
    }
    js.clear_modules();
    js.add_handler("h", "export const x = 1;").unwrap();
    let err = js.get_loaded_sandbox().expect_err("no handler function");
    assert_eq!(err.error.code(), ErrorCode::Compile);
    assert!(err.error.to_string().contains("'handler'"), "{}", err.error);

    // The state handed back still loads once fixed.
    let mut js = err.state;
    js.add_module("m", "export const v = 5;").unwrap();
    js.add_handler(
        "h",
        r#"import { v } from "m"; export function handler() { return v; }"#,
    )
    .unwrap();
    let mut sb = js.get_loaded_sandbox().expect("fixed");
    assert_eq!(
        sb.call_handler("h", &json!(null), &CallOptions::default())
            .unwrap(),
        json!(5)
    );
}
