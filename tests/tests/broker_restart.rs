//! Stops and restarts the whole broker ([`TestBroker::stop`] / [`TestBroker::start_again`]: the
//! container of `HLJS_TEST_BROKER_IMAGE`, or `rabbitmqctl stop_app` / `start_app` on the broker at
//! `AMQP_URL`): its own test binary, so it never runs alongside the other broker tests (cargo runs
//! test binaries one after another).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hyperlight_js_e2e::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_the_worker_reconnects_and_every_message_gets_its_outcome() {
    let broker = TestBroker::start("it-restart").await;
    let dir = temp_dir("it-restart");
    let (config, ex) = write_config(
        &dir,
        "",
        &[HandlerSpec::new("echo", example("handlers/slow.js")).pool(2)],
    );
    let mut worker = WorkerProcess::start(&config, &broker.url);
    worker.wait_ready(Duration::from_secs(120)).await;
    // ~25 ms a message over two sandboxes: the stream takes seconds, so the stop lands mid-stream.
    let total = 300;
    let (results, first) = {
        let client = Client::connect(&broker.url).await;
        let results = client.bind_queue(&ex.results, "#").await;
        for id in 0..total {
            client
                .publish_json(&ex.events, "echo", &json!({"ms": 25, "id": id}))
                .await;
        }
        // Let part of the stream through, then take the broker away.
        let first = client
            .collect_until(&results, Duration::from_secs(120), |g| g.len() >= 20)
            .await;
        assert!(
            first.len() >= 20,
            "the stream did not start:\n{}",
            worker.log_tail()
        );
        let _ = client.connection.close(200, "OK".into()).await;
        (results, first)
    };
    // A local broker left stopped by a failure is started again when `broker` drops.
    broker.stop().await;
    let unready_after = worker.wait_readyz(503, Duration::from_secs(15)).await;
    // Provably mid-stream: nothing can be acked while the broker is away, and some messages
    // were still waiting for their outcome when it went.
    let done_at_stop = worker
        .metric("hljs_messages_total", &["key=\"echo\""])
        .await;
    assert!(
        done_at_stop < total as f64,
        "all {total} messages were done before the broker stopped: the test proves nothing"
    );
    eprintln!("{done_at_stop} of {total} messages done when the broker stopped");
    // Readiness stays false while the broker is away.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(worker.get("/readyz").await.map(|(s, _)| s), Some(503));
    let restart = Instant::now();
    broker.start_again().await;
    worker.wait_readyz(200, Duration::from_secs(90)).await;
    let reconnected_after = restart.elapsed();

    let client = Client::connect_retrying(&broker.url, Duration::from_secs(60)).await;
    let mut seen: BTreeSet<i64> = first.iter().filter_map(|r| r.body["id"].as_i64()).collect();
    let before = seen.clone();
    let rest = client
        .collect_until(&results, Duration::from_secs(240), |g| {
            let mut ids = before.clone();
            ids.extend(g.iter().filter_map(|r| r.body["id"].as_i64()));
            ids.len() >= total
        })
        .await;
    seen.extend(rest.iter().filter_map(|r| r.body["id"].as_i64()));
    let missing: Vec<i64> = (0..total as i64).filter(|i| !seen.contains(i)).collect();
    assert!(
        missing.is_empty(),
        "missing outcomes after the restart: {missing:?}\n{}",
        worker.log_tail()
    );
    // At-least-once: a message in flight when the broker went away may have two outcomes.
    let duplicates = first.len() + rest.len() - seen.len();
    eprintln!("{duplicates} duplicate outcomes (messages in flight during the restart)");
    assert_eq!(
        client.queue_len("echo").await,
        0,
        "the events queue is drained"
    );
    assert!(worker.metric("hljs_reconnects_total", &[]).await >= 1.0);
    assert!(
        worker
            .metric("hljs_messages_total", &["key=\"echo\""])
            .await
            >= total as f64,
        "the messages pending at the stop were processed after the restart"
    );
    eprintln!(
        "RabbitMQ {}: unready {unready_after:?} after the stop; ready again {reconnected_after:?} after the start",
        broker.version()
    );
}
