//! The handler's second argument (`ctx`) and `RetryError` (`ERR_RETRY`).
//! Few calls per test: the suite also runs in guest kernel mode, where each
//! call costs tens of milliseconds.
#![expect(
    clippy::expect_used,
    reason = "test helpers outside #[test] functions fail the test loudly"
)]

mod common;

use std::collections::BTreeSet;
use std::sync::OnceLock;

use hyperlight_js_engine::{CallOptions, Error, ErrorCode, LoadedJSSandbox, Snapshot};
use serde_json::{Value, json};

const HANDLERS: &[(&str, &str)] = &[
    (
        "ctx",
        "function handler(event, ctx) { return { event, ctx, type: typeof ctx, args: arguments.length }; }",
    ),
    (
        "plain",
        "function handler(e) { return [handler.length, e]; }",
    ),
    (
        "retry",
        "function handler(e) {\n  if ('options' in e) throw new RetryError('busy', e.options);\n  throw new RetryError('busy');\n}",
    ),
    (
        "retry_async",
        "async function handler(e) { await null; throw new RetryError('later', { delayMs: 10 }); }",
    ),
    (
        "inspect",
        "function handler() { const e = new RetryError('m', { delayMs: 1 }); \
         return [e instanceof Error, e instanceof RetryError, e.name, e.message, e.delayMs, String(e)]; }",
    ),
    (
        "impostor",
        "function handler() { globalThis.RetryError = class RetryError extends Error {}; \
         throw new RetryError('fake', { delayMs: 5 }); }",
    ),
    ("echo", "function handler(e) { return e; }"),
];

/// A snapshot with [`HANDLERS`] loaded, once per test binary.
fn base() -> &'static Snapshot {
    static BASE: OnceLock<Snapshot> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut js = common::runtime();
        for (key, code) in HANDLERS {
            js.add_handler(key, code).expect("add handler");
        }
        let mut loaded = js.get_loaded_sandbox().expect("load handlers");
        loaded.snapshot().expect("snapshot")
    })
}

fn sandbox() -> LoadedJSSandbox {
    LoadedJSSandbox::from_snapshot(base()).expect("sandbox from snapshot")
}

fn call(sb: &mut LoadedJSSandbox, key: &str, event: Value) -> Result<Value, Error> {
    sb.call_handler(key, &event, &CallOptions::default())
}

/// The delay of an `ERR_RETRY`, failing the test on any other outcome.
fn retry_delay(result: Result<Value, Error>) -> Option<f64> {
    let err = result.expect_err("the handler should ask for a retry");
    assert_eq!(err.code(), ErrorCode::Retry, "{err}");
    let Error::Retry {
        message,
        stack,
        delay_ms,
    } = &err
    else {
        panic!("not Error::Retry: {err:?}");
    };
    assert!(
        !message.is_empty() && !message.starts_with("RetryError"),
        "{message}"
    );
    assert!(!stack.is_empty(), "no stack");
    assert_eq!(err.js_stack(), Some(stack.as_str()));
    assert_eq!(
        err.to_string(),
        format!("handler asked for a retry: {message}")
    );
    *delay_ms
}

#[test]
fn ctx_reaches_the_handler_intact_and_is_undefined_without_one() {
    let mut sb = sandbox();
    let ctx = json!({
        "attempt": 3,
        "headers": {"x-trace": ["a", "b"], "nested": {"deep": [1, {"k": null}]}},
        "text": "héllo ✓ 😀 \u{0} \"quoted\"",
        "numbers": [1.5, -42, 9_007_199_254_740_991u64, 1e-7, 0],
        "flag": true,
        "bytes_like": {"__hl_bytes": "AAEC"},
    });
    let out = sb
        .call_handler(
            "ctx",
            &json!({"id": 1}),
            &CallOptions::default().context(ctx.clone()),
        )
        .expect("call with ctx");
    assert_eq!(
        out,
        json!({"event": {"id": 1}, "ctx": ctx, "type": "object", "args": 2})
    );

    let out = call(&mut sb, "ctx", json!({"id": 2})).expect("call without ctx");
    assert_eq!(
        out,
        json!({"event": {"id": 2}, "type": "undefined", "args": 2})
    );

    // A one-parameter handler is unaffected by the extra argument.
    let out = sb
        .call_handler(
            "plain",
            &json!("e"),
            &CallOptions::default().context(json!([1])),
        )
        .expect("plain handler");
    assert_eq!(out, json!([1, "e"]));
}

#[test]
fn retry_error_carries_its_delay_as_given() {
    let mut sb = sandbox();
    let delay = |sb: &mut LoadedJSSandbox, options: Option<Value>| {
        let event = options.map_or_else(|| json!({}), |o| json!({ "options": o }));
        retry_delay(call(sb, "retry", event))
    };
    assert_eq!(delay(&mut sb, Some(json!({"delayMs": 250}))), Some(250.0));
    assert_eq!(delay(&mut sb, None), None);
    assert_eq!(delay(&mut sb, Some(json!({}))), None);
    assert_eq!(delay(&mut sb, Some(json!({"delayMs": -5}))), Some(-5.0));
    assert!(delay(&mut sb, Some(json!({"delayMs": "soon"}))).is_some_and(f64::is_nan));
    assert_eq!(delay(&mut sb, Some(json!({"delayMs": 1e300}))), Some(1e300));

    // Like ERR_HANDLER_THREW, the sandbox stays usable.
    assert!(!sb.poisoned());
    assert_eq!(
        call(&mut sb, "echo", json!({"ok": 1})).expect("echo"),
        json!({"ok": 1})
    );
}

#[test]
fn a_rejected_promise_with_retry_error_is_err_retry() {
    let mut sb = sandbox();
    assert_eq!(
        retry_delay(call(&mut sb, "retry_async", json!({}))),
        Some(10.0)
    );
}

#[test]
fn retry_error_is_an_error_subclass() {
    let mut sb = sandbox();
    assert_eq!(
        call(&mut sb, "inspect", json!({})).expect("inspect"),
        json!([true, true, "RetryError", "m", 1, "RetryError: m"])
    );
}

#[test]
fn only_the_class_as_loaded_counts() {
    let mut sb = sandbox();
    let err = call(&mut sb, "impostor", json!({})).expect_err("impostor throws");
    assert_eq!(err.code(), ErrorCode::HandlerThrew, "{err}");
    // Other handlers now build the impostor too: still no retry.
    let err = call(&mut sb, "retry", json!({})).expect_err("retry throws");
    assert_eq!(err.code(), ErrorCode::HandlerThrew, "{err}");
    assert!(err.to_string().contains("busy"), "{err}");
}

#[test]
fn retry_error_at_load_time_is_a_compile_error() {
    let mut js = common::runtime();
    js.add_handler(
        "top",
        "throw new RetryError('no', { delayMs: 1 });\nfunction handler() {}",
    )
    .expect("add handler");
    let failed = js.get_loaded_sandbox().expect_err("top-level throw");
    assert_eq!(failed.error.code(), ErrorCode::Compile, "{}", failed.error);
    assert!(failed.error.to_string().contains("no"), "{}", failed.error);
}

#[test]
fn retryable_codes_are_the_ones_the_readme_names() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme
        .find("`ErrorCode::retryable()` is true exactly for")
        .expect("README describes ErrorCode::retryable");
    let sentence = &readme[start..];
    let sentence = &sentence[..sentence.find(": failures").expect("end of the sentence")];
    for code in ErrorCode::ALL {
        assert_eq!(
            code.retryable(),
            sentence.contains(&format!("`{code}`")),
            "{code}"
        );
    }
    let retryable: BTreeSet<ErrorCode> = ErrorCode::ALL
        .into_iter()
        .filter(|c| c.retryable())
        .collect();
    let expected = [
        ErrorCode::Internal,
        ErrorCode::Poisoned,
        ErrorCode::NoHypervisor,
        ErrorCode::Consumed,
    ];
    assert_eq!(retryable, BTreeSet::from(expected));
    assert!(!ErrorCode::Retry.retryable());
}
