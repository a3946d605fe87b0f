//! Several broker URLs (`AMQP_URL` comma-separated, or `[broker] urls`): the
//! worker connects to the first that answers, and when its connection is
//! lost it moves to the next URL instead of retrying the dead one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use hyperlight_js_e2e::*;
use serde_json::json;

const READY: Duration = Duration::from_secs(120);
const OUTCOMES: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_url_is_passed_over_for_the_next_one() {
    let broker = TestBroker::start("it-next").await;
    let dir = temp_dir("it-next");
    let (config, ex) = write_config(
        &dir,
        "",
        &[HandlerSpec::new("echo", test_handler("echo.js"))],
    );
    // Nothing listens on a port we just freed.
    let dead = format!("amqp://guest:guest@{}/%2f", free_addr());
    let urls = format!("{dead},{}", broker.url());
    let mut worker = WorkerProcess::start(&config, &urls);
    worker.wait_ready(READY).await;
    let client = Client::connect(broker.url()).await;
    let results = client.bind_queue(&ex.results, "#").await;
    client
        .publish_json(&ex.events, "echo", &json!({"id": 1}))
        .await;
    let got = client.collect(&results, 1, OUTCOMES).await;
    assert_eq!(got[0].body, json!({"id": 1}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_moves_the_worker_to_the_next_broker() {
    let first = TestBroker::start("it-fail-a").await;
    let second = TestBroker::start("it-fail-b").await;
    assert!(
        first.is_container(),
        "this test needs two brokers that fail independently: set HLJS_TEST_BROKER_IMAGE \
         (scripts/docker.sh, scripts/broker-images.sh); vhosts of one broker stop together"
    );
    let dir = temp_dir("it-fail");
    let (config, ex) = write_config(
        &dir,
        "",
        &[HandlerSpec::new("echo", test_handler("echo.js"))],
    );
    let urls = format!("{},{}", first.url(), second.url());
    let mut worker = WorkerProcess::start(&config, &urls);
    worker.wait_ready(READY).await;
    // Connected to the first: it serves there.
    let a = Client::connect(first.url()).await;
    let a_results = a.bind_queue(&ex.results, "#").await;
    a.publish_json(&ex.events, "echo", &json!({"id": "first"}))
        .await;
    assert_eq!(
        a.collect(&a_results, 1, OUTCOMES).await[0].body,
        json!({"id": "first"})
    );
    // The first goes away for good: the worker moves to the second (with one
    // URL it would retry the dead address until that node returned).
    first.stop().await;
    let lost = Instant::now();
    // Readiness may drop for only a few hundred milliseconds: watch the reconnect instead.
    while worker.metric("hljs_reconnects_total", &[]).await < 1.0 {
        assert!(
            lost.elapsed() < Duration::from_secs(20),
            "the worker did not move to the second broker:\n{}",
            worker.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.wait_readyz(200, Duration::from_secs(30)).await;
    let b = Client::connect(second.url()).await;
    let b_results = b.bind_queue(&ex.results, "#").await;
    b.publish_json(&ex.events, "echo", &json!({"id": "second"}))
        .await;
    assert_eq!(
        b.collect(&b_results, 1, OUTCOMES).await[0].body,
        json!({"id": "second"})
    );
    assert!(
        std::fs::read_to_string(&worker.log)
            .unwrap()
            .contains("connecting to the next URL"),
        "{}",
        worker.log_tail()
    );
}
