//! Every failure gets its stable code, and a sandbox recovers by restore.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{require_kvm, sandbox};
use hyperlight_js_engine::{CallOptions, Error, ErrorCode, SandboxBuilder};
use serde_json::json;

fn opts() -> CallOptions {
    CallOptions::default()
}

#[test]
fn a_throwing_handler_gives_code_message_and_stack() {
    let (mut sb, _) = sandbox();
    let err = sb
        .call_handler("throws", &json!({"why": "nope"}), &opts())
        .unwrap_err();
    assert_eq!(err.code(), "ERR_HANDLER_THREW");
    let Error::HandlerThrew { message, stack } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(message, "TypeError: bad event: nope");
    assert!(
        stack.contains("handler"),
        "stack names the function: {stack}"
    );
    assert!(!sb.poisoned(), "a JS exception does not poison the sandbox");
    assert_eq!(
        sb.call_handler("echo", &json!(1), &opts()).unwrap(),
        json!(1)
    );
}

#[test]
fn throwing_a_non_error_value_is_reported() {
    let mut js = common::runtime();
    js.add_handler("str", "function handler() { throw 'plain'; }")
        .unwrap();
    js.add_handler(
        "rej",
        "async function handler() { await null; throw new RangeError('later'); }",
    )
    .unwrap();
    let mut sb = js.get_loaded_sandbox().unwrap();
    let err = sb.call_handler("str", &json!({}), &opts()).unwrap_err();
    assert_eq!(err.code(), "ERR_HANDLER_THREW");
    assert!(err.to_string().contains("plain"));
    let err = sb.call_handler("rej", &json!({}), &opts()).unwrap_err();
    assert_eq!(err.code(), "ERR_HANDLER_THREW");
    assert!(err.to_string().contains("RangeError: later"), "{err}");
}

#[test]
fn a_syntax_error_is_named_at_load_time_and_the_sandbox_comes_back() {
    let mut js = common::runtime();
    js.add_handler("good", "function handler(e) { return e; }")
        .unwrap();
    js.add_handler("broken", "function handler(e) { return e +; }")
        .unwrap();
    let failed = js.get_loaded_sandbox().unwrap_err();
    assert_eq!(failed.error.code(), "ERR_COMPILE");
    assert!(
        failed.error.to_string().contains("broken"),
        "{}",
        failed.error
    );
    // Fix it and go on with the same sandbox.
    let mut js = failed.state;
    js.add_handler("broken", "function handler(e) { return 'fixed'; }")
        .unwrap();
    let mut sb = js.get_loaded_sandbox().unwrap();
    assert_eq!(
        sb.call_handler("broken", &json!(0), &opts()).unwrap(),
        json!("fixed")
    );
}

#[test]
fn code_without_a_handler_function_does_not_load() {
    let mut js = common::runtime();
    js.add_handler("none", "function other() {}").unwrap();
    let failed = js.get_loaded_sandbox().unwrap_err();
    assert_eq!(failed.error.code(), "ERR_COMPILE");
    assert!(failed.error.to_string().contains("handler"));
}

#[test]
fn empty_and_unknown_keys() {
    let (mut sb, _) = sandbox();
    assert_eq!(
        sb.call_handler("", &json!({}), &opts()).unwrap_err().code(),
        "ERR_INVALID_ARG"
    );
    assert_eq!(
        sb.call_handler("nope", &json!({}), &opts())
            .unwrap_err()
            .code(),
        "ERR_UNKNOWN_HANDLER"
    );
}

#[test]
fn malformed_json_events_are_rejected_before_the_vm() {
    let (mut sb, _) = sandbox();
    let err = sb
        .call_handler_json("echo", "{\"a\": ", &opts())
        .unwrap_err();
    assert_eq!(err.code(), "ERR_INVALID_JSON");
    assert_eq!(sb.call_handler_json("echo", "[1]", &opts()).unwrap(), "[1]");
}

#[test]
fn oversized_input_and_output() {
    require_kvm();
    let mut js = SandboxBuilder::new()
        .input_buffer_size(64 * 1024)
        .output_buffer_size(64 * 1024)
        .build()
        .unwrap()
        .load_runtime()
        .unwrap();
    js.add_handler("echo", "function handler(e) { return e; }")
        .unwrap();
    js.add_handler("big", "function handler(e) { return 'x'.repeat(e.n); }")
        .unwrap();
    let mut sb = js.get_loaded_sandbox().unwrap();
    // Just under the limit works, both ways.
    let fits = "y".repeat(60 * 1024);
    assert_eq!(
        sb.call_handler("echo", &json!(fits), &opts()).unwrap(),
        json!(fits)
    );
    assert_eq!(
        sb.call_handler("big", &json!({"n": 60 * 1024}), &opts())
            .unwrap()
            .as_str()
            .unwrap()
            .len(),
        60 * 1024
    );
    let err = sb
        .call_handler("echo", &json!("y".repeat(65 * 1024)), &opts())
        .unwrap_err();
    assert_eq!(err.code(), "ERR_INPUT_TOO_LARGE");
    let err = sb
        .call_handler("big", &json!({"n": 65 * 1024}), &opts())
        .unwrap_err();
    assert_eq!(err.code(), "ERR_OUTPUT_TOO_LARGE");
    assert!(!sb.poisoned());
}

#[test]
fn a_result_that_is_not_json() {
    let mut js = common::runtime();
    js.add_handler("bigint", "function handler() { return 10n; }")
        .unwrap();
    js.add_handler(
        "cycle",
        "function handler() { const a = {}; a.a = a; return a; }",
    )
    .unwrap();
    js.add_handler("undef", "function handler() { }").unwrap();
    let mut sb = js.get_loaded_sandbox().unwrap();
    assert_eq!(
        sb.call_handler("bigint", &json!({}), &opts())
            .unwrap_err()
            .code(),
        "ERR_RESULT_NOT_JSON"
    );
    assert_eq!(
        sb.call_handler("cycle", &json!({}), &opts())
            .unwrap_err()
            .code(),
        "ERR_RESULT_NOT_JSON"
    );
    assert_eq!(
        sb.call_handler("undef", &json!({}), &opts()).unwrap(),
        json!(null)
    );
}

#[test]
fn unbounded_recursion_is_a_stack_overflow_within_seconds() {
    let (mut sb, snap) = sandbox();
    let start = Instant::now();
    let err = sb.call_handler("recurse", &json!({}), &opts()).unwrap_err();
    assert_eq!(err.code(), "ERR_STACK_OVERFLOW", "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    sb.restore(&snap).unwrap();
    assert_eq!(
        sb.call_handler("echo", &json!(1), &opts()).unwrap(),
        json!(1)
    );
}

#[test]
fn heap_exhaustion_is_reported_and_restore_recovers() {
    require_kvm();
    let mut js = SandboxBuilder::new()
        .heap_size(8 << 20)
        .build()
        .unwrap()
        .load_runtime()
        .unwrap();
    js.add_handler(
        "hog",
        common::HANDLERS
            .iter()
            .find(|(k, _)| *k == "hog")
            .unwrap()
            .1,
    )
    .unwrap();
    js.add_handler("echo", "function handler(e) { return e; }")
        .unwrap();
    let mut sb = js.get_loaded_sandbox().unwrap();
    let snap = sb.snapshot().unwrap();
    let err = sb.call_handler("hog", &json!({}), &opts()).unwrap_err();
    assert_eq!(err.code(), "ERR_HEAP_EXHAUSTED", "{err}");
    sb.restore(&snap).unwrap();
    assert!(!sb.poisoned());
    assert_eq!(
        sb.call_handler("echo", &json!("ok"), &opts()).unwrap(),
        json!("ok")
    );
}

#[test]
fn zero_sizes_are_invalid_arguments() {
    for b in [
        SandboxBuilder::new().heap_size(0),
        SandboxBuilder::new().stack_size(0),
        SandboxBuilder::new().input_buffer_size(0),
        SandboxBuilder::new().output_buffer_size(0),
    ] {
        assert_eq!(b.build().unwrap_err().code(), "ERR_INVALID_ARG");
    }
}

#[test]
fn zero_and_over_maximum_timeouts_are_invalid_arguments() {
    let (mut sb, _) = sandbox();
    for o in [
        opts().wall_clock_timeout(Duration::ZERO),
        opts().cpu_timeout(Duration::ZERO),
        opts().wall_clock_timeout(Duration::from_secs(100_000)),
        opts().cpu_timeout(Duration::from_secs(100_000)),
    ] {
        assert_eq!(
            sb.call_handler("echo", &json!({}), &o).unwrap_err().code(),
            "ERR_INVALID_ARG"
        );
    }
}

#[test]
fn every_error_code_is_distinct_and_documented() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for code in ErrorCode::ALL {
        assert!(seen.insert(code), "{code} twice");
        assert!(
            readme.contains(&format!("`{code}`")),
            "README's error table lacks {code}"
        );
    }
}
