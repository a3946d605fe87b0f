//! Helpers of the end-to-end tests: a per-test RabbitMQ broker
//! ([`TestBroker`]), the worker binary as a child process, configuration
//! files, and a small AMQP client that publishes events and collects outcomes.
//!
//! Broker tests get their broker from [`TestBroker::start`]: with
//! `HLJS_TEST_BROKER_IMAGE` set (`rabbitmq:4.3`, `rabbitmq:3.13`), a fresh
//! container of that image per test (Docker from `scripts/docker.sh`, local
//! images from `scripts/broker-images.sh`); otherwise a fresh virtual host on
//! the running RabbitMQ named by `AMQP_URL` (start one with
//! `scripts/rabbitmq.sh start`), with `rabbitmqctl` on the `PATH`. With
//! neither they fail; they never skip.
#![deny(missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub mod broker;
pub mod cluster;
pub mod cpu;
pub mod image;
pub mod memory;
pub mod ports;
pub use broker::{BROKER_IMAGE_ENV, TestBroker};
pub use cluster::{FailoverPublisher, QueuePlacement, TestCluster};
pub use ports::free_addr;

/// The broker URL from `AMQP_URL`; panics with instructions when unset.
pub fn amqp_url() -> String {
    match std::env::var("AMQP_URL") {
        Ok(u) if !u.trim().is_empty() => u,
        _ => panic!(
            "AMQP_URL is not set. These end-to-end tests need a real RabbitMQ: run `scripts/rabbitmq.sh start` \
             and `export AMQP_URL=$(scripts/rabbitmq.sh url)`."
        ),
    }
}

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A file of `tests/handlers/`.
pub fn test_handler(name: &str) -> PathBuf {
    repo_root().join("tests/handlers").join(name)
}

/// A handler the size of a bundled application (`kb` KiB of code): many
/// small functions and a data table, all reachable from `handler`, which
/// returns `{key, x}`. The snapshot-cache and memory benchmarks use it.
pub fn bundle_handler(key: usize, kb: usize) -> String {
    use std::fmt::Write as _;
    let mut s = format!("// bundle {key}\nconst KEY = {key};\nconst fns = [];\n");
    let mut i = 0;
    while s.len() < kb * 1024 {
        let _ = writeln!(
            s,
            "function f{i}(x) {{ const t = [{i}, x, '{i:08x}']; return x + t[0] % 7 + t[2].length; }}\nfns.push(f{i});"
        );
        i += 1;
    }
    s.push_str(
        "function handler(event) { let x = event.n || 0; for (const f of fns) x = f(x) % 1000003; return { key: KEY, x }; }\n",
    );
    s
}

/// A worker configuration of `keys` bundled handlers ([`bundle_handler`],
/// `kb` KiB each, in `dir/bundle<k>.js`, written once), pool 2; key `k` gets
/// a heap of (16 + 4k) MiB when `heaps` (else the default), and the
/// `[snapshots] dir` is `cache` when given. Written to `dir/name`; for the
/// worker's stdin mode (an empty `[broker]`).
pub fn bundle_config(
    dir: &Path,
    name: &str,
    keys: usize,
    kb: usize,
    heaps: bool,
    cache: Option<&Path>,
) -> PathBuf {
    use std::fmt::Write as _;
    let mut toml = String::from("[broker]\n\n");
    for k in 0..keys {
        let file = dir.join(format!("bundle{k}.js"));
        if !file.exists() {
            std::fs::write(&file, bundle_handler(k, kb)).unwrap();
        }
        let heap = if heaps {
            format!("heap_size = {}\n", (16 + 4 * k) << 20)
        } else {
            String::new()
        };
        let _ = write!(
            toml,
            "[[handlers]]\nkey = \"bundle{k}\"\nfile = {:?}\npool_size = 2\n{heap}\n",
            file.display().to_string()
        );
    }
    if let Some(c) = cache {
        let _ = write!(toml, "[snapshots]\ndir = {:?}\n", c.display().to_string());
    }
    let path = dir.join(name);
    std::fs::write(&path, toml).unwrap();
    path
}

/// The worker `bin` in stdin mode on `config`, logging at info without
/// colours, with no broker URL from the environment.
pub fn stdin_worker(bin: &Path, config: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["--config", config.to_str().unwrap(), "--stdin"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("AMQP_URL");
    cmd
}

/// For the benchmark binaries: the worker binary of their profile, beside
/// them (`cargo build --release -p hyperlight-js-worker` first);
/// `HLJS_WORKER_BIN` wins.
pub fn worker_bin_beside() -> PathBuf {
    if let Some(bin) = std::env::var_os("HLJS_WORKER_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe.with_file_name("hyperlight-js-worker");
    assert!(
        bin.exists(),
        "{} is missing: cargo build --release -p hyperlight-js-worker",
        bin.display()
    );
    bin
}

/// A file of `examples/`.
pub fn example(name: &str) -> PathBuf {
    repo_root().join("examples").join(name)
}

/// The `hyperlight-js-worker` binary, built once per test process with the
/// same profile as the tests.
pub fn worker_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current exe");
        // target/<profile>/deps/<test>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(repo_root()).args([
            "build",
            "-q",
            "-p",
            "hyperlight-js-worker",
            "--bin",
            "hyperlight-js-worker",
        ]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        if let Some(target) = profile_dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target);
        }
        let status = cmd.status().expect("run cargo build");
        assert!(
            status.success(),
            "cargo build -p hyperlight-js-worker failed"
        );
        let bin = profile_dir.join("hyperlight-js-worker");
        assert!(bin.exists(), "{} missing after the build", bin.display());
        bin
    })
    .clone()
}

/// Runs the worker binary to completion with `args` and `AMQP_URL = url`
/// (off the async runtime's threads); its exit status and output.
pub async fn worker_cli(args: &[&str], url: &str) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        Command::new(worker_bin())
            .args(&args)
            .env("AMQP_URL", url)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// A short unique name.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// A fresh temporary directory.
pub fn temp_dir(prefix: &str) -> PathBuf {
    let d = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `rabbitmqctl` with `args`; panics with its output on failure.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run rabbitmqctl (install RabbitMQ with scripts/rabbitmq.sh start): {e}")
        });
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` to completion and returns its output, killing it after
/// `timeout` (a panic then). Blocks in place: call it from a multi-thread
/// runtime (or outside one).
pub fn run_within(mut cmd: Command, timeout: Duration) -> Output {
    tokio::task::block_in_place(|| {
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let pid = child.id();
        // The output is read while it runs (a full pipe would stall it).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(child.wait_with_output()));
        match rx.recv_timeout(timeout) {
            Ok(out) => out.expect("the output of a child process"),
            Err(_) => {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                panic!("{cmd:?} did not finish within {timeout:?}");
            }
        }
    })
}

/// A virtual host of its own for one test (deleted on drop), so tests run
/// in parallel without sharing queues or exchanges. [`TestBroker::start`]
/// uses one when no broker image is set; the worker benchmark uses it directly.
pub struct Vhost {
    /// Its name.
    pub name: String,
    /// `AMQP_URL` pointing at it.
    pub url: String,
}

impl Vhost {
    /// Creates the vhost and grants the URL's user everything on it.
    pub fn new(prefix: &str) -> Self {
        let base = amqp_url();
        let name = unique(prefix);
        let (scheme, rest) = base.split_once("://").expect("AMQP_URL has a scheme");
        let authority = rest.split('/').next().unwrap_or(rest);
        let user = authority
            .split('@')
            .next()
            .filter(|_| authority.contains('@'))
            .map_or("guest", |u| u.split(':').next().unwrap_or("guest"));
        rabbitmqctl(&["-q", "add_vhost", &name]);
        rabbitmqctl(&["-q", "set_permissions", "-p", &name, user, ".*", ".*", ".*"]);
        let url = format!("{scheme}://{authority}/{name}");
        Self { name, url }
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.name])
            .output();
    }
}

/// One `[[handlers]]` entry of a test configuration.
#[derive(Clone, Debug)]
pub struct HandlerSpec {
    /// Routing key.
    pub key: String,
    /// JavaScript file.
    pub file: PathBuf,
    /// Pool size.
    pub pool_size: usize,
    /// More `name = value` lines.
    pub extra: String,
}

impl HandlerSpec {
    /// A handler with pool size 1 and (unless `with` sets one) an 8 MiB heap.
    pub fn new(key: &str, file: PathBuf) -> Self {
        Self {
            key: key.into(),
            file,
            pool_size: 1,
            extra: String::new(),
        }
    }

    /// Sets the pool size.
    pub fn pool(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    /// Adds `name = value` lines.
    pub fn with(mut self, lines: &str) -> Self {
        self.extra.push_str(lines);
        self.extra.push('\n');
        self
    }
}

/// Writes a worker configuration with unique exchange names; returns its
/// path and the `[broker]` settings it used.
pub fn write_config(
    dir: &Path,
    broker_extra: &str,
    handlers: &[HandlerSpec],
) -> (PathBuf, Exchanges) {
    let ex = Exchanges {
        events: "it.events".into(),
        results: "it.results".into(),
        dead_letter: "it.dead-letter".into(),
    };
    let mut toml = format!(
        "[broker]\nevents_exchange = \"{}\"\nresults_exchange = \"{}\"\ndead_letter_exchange = \"{}\"\nreconnect_initial_ms = 200\nreconnect_max_ms = 2000\n{broker_extra}\n\n[shutdown]\ndrain_timeout_secs = 30\n\n",
        ex.events, ex.results, ex.dead_letter
    );
    for h in handlers {
        let heap = if h.extra.contains("heap_size") {
            ""
        } else {
            "heap_size = 8388608\n"
        };
        toml.push_str(&format!(
            "[[handlers]]\nkey = \"{}\"\nfile = {:?}\npool_size = {}\n{heap}{}\n",
            h.key,
            h.file.display().to_string(),
            h.pool_size,
            h.extra
        ));
    }
    let path = dir.join("worker.toml");
    std::fs::write(&path, toml).unwrap();
    (path, ex)
}

/// Exchange names of a test configuration.
#[derive(Clone, Debug)]
pub struct Exchanges {
    /// Events.
    pub events: String,
    /// Results.
    pub results: String,
    /// Dead letters (also the dead-letter queue's name).
    pub dead_letter: String,
}

/// The worker binary running as a child process.
pub struct WorkerProcess {
    child: Child,
    /// Its HTTP endpoint.
    pub http: SocketAddr,
    /// Its standard error.
    pub log: PathBuf,
}

impl WorkerProcess {
    /// Starts the worker on `config` against `amqp_url`.
    pub fn start(config: &Path, amqp_url: &str) -> Self {
        Self::start_with(config, &[("AMQP_URL", amqp_url)])
    }

    /// Starts the worker with extra environment variables.
    pub fn start_with(config: &Path, env: &[(&str, &str)]) -> Self {
        let http = free_addr();
        // Next to a test's own config; in a temporary directory for a config in the repository.
        let dir = config
            .parent()
            .filter(|d| d.starts_with(std::env::temp_dir()))
            .map_or_else(|| temp_dir("it-log"), Path::to_path_buf);
        let log = dir.join(unique("worker") + ".log");
        let stderr = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(worker_bin());
        cmd.arg("--config")
            .arg(config)
            .env("HLJS__HTTP__LISTEN", http.to_string())
            .env(
                "RUST_LOG",
                "info,hyperlight_host=error,hyperlight_js_engine=off",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        Self { child, http, log }
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `GET path` → (status, body); `None` when nothing answers.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.http, path).await
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((200, _)) = self.get("/readyz").await {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the worker exited with {status} before it was ready:\n{}",
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the worker was not ready within {timeout:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `/readyz` has `status`.
    pub async fn wait_readyz(&self, status: u16, timeout: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if let Some((s, _)) = self.get("/readyz").await
                && s == status
            {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < timeout,
                "/readyz never answered {status} within {timeout:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A metric's value summed over the series whose labels contain every `label="value"` in `labels`.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let (_, text) = self.get("/metrics").await.expect("metrics answer");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter(|l| labels.iter().all(|lab| l.contains(lab)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        signal(self.child.id(), "TERM");
    }

    /// Sends SIGHUP (hot reload).
    pub fn sighup(&self) {
        signal(self.child.id(), "HUP");
    }

    /// Sends SIGKILL.
    pub fn sigkill(&self) {
        signal(self.child.id(), "KILL");
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the worker did not exit within {timeout:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// A minimal HTTP/1.1 GET.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
}

/// An outcome as the tests see it.
#[derive(Clone, Debug)]
pub struct Received {
    /// The body, parsed.
    pub body: Value,
    /// `x-hljs-error-code`, for a failure.
    pub code: Option<String>,
    /// Every header, as text.
    pub headers: BTreeMap<String, String>,
    /// `correlation_id`.
    pub correlation_id: Option<String>,
    /// `message_id`.
    pub message_id: Option<String>,
}

impl Received {
    /// The error code in the body.
    pub fn body_code(&self) -> Option<&str> {
        self.body.get("error")?.get("code")?.as_str()
    }
}

/// A publisher (with confirms) and consumer for tests.
pub struct Client {
    /// The connection.
    pub connection: Connection,
    /// A confirm-mode channel.
    pub channel: Channel,
}

impl Client {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> Self {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Self {
            connection,
            channel,
        }
    }

    /// Connects, retrying until `timeout` (for a broker that is restarting).
    pub async fn connect_retrying(url: &str, timeout: Duration) -> Self {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(connection) = Connection::connect(url, ConnectionProperties::default()).await
                && let Ok(channel) = connection.create_channel().await
                && channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await
                    .is_ok()
            {
                return Self {
                    connection,
                    channel,
                };
            }
            assert!(
                Instant::now() < deadline,
                "cannot reconnect to RabbitMQ within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Publishes persistently and waits for the confirm (mandatory: an unroutable event panics).
    pub async fn publish(&self, exchange: &str, key: &str, body: &[u8], props: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                props
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        match confirm {
            Confirmation::Ack(None) => {}
            other => panic!("publishing to {exchange}/{key} was not accepted: {other:?}"),
        }
    }

    /// Publishes JSON to the events exchange.
    pub async fn publish_json(&self, exchange: &str, key: &str, event: &Value) {
        self.publish(
            exchange,
            key,
            event.to_string().as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }

    /// Declares a durable queue bound to `exchange` with `binding` (it keeps
    /// outcomes while the test is disconnected).
    pub async fn bind_queue(&self, exchange: &str, binding: &str) -> String {
        let name = unique("it.out");
        self.channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.channel
            .queue_bind(
                name.as_str().into(),
                exchange.into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        name
    }

    /// Declares a queue with `args`.
    pub async fn declare_queue(&self, name: &str, args: FieldTable) {
        self.channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .unwrap();
    }

    /// Messages waiting in `queue`.
    pub async fn queue_len(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    }

    /// Consumes `queue` until `done(&received)` or `timeout`; returns what came.
    pub async fn collect_until(
        &self,
        queue: &str,
        timeout: Duration,
        done: impl FnMut(&[Received]) -> bool,
    ) -> Vec<Received> {
        self.collect_lingering(queue, timeout, done, Duration::ZERO)
            .await
    }

    /// Like [`collect_until`](Self::collect_until), then keeps consuming on
    /// the same consumer until `linger` passes with nothing new: a late
    /// duplicate is seen, while nothing this consumer has acknowledged can
    /// come back to a second one (a closed channel requeues what it had not
    /// yet acknowledged, and acknowledgements still in flight at the close
    /// may not count).
    pub async fn collect_lingering(
        &self,
        queue: &str,
        timeout: Duration,
        mut done: impl FnMut(&[Received]) -> bool,
        linger: Duration,
    ) -> Vec<Received> {
        let channel = self.connection.create_channel().await.unwrap();
        let tag = unique("it");
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(&got) {
            let next = tokio::time::timeout_at(deadline, consumer.next()).await;
            let Ok(Some(Ok(delivery))) = next else { break };
            delivery.ack(BasicAckOptions::default()).await.unwrap();
            got.push(received(&delivery.properties, &delivery.data));
        }
        if !linger.is_zero() {
            while let Ok(Some(Ok(delivery))) = tokio::time::timeout(linger, consumer.next()).await {
                delivery.ack(BasicAckOptions::default()).await.unwrap();
                got.push(received(&delivery.properties, &delivery.data));
            }
        }
        // A synchronous method before the close: the broker answers it only
        // after the acknowledgements sent before it.
        let _ = channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
        let _ = channel.close(200, "OK".into()).await;
        got
    }

    /// Consumes exactly `n` messages from `queue` (panics on timeout).
    pub async fn collect(&self, queue: &str, n: usize, timeout: Duration) -> Vec<Received> {
        let got = self.collect_until(queue, timeout, |g| g.len() >= n).await;
        assert_eq!(
            got.len(),
            n,
            "expected {n} outcomes within {timeout:?}, got {}: {got:#?}",
            got.len()
        );
        got
    }
}

fn received(props: &BasicProperties, data: &[u8]) -> Received {
    let mut headers = BTreeMap::new();
    if let Some(t) = props.headers() {
        for (k, v) in t.inner() {
            let text = match v {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                AMQPValue::ShortString(s) => s.as_str().to_string(),
                AMQPValue::LongLongInt(n) => n.to_string(),
                AMQPValue::LongInt(n) => n.to_string(),
                AMQPValue::ShortInt(n) => n.to_string(),
                AMQPValue::LongUInt(n) => n.to_string(),
                AMQPValue::Double(n) => n.to_string(),
                other => format!("{other:?}"),
            };
            headers.insert(k.as_str().to_string(), text);
        }
    }
    Received {
        body: serde_json::from_slice(data)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(data).into_owned())),
        code: headers.get("x-hljs-error-code").cloned(),
        headers,
        correlation_id: props
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str().to_string()),
        message_id: props.message_id().as_ref().map(|c| c.as_str().to_string()),
    }
}

/// Text header table.
pub fn headers(pairs: &[(&str, &str)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), AMQPValue::LongString((*v).to_string().into()));
    }
    t
}
