//! What worker/README.md promises about the worker's life: readiness while
//! pools load and while draining, `/healthz`, a drain timeout that expires,
//! a second SIGTERM, consumer prefetch, and a topology the broker refuses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hyperlight_js_e2e::*;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::json;

const READY: Duration = Duration::from_secs(120);
const OUTCOMES: Duration = Duration::from_secs(120);

const SLOW_LIMITS: &str = "cpu_timeout_ms = 20000\nmax_cpu_timeout_ms = 20000\nwall_timeout_ms = 30000\nmax_wall_timeout_ms = 30000";

async fn wait_busy(worker: &WorkerProcess, key: &str, n: f64) {
    let started = Instant::now();
    while worker
        .metric("hljs_pool_busy", &[&format!("key=\"{key}\"")])
        .await
        < n
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{n} sandboxes of {key} never got busy:\n{}",
            worker.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Each id's outcome count, checking every id of `ids` has exactly one.
fn exactly_once(outcomes: &[Received], ids: impl IntoIterator<Item = i64>) {
    let mut count: BTreeMap<i64, usize> = BTreeMap::new();
    for r in outcomes {
        *count.entry(r.body["id"].as_i64().unwrap()).or_default() += 1;
    }
    for id in ids {
        assert_eq!(count.get(&id), Some(&1), "outcomes per id: {count:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_false_while_pools_load_and_healthz_answers_throughout() {
    let broker = TestBroker::start("it-ready").await;
    let dir = temp_dir("it-ready");
    let (config, _) = write_config(
        &dir,
        "",
        &[HandlerSpec::new("echo", test_handler("echo.js")).pool(3)],
    );
    let mut worker = WorkerProcess::start(&config, broker.url());
    // The endpoint is up before the pools: the first answer says they are loading.
    let started = Instant::now();
    let first = loop {
        if let Some(answer) = worker.get("/readyz").await {
            break answer;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}",
            worker.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(first.0, 503, "{first:?}");
    assert!(first.1.contains("loading"), "{first:?}");
    assert_eq!(worker.get("/healthz").await.map(|a| a.0), Some(200));
    worker.wait_ready(READY).await;
    assert_eq!(worker.get("/healthz").await.map(|a| a.0), Some(200));
    assert_eq!(worker.get("/nope").await.map(|a| a.0), Some(404));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_timeout_that_expires_returns_unfinished_messages_and_loses_none() {
    let broker = TestBroker::start("it-drain").await;
    let dir = temp_dir("it-drain");
    let (config, ex) = write_config(
        &dir,
        "",
        &[HandlerSpec::new("slow", example("handlers/slow.js")).with(SLOW_LIMITS)],
    );
    let mut worker = WorkerProcess::start_with(
        &config,
        &[
            ("AMQP_URL", broker.url()),
            ("HLJS__SHUTDOWN__DRAIN_TIMEOUT_SECS", "2"),
        ],
    );
    worker.wait_ready(READY).await;
    let client = Client::connect(broker.url()).await;
    let results = client.bind_queue(&ex.results, "#").await;
    let n = 3;
    for id in 0..n {
        client
            .publish_json(&ex.events, "slow", &json!({"ms": 5000, "id": id}))
            .await;
    }
    wait_busy(&worker, "slow", 1.0).await;
    let term = Instant::now();
    worker.sigterm();
    // Readiness goes false as soon as the drain starts.
    worker.wait_readyz(503, Duration::from_secs(2)).await;
    let status = worker.wait_exit(Duration::from_secs(20)).await;
    let took = term.elapsed();
    assert!(status.success(), "{status}:\n{}", worker.log_tail());
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "the drain should end at its 2 s timeout, not at the 5 s handler: {took:?}"
    );
    assert!(
        std::fs::read_to_string(&worker.log)
            .unwrap()
            .contains("drain timeout"),
        "{}",
        worker.log_tail()
    );
    // Nothing finished; everything went back to the queue and a new worker does it all.
    let early = client
        .collect_until(&results, Duration::from_millis(500), |_| false)
        .await;
    assert!(early.is_empty(), "{early:#?}");
    let mut again = WorkerProcess::start(&config, broker.url());
    again.wait_ready(READY).await;
    let outcomes = client.collect(&results, n, OUTCOMES).await;
    exactly_once(&outcomes, 0..n as i64);
    assert_eq!(client.queue_len("slow").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once_and_loses_nothing() {
    let broker = TestBroker::start("it-term2").await;
    let dir = temp_dir("it-term2");
    let (config, ex) = write_config(
        &dir,
        "",
        &[HandlerSpec::new("slow", example("handlers/slow.js")).with(SLOW_LIMITS)],
    );
    let mut worker = WorkerProcess::start(&config, broker.url());
    worker.wait_ready(READY).await;
    let client = Client::connect(broker.url()).await;
    let results = client.bind_queue(&ex.results, "#").await;
    client
        .publish_json(&ex.events, "slow", &json!({"ms": 6000, "id": 0}))
        .await;
    wait_busy(&worker, "slow", 1.0).await;
    worker.sigterm();
    worker.wait_readyz(503, Duration::from_secs(5)).await;
    let second = Instant::now();
    worker.sigterm();
    let status = worker.wait_exit(Duration::from_secs(10)).await;
    assert!(
        second.elapsed() < Duration::from_secs(5),
        "{:?}",
        second.elapsed()
    );
    assert_eq!(status.code(), Some(130), "{}", worker.log_tail());
    let mut again = WorkerProcess::start(&config, broker.url());
    again.wait_ready(READY).await;
    let outcomes = client.collect(&results, 1, OUTCOMES).await;
    exactly_once(&outcomes, [0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_prefetch_is_prefetch_per_sandbox_times_the_pool_size() {
    let broker = TestBroker::start("it-prefetch").await;
    let dir = temp_dir("it-prefetch");
    let (config, ex) = write_config(
        &dir,
        "prefetch_per_sandbox = 3",
        &[HandlerSpec::new("slow", example("handlers/slow.js"))
            .pool(2)
            .with(SLOW_LIMITS)],
    );
    let mut worker = WorkerProcess::start(&config, broker.url());
    worker.wait_ready(READY).await;
    let client = Client::connect(broker.url()).await;
    let total = 20;
    for id in 0..total {
        client
            .publish_json(&ex.events, "slow", &json!({"ms": 20000, "id": id}))
            .await;
    }
    wait_busy(&worker, "slow", 2.0).await;
    // 2 sandboxes × 3 = 6 unacknowledged at the worker; the rest stay ready in the queue.
    let started = Instant::now();
    loop {
        let ready = client.queue_len("slow").await;
        if ready == total - 6 {
            break;
        }
        assert!(
            ready > total - 6 && started.elapsed() < Duration::from_secs(10),
            "{ready} ready of {total}: the worker holds {} (expected 6)",
            total - ready
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And it stays there (no further messages are taken while all six are unacked).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(client.queue_len("slow").await, total - 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_declared_elsewhere_with_other_arguments_is_err_topology_and_never_ready() {
    let broker = TestBroker::start("it-topology").await;
    let dir = temp_dir("it-topology");
    let (config, _) = write_config(
        &dir,
        "",
        &[HandlerSpec::new("echo", test_handler("echo.js"))],
    );
    let client = Client::connect(broker.url()).await;
    // Someone else's classic queue under the key's name.
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(10));
    client.declare_queue("echo", args).await;
    let worker = WorkerProcess::start(&config, broker.url());
    let started = Instant::now();
    loop {
        let log = std::fs::read_to_string(&worker.log).unwrap_or_default();
        if log.contains("ERR_TOPOLOGY") {
            assert!(log.contains("'echo'"), "{log}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = worker.get("/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(worker.get("/healthz").await.map(|a| a.0), Some(200));
}
