//! The retry contract of worker/README.md against a real broker (3.x and 4.x
//! in CI): `ctx`, `RetryError` delays through delay queues, `retry_on`,
//! dead letters that say why, and `replay`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use hyperlight_js_e2e::*;
use lapin::BasicProperties;
use serde_json::{Value, json};

const READY: Duration = Duration::from_secs(120);
const OUTCOMES: Duration = Duration::from_secs(90);

fn event_props(message_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_message_id(message_id.into())
        .with_headers(headers(&[("tenant", "acme")]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_error_is_tried_again_after_its_delay_and_ctx_counts_the_attempts() {
    let broker = TestBroker::start("it-retry").await;
    let dir = temp_dir("it-retry");
    let (config, ex) = write_config(
        &dir,
        "",
        &[HandlerSpec::new("retry", test_handler("retry.js")).with("max_deliveries = 4")],
    );
    let mut worker = WorkerProcess::start(&config, broker.url());
    worker.wait_ready(READY).await;
    let client = Client::connect(broker.url()).await;
    let results = client.bind_queue(&ex.results, "#").await;

    let event = json!({"mode": "ctx"});
    client
        .publish(
            &ex.events,
            "retry",
            event.to_string().as_bytes(),
            event_props("evt-ctx"),
        )
        .await;
    let got = client.collect(&results, 1, OUTCOMES).await;
    assert_eq!(
        got[0].body,
        json!({"ctx": {"key": "retry", "messageId": "evt-ctx", "attempt": 1, "headers": {"tenant": "acme"}}})
    );
    assert_eq!(got[0].message_id.as_deref(), Some("evt-ctx"));

    let published = Instant::now();
    let event = json!({"mode": "until", "succeedOn": 3, "delayMs": 300, "id": "a"});
    client
        .publish(
            &ex.events,
            "retry",
            event.to_string().as_bytes(),
            event_props("evt-a"),
        )
        .await;
    let got = client.collect(&results, 1, OUTCOMES).await;
    let waited = published.elapsed();
    assert_eq!(
        got[0].body,
        json!({"id": "a", "attempt": 3, "messageId": "evt-a", "key": "retry"})
    );
    assert_eq!(
        got[0].message_id.as_deref(),
        Some("evt-a"),
        "the outcome carries the event's id"
    );
    assert_eq!(got[0].headers["x-hljs-attempt"], "3");
    assert!(
        waited >= Duration::from_millis(600),
        "two retries of at least 300 ms each took {waited:?}"
    );
    // 300 ms rounds up to the 500 ms delay queue, which is empty again.
    assert_eq!(client.queue_len("retry.delay-500ms").await, 0);
    assert_eq!(client.queue_len("retry").await, 0);
    assert_eq!(
        worker
            .metric(
                "hljs_retries_total",
                &["key=\"retry\"", "code=\"ERR_RETRY\""]
            )
            .await,
        2.0
    );
    // Exactly one outcome per event: nothing else arrives.
    let extra = client
        .collect_until(&results, Duration::from_secs(2), |g| !g.is_empty())
        .await;
    assert!(extra.is_empty(), "unexpected outcomes: {extra:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_delay_never_holds_back_a_short_one() {
    let broker = TestBroker::start("it-hol").await;
    let dir = temp_dir("it-hol");
    let (config, ex) = write_config(
        &dir,
        "",
        &[HandlerSpec::new("retry", test_handler("retry.js"))],
    );
    let mut worker = WorkerProcess::start(&config, broker.url());
    worker.wait_ready(READY).await;
    let client = Client::connect(broker.url()).await;
    let results = client.bind_queue(&ex.results, "#").await;

    let published = Instant::now();
    for (id, delay) in [("long", 8000), ("short", 100)] {
        let event = json!({"mode": "until", "succeedOn": 2, "delayMs": delay, "id": id});
        client.publish_json(&ex.events, "retry", &event).await;
    }
    let first = client.collect(&results, 1, Duration::from_secs(7)).await;
    assert_eq!(
        first[0].body["id"], "short",
        "the short delay finished first"
    );
    assert!(published.elapsed() < Duration::from_secs(7));
    let second = client.collect(&results, 1, OUTCOMES).await;
    assert_eq!(second[0].body["id"], "long");
    assert!(
        published.elapsed() >= Duration::from_secs(8),
        "the long delay was cut short: {:?}",
        published.elapsed()
    );
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_attempts_run_out_the_outcome_is_published_then_the_message_is_dead_lettered_and_replay_brings_it_back()
 {
    let broker = TestBroker::start("it-giveup").await;
    let dir = temp_dir("it-giveup");
    let (config, ex) = write_config(
        &dir,
        "max_deliveries = 2",
        &[
            HandlerSpec::new("spin", test_handler("retry.js")).with(
                "max_deliveries = 3\nretry_on = [\"ERR_CANCELLED\"]\nretry_delay_ms = 100\nretry_backoff = 2.0\ncpu_timeout_ms = 50\nwall_timeout_ms = 2000",
            ),
            HandlerSpec::new("always", test_handler("retry.js")),
            HandlerSpec::new("plain", test_handler("retry.js")),
        ],
    );
    let mut worker = WorkerProcess::start(&config, broker.url());
    worker.wait_ready(READY).await;
    let client = Client::connect(broker.url()).await;
    let results = client.bind_queue(&ex.results, "#").await;

    let cases = [
        ("spin", json!({"mode": "spin"}), "evt-spin"),
        // A negative delay is clamped to 0 (and logged); the default [broker] limit of 2 applies.
        (
            "always",
            json!({"mode": "always", "delayMs": -5, "id": 1}),
            "evt-always-1",
        ),
        (
            "always",
            json!({"mode": "always", "delayMs": -5, "id": 2}),
            "evt-always-2",
        ),
        // An ordinary failure is final at once: an outcome, no retry, no dead letter.
        ("plain", json!({"mode": "throw"}), "evt-plain"),
    ];
    for (key, event, id) in &cases {
        client
            .publish(
                &ex.events,
                key,
                event.to_string().as_bytes(),
                event_props(id),
            )
            .await;
    }
    let outcomes = client.collect(&results, cases.len(), OUTCOMES).await;
    let by_id = |id: &str| {
        outcomes
            .iter()
            .find(|r| r.message_id.as_deref() == Some(id))
            .unwrap_or_else(|| panic!("no outcome for {id}: {outcomes:#?}"))
    };
    assert_eq!(by_id("evt-spin").code.as_deref(), Some("ERR_CANCELLED"));
    assert_eq!(by_id("evt-spin").headers["x-hljs-attempt"], "3");
    assert_eq!(by_id("evt-always-1").code.as_deref(), Some("ERR_RETRY"));
    assert_eq!(by_id("evt-always-1").headers["x-hljs-attempt"], "2");
    assert_eq!(
        by_id("evt-plain").code.as_deref(),
        Some("ERR_HANDLER_THREW")
    );
    assert_eq!(by_id("evt-plain").headers["x-hljs-attempt"], "1");

    let dead = client.collect(&ex.dead_letter, 3, OUTCOMES).await;
    let dead_by_id = |dead: &[Received], id: &str| {
        dead.iter()
            .find(|r| r.message_id.as_deref() == Some(id))
            .cloned()
            .unwrap_or_else(|| panic!("no dead letter for {id}: {dead:#?}"))
    };
    let spin = dead_by_id(&dead, "evt-spin");
    assert_eq!(
        spin.body,
        json!({"mode": "spin"}),
        "the dead letter is the event"
    );
    assert_eq!(spin.headers["x-hljs-error-code"], "ERR_CANCELLED");
    assert_eq!(spin.headers["x-hljs-attempts"], "3");
    assert_eq!(spin.headers["x-hljs-key"], "spin");
    assert!(
        spin.headers["x-hljs-error-message"].contains("CPU"),
        "{spin:?}"
    );
    assert_eq!(
        spin.headers["tenant"], "acme",
        "the event's own headers are kept"
    );
    let always = dead_by_id(&dead, "evt-always-1");
    assert_eq!(always.headers["x-hljs-error-code"], "ERR_RETRY");
    assert_eq!(always.headers["x-hljs-attempts"], "2");
    for key in ["spin", "always", "plain"] {
        assert_eq!(client.queue_len(key).await, 0, "{key}");
    }
    assert_eq!(client.queue_len(&ex.dead_letter).await, 0, "all were taken");
    assert_eq!(
        worker
            .metric(
                "hljs_retries_total",
                &["key=\"spin\"", "code=\"ERR_CANCELLED\""]
            )
            .await,
        2.0
    );
    assert_eq!(
        worker
            .metric(
                "hljs_dead_lettered_total",
                &["key=\"spin\"", "code=\"ERR_CANCELLED\""]
            )
            .await,
        1.0
    );
    assert_eq!(
        worker
            .metric("hljs_dead_lettered_total", &["key=\"always\""])
            .await,
        2.0
    );
    assert_eq!(
        worker
            .metric("hljs_dead_lettered_total", &["key=\"plain\""])
            .await,
        0.0
    );
    assert!(
        std::fs::read_to_string(&worker.log)
            .unwrap()
            .contains("clamped"),
        "the clamped delay is logged:\n{}",
        worker.log_tail()
    );

    // Put the three dead letters back, then replay one of "always": its attempts start afresh.
    for d in &dead {
        let mut props =
            BasicProperties::default().with_message_id(d.message_id.clone().unwrap().into());
        let mut h = lapin::types::FieldTable::default();
        for (k, v) in &d.headers {
            h.insert(
                k.as_str().into(),
                lapin::types::AMQPValue::LongString(v.clone().into()),
            );
        }
        props = props.with_headers(h);
        client
            .publish("", &ex.dead_letter, d.body.to_string().as_bytes(), props)
            .await;
    }
    let out = worker_cli(
        &[
            "--config",
            config.to_str().unwrap(),
            "replay",
            "--key",
            "always",
            "--limit",
            "1",
        ],
        broker.url(),
    )
    .await;
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary, json!({"moved": 1, "skipped": 2, "failed": 0}));
    // The replayed message runs again from attempt 1: two attempts, a fresh outcome, dead again.
    let again = client.collect(&results, 1, OUTCOMES).await;
    assert_eq!(again[0].code.as_deref(), Some("ERR_RETRY"));
    assert_eq!(
        again[0].headers["x-hljs-attempt"], "2",
        "attempts were reset"
    );
    let replayed_id = again[0].message_id.clone().unwrap();
    assert!(replayed_id.starts_with("evt-always-"), "{replayed_id}");
    let dead = client.collect(&ex.dead_letter, 3, OUTCOMES).await;
    let replayed = dead_by_id(&dead, &replayed_id);
    assert_eq!(replayed.headers["x-hljs-error-code"], "ERR_RETRY");
    assert_eq!(
        replayed.headers["x-hljs-attempts"], "2",
        "not 4: the count started afresh"
    );
}
