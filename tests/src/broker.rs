//! The RabbitMQ broker of one test: a fresh container of an image, or a fresh
//! virtual host on the broker at `AMQP_URL`.
//!
//! With `HLJS_TEST_BROKER_IMAGE` set (for example `rabbitmq:4.3` or
//! `rabbitmq:3.13`), [`TestBroker::start`] runs a container of that image
//! through `testcontainers`, on the host network with ports and a node name of
//! its own, so that several run side by side. On a machine with Docker Hub those
//! are the official images; on a machine without a registry,
//! `scripts/broker-images.sh` builds local images under the same tags from
//! Debian packages (there `rabbitmq:3.13` is really Debian's 3.10.8: ask
//! [`TestBroker::version`]). Docker itself comes from `scripts/docker.sh`.
//!
//! Without it, the test gets a virtual host of its own on the broker named by
//! `AMQP_URL` (`scripts/rabbitmq.sh start`), managed with the local
//! `rabbitmqctl`.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lapin::{Connection, ConnectionProperties};
use serde_json::Value;
use testcontainers::core::WaitFor;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use crate::ports::free_ports;
use crate::{Vhost, unique};

/// The environment variable naming the broker image of the tests.
pub const BROKER_IMAGE_ENV: &str = "HLJS_TEST_BROKER_IMAGE";

/// How long a broker container may take to boot (several boot at once on two cores).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(180);

/// How long a stopped broker may take to serve AMQP again.
const RESTART_TIMEOUT: Duration = Duration::from_secs(180);

/// Seconds `docker stop` waits for the broker's own shutdown before SIGKILL.
const STOP_TIMEOUT_SECS: i32 = 60;

/// The broker of one test; see the module documentation.
///
/// A container is removed when the `TestBroker` is dropped; a virtual host is
/// deleted, and a local broker left stopped by [`TestBroker::stop`] is started
/// again.
pub struct TestBroker {
    /// The AMQP URL of the test's virtual host, with the guest account
    /// (`amqp://guest:guest@127.0.0.1:PORT/VHOST`).
    pub url: String,
    vhost: String,
    version: String,
    stopped: AtomicBool,
    backend: Backend,
}

enum Backend {
    Container {
        container: Box<ContainerAsync<GenericImage>>,
        image: String,
        node: String,
    },
    Local {
        _vhost: Vhost,
    },
}

impl TestBroker {
    /// The broker for a test whose names start with `prefix`.
    ///
    /// With `HLJS_TEST_BROKER_IMAGE` set: a fresh container of that image,
    /// ready (its log said "Server startup complete") and reached through its
    /// default virtual host `/`. Panics when Docker or the image is missing,
    /// naming the scripts that provide them.
    ///
    /// Otherwise: a fresh virtual host on the broker at `AMQP_URL`; panics
    /// with instructions when `AMQP_URL` is unset (tests never skip).
    pub async fn start(prefix: &str) -> TestBroker {
        let mut broker = match std::env::var(BROKER_IMAGE_ENV) {
            Ok(image) if !image.trim().is_empty() => Self::container(prefix, image.trim()).await,
            _ => {
                let vhost = Vhost::new(prefix);
                TestBroker {
                    url: vhost.url.clone(),
                    vhost: vhost.name.clone(),
                    version: String::new(),
                    stopped: AtomicBool::new(false),
                    backend: Backend::Local { _vhost: vhost },
                }
            }
        };
        broker.version = broker.status_version();
        broker
    }

    async fn container(prefix: &str, image: &str) -> TestBroker {
        let (name, tag) = split_image(image);
        let node = format!("{}@localhost", unique(prefix));
        let started = Instant::now();
        // The ports are free when chosen, but another process may bind one
        // before the broker does (its boot then fails with eaddrinuse):
        // that, and only that, is retried with fresh ports.
        let mut attempts = 0;
        let (container, amqp) = loop {
            attempts += 1;
            let ports = free_ports(3);
            let (amqp, epmd, dist) = (ports[0], ports[1], ports[2]);
            let request = GenericImage::new(name.clone(), tag.clone())
                .with_wait_for(WaitFor::message_on_stdout("Server startup complete"))
                // Host networking: no bridge on these machines; everything on 127.0.0.1.
                .with_network("host")
                .with_env_var("RABBITMQ_NODE_PORT", amqp.to_string())
                .with_env_var("ERL_EPMD_PORT", epmd.to_string())
                .with_env_var("RABBITMQ_DIST_PORT", dist.to_string())
                .with_env_var("RABBITMQ_NODENAME", node.as_str())
                // The log on stdout, where the wait condition reads it.
                .with_env_var("RABBITMQ_LOGS", "-")
                // Idle schedulers sleep instead of spinning: several brokers share two cores.
                .with_env_var(
                    "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                    "+sbwt none +sbwtdcpu none +sbwtdio none",
                )
                .with_startup_timeout(STARTUP_TIMEOUT);
            match request.start().await {
                Ok(container) => break (container, amqp),
                Err(e) if attempts < 3 && e.to_string().contains("eaddrinuse") => {
                    eprintln!("broker container of {image}: a port was taken meanwhile, retrying");
                }
                Err(e) => panic!(
                    "cannot start a broker container of {image} ({BROKER_IMAGE_ENV}): {e}\n\
                     Is Docker running? `bash scripts/docker.sh` installs and starts it. \
                     Without an image registry, `bash scripts/broker-images.sh` builds rabbitmq:4.3 \
                     and rabbitmq:3.13 locally. Unset {BROKER_IMAGE_ENV} to use the broker at AMQP_URL."
                ),
            }
        };
        eprintln!(
            "broker container {} of {image} ({node}, AMQP on 127.0.0.1:{amqp}) ready in {:?}",
            container.id(),
            started.elapsed()
        );
        TestBroker {
            url: format!("amqp://guest:guest@127.0.0.1:{amqp}/%2f"),
            vhost: "/".into(),
            version: String::new(),
            stopped: AtomicBool::new(false),
            backend: Backend::Container {
                container: Box::new(container),
                image: image.into(),
                node,
            },
        }
    }

    /// The AMQP URL of the test's virtual host.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The test's virtual host: `/` in a container, a fresh one on the local
    /// broker (pass it to [`TestBroker::rabbitmqctl`] as `-p VHOST`).
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// `true` for a container of `HLJS_TEST_BROKER_IMAGE`, `false` for the
    /// broker at `AMQP_URL`.
    pub fn is_container(&self) -> bool {
        matches!(self.backend, Backend::Container { .. })
    }

    /// The broker's RabbitMQ version (`rabbitmqctl status`), such as `4.3.6`.
    pub fn version(&self) -> String {
        self.version.clone()
    }

    /// Whether the broker is RabbitMQ 4 or later, whose quorum queues count
    /// deliveries differently from 3.x.
    pub fn is_4x(&self) -> bool {
        self.version
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok())
            .is_some_and(|major| major >= 4)
    }

    /// Takes the whole broker away: `docker stop` of the container (its
    /// ports, node name and data are kept for [`TestBroker::start_again`]),
    /// or `rabbitmqctl stop_app` on the local broker (every virtual host's
    /// connections close). Returns once it no longer serves AMQP.
    pub async fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        match &self.backend {
            Backend::Container {
                container, image, ..
            } => container
                .stop_with_timeout(Some(STOP_TIMEOUT_SECS))
                .await
                .unwrap_or_else(|e| panic!("docker stop of the {image} broker failed: {e}")),
            Backend::Local { .. } => {
                crate::rabbitmqctl(&["-q", "stop_app"]);
            }
        }
    }

    /// Brings the broker back after [`TestBroker::stop`] and waits (bounded)
    /// until its virtual host accepts AMQP connections again.
    pub async fn start_again(&self) {
        match &self.backend {
            Backend::Container {
                container, image, ..
            } => container
                .start()
                .await
                .unwrap_or_else(|e| panic!("docker start of the {image} broker failed: {e}")),
            Backend::Local { .. } => {
                crate::rabbitmqctl(&["-q", "start_app"]);
            }
        }
        self.stopped.store(false, Ordering::SeqCst);
        let started = Instant::now();
        loop {
            let attempt = tokio::time::timeout(
                Duration::from_secs(10),
                Connection::connect(&self.url, ConnectionProperties::default()),
            )
            .await;
            if let Ok(Ok(connection)) = attempt {
                let _ = connection.close(200, "OK".into()).await;
                return;
            }
            assert!(
                started.elapsed() < RESTART_TIMEOUT,
                "the broker did not serve AMQP at {} within {RESTART_TIMEOUT:?} after start_again",
                self.url
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Runs `rabbitmqctl ARGS` against this broker and returns its standard
    /// output; panics with its output on failure. In a container: `docker
    /// exec` (the node name and ports are in the container's environment). On
    /// the local broker: the local `rabbitmqctl`; commands about the test's
    /// virtual host need `-p` and [`TestBroker::vhost`] from the caller.
    pub fn rabbitmqctl(&self, args: &[&str]) -> String {
        match &self.backend {
            Backend::Container {
                container, node, ..
            } => {
                let out = Command::new("docker")
                    .args(["exec", container.id(), "rabbitmqctl"])
                    .args(args)
                    .output()
                    .unwrap_or_else(|e| {
                        panic!("cannot run docker (bash scripts/docker.sh installs it): {e}")
                    });
                assert!(
                    out.status.success(),
                    "rabbitmqctl {args:?} in the container of {node} failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
            Backend::Local { .. } => crate::rabbitmqctl(args),
        }
    }

    fn status_version(&self) -> String {
        let out = self.rabbitmqctl(&["-q", "status", "--formatter", "json"]);
        let status: Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("rabbitmqctl status gave no JSON ({e}): {out}"));
        status["rabbitmq_version"]
            .as_str()
            .unwrap_or_else(|| panic!("rabbitmqctl status has no rabbitmq_version: {out}"))
            .to_string()
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        // A local broker is shared with the next tests: never leave it stopped.
        if self.stopped.load(Ordering::SeqCst) && matches!(self.backend, Backend::Local { .. }) {
            let _ = Command::new("rabbitmqctl")
                .args(["-q", "start_app"])
                .output();
        }
    }
}

/// `name:tag` → (name, tag); `latest` without a tag (a `:` in a registry host is no tag).
pub(crate) fn split_image(image: &str) -> (String, String) {
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name.into(), tag.into()),
        _ => (image.into(), "latest".into()),
    }
}
