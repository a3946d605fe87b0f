//! Hot reload end to end (worker/README.md, "Hot reload"): the worker binary
//! against a real RabbitMQ, its handler file rewritten and SIGHUP sent while a
//! stream of messages flows. Every message gets exactly one outcome, each
//! outcome's `x-hljs-handler-version` names the code that produced it, and the
//! stream moves from version A to version B; then a handler that does not
//! compile is refused while version B keeps serving and readiness stays 200.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyperlight_js_e2e::*;
use hyperlight_js_worker::version::handler_version;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const KEY: &str = "versioned";
const POOL: usize = 2;
/// Messages a worker holds unacked for the key (`prefetch_per_sandbox` 2 × pool): the most
/// that can have taken the old handler after a newer message took the new one.
const IN_FLIGHT: i64 = 2 * POOL as i64;
const READY: Duration = Duration::from_secs(120);
const OUTCOMES: Duration = Duration::from_secs(120);
const SWAP: Duration = Duration::from_secs(90);

const CODE_A: &str = "function handler(e) { return { id: e.id, v: 'A', r: e.id + 1 }; }";
const CODE_B: &str = "function handler(e) { return { id: e.id, v: 'B', r: e.id * 10 }; }";
const BROKEN: &str = "function handler(e) { return { id: e.id, v: 'C' ; }";

/// Waits until `metric{labels}` reaches `at_least`.
async fn wait_metric(worker: &WorkerProcess, name: &str, labels: &[&str], at_least: f64) {
    let started = Instant::now();
    while worker.metric(name, labels).await < at_least {
        assert!(
            started.elapsed() < SWAP,
            "{name}{labels:?} never reached {at_least} within {SWAP:?}:\n{}",
            worker.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The version tag (`A`/`B`) an outcome claims, checked against its header and its result.
fn version_of(r: &Received, va: &str, vb: &str) -> char {
    let id = r.body["id"].as_i64().unwrap();
    let header = r.headers.get("x-hljs-handler-version").map(String::as_str);
    let (tag, expected) = match r.body["v"].as_str() {
        Some("A") => ('A', id + 1),
        Some("B") => ('B', id * 10),
        _ => panic!("not an outcome of version A or B: {r:?}"),
    };
    let version = if tag == 'A' { va } else { vb };
    assert_eq!(header, Some(version), "header of {r:?}");
    assert_eq!(r.body["r"].as_i64(), Some(expected), "result of {r:?}");
    tag
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_handler_mid_stream_exactly_once_per_message_and_keeps_serving_broken_code()
 {
    let broker = TestBroker::start("it-reload").await;
    let dir = temp_dir("it-reload");
    let file = dir.join("versioned.js");
    std::fs::write(&file, CODE_A).unwrap();
    let (va, vb) = (handler_version(CODE_A), handler_version(CODE_B));
    let (config, ex) = write_config(&dir, "", &[HandlerSpec::new(KEY, file.clone()).pool(POOL)]);
    let mut worker = WorkerProcess::start(&config, broker.url());
    worker.wait_ready(READY).await;
    let version_gauge = |v: &str| format!("handler_version=\"{v}\"");
    wait_metric(&worker, "hljs_handler_version", &[&version_gauge(&va)], 1.0).await;
    let client = Client::connect(broker.url()).await;
    let results = client.bind_queue(&ex.results, "#").await;

    // A steady stream of events, on its own connection, until told to stop.
    let published = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let stream = tokio::spawn({
        let (url, events, published, stop) = (
            broker.url().to_string(),
            ex.events.clone(),
            Arc::clone(&published),
            stop.clone(),
        );
        async move {
            let publisher = Client::connect(&url).await;
            while !stop.is_cancelled() {
                let id = published.load(Ordering::SeqCst);
                publisher
                    .publish_json(&events, KEY, &json!({ "id": id }))
                    .await;
                published.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });

    // Mid-stream: version B on disk, then SIGHUP.
    let before = client.collect(&results, 40, OUTCOMES).await;
    std::fs::write(&file, CODE_B).unwrap();
    worker.sighup();
    let hup = Instant::now();
    wait_metric(&worker, "hljs_handler_version", &[&version_gauge(&vb)], 1.0).await;
    let swapped_after = hup.elapsed();
    // Every event published from here on must meet version B.
    let first_after_swap = published.load(Ordering::SeqCst) as i64;
    let deadline = Instant::now() + OUTCOMES;
    while (published.load(Ordering::SeqCst) as i64) < first_after_swap + 40 {
        assert!(Instant::now() < deadline, "the publisher stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    tokio::time::timeout(OUTCOMES, stream)
        .await
        .expect("the publisher stops")
        .unwrap();
    let total = published.load(Ordering::SeqCst) as usize;
    let rest = client
        .collect(&results, total - before.len(), OUTCOMES)
        .await;
    let extra = client
        .collect_until(&results, Duration::from_secs(2), |_| false)
        .await;
    assert!(extra.is_empty(), "more outcomes than messages: {extra:#?}");

    // Exactly one outcome per message, each from the version its header names.
    let mut tags: BTreeMap<i64, Vec<char>> = BTreeMap::new();
    for r in before.iter().chain(&rest) {
        tags.entry(r.body["id"].as_i64().unwrap())
            .or_default()
            .push(version_of(r, &va, &vb));
    }
    assert_eq!(tags.len(), total, "every message has an outcome: {tags:?}");
    assert!(tags.values().all(|t| t.len() == 1), "duplicates: {tags:?}");
    assert!(
        before.iter().all(|r| version_of(r, &va, &vb) == 'A'),
        "outcomes before the SIGHUP are version A"
    );
    let a_ids: Vec<i64> = tags
        .iter()
        .filter(|(_, t)| t[0] == 'A')
        .map(|(i, _)| *i)
        .collect();
    let b_ids: Vec<i64> = tags
        .iter()
        .filter(|(_, t)| t[0] == 'B')
        .map(|(i, _)| *i)
        .collect();
    assert!(
        b_ids.iter().filter(|i| **i >= first_after_swap).count() >= 40
            && a_ids.iter().all(|i| *i < first_after_swap),
        "events published after the swap are version B (first after the swap: {first_after_swap}); A: {a_ids:?}"
    );
    // One cut-over: only messages in flight together can straddle it.
    let (last_a, first_b) = (a_ids.iter().max().unwrap(), b_ids.iter().min().unwrap());
    assert!(
        *last_a < first_b + IN_FLIGHT,
        "version A served {last_a} after version B served {first_b}"
    );
    for (v, n) in [(&va, a_ids.len()), (&vb, b_ids.len())] {
        let counted = worker
            .metric(
                "hljs_messages_total",
                &[&format!("key=\"{KEY}\""), &version_gauge(v)],
            )
            .await;
        assert_eq!(counted, n as f64, "hljs_messages_total of version {v}");
    }
    assert_eq!(
        worker
            .metric("hljs_reloads_total", &[&format!("key=\"{KEY}\"")])
            .await,
        1.0
    );
    eprintln!(
        "{total} messages: {} on A, {} on B; the new pool was serving {swapped_after:?} after SIGHUP; \
         last A {last_a}, first B {first_b}",
        a_ids.len(),
        b_ids.len()
    );

    // Code that does not compile: refused and counted; version B serves on, ready throughout.
    std::fs::write(&file, BROKEN).unwrap();
    worker.sighup();
    let failures = [format!("key=\"{KEY}\""), "code=\"ERR_COMPILE\"".to_string()];
    let failures: Vec<&str> = failures.iter().map(String::as_str).collect();
    wait_metric(&worker, "hljs_reload_failures_total", &failures, 1.0).await;
    assert_eq!(worker.get("/readyz").await.map(|a| a.0), Some(200));
    assert_eq!(
        worker
            .metric("hljs_handler_version", &[&version_gauge(&vb)])
            .await,
        1.0
    );
    let base = total as i64;
    for id in base..base + 10 {
        client
            .publish_json(&ex.events, KEY, &json!({ "id": id }))
            .await;
    }
    let after_broken = client.collect(&results, 10, OUTCOMES).await;
    assert!(
        after_broken.iter().all(|r| version_of(r, &va, &vb) == 'B'),
        "{after_broken:#?}"
    );
    assert_eq!(worker.get("/readyz").await.map(|a| a.0), Some(200));
    let log = std::fs::read_to_string(&worker.log).unwrap();
    assert!(
        log.contains("handler reload failed") && log.contains("ERR_COMPILE"),
        "{}",
        worker.log_tail()
    );
    assert_eq!(client.queue_len(KEY).await, 0);
}
