//! The worker's image, run with the Helm chart's hardening (user 65532,
//! read-only root, no capabilities, no new privileges, the config mounted
//! read-only, `/dev/kvm` through a supplemental group, a writable `/tmp` like
//! the chart's emptyDir), against a broker container: messages get their
//! outcomes, and `docker stop` (SIGTERM) with messages in flight drains: exit
//! code 0, every message has its outcome or is back in its queue, and nothing
//! was written to `/tmp`.
//!
//! The image is `HLJS_TEST_WORKER_IMAGE` (CI builds it with
//! `scripts/worker-image.sh`), or one built from the test profile's binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use hyperlight_js_e2e::image::{KvmDevice, WorkerContainer, docker, worker_image};
use hyperlight_js_e2e::*;
use lapin::BasicProperties;
use serde_json::json;

/// Where the chart mounts its ConfigMap (the image's default `--config` is in it).
const CONFIG_DIR: &str = "/etc/hyperlight-js-worker";
const MESSAGES: usize = 12;
/// Each message busy-waits this long in its sandbox.
const HANDLER_MS: u64 = 1500;
/// Outcomes awaited before SIGTERM.
const FIRST: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_runs_hardened_like_the_chart_and_drains_on_docker_stop() {
    let started = Instant::now();
    let image = worker_image();
    let broker = TestBroker::start("it-image").await;
    let dir = temp_dir("it-image");

    // The chart's ConfigMap: worker.toml with the handler file beside it, relative.
    let config = dir.join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::copy(example("handlers/slow.js"), config.join("slow.js")).unwrap();
    let ex = Exchanges {
        events: "it.events".into(),
        results: "it.results".into(),
        dead_letter: "it.dead-letter".into(),
    };
    std::fs::write(
        config.join("worker.toml"),
        format!(
            "[broker]\nevents_exchange = \"{}\"\nresults_exchange = \"{}\"\ndead_letter_exchange = \"{}\"\n\n\
             [telemetry]\nlog_format = \"json\"\n\n\
             [shutdown]\ndrain_timeout_secs = 30\n\n\
             [[handlers]]\nkey = \"slow\"\nfile = \"slow.js\"\npool_size = 2\nheap_size = 8388608\n\
             cpu_timeout_ms = 5000\nwall_timeout_ms = 10000\n",
            ex.events, ex.results, ex.dead_letter
        ),
    )
    .unwrap();
    // The chart's emptyDir at /tmp, writable by the worker's user; checked empty at the end.
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let kvm = KvmDevice::for_non_root(&dir);
    let http = free_addr();

    let args: Vec<String> = [
        "--user",
        "65532:65532",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--network",
        "host",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "--device".into(),
        format!("{}:/dev/kvm", kvm.node.display()),
        "--group-add".into(),
        kvm.gid.to_string(),
        "-v".into(),
        format!("{}:{CONFIG_DIR}:ro", config.display()),
        "-v".into(),
        format!("{}:/tmp", tmp.display()),
        // The Deployment's environment: the Secret's URL and the two overrides.
        "-e".into(),
        format!("AMQP_URL={}", broker.url()),
        "-e".into(),
        format!("HLJS__HTTP__LISTEN={http}"),
        "-e".into(),
        "HLJS__SHUTDOWN__DRAIN_TIMEOUT_SECS=30".into(),
        "-e".into(),
        "RUST_LOG=info,hyperlight_host=error,hyperlight_js_engine=off".into(),
        image.clone(),
        // The Deployment's args.
        "--config".into(),
        format!("{CONFIG_DIR}/worker.toml"),
    ])
    .collect();
    let worker = WorkerContainer::run("it-image-worker", &args);
    worker.wait_ready(http, Duration::from_secs(120)).await;
    eprintln!("{image} ready at {:?}", started.elapsed());
    // The process as the host sees it (no user namespace): uid 65532, no shell needed in the image.
    let top = docker(&["top", &worker.name, "-o", "pid,uid,comm"]);
    assert!(
        top.lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .all(|l| l.split_whitespace().nth(1) == Some("65532")),
        "every process of the container runs as 65532: {top}"
    );

    let client = Client::connect(broker.url()).await;
    let outcomes = unique("it.image-outcomes");
    client
        .declare_queue(&outcomes, lapin::types::FieldTable::default())
        .await;
    let ids: BTreeSet<String> = (0..MESSAGES).map(|i| format!("m-{i:02}")).collect();
    for (i, id) in ids.iter().enumerate() {
        client
            .publish(
                &ex.events,
                "slow",
                json!({"ms": HANDLER_MS, "id": i}).to_string().as_bytes(),
                BasicProperties::default()
                    .with_message_id(id.as_str().into())
                    .with_reply_to(outcomes.as_str().into()),
            )
            .await;
    }
    // The first outcomes: the round trip works from inside the image.
    let first = client
        .collect(&outcomes, FIRST, Duration::from_secs(60))
        .await;

    // SIGTERM while the next messages run in the two sandboxes.
    tokio::time::sleep(Duration::from_millis(HANDLER_MS / 3)).await;
    let term = Instant::now();
    // Bounded: SIGKILL after 60 s, and every docker command has its own time limit.
    let code = worker.stop(60);
    let log = worker.logs();
    eprintln!("stopped in {:?}", term.elapsed());
    assert_eq!(code, 0, "the worker exits 0 after a drain:\n{log}");
    assert!(
        term.elapsed() < Duration::from_secs(30),
        "the drain, not docker stop's SIGKILL, ended it"
    );
    assert!(
        log.contains("draining in-flight messages"),
        "messages were in flight at SIGTERM:\n{log}"
    );
    assert!(log.contains("drained; connection closed"), "{log}");

    // Every message: an outcome, or back in its queue — never both, never neither.
    let mut done = first;
    done.extend(
        client
            .collect_until(&outcomes, Duration::from_secs(3), |_| false)
            .await,
    );
    let back = client.queue_len("slow").await as usize;
    let requeued = client.collect("slow", back, Duration::from_secs(30)).await;
    let with_outcome: Vec<String> = done.iter().map(|r| r.message_id.clone().unwrap()).collect();
    for r in &done {
        assert!(
            r.body.get("slept_ms").is_some(),
            "a result, not an error: {r:?}"
        );
    }
    let in_queue: Vec<String> = requeued
        .iter()
        .map(|r| r.message_id.clone().unwrap())
        .collect();
    let mut all: Vec<String> = with_outcome.iter().chain(&in_queue).cloned().collect();
    all.sort();
    assert_eq!(
        all,
        ids.iter().cloned().collect::<Vec<_>>(),
        "each message exactly once: outcomes {with_outcome:?}, back in the queue {in_queue:?}"
    );
    assert!(
        with_outcome.len() > FIRST && !in_queue.is_empty(),
        "the drain finished messages and returned unstarted ones: {with_outcome:?} / {in_queue:?}"
    );
    let written: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(written.is_empty(), "the worker wrote to /tmp: {written:?}");
    eprintln!(
        "{} outcomes ({} during the drain), {} back in the queue; test took {:?}",
        with_outcome.len(),
        with_outcome.len() - FIRST,
        in_queue.len(),
        started.elapsed()
    );
}
