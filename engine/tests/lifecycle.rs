//! The typed state machine, routing, snapshots and isolation, on real micro-VMs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{base, sandbox};
use hyperlight_js_engine::{CallOptions, Error, LoadedJSSandbox};
use serde_json::json;

fn call(
    sb: &mut LoadedJSSandbox,
    key: &str,
    event: serde_json::Value,
) -> Result<serde_json::Value, Error> {
    sb.call_handler(key, &event, &CallOptions::default())
}

#[test]
fn the_quick_start_handler_greets() {
    let (mut sb, _) = sandbox();
    let out = call(&mut sb, "greet", json!({"name": "World"})).unwrap();
    assert_eq!(out, json!({"name": "World", "message": "Hello, World!"}));
}

#[test]
fn calls_are_routed_by_key() {
    let (mut sb, _) = sandbox();
    assert_eq!(call(&mut sb, "who", json!(null)).unwrap(), json!("who"));
    assert_eq!(
        call(&mut sb, "echo", json!({"k": [1, 2]})).unwrap(),
        json!({"k": [1, 2]})
    );
    assert_eq!(call(&mut sb, "counter", json!({})).unwrap(), json!(1));
}

#[test]
fn every_json_type_round_trips() {
    let (mut sb, _) = sandbox();
    for v in [
        json!({"a": {"b": [1, "x", true, null]}}),
        json!([1, 2.5, -3]),
        json!("s"),
        json!(42),
        json!(1.5),
        json!(true),
        json!(false),
        json!(null),
    ] {
        assert_eq!(call(&mut sb, "echo", v.clone()).unwrap(), v);
    }
}

#[test]
fn each_handler_has_its_own_scope() {
    // Both define `handler` and a top-level `count`; neither sees the other's.
    let mut js = common::runtime();
    js.add_handler(
        "a",
        "let count = 100; function handler() { return ++count; }",
    )
    .unwrap();
    js.add_handler("b", "let count = 0; function handler() { return ++count; }")
        .unwrap();
    let mut sb = js.get_loaded_sandbox().unwrap();
    assert_eq!(call(&mut sb, "a", json!({})).unwrap(), json!(101));
    assert_eq!(call(&mut sb, "b", json!({})).unwrap(), json!(1));
    assert_eq!(call(&mut sb, "a", json!({})).unwrap(), json!(102));
}

#[test]
fn restore_rolls_back_javascript_state() {
    let (mut sb, _) = sandbox();
    let snap = sb.snapshot().unwrap();
    assert_eq!(call(&mut sb, "counter", json!({})).unwrap(), json!(1));
    assert_eq!(call(&mut sb, "counter", json!({})).unwrap(), json!(2));
    sb.restore(&snap).unwrap();
    assert_eq!(call(&mut sb, "counter", json!({})).unwrap(), json!(1));
}

#[test]
fn unload_drops_handlers_and_state_and_new_ones_load() {
    let (mut sb, _) = sandbox();
    assert_eq!(call(&mut sb, "counter", json!({})).unwrap(), json!(1));
    let mut js = sb.unload().unwrap();
    assert_eq!(js.handler_keys().count(), 0);
    js.add_handler("counter", "let n = 10; function handler() { return ++n; }")
        .unwrap();
    let mut sb = js.get_loaded_sandbox().unwrap();
    assert_eq!(call(&mut sb, "counter", json!({})).unwrap(), json!(11));
    assert_eq!(
        call(&mut sb, "echo", json!(1)).unwrap_err().code(),
        "ERR_UNKNOWN_HANDLER"
    );
}

#[test]
fn remove_and_clear_handlers() {
    let mut js = common::runtime();
    js.add_handler("a", "function handler() { return 'a'; }")
        .unwrap();
    js.add_handler("b", "function handler() { return 'b'; }")
        .unwrap();
    assert!(js.remove_handler("a").unwrap());
    assert!(!js.remove_handler("a").unwrap());
    assert_eq!(js.remove_handler("").unwrap_err().code(), "ERR_INVALID_ARG");
    let mut sb = js.get_loaded_sandbox().unwrap();
    assert_eq!(
        call(&mut sb, "a", json!({})).unwrap_err().code(),
        "ERR_UNKNOWN_HANDLER"
    );
    assert_eq!(call(&mut sb, "b", json!({})).unwrap(), json!("b"));
    let mut js = sb.unload().unwrap();
    js.add_handler("c", "function handler() { return 'c'; }")
        .unwrap();
    js.clear_handlers();
    assert_eq!(js.handler_keys().count(), 0);
}

#[test]
fn fifty_sandboxes_alive_at_once_are_isolated() {
    let snap = base();
    let mut boxes: Vec<LoadedJSSandbox> = (0..50)
        .map(|_| LoadedJSSandbox::from_snapshot(snap).unwrap())
        .collect();
    // Sandbox i is called i+1 times; its counter must show exactly that.
    for (i, sb) in boxes.iter_mut().enumerate() {
        for _ in 0..=(i % 3) {
            call(sb, "counter", json!({})).unwrap();
        }
    }
    for (i, sb) in boxes.iter_mut().enumerate() {
        let next = call(sb, "counter", json!({})).unwrap();
        assert_eq!(
            next,
            json!((i % 3) as u64 + 2),
            "sandbox {i} saw another sandbox's state"
        );
    }
}

#[test]
fn sandboxes_are_send_and_the_handle_is_sync() {
    fn send<T: Send>() {}
    fn sync<T: Send + Sync>() {}
    send::<hyperlight_js_engine::ProtoJSSandbox>();
    send::<hyperlight_js_engine::JSSandbox>();
    send::<LoadedJSSandbox>();
    sync::<hyperlight_js_engine::Snapshot>();
    sync::<hyperlight_js_engine::InterruptHandle>();
}

#[test]
fn a_sandbox_moves_through_tokio_spawn_blocking() {
    let (sb, _) = sandbox();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = rt.block_on(async move {
        tokio::task::spawn_blocking(move || {
            let mut sb = sb;
            call(&mut sb, "greet", json!({"name": "tokio"}))
        })
        .await
        .unwrap()
    });
    assert_eq!(out.unwrap()["message"], "Hello, tokio!");
}
