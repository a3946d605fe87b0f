//! The worker binary against a real RabbitMQ: one broker per test from `TestBroker` (a container
//! of `HLJS_TEST_BROKER_IMAGE`, or a virtual host of its own on the broker at `AMQP_URL`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hyperlight_js_e2e::*;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};

const READY: Duration = Duration::from_secs(120);
const OUTCOMES: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_example_key_round_trips_over_rpc_and_the_results_exchange() {
    let broker = TestBroker::start("it-examples").await;
    let mut worker = WorkerProcess::start(&example("worker.toml"), &broker.url);
    worker.wait_ready(READY).await;
    let client = Client::connect(&broker.url).await;
    let results = client.bind_queue("hyperlight.results", "#").await;
    let replies = unique("it.replies");
    client.declare_queue(&replies, FieldTable::default()).await;

    let cases = [
        (
            "greet",
            json!({"name": "World"}),
            json!({"name": "World", "message": "Hello, World!"}),
        ),
        (
            "calculator",
            json!({"op": "add", "a": 2, "b": 3}),
            json!({"op": "add", "a": 2, "b": 3, "result": 5}),
        ),
        (
            "counter",
            json!({"id": 1}),
            json!({"count": 1, "seen": 1, "id": 1}),
        ),
    ];
    for (key, event, _) in &cases {
        // RPC: reply_to + correlation_id.
        let props = BasicProperties::default()
            .with_reply_to(replies.as_str().into())
            .with_correlation_id(format!("rpc-{key}").into());
        client
            .publish(
                "hyperlight.events",
                key,
                event.to_string().as_bytes(),
                props,
            )
            .await;
        // No reply_to: the results exchange, routing key = handler key.
        client.publish_json("hyperlight.events", key, event).await;
    }
    client
        .publish_json("hyperlight.events", "slow", &json!({"ms": 50, "id": "s"}))
        .await;
    client
        .publish_json("hyperlight.events", "fail", &json!({"reason": "example"}))
        .await;

    let rpc = client.collect(&replies, cases.len(), OUTCOMES).await;
    let by_corr: BTreeMap<String, Value> = rpc
        .iter()
        .map(|r| (r.correlation_id.clone().unwrap(), r.body.clone()))
        .collect();
    for (key, _, expected) in &cases {
        assert_eq!(
            by_corr[&format!("rpc-{key}")],
            *expected,
            "RPC outcome of {key}"
        );
    }
    let published = client.collect(&results, cases.len() + 2, OUTCOMES).await;
    let by_key: BTreeMap<String, &Received> = published
        .iter()
        .map(|r| (r.headers["x-hljs-key"].clone(), r))
        .collect();
    for (key, _, expected) in &cases {
        assert_eq!(
            by_key[*key].body, *expected,
            "results-exchange outcome of {key}"
        );
        assert_eq!(by_key[*key].headers["x-hljs-outcome"], "ok");
    }
    assert_eq!(by_key["slow"].body["id"], "s");
    assert_eq!(by_key["fail"].code.as_deref(), Some("ERR_HANDLER_THREW"));
    assert_eq!(by_key["fail"].body_code(), Some("ERR_HANDLER_THREW"));

    // The CLI's publish --wait prints the reply (README's one-line broker try-out).
    let out = worker_cli(
        &[
            "publish",
            "--key",
            "greet",
            r#"{"name":"World"}"#,
            "--wait",
            "--timeout-secs",
            "60",
        ],
        &broker.url,
    )
    .await;
    assert!(
        out.status.success(),
        "publish --wait failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply, json!({"name": "World", "message": "Hello, World!"}));

    // An error outcome makes publish --wait exit 3 and still print the outcome.
    let out = worker_cli(&["publish", "--key", "fail", "{}", "--wait"], &broker.url).await;
    assert_eq!(out.status.code(), Some(3));
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["error"]["code"], "ERR_HANDLER_THREW");

    assert!(
        worker
            .metric("hljs_messages_total", &["key=\"greet\"", "outcome=\"ok\""])
            .await
            >= 3.0
    );
    assert_eq!(worker.metric("hljs_broker_connected", &[]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_code_arrives_as_a_published_outcome() {
    let broker = TestBroker::start("it-codes").await;
    let dir = temp_dir("it-codes");
    let (config, ex) = write_config(
        &dir,
        "",
        &[HandlerSpec::new("errors", test_handler("errors.js")).with(
            "heap_size = 6291456\nstack_size = 262144\nmax_message_bytes = 2048\nmax_result_bytes = 4096\ncpu_timeout_ms = 3000\nwall_timeout_ms = 10000",
        )],
    );
    let mut worker = WorkerProcess::start(&config, &broker.url);
    worker.wait_ready(READY).await;
    let client = Client::connect(&broker.url).await;
    let results = client.bind_queue(&ex.results, "#").await;

    let send = |id: &str, body: Vec<u8>, hdrs: &[(&str, &str)]| {
        let props = BasicProperties::default()
            .with_correlation_id(id.to_string().into())
            .with_headers(headers(hdrs));
        let client = &client;
        let ex = &ex;
        async move { client.publish(&ex.events, "errors", &body, props).await }
    };
    // (correlation id, body, headers, expected code)
    type Case<'a> = (&'a str, Vec<u8>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "invalid-json",
            b"{not json".to_vec(),
            vec![],
            "ERR_INVALID_JSON",
        ),
        (
            "not-utf8",
            vec![0xff, 0xfe, 0x00],
            vec![],
            "ERR_INVALID_JSON",
        ),
        (
            "too-large",
            json!({"mode": "ok", "pad": "a".repeat(3000)})
                .to_string()
                .into_bytes(),
            vec![],
            "ERR_MESSAGE_TOO_LARGE",
        ),
        (
            "threw",
            json!({"mode": "throw", "detail": 1})
                .to_string()
                .into_bytes(),
            vec![],
            "ERR_HANDLER_THREW",
        ),
        (
            "timeout",
            json!({"mode": "loop"}).to_string().into_bytes(),
            vec![("x-cpu-timeout-ms", "200")],
            "ERR_CANCELLED",
        ),
        (
            "wall-timeout",
            json!({"mode": "loop"}).to_string().into_bytes(),
            vec![("x-wall-timeout-ms", "300")],
            "ERR_CANCELLED",
        ),
        (
            "bad-limit",
            json!({"mode": "ok"}).to_string().into_bytes(),
            vec![("x-cpu-timeout-ms", "soon")],
            "ERR_INVALID_ARG",
        ),
        (
            "stack",
            json!({"mode": "recurse"}).to_string().into_bytes(),
            vec![],
            "ERR_STACK_OVERFLOW",
        ),
        (
            "output",
            json!({"mode": "big", "size": 8192})
                .to_string()
                .into_bytes(),
            vec![],
            "ERR_OUTPUT_TOO_LARGE",
        ),
        (
            "not-json",
            json!({"mode": "bigint"}).to_string().into_bytes(),
            vec![],
            "ERR_RESULT_NOT_JSON",
        ),
        (
            "heap",
            json!({"mode": "alloc"}).to_string().into_bytes(),
            vec![],
            "ERR_HEAP_EXHAUSTED",
        ),
        // After every kind of failure the (restored) sandbox still works.
        (
            "ok-after",
            json!({"mode": "ok"}).to_string().into_bytes(),
            vec![],
            "ok",
        ),
    ];
    for (id, body, hdrs, _) in &cases {
        send(id, body.clone(), hdrs).await;
    }
    let got = client.collect(&results, cases.len(), OUTCOMES).await;
    let by_id: BTreeMap<String, Received> = got
        .into_iter()
        .map(|r| (r.correlation_id.clone().unwrap(), r))
        .collect();
    for (id, _, _, code) in &cases {
        let r = &by_id[*id];
        if *code == "ok" {
            assert_eq!(r.body, json!({"ok": true, "mode": "ok"}), "{id}");
            assert_eq!(r.code, None, "{id}");
            assert_eq!(r.headers["x-hljs-outcome"], "ok");
        } else {
            assert_eq!(r.body_code(), Some(*code), "{id}: body {}", r.body);
            assert_eq!(r.code.as_deref(), Some(*code), "{id}: header");
            assert_eq!(r.headers["x-hljs-outcome"], "error");
            assert!(
                r.body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{id}: message"
            );
        }
    }
    // Call statistics: a call that reached a sandbox carries its CPU and wall time; only a
    // stopped one says what stopped it; an event refused before the sandbox has neither.
    let ms = |r: &Received, h: &str| -> f64 {
        r.headers
            .get(h)
            .unwrap_or_else(|| panic!("{h} missing: {r:?}"))
            .parse()
            .unwrap()
    };
    let cpu_stop = &by_id["timeout"];
    assert_eq!(cpu_stop.headers["x-hljs-terminated-by"], "cpu");
    assert!(ms(cpu_stop, "x-hljs-cpu-ms") >= 200.0, "{cpu_stop:?}");
    let wall_stop = &by_id["wall-timeout"];
    assert_eq!(wall_stop.headers["x-hljs-terminated-by"], "wall");
    assert!(ms(wall_stop, "x-hljs-wall-ms") >= 300.0, "{wall_stop:?}");
    for id in ["ok-after", "threw", "stack"] {
        let r = &by_id[id];
        let (cpu, wall) = (ms(r, "x-hljs-cpu-ms"), ms(r, "x-hljs-wall-ms"));
        assert!(
            cpu >= 0.0 && wall > 0.0 && cpu <= wall + 5.0,
            "{id}: cpu {cpu} wall {wall}"
        );
        assert!(
            !r.headers.contains_key("x-hljs-terminated-by"),
            "{id}: {r:?}"
        );
    }
    for id in ["invalid-json", "too-large", "bad-limit"] {
        assert!(!by_id[id].headers.contains_key("x-hljs-cpu-ms"), "{id}");
    }
    assert_eq!(
        client.queue_len("errors").await,
        0,
        "every message was acked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_state_leaks_between_messages_and_trace_context_is_passed_on() {
    let broker = TestBroker::start("it-leak").await;
    let dir = temp_dir("it-leak");
    let (config, ex) = write_config(
        &dir,
        "",
        &[HandlerSpec::new("counter", test_handler("counter.js")).pool(2)],
    );
    let mut worker = WorkerProcess::start(&config, &broker.url);
    worker.wait_ready(READY).await;
    let client = Client::connect(&broker.url).await;
    let results = client.bind_queue(&ex.results, "counter").await;
    let n = 20;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    for id in 0..n {
        let props = BasicProperties::default().with_headers(headers(&[(
            "traceparent",
            &format!("00-{trace_id}-00f067aa0ba902b7-01"),
        )]));
        client
            .publish(
                "it.events",
                "counter",
                json!({"id": id}).to_string().as_bytes(),
                props,
            )
            .await;
    }
    let got = client.collect(&results, n, OUTCOMES).await;
    let ids: BTreeSet<i64> = got.iter().map(|r| r.body["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), n);
    for r in &got {
        assert_eq!(r.body["count"], 1, "module state leaked: {}", r.body);
        assert_eq!(r.body["seen"], 1, "global state leaked: {}", r.body);
        let tp = &r.headers["traceparent"];
        assert!(
            tp.starts_with(&format!("00-{trace_id}-")),
            "trace context not passed on: {tp}"
        );
        assert!(
            !tp.contains("00f067aa0ba902b7"),
            "the outcome's parent is the worker's span: {tp}"
        );
    }
    assert!(
        worker
            .metric("hljs_restores_total", &["key=\"counter\"", "result=\"ok\""])
            .await
            >= n as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_over_three_keys_are_each_processed_exactly_once() {
    let broker = TestBroker::start("it-1000").await;
    let dir = temp_dir("it-1000");
    let keys = ["alpha", "beta", "gamma"];
    let specs: Vec<HandlerSpec> = keys
        .iter()
        .map(|k| HandlerSpec::new(k, test_handler("echo.js")).pool(2))
        .collect();
    let (config, ex) = write_config(&dir, "", &specs);
    let mut worker = WorkerProcess::start(&config, &broker.url);
    worker.wait_ready(READY).await;
    let client = Client::connect(&broker.url).await;
    let results = client.bind_queue(&ex.results, "#").await;
    let total = 1000;
    for id in 0..total {
        let key = keys[id % keys.len()];
        client
            .publish_json(&ex.events, key, &json!({"id": id}))
            .await;
    }
    let got = client
        .collect(&results, total, Duration::from_secs(420))
        .await;
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    for r in &got {
        assert_eq!(r.code, None, "unexpected failure: {:?}", r.body);
        let id = r.body["id"].as_i64().unwrap();
        assert_eq!(
            r.headers["x-hljs-key"],
            keys[id as usize % keys.len()],
            "id {id} went to the wrong handler"
        );
        *seen.entry(id).or_default() += 1;
    }
    assert_eq!(seen.len(), total, "every message has an outcome");
    assert!(
        seen.values().all(|c| *c == 1),
        "duplicates: {:?}",
        seen.iter().filter(|(_, c)| **c > 1).collect::<Vec<_>>()
    );
    // Nothing more arrives, nothing is left behind.
    let extra = client
        .collect_until(&results, Duration::from_secs(2), |g| !g.is_empty())
        .await;
    assert!(extra.is_empty(), "extra outcomes: {extra:?}");
    for key in keys {
        assert_eq!(client.queue_len(key).await, 0, "queue {key} drained");
    }
    assert_eq!(
        worker
            .metric("hljs_messages_total", &["outcome=\"ok\""])
            .await,
        total as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_a_slow_handler_runs_loses_nothing() {
    let broker = TestBroker::start("it-term").await;
    let dir = temp_dir("it-term");
    let (config, ex) = write_config(
        &dir,
        "",
        &[HandlerSpec::new("slow", example("handlers/slow.js")).with("cpu_timeout_ms = 20000\nmax_cpu_timeout_ms = 20000\nwall_timeout_ms = 30000\nmax_wall_timeout_ms = 30000")],
    );
    let mut worker = WorkerProcess::start(&config, &broker.url);
    worker.wait_ready(READY).await;
    let client = Client::connect(&broker.url).await;
    let results = client.bind_queue(&ex.results, "#").await;
    let n = 3;
    for id in 0..n {
        client
            .publish_json(&ex.events, "slow", &json!({"ms": 2500, "id": id}))
            .await;
    }
    // Wait until the first message is inside the sandbox, then ask the worker to stop.
    let started = std::time::Instant::now();
    while worker.metric("hljs_pool_busy", &["key=\"slow\""]).await < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the slow handler never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.sigterm();
    let status = worker.wait_exit(Duration::from_secs(60)).await;
    assert!(
        status.success(),
        "worker exit: {status}\n{}",
        worker.log_tail()
    );
    // The message in the sandbox (and any the worker had already taken) finished and was
    // published before the exit; the first one ran to completion.
    let before = client
        .collect_until(&results, Duration::from_secs(5), |_| false)
        .await;
    assert!(
        !before.is_empty(),
        "the in-flight message has no outcome:\n{}",
        worker.log_tail()
    );
    let first = before
        .iter()
        .find(|r| r.body["id"] == 0)
        .expect("outcome of the first message");
    assert!(
        first.body["slept_ms"].as_i64().is_some_and(|ms| ms >= 2500),
        "{:?}",
        first.body
    );
    // The others went back to the queue, and a new worker processes them.
    let mut again = WorkerProcess::start(&config, &broker.url);
    again.wait_ready(READY).await;
    let after = client.collect(&results, n - before.len(), OUTCOMES).await;
    let ids: Vec<i64> = before
        .iter()
        .chain(after.iter())
        .map(|r| r.body["id"].as_i64().unwrap())
        .collect();
    let unique: BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(
        unique,
        (0..n as i64).collect::<BTreeSet<_>>(),
        "every message has its outcome"
    );
    assert_eq!(
        ids.len(),
        unique.len(),
        "no message was processed twice: {ids:?}"
    );
    assert_eq!(client.queue_len("slow").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_ends_in_the_dead_letter_queue() {
    let broker = TestBroker::start("it-poison").await;
    let dir = temp_dir("it-poison");
    let (config, ex) = write_config(
        &dir,
        "max_deliveries = 3",
        &[HandlerSpec::new("echo", test_handler("echo.js"))],
    );
    let mut worker = WorkerProcess::start(&config, &broker.url);
    worker.wait_ready(READY).await;
    let client = Client::connect(&broker.url).await;
    let results = client.bind_queue(&ex.results, "#").await;
    // A reply queue that refuses every message: the worker's outcome is nacked by the broker
    // each time, so the event can never be completed and must not be acked.
    let full = unique("it.full");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".to_string().into()),
    );
    client.declare_queue(&full, args).await;
    let props = BasicProperties::default()
        .with_reply_to(full.as_str().into())
        .with_correlation_id("poison".into());
    client
        .publish(
            &ex.events,
            "echo",
            json!({"id": "poison"}).to_string().as_bytes(),
            props,
        )
        .await;
    // A healthy message is processed meanwhile.
    client
        .publish_json(&ex.events, "echo", &json!({"id": "healthy"}))
        .await;

    let dead = client.collect(&ex.dead_letter, 1, OUTCOMES).await;
    assert_eq!(dead[0].body, json!({"id": "poison"}));
    assert_eq!(dead[0].correlation_id.as_deref(), Some("poison"));
    // The worker dead-lettered it on the last attempt, saying why.
    assert_eq!(dead[0].headers["x-hljs-error-code"], "ERR_PUBLISH_NACKED");
    assert_eq!(dead[0].headers["x-hljs-attempts"], "3");
    assert_eq!(dead[0].headers["x-hljs-key"], "echo");
    let ok = client.collect(&results, 1, OUTCOMES).await;
    assert_eq!(ok[0].body, json!({"id": "healthy"}));
    assert_eq!(client.queue_len("echo").await, 0);
    let requeued = worker
        .metric(
            "hljs_requeued_total",
            &["key=\"echo\"", "reason=\"ERR_PUBLISH_NACKED\""],
        )
        .await;
    assert_eq!(
        requeued, 2.0,
        "attempts 1 and 2 returned with basic.reject (which 4.x counts), attempt 3 dead-lettered"
    );
    assert_eq!(
        worker
            .metric(
                "hljs_dead_lettered_total",
                &["key=\"echo\"", "code=\"ERR_PUBLISH_NACKED\""]
            )
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_kills_the_worker_is_dead_lettered_after_max_deliveries() {
    let broker = TestBroker::start("it-crash").await;
    let dir = temp_dir("it-crash");
    let (config, ex) = write_config(
        &dir,
        "max_deliveries = 2",
        &[HandlerSpec::new("slow", example("handlers/slow.js")).with("cpu_timeout_ms = 20000\nmax_cpu_timeout_ms = 20000\nwall_timeout_ms = 30000\nmax_wall_timeout_ms = 30000")],
    );
    let client = Client::connect(&broker.url).await;
    let mut published = false;
    // Each delivery "crashes" the worker (SIGKILL while the handler runs).
    for _attempt in 0..2 {
        let mut worker = WorkerProcess::start(&config, &broker.url);
        worker.wait_ready(READY).await;
        if !published {
            client
                .publish_json(&ex.events, "slow", &json!({"ms": 30000, "id": "crash"}))
                .await;
            published = true;
        }
        let started = std::time::Instant::now();
        while worker.metric("hljs_pool_busy", &["key=\"slow\""]).await < 1.0 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the handler never started:\n{}",
                worker.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        worker.sigkill();
        worker.wait_exit(Duration::from_secs(30)).await;
    }
    // The next delivery is past the limit: a worker dead-letters it without running it.
    let mut worker = WorkerProcess::start(&config, &broker.url);
    worker.wait_ready(READY).await;
    let dead = client
        .collect(&ex.dead_letter, 1, Duration::from_secs(60))
        .await;
    assert_eq!(dead[0].body["id"], "crash");
    assert_eq!(dead[0].headers["x-hljs-error-code"], "ERR_DELIVERY_LIMIT");
    assert_eq!(dead[0].headers["x-hljs-attempts"], "2");
    assert_eq!(client.queue_len("slow").await, 0);
    assert_eq!(
        worker.metric("hljs_pool_busy", &["key=\"slow\""]).await,
        0.0
    );
    assert_eq!(
        worker
            .metric(
                "hljs_messages_total",
                &["key=\"slow\"", "outcome=\"ERR_DELIVERY_LIMIT\""]
            )
            .await,
        1.0
    );
}
