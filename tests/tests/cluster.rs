//! Failover in a three-node RabbitMQ 4.x cluster: two workers with every
//! node's URL, a stream of confirmed messages, and mid-stream the workers'
//! node, then the key queue's leader, then one worker go away. Every message
//! still gets its outcome; duplicates (at-least-once) are counted and bounded.
//!
//! The sequence keeps a majority of the cluster up at every moment, because
//! a quorum queue of three members needs two to accept or deliver anything:
//!
//! 1. stop the node both workers are connected to (with the queues declared
//!    through it, it usually leads them too): the workers and the publisher
//!    move to the next URL, the queues elect a leader on the other two;
//! 2. start that node again and wait until every queue has three online
//!    members, so the next stop leaves two;
//! 3. stop the node that leads the key's queue now (never the node of step 1,
//!    which came back as a follower); if the workers are on it, they move again;
//! 4. `kill -9` one worker: its unacked messages go back to the queue and the
//!    other worker does them.
//!
//! Stopping the leader while the first node is still down would leave one of
//! three members: the queue would stop (by design, not a loss) until a node
//! returned, which tests the broker's availability rather than the worker.
//!
//! Its own test binary, so its three brokers never share the machine with
//! another test's. Needs a 4.x image (see `TestCluster::start`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyperlight_js_e2e::*;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::json;

const KEY: &str = "echo";
/// The connection name every worker gives itself.
const WORKER_CONNECTION: &str = "hyperlight-js-worker";
/// At least this many messages are published.
const MESSAGES: usize = 2000;
/// Messages per confirmed batch, and the pause between batches: ~50 msg/s,
/// below what the workers do here, so the backlog left after the kill (which
/// one worker drains alone) stays small and the test short.
const BATCH: usize = 20;
const BATCH_PAUSE: Duration = Duration::from_millis(350);
const WORKERS: usize = 2;
const POOL: usize = 1;
/// `[broker] prefetch_per_sandbox`'s default.
const PREFETCH_PER_SANDBOX: usize = 2;
/// Events that can make the broker redeliver a worker's unacked messages:
/// the workers' node stops, the leader's node stops, a worker is killed.
const EVENTS: usize = 3;
/// Messages processed between two events, so each lands mid-stream.
const PROGRESS: f64 = 100.0;

/// `fut`, or a panic naming `what` after `limit`.
async fn within<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {limit:?}"))
}

/// Messages the workers finished (every outcome) so far.
async fn processed(workers: &[&WorkerProcess]) -> f64 {
    let mut sum = 0.0;
    for w in workers {
        sum += w
            .metric("hljs_messages_total", &[&format!("key=\"{KEY}\"")])
            .await;
    }
    sum
}

/// Waits until `workers` finished `n` more messages.
async fn progress(workers: &[&WorkerProcess], n: f64) {
    let from = processed(workers).await;
    while processed(workers).await < from + n {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every worker of `workers` has re-established its session `n` times.
async fn reconnected(workers: &[&WorkerProcess], n: f64) {
    for w in workers {
        while w.metric("hljs_reconnects_total", &[]).await < n {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits until each of `queues` has all `members` replicas online.
async fn all_online(cluster: &TestCluster, queues: &[&str], members: usize) {
    for q in queues {
        while cluster.queue_placement(q).online.len() < members {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_node_the_leader_and_a_worker_go_away_and_every_message_gets_its_outcome() {
    let test_started = Instant::now();
    let cluster = within(
        "a three-node cluster",
        Duration::from_secs(240),
        TestCluster::start("it-cluster", 3),
    )
    .await;
    let urls = cluster.urls();
    let dir = temp_dir("it-cluster");
    let (config, ex) = write_config(
        &dir,
        "",
        // Every node stop and the kill count as failed deliveries on 4.x: the
        // limit must not dead-letter a message that met all three.
        &[HandlerSpec::new(KEY, test_handler("echo.js"))
            .pool(POOL)
            .with("max_deliveries = 20")],
    );
    // Every node's URL, comma-separated, the same order for both: both start on node 0.
    let all_urls = urls.join(",");
    let mut workers: Vec<WorkerProcess> = (0..WORKERS)
        .map(|_| WorkerProcess::start(&config, &all_urls))
        .collect();
    for w in &mut workers {
        w.wait_ready(Duration::from_secs(120)).await;
    }
    eprintln!("{WORKERS} workers ready at {:?}", test_started.elapsed());

    // Outcomes go to a quorum queue: they must survive the nodes that stop.
    let outcomes = unique("it.cluster-outcomes");
    let setup = Client::connect(&urls[0]).await;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    setup.declare_queue(&outcomes, args).await;
    setup.connection.close(200, "OK".into()).await.unwrap();
    for q in [KEY, outcomes.as_str()] {
        let placement = cluster.queue_placement(q);
        assert_eq!(placement.kind, "quorum", "{q}: {placement:?}");
        assert_eq!(
            placement.members.len(),
            3,
            "{q} has a replica on every node: {placement:?}"
        );
    }

    // The publisher: batches of confirmed messages until told to stop (and at least MESSAGES).
    let published = Arc::new(AtomicUsize::new(0));
    let stop_publishing = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (published, stop) = (Arc::clone(&published), Arc::clone(&stop_publishing));
        let (urls, events, reply_to) = (urls.clone(), ex.events.clone(), outcomes.clone());
        tokio::spawn(async move {
            let mut p = FailoverPublisher::connect(urls).await;
            let mut n = 0;
            while !(stop.load(Ordering::SeqCst) && n >= MESSAGES) {
                let batch: Vec<(String, Vec<u8>)> = (n..n + BATCH)
                    .map(|i| {
                        (
                            format!("m-{i:05}"),
                            json!({ "id": i }).to_string().into_bytes(),
                        )
                    })
                    .collect();
                p.publish_all(&events, KEY, &reply_to, &batch).await;
                n += BATCH;
                published.store(n, Ordering::SeqCst);
                tokio::time::sleep(BATCH_PAUSE).await;
            }
            let stats = (n, p.reconnects, p.republished.clone());
            p.close().await;
            stats
        })
    };
    let live: Vec<&WorkerProcess> = workers.iter().collect();
    within(
        "the first outcomes",
        Duration::from_secs(60),
        progress(&live, PROGRESS),
    )
    .await;

    // 1. The node the workers are connected to.
    let on = cluster.connection_nodes(WORKER_CONNECTION);
    assert_eq!(on.len(), WORKERS, "one connection per worker: {on:?}");
    let first = on[0];
    assert!(
        on.iter().all(|&n| n == first),
        "both workers start on the first URL: {on:?}"
    );
    let leader = cluster.queue_placement(KEY).leader;
    eprintln!(
        "[{:?}] {} published; stopping {} (both workers' node; {KEY}'s leader: {leader})",
        test_started.elapsed(),
        published.load(Ordering::SeqCst),
        cluster.nodes()[first].name
    );
    within(
        "stopping the workers' node",
        Duration::from_secs(90),
        cluster.stop(first),
    )
    .await;
    let published_at_first_stop = published.load(Ordering::SeqCst);
    within(
        "both workers reconnecting",
        Duration::from_secs(60),
        reconnected(&live, 1.0),
    )
    .await;
    within(
        "outcomes after the first stop",
        Duration::from_secs(60),
        progress(&live, PROGRESS),
    )
    .await;
    let placement = cluster.queue_placement(KEY);
    assert_ne!(
        placement.leader,
        cluster.nodes()[first].name,
        "{placement:?}"
    );
    let moved_to = cluster.connection_nodes(WORKER_CONNECTION);
    eprintln!(
        "[{:?}] workers now on nodes {moved_to:?}; {KEY}'s leader {}",
        test_started.elapsed(),
        placement.leader
    );
    assert!(!moved_to.contains(&first), "{moved_to:?}");

    // 2. Back to three members before the next node stops.
    within(
        "the first node's restart",
        Duration::from_secs(150),
        cluster.start_again(first),
    )
    .await;
    within(
        "three online replicas again",
        Duration::from_secs(60),
        all_online(&cluster, &[KEY, &outcomes], 3),
    )
    .await;

    // 3. The node that leads the key's queue now.
    let placement = cluster.queue_placement(KEY);
    let leader = cluster.index_of(&placement.leader);
    let workers_on = cluster.connection_nodes(WORKER_CONNECTION);
    eprintln!(
        "[{:?}] {} published; stopping {} ({KEY}'s leader; workers on nodes {workers_on:?})",
        test_started.elapsed(),
        published.load(Ordering::SeqCst),
        placement.leader
    );
    within(
        "stopping the leader's node",
        Duration::from_secs(90),
        cluster.stop(leader),
    )
    .await;
    if workers_on.contains(&leader) {
        within(
            "the workers moving off the leader's node",
            Duration::from_secs(60),
            reconnected(&live, 2.0),
        )
        .await;
    }
    within(
        "outcomes after the leader stopped",
        Duration::from_secs(60),
        progress(&live, PROGRESS),
    )
    .await;
    let placement = cluster.queue_placement(KEY);
    assert_ne!(cluster.index_of(&placement.leader), leader, "{placement:?}");

    // 4. One worker killed with messages in flight.
    eprintln!(
        "[{:?}] {} published; kill -9 of worker 1",
        test_started.elapsed(),
        published.load(Ordering::SeqCst)
    );
    workers[1].sigkill();
    within(
        "the killed worker exiting",
        Duration::from_secs(10),
        async { workers[1].wait_exit(Duration::from_secs(10)).await },
    )
    .await;
    let survivor = [&workers[0]];
    within(
        "outcomes after the kill",
        Duration::from_secs(60),
        progress(&survivor, PROGRESS),
    )
    .await;

    stop_publishing.store(true, Ordering::SeqCst);
    let (total, publisher_reconnects, republished) = within(
        "the publisher finishing",
        Duration::from_secs(120),
        publisher,
    )
    .await
    .expect("the publisher task");
    assert!(
        published_at_first_stop < total,
        "the first stop landed mid-stream ({published_at_first_stop} of {total} published)"
    );
    assert!(
        publisher_reconnects >= 1,
        "the publisher's node stopped too"
    );

    // Every message's outcome, from a node still up; then a moment for late duplicates.
    let collector = Client::connect(&urls[cluster.live_node()]).await;
    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    let got = collector
        .collect_lingering(
            &outcomes,
            Duration::from_secs(150),
            |got| {
                if let Some(id) = got.last().and_then(|r| r.message_id.clone()) {
                    *per_id.entry(id).or_default() += 1;
                }
                per_id.len() >= total
            },
            Duration::from_secs(3),
        )
        .await;
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for r in &got {
        let id = r
            .message_id
            .clone()
            .expect("an outcome carries the event's message_id");
        let n: usize = id[2..].parse().expect("m-<n>");
        assert_eq!(r.body, json!({ "id": n }), "{id}: {r:?}");
        assert_eq!(
            r.headers.get("x-hljs-outcome").map(String::as_str),
            Some("ok"),
            "{id}: {r:?}"
        );
        *count.entry(id).or_default() += 1;
    }
    let missing: Vec<String> = (0..total)
        .map(|i| format!("m-{i:05}"))
        .filter(|id| !count.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {total} messages got no outcome: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    let duplicated: BTreeMap<&String, usize> = count
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| (id, *n))
        .collect();
    let extra =
        |ids: &mut dyn Iterator<Item = (&&String, &usize)>| ids.map(|(_, n)| n - 1).sum::<usize>();
    let from_redelivery = extra(
        &mut duplicated
            .iter()
            .filter(|(id, _)| !republished.contains(id.as_str())),
    );
    let from_republish = extra(
        &mut duplicated
            .iter()
            .filter(|(id, _)| republished.contains(id.as_str())),
    );
    eprintln!(
        "{total} messages published ({} republished after {publisher_reconnects} publisher reconnects), \
         {} outcomes, every message has one; duplicates: {from_redelivery} from redelivery, \
         {from_republish} from republishing; duplicated ids: {duplicated:?}; test took {:?}",
        republished.len(),
        got.len(),
        test_started.elapsed()
    );
    // At-least-once: a redelivery repeats at most what a worker held unacked when it lost its session.
    let bound = PREFETCH_PER_SANDBOX * POOL * WORKERS * EVENTS;
    assert!(
        from_redelivery <= bound,
        "{from_redelivery} duplicates from redelivery, more than {bound}"
    );
    assert!(
        from_republish <= republished.len(),
        "{from_republish} > {}",
        republished.len()
    );
    let leftover = Client::connect(&urls[cluster.live_node()]).await;
    assert_eq!(
        leftover.queue_len(&ex.dead_letter).await,
        0,
        "nothing was dead-lettered"
    );
    assert_eq!(leftover.queue_len(KEY).await, 0, "nothing is left in {KEY}");
}
