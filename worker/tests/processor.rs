//! The processor on real sandboxes (needs /dev/kvm): pools share runtime
//! initialisation per sandbox size, keys stay isolated, every call is
//! followed by a restore.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use hyperlight_js_worker::config::WorkerConfig;
use hyperlight_js_worker::metrics::Metrics;
use hyperlight_js_worker::process::{Outcome, Processor, Request, RequestedLimits};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn config() -> WorkerConfig {
    let probe = std::env::temp_dir().join(format!("hljs-probe-{}.js", std::process::id()));
    let toml = format!(
        r#"
[[handlers]]
key = "greet"
file = "{root}/examples/handlers/greet.js"
pool_size = 1
heap_size = 8388608

[[handlers]]
key = "counter"
file = "{root}/examples/handlers/counter.js"
pool_size = 2
heap_size = 8388608

[[handlers]]
key = "probe"
file = "{probe}"
pool_size = 1
heap_size = 12582912
max_message_bytes = 64
"#,
        root = root().display(),
        probe = probe.display(),
    );
    // A handler that looks for other keys' code in its own VM.
    std::fs::write(
        &probe,
        "function handler(e) { return { sees_other_handlers: typeof globalThis.seen !== 'undefined' }; }",
    )
    .unwrap();
    WorkerConfig::from_toml(
        &toml,
        &root().join("worker.toml"),
        &root(),
        &Default::default(),
    )
    .unwrap()
}

fn request(key: &str, body: &str) -> Request {
    Request {
        key: key.into(),
        body: body.as_bytes().to_vec(),
        limits: RequestedLimits::default(),
        context: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_process_concurrently_restore_after_every_call_and_keep_keys_apart() {
    let metrics = Metrics::new();
    let processor = Processor::load(&config().handlers, metrics.clone())
        .await
        .unwrap();
    assert_eq!(processor.total_pool_size(), 4);

    let greet = processor
        .process(request("greet", r#"{"name":"World"}"#))
        .await;
    assert_eq!(
        greet,
        Outcome::Success(r#"{"name":"World","message":"Hello, World!"}"#.into())
    );

    let calls = (0..6).map(|i| processor.process(request("counter", &format!(r#"{{"id":{i}}}"#))));
    for (i, outcome) in futures_util::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(
            outcome,
            Outcome::Success(format!(r#"{{"count":1,"seen":1,"id":{i}}}"#))
        );
    }
    let restores = metrics.restores.with_label_values(&["counter", "ok"]).get();
    assert_eq!(restores, 6);

    let probe = processor.process(request("probe", "{}")).await;
    assert_eq!(
        probe,
        Outcome::Success(r#"{"sees_other_handlers":false}"#.into())
    );
    assert_eq!(
        processor
            .process(request(
                "probe",
                &format!(r#"{{"p":"{}"}}"#, "x".repeat(100))
            ))
            .await
            .code(),
        Some("ERR_MESSAGE_TOO_LARGE")
    );
    assert_eq!(
        processor.process(request("probe", "{oops")).await.code(),
        Some("ERR_INVALID_JSON")
    );
    assert_eq!(
        processor.process(request("nope", "{}")).await.code(),
        Some("ERR_UNKNOWN_HANDLER")
    );
    assert!(processor.dead_pool().is_none());
}
