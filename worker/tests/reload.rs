//! Hot reload on real sandboxes (needs /dev/kvm): a changed key gets a new
//! pool while a message in flight finishes on the old one, an unchanged key
//! keeps its pool, settings-only changes keep the pool, and code that does
//! not compile (or a file that is gone) leaves the key serving its version.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyperlight_js_worker::config::WorkerConfig;
use hyperlight_js_worker::metrics::Metrics;
use hyperlight_js_worker::process::{Outcome, Processor, Request, RequestedLimits};
use hyperlight_js_worker::reload::{Reloader, WHOLE_CONFIG};
use hyperlight_js_worker::version::handler_version;

/// Busy-waits `e.ms` milliseconds (so a call can be caught in flight), then
/// answers with its version's tag and formula.
fn handler(tag: &str, formula: &str) -> String {
    format!(
        "function handler(e) {{ const t = Date.now(); while (Date.now() - t < (e.ms || 0)) {{}} return {{ v: '{tag}', r: {formula} }}; }}"
    )
}

fn write_config(dir: &Path, b_cpu_ms: u64) -> PathBuf {
    let toml = format!(
        r#"
[[handlers]]
key = "a"
file = "a.js"
pool_size = 1
heap_size = 8388608
cpu_timeout_ms = 10000
max_cpu_timeout_ms = 10000
wall_timeout_ms = 10000

[[handlers]]
key = "b"
file = "b.js"
pool_size = 1
heap_size = 8388608
cpu_timeout_ms = {b_cpu_ms}
"#
    );
    let path = dir.join("worker.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn request(key: &str, body: &str) -> Request {
    Request {
        key: key.into(),
        body: body.as_bytes().to_vec(),
        limits: RequestedLimits::default(),
        context: None,
    }
}

async fn call(processor: &Processor, key: &str, body: &str) -> (serde_json::Value, String) {
    let p = processor.process_with_stats(request(key, body)).await;
    let Outcome::Success(json) = p.outcome else {
        panic!("{key} failed: {:?}", p.outcome);
    };
    (
        serde_json::from_str(&json).unwrap(),
        p.version.unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_changed_keys_beside_in_flight_calls_and_keeps_serving_on_broken_code() {
    let dir = std::env::temp_dir().join(format!("hljs-reload-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a1, a2) = (handler("A", "e.n + 1"), handler("B", "e.n * 10"));
    std::fs::write(dir.join("a.js"), &a1).unwrap();
    std::fs::write(dir.join("b.js"), handler("b", "0")).unwrap();
    let path = write_config(&dir, 1000);
    let config = WorkerConfig::load(&path).unwrap();
    let metrics = Metrics::new();
    let processor = Arc::new(
        Processor::load(&config.handlers, metrics.clone())
            .await
            .unwrap(),
    );
    let b_pool = processor.pool("b").unwrap();
    let mut reloader = Reloader::new(config, Arc::clone(&processor), metrics.clone());
    let gauge = |key: &str, v: &str| metrics.handler_version.with_label_values(&[key, v]).get();
    assert_eq!(gauge("a", &handler_version(&a1)), 1);

    // Nothing changed: nothing is rebuilt.
    let report = reloader.reload().await;
    assert_eq!(report.unchanged, ["a", "b"], "{report:?}");
    assert!(report.reloaded.is_empty() && report.failed.is_empty());

    // A call in flight on version A while the key is reloaded to version B.
    let in_flight = tokio::spawn({
        let p = Arc::clone(&processor);
        async move { call(&p, "a", r#"{"n":4,"ms":5000}"#).await }
    });
    let started = Instant::now();
    while metrics.pool_busy.with_label_values(&["a"]).get() < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the call never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::fs::write(dir.join("a.js"), &a2).unwrap();
    let report = reloader.reload().await;
    assert_eq!(
        report.reloaded,
        [("a".to_string(), handler_version(&a2))],
        "{report:?}"
    );
    assert_eq!(report.unchanged, ["b"]);
    assert!(
        !in_flight.is_finished(),
        "the reload waited for the in-flight call instead of building beside it"
    );
    let (after, version) = call(&processor, "a", r#"{"n":4}"#).await;
    assert_eq!(
        (after["v"].as_str(), after["r"].as_i64()),
        (Some("B"), Some(40))
    );
    assert_eq!(version, handler_version(&a2));
    let (before, version) = tokio::time::timeout(Duration::from_secs(30), in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (before["v"].as_str(), before["r"].as_i64()),
        (Some("A"), Some(5))
    );
    assert_eq!(version, handler_version(&a1));
    assert_eq!(gauge("a", &handler_version(&a2)), 1);
    assert!(
        !metrics.render().contains(&handler_version(&a1)),
        "the old version's gauge is gone"
    );
    // The old pool's call decremented the shared busy gauge once, the new one's once.
    assert_eq!(metrics.pool_busy.with_label_values(&["a"]).get(), 0);
    assert!(
        Arc::ptr_eq(&b_pool, &processor.pool("b").unwrap()),
        "b kept its pool"
    );

    // Settings only: same pool, new settings.
    write_config(&dir, 2000);
    let report = reloader.reload().await;
    assert_eq!(report.updated, ["b"], "{report:?}");
    assert!(Arc::ptr_eq(&b_pool, &processor.pool("b").unwrap()));

    // Code that does not compile: refused, counted, and version B keeps serving.
    std::fs::write(dir.join("a.js"), "function handler(e) { return {; }").unwrap();
    let report = reloader.reload().await;
    assert_eq!(
        report.failed,
        [("a".to_string(), "ERR_COMPILE")],
        "{report:?}"
    );
    assert_eq!(
        metrics
            .reload_failures
            .with_label_values(&["a", "ERR_COMPILE"])
            .get(),
        1
    );
    let (still, version) = call(&processor, "a", r#"{"n":1}"#).await;
    assert_eq!(
        (still["v"].as_str(), version),
        (Some("B"), handler_version(&a2))
    );
    assert!(processor.dead_pool().is_none());

    // A handler file that is gone: the configuration does not load; nothing changes.
    std::fs::write(dir.join("a.js"), &a2).unwrap();
    std::fs::remove_file(dir.join("b.js")).unwrap();
    let report = reloader.reload().await;
    assert_eq!(
        report.failed,
        [("b".to_string(), "ERR_HANDLER_FILE")],
        "{report:?}"
    );
    assert_eq!(call(&processor, "b", "{}").await.0["v"], "b");

    // A configuration that does not parse: counted against the whole configuration.
    std::fs::write(&path, "[[handlers]\n").unwrap();
    let report = reloader.reload().await;
    assert_eq!(
        report.failed,
        [(WHOLE_CONFIG.to_string(), "ERR_CONFIG_PARSE")],
        "{report:?}"
    );
    assert_eq!(call(&processor, "a", r#"{"n":2}"#).await.0["r"], 20);
    let _ = std::fs::remove_dir_all(&dir);
}
