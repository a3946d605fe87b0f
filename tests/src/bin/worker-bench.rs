//! Worker benchmark: one run prints one table with the worker's throughput
//! and end-to-end latency for a trivial handler next to its two ceilings,
//! measured in the same run: the engine alone (call + restore, times the
//! pool size) and the broker alone (a bare lapin consumer acking the same
//! messages with the same prefetch).
//!
//! ```text
//! scripts/rabbitmq.sh start
//! AMQP_URL=$(scripts/rabbitmq.sh url) cargo run --release -p hyperlight-js-e2e --bin worker-bench
//! ```
//! Environment: `BENCH_POOLS` (default `1,2`), `BENCH_MESSAGES` (worker, default
//! 300), `BENCH_ENGINE_CALLS` (default 100), `BENCH_BROKER_MESSAGES` (default 5000).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hyperlight_js_e2e::{Client, HandlerSpec, Vhost, cpu, temp_dir, write_config};
use hyperlight_js_engine::{CallOptions, LoadedJSSandbox, SandboxBuilder};
use hyperlight_js_worker::config::WorkerConfig;
use hyperlight_js_worker::run::{Mode, Worker};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const HANDLER: &str = "function handler(event) { return event; }";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let pools: Vec<usize> = std::env::var("BENCH_POOLS")
        .unwrap_or_else(|_| "1,2".into())
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .filter(|p| *p > 0)
        .collect();
    let messages = env_usize("BENCH_MESSAGES", 300);
    let engine_calls = env_usize("BENCH_ENGINE_CALLS", 100);
    let broker_messages = env_usize("BENCH_BROKER_MESSAGES", 5000);
    let window = env_usize("BENCH_WINDOW", 2);
    let vhost = Vhost::new("bench");
    let mut rows = Vec::new();
    for &pool in &pools {
        let engine = engine_ceiling(pool, engine_calls).await;
        eprintln!(
            "pool {pool}: engine {:.1} calls/s per sandbox, {:.1}/s measured in parallel",
            engine.single, engine.parallel
        );
        let broker = broker_ceiling(&vhost.url, pool, broker_messages).await;
        eprintln!("pool {pool}: broker {broker:.0} msg/s");
        let worker = worker_run(&vhost, pool, messages).await;
        eprintln!("pool {pool}: worker {:.1} msg/s", worker.rate);
        // Measured again after the worker run: other load on the machine shifts both alike.
        let again = engine_ceiling(pool, engine_calls).await;
        eprintln!(
            "pool {pool}: engine again {:.1} / {:.1}",
            again.single, again.parallel
        );
        let engine = EngineRates {
            single: (engine.single + again.single) / 2.0,
            parallel: (engine.parallel + again.parallel) / 2.0,
            split: engine.split.mean(&again.split),
        };
        rows.push((pool, engine, broker, worker));
    }
    println!();
    println!(
        "Trivial handler (`return event`), {messages} messages per worker run with {window} × pool in flight \
         and `prefetch_per_sandbox = {window}` (BENCH_WINDOW), \
         engine: {engine_calls} call + restore cycles before and after the worker run (mean), broker: {broker_messages} messages."
    );
    println!();
    println!(
        "| pool | worker msg/s | worker latency p50 / p99 | engine ceiling (1 sandbox × pool) | engine, pool sandboxes in parallel (measured) | broker ceiling (bare lapin consumer, prefetch = pool, ack each) | worker / lower ceiling | worker / measured engine |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (pool, engine, broker, worker) in &rows {
        let ceiling = engine.single * *pool as f64;
        let lower = ceiling.min(*broker);
        println!(
            "| {pool} | {:.1} | {:.0} ms / {:.0} ms | {ceiling:.1} msg/s ({:.0} ms per call + restore) | {:.1} msg/s | {broker:.0} msg/s | {:.0} % | {:.0} % |",
            worker.rate,
            worker.p50,
            worker.p99,
            1000.0 / engine.single,
            engine.parallel,
            100.0 * worker.rate / lower,
            100.0 * worker.rate / engine.parallel,
        );
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "Where the CPU goes, ms per message (the kernel's per-thread accounting: guest time, system time, the rest of user time), \
         and the cores the run kept busy out of {cores}:"
    );
    println!();
    println!(
        "| pool | engine alone, one call + restore: all = guest time / system time / the rest of user time | worker run: sandbox threads, all = guest time / system time / the rest of user time | worker's other threads and the bench's client | broker (beam.smp) | all | cores busy |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (pool, engine, _, worker) in &rows {
        let c = &worker.cpu;
        let all = c.sandboxes.total() + c.others + c.broker.unwrap_or(0.0);
        println!(
            "| {pool} | {} | {} | {:.2} | {} | {all:.2} | {:.2} |",
            engine.split,
            c.sandboxes,
            c.others,
            c.broker
                .map_or("not on this machine".to_string(), |b| format!("{b:.2}")),
            c.cores_busy,
        );
    }
}

struct EngineRates {
    single: f64,
    parallel: f64,
    /// Where one call + restore's CPU went, on the calling thread.
    split: Split,
}

/// CPU time per message or call, in ms, split as the kernel accounts it.
#[derive(Clone, Copy, Default)]
struct Split {
    guest: f64,
    system: f64,
    host_user: f64,
}

impl Split {
    fn per(times: &[cpu::Times], n: usize) -> Self {
        let t = cpu::sum(times);
        let ms = 1000.0 / n.max(1) as f64;
        Self {
            guest: t.guest * ms,
            system: t.system * ms,
            host_user: t.host_user() * ms,
        }
    }

    fn total(&self) -> f64 {
        self.guest + self.system + self.host_user
    }

    fn mean(&self, other: &Split) -> Self {
        Self {
            guest: (self.guest + other.guest) / 2.0,
            system: (self.system + other.system) / 2.0,
            host_user: (self.host_user + other.host_user) / 2.0,
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} = {:.2} / {:.2} / {:.2}",
            self.total(),
            self.guest,
            self.system,
            self.host_user
        )
    }
}

fn loaded_sandbox() -> LoadedJSSandbox {
    let mut js = SandboxBuilder::new()
        .heap_size(8 << 20)
        .build()
        .unwrap()
        .load_runtime()
        .unwrap();
    js.add_handler("bench", HANDLER).unwrap();
    js.get_loaded_sandbox().unwrap()
}

/// Call + restore in a loop, as the worker does per message.
async fn engine_ceiling(pool: usize, calls: usize) -> EngineRates {
    tokio::task::spawn_blocking(move || {
        let mut first = loaded_sandbox();
        let snapshot = first.snapshot().unwrap();
        let options = CallOptions::default()
            .cpu_timeout(Duration::from_secs(5))
            .wall_clock_timeout(Duration::from_secs(10))
            .gc(false);
        let event = json!({"id": 1, "t": 0}).to_string();
        let run = |sb: &mut LoadedJSSandbox, n: usize| {
            for _ in 0..n {
                sb.call_handler_json("bench", &event, &options).unwrap();
                sb.restore(&snapshot).unwrap();
            }
        };
        run(&mut first, 3);
        let started = Instant::now();
        let before = cpu::this_thread().unwrap();
        run(&mut first, calls);
        let single = calls as f64 / started.elapsed().as_secs_f64();
        let used = cpu::this_thread().unwrap();
        let split = Split::per(&[used.minus(&before)], calls);
        let mut sandboxes = vec![first];
        for _ in 1..pool {
            sandboxes.push(LoadedJSSandbox::from_snapshot(&snapshot).unwrap());
        }
        let per = calls.div_ceil(pool).max(1);
        let started = Instant::now();
        std::thread::scope(|s| {
            for sb in sandboxes.iter_mut() {
                s.spawn(|| run(sb, per));
            }
        });
        let parallel = (per * pool) as f64 / started.elapsed().as_secs_f64();
        EngineRates {
            single,
            parallel,
            split,
        }
    })
    .await
    .unwrap()
}

/// Publishes `n` events to a quorum queue like the worker's, then consumes
/// them with prefetch `pool`, acking each.
async fn broker_ceiling(url: &str, pool: usize, n: usize) -> f64 {
    let client = Client::connect(url).await;
    let queue = format!("bench.broker.{pool}");
    let queue = queue.as_str();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".to_string().into()),
    );
    client.declare_queue(queue, args).await;
    let body = json!({"id": 1, "t": 0}).to_string();
    let mut confirms = Vec::with_capacity(n);
    for _ in 0..n {
        confirms.push(
            client
                .channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    Default::default(),
                    body.as_bytes(),
                    lapin::BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap(),
        );
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }
    let channel = client.connection.create_channel().await.unwrap();
    channel
        .basic_qos(pool as u16, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    for _ in 0..n {
        let d = consumer.next().await.unwrap().unwrap();
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

struct WorkerRun {
    rate: f64,
    p50: f64,
    p99: f64,
    cpu: WorkerCpu,
}

/// The CPU the worker run used, per message, in ms.
struct WorkerCpu {
    /// The threads that ran guest code: the sandboxes' calls and restores.
    sandboxes: Split,
    /// Every other thread of this process: the worker's async side (lapin,
    /// tokio, publish, confirm, ack) and the bench's client.
    others: f64,
    /// The broker's process (`beam.smp`) on this machine, when it is one.
    broker: Option<f64>,
    /// All of it over the run's wall-clock time.
    cores_busy: f64,
}

/// The worker (in this process, from the library) with `pool` sandboxes and
/// `BENCH_WINDOW` (default 2, the worker's default prefetch per sandbox)
/// messages per sandbox both in flight in a closed loop and as the worker's
/// prefetch; latency from publish to the outcome's arrival. A window of 2
/// leaves sandboxes waiting on the broker's round trip here.
async fn worker_run(vhost: &Vhost, pool: usize, n: usize) -> WorkerRun {
    let dir = temp_dir("bench");
    let handler = dir.join("bench.js");
    std::fs::write(&handler, HANDLER).unwrap();
    let (config_path, ex) =
        write_config(&dir, "", &[HandlerSpec::new("bench", handler).pool(pool)]);
    let env: HashMap<String, String> = [
        ("AMQP_URL".to_string(), vhost.url.clone()),
        (
            "HLJS__BROKER__PREFETCH_PER_SANDBOX".to_string(),
            env_usize("BENCH_WINDOW", 2).to_string(),
        ),
        (
            "HLJS__HTTP__LISTEN".to_string(),
            hyperlight_js_e2e::free_addr().to_string(),
        ),
    ]
    .into();
    let config = WorkerConfig::load_with_env(&config_path, &env).unwrap();
    let worker = Worker::new(config, Mode::Broker);
    let health = worker.health();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(worker.run(shutdown.clone()));
    while health.readiness().is_err() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = Arc::new(Client::connect(&vhost.url).await);
    let results = client.bind_queue(&ex.results, "#").await;
    let channel = client.connection.create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            results.as_str().into(),
            "bench-results".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let origin = Instant::now();
    let window = env_usize("BENCH_WINDOW", 2) * pool;
    let publish = |id: usize| {
        let client = Arc::clone(&client);
        let ex = ex.events.clone();
        async move {
            let t = origin.elapsed().as_secs_f64();
            client
                .publish_json(&ex, "bench", &json!({"id": id, "t": t}))
                .await;
        }
    };
    // Warm-up: every sandbox once.
    for id in 0..pool {
        publish(id).await;
    }
    for _ in 0..pool {
        consumer.next().await.unwrap().unwrap();
    }
    let broker_pid = cpu::find_process("beam.smp");
    let threads_before = cpu::Threads::of(std::process::id()).unwrap();
    let broker_before = broker_pid.and_then(|p| cpu::Threads::of(p).ok());
    let started = Instant::now();
    let mut next = 0;
    while next < window.min(n) {
        publish(next).await;
        next += 1;
    }
    let mut latencies = Vec::with_capacity(n);
    while latencies.len() < n {
        let d = consumer.next().await.unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
        let sent = v["t"].as_f64().unwrap();
        latencies.push((origin.elapsed().as_secs_f64() - sent) * 1000.0);
        if next < n {
            publish(next).await;
            next += 1;
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let rate = n as f64 / wall;
    let threads = cpu::Threads::of(std::process::id())
        .unwrap()
        .since(&threads_before);
    let (vcpu, other) = cpu::split_vcpu(&threads);
    let broker = broker_pid
        .zip(broker_before)
        .and_then(|(p, before)| Some(cpu::sum(&cpu::Threads::of(p).ok()?.since(&before))));
    let cpu = WorkerCpu {
        sandboxes: Split::per(&[vcpu], n),
        others: other.total() * 1000.0 / n as f64,
        broker: broker.map(|b| b.total() * 1000.0 / n as f64),
        cores_busy: (cpu::sum(&threads).total() + broker.map_or(0.0, |b| b.total())) / wall,
    };
    shutdown.cancel();
    task.await.unwrap().unwrap();
    latencies.sort_by(|a, b| a.total_cmp(b));
    WorkerRun {
        rate,
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        cpu,
    }
}
