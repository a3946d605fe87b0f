//! A RabbitMQ cluster of one test: several nodes, each its own container of a
//! 4.x image on the host network, joined into one cluster; and a publisher
//! that keeps publishing through the nodes that are left.
//!
//! Every node has its own node name, AMQP port and distribution port. They
//! share one Erlang cookie and one epmd: Erlang nodes find each other through
//! the epmd on the port they are told, so nodes with an epmd each could not
//! see one another. The epmd runs in a container of its own, so stopping any
//! node (and the epmd its container would otherwise have started) leaves the
//! others registered and reachable, and a stopped node finds them again when
//! it comes back.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use serde_json::Value;
use testcontainers::core::WaitFor;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use crate::broker::{BROKER_IMAGE_ENV, split_image};
use crate::ports::free_ports;
use crate::{run_within, unique};

/// The image of a cluster when `HLJS_TEST_BROKER_IMAGE` names none of 4.x.
pub const DEFAULT_CLUSTER_IMAGE: &str = "rabbitmq:4.3";

/// How long the nodes may take to boot and join (three boot at once on two cores).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(180);

/// How long a stopped node may take to serve AMQP and rejoin.
const RESTART_TIMEOUT: Duration = Duration::from_secs(120);

/// How long one `rabbitmqctl` (or `rabbitmq-queues`) may run.
const TOOL_TIMEOUT: Duration = Duration::from_secs(90);

/// Seconds `docker stop` waits for a node's own shutdown before SIGKILL.
const STOP_TIMEOUT_SECS: i32 = 60;

/// A RabbitMQ cluster of [`TestCluster::start`]; its containers are removed
/// when it is dropped.
pub struct TestCluster {
    nodes: Vec<ClusterNode>,
    image: String,
    version: String,
    // Last: dropped after the nodes that registered with it.
    _epmd: ContainerAsync<GenericImage>,
}

/// One node of a [`TestCluster`].
pub struct ClusterNode {
    /// Its Erlang node name (`rabbit-<unique>-<n>@localhost`).
    pub name: String,
    /// The AMQP URL of its default virtual host.
    pub url: String,
    /// Its AMQP port on 127.0.0.1.
    pub amqp_port: u16,
    stopped: AtomicBool,
    container: ContainerAsync<GenericImage>,
}

impl TestCluster {
    /// A cluster of `size` nodes for a test whose names start with `prefix`:
    /// every node booted and joined to the first, all of them running.
    ///
    /// The image is `HLJS_TEST_BROKER_IMAGE` when its tag names a major
    /// version of 4 or more (or is no version, like `latest`), else
    /// [`DEFAULT_CLUSTER_IMAGE`]; panics when Docker or the image is missing
    /// or the broker turns out older than 4.
    pub async fn start(prefix: &str, size: usize) -> TestCluster {
        let image = cluster_image();
        let (name, tag) = split_image(&image);
        let started = Instant::now();
        let base = unique(prefix);
        // 0: epmd, then AMQP and distribution for each node.
        let ports = free_ports(1 + 2 * size);
        let epmd_port = ports[0];
        let cookie = uuid::Uuid::new_v4().simple().to_string();
        let epmd = GenericImage::new(name.clone(), tag.clone())
            .with_entrypoint("epmd")
            .with_network("host")
            .with_cmd(["-port".to_string(), epmd_port.to_string()])
            .start()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the epmd container of {image}: {e}\n{}",
                    help()
                )
            });
        wait_for_port(epmd_port, Duration::from_secs(30), "epmd").await;

        let boots = (0..size).map(|i| {
            let node = format!("rabbit-{base}-{}@localhost", i + 1);
            let (amqp, dist) = (ports[1 + 2 * i], ports[2 + 2 * i]);
            // The same cookie in every container, for the nodes and the CLI run by `docker exec`.
            let script = format!(
                "printf %s {cookie} > /root/.erlang.cookie && chmod 400 /root/.erlang.cookie && exec rabbitmq-server"
            );
            let request = GenericImage::new(name.clone(), tag.clone())
                .with_wait_for(WaitFor::message_on_stdout("Server startup complete"))
                .with_entrypoint("/bin/sh")
                .with_network("host")
                .with_cmd(["-c".to_string(), script])
                .with_env_var("HOME", "/root")
                .with_env_var("RABBITMQ_NODE_PORT", amqp.to_string())
                .with_env_var("ERL_EPMD_PORT", epmd_port.to_string())
                .with_env_var("RABBITMQ_DIST_PORT", dist.to_string())
                .with_env_var("RABBITMQ_NODENAME", node.as_str())
                .with_env_var("RABBITMQ_LOGS", "-")
                // Idle schedulers sleep instead of spinning: three nodes share two cores.
                .with_env_var(
                    "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                    "+sbwt none +sbwtdcpu none +sbwtdio none",
                )
                .with_startup_timeout(STARTUP_TIMEOUT);
            let image = image.clone();
            async move {
                let container = request.start().await.unwrap_or_else(|e| {
                    panic!("cannot start cluster node {node} of {image}: {e}\n{}", help())
                });
                ClusterNode {
                    url: format!("amqp://guest:guest@127.0.0.1:{amqp}/%2f"),
                    name: node,
                    amqp_port: amqp,
                    stopped: AtomicBool::new(false),
                    container,
                }
            }
        });
        let nodes = join_all(boots).await;
        let mut cluster = TestCluster {
            nodes,
            image: image.clone(),
            version: String::new(),
            _epmd: epmd,
        };
        let status: Value = serde_json::from_str(
            cluster
                .rabbitmqctl(0, &["-q", "status", "--formatter", "json"])
                .trim(),
        )
        .expect("rabbitmqctl status gives JSON");
        cluster.version = status["rabbitmq_version"].as_str().unwrap_or("").into();
        let major = cluster
            .version
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok());
        assert!(
            major.is_some_and(|m| m >= 4),
            "a cluster needs RabbitMQ 4.x, {image} is {:?}: set {BROKER_IMAGE_ENV}=rabbitmq:4.3",
            cluster.version
        );
        // One join at a time: each changes the cluster's membership.
        let first = cluster.nodes[0].name.clone();
        for i in 1..size {
            cluster.rabbitmqctl(i, &["-q", "stop_app"]);
            cluster.rabbitmqctl(i, &["-q", "join_cluster", &first]);
            cluster.rabbitmqctl(i, &["-q", "start_app"]);
        }
        let running = cluster.running_nodes(0);
        assert_eq!(
            running.len(),
            size,
            "after join_cluster the cluster runs {running:?}"
        );
        eprintln!(
            "cluster of {size} RabbitMQ {} nodes ({image}, epmd on 127.0.0.1:{epmd_port}, AMQP on {:?}) ready in {:?}",
            cluster.version,
            cluster
                .nodes
                .iter()
                .map(|n| n.amqp_port)
                .collect::<Vec<_>>(),
            started.elapsed()
        );
        cluster
    }

    /// Its nodes, in the order of [`TestCluster::urls`].
    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// Every node's AMQP URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url.clone()).collect()
    }

    /// The image of its nodes.
    pub fn image(&self) -> &str {
        &self.image
    }

    /// The RabbitMQ version of its nodes, such as `4.3.6`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The index of the node called `name`.
    pub fn index_of(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("{name} is not a node of this cluster"))
    }

    /// The index of the node serving AMQP on `port`.
    pub fn index_of_port(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.amqp_port == port)
            .unwrap_or_else(|| panic!("no node of this cluster serves AMQP on port {port}"))
    }

    /// The index of a node that has not been stopped.
    pub fn live_node(&self) -> usize {
        self.nodes
            .iter()
            .position(|n| !n.stopped.load(Ordering::SeqCst))
            .expect("every node of the cluster is stopped")
    }

    /// Runs `rabbitmqctl ARGS` on node `i` (`docker exec`; its node name,
    /// epmd port and cookie are the container's) and returns its standard
    /// output; panics with its output on failure.
    pub fn rabbitmqctl(&self, i: usize, args: &[&str]) -> String {
        self.tool(i, "rabbitmqctl", args)
    }

    /// Runs `rabbitmq-queues ARGS` on node `i`, like [`TestCluster::rabbitmqctl`].
    pub fn rabbitmq_queues(&self, i: usize, args: &[&str]) -> String {
        self.tool(i, "rabbitmq-queues", args)
    }

    fn tool(&self, i: usize, tool: &str, args: &[&str]) -> String {
        let node = &self.nodes[i];
        let mut cmd = Command::new("docker");
        cmd.args(["exec", node.container.id(), tool]).args(args);
        let out = run_within(cmd, TOOL_TIMEOUT);
        assert!(
            out.status.success(),
            "{tool} {args:?} on {} failed: {}{}",
            node.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The running nodes of the cluster as node `i` sees them.
    pub fn running_nodes(&self, i: usize) -> Vec<String> {
        let status = json(&self.rabbitmqctl(i, &["-q", "cluster_status", "--formatter", "json"]));
        status["running_nodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `queue`'s placement (asked on a live node): its leader, its members
    /// and the members that are online.
    pub fn queue_placement(&self, queue: &str) -> QueuePlacement {
        let out = self.rabbitmqctl(
            self.live_node(),
            &[
                "-q",
                "list_queues",
                "name",
                "type",
                "leader",
                "members",
                "online",
                "--formatter",
                "json",
            ],
        );
        let rows = json(&out);
        let row = rows
            .as_array()
            .and_then(|r| r.iter().find(|q| q["name"] == queue))
            .unwrap_or_else(|| panic!("list_queues has no queue {queue}: {out}"));
        let names = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|n| n.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        QueuePlacement {
            kind: row["type"].as_str().unwrap_or("").into(),
            leader: row["leader"].as_str().unwrap_or("").into(),
            members: names(&row["members"]),
            online: names(&row["online"]),
        }
    }

    /// The node indices of the AMQP connections whose client named itself
    /// `connection_name` (a cluster-wide `list_connections` on a live node;
    /// each connection's server port tells its node).
    pub fn connection_nodes(&self, connection_name: &str) -> Vec<usize> {
        let out = self.rabbitmqctl(
            self.live_node(),
            &[
                "-q",
                "list_connections",
                "port",
                "client_properties",
                "--formatter",
                "json",
            ],
        );
        let rows = json(&out);
        rows.as_array()
            .map(|rows| {
                rows.iter()
                    .filter(|c| c["client_properties"].to_string().contains(connection_name))
                    .filter_map(|c| c["port"].as_u64())
                    .map(|p| self.index_of_port(p as u16))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Stops node `i` (`docker stop`: SIGTERM, the node's own orderly
    /// shutdown); its data, name and ports stay for [`TestCluster::start_again`].
    pub async fn stop(&self, i: usize) {
        let node = &self.nodes[i];
        node.stopped.store(true, Ordering::SeqCst);
        node.container
            .stop_with_timeout(Some(STOP_TIMEOUT_SECS))
            .await
            .unwrap_or_else(|e| panic!("docker stop of {} failed: {e}", node.name));
    }

    /// Starts node `i` again after [`TestCluster::stop`] and waits (bounded)
    /// until it has booted, serves AMQP and runs in the cluster again.
    pub async fn start_again(&self, i: usize) {
        let node = &self.nodes[i];
        node.container
            .start()
            .await
            .unwrap_or_else(|e| panic!("docker start of {} failed: {e}", node.name));
        let started = Instant::now();
        loop {
            let attempt = tokio::time::timeout(
                Duration::from_secs(10),
                Connection::connect(&node.url, ConnectionProperties::default()),
            )
            .await;
            if let Ok(Ok(connection)) = attempt {
                let _ = connection.close(200, "OK".into()).await;
                break;
            }
            assert!(
                started.elapsed() < RESTART_TIMEOUT,
                "{} did not serve AMQP within {RESTART_TIMEOUT:?} after docker start",
                node.name
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        node.stopped.store(false, Ordering::SeqCst);
        self.rabbitmqctl(i, &["-q", "await_startup", "--timeout", "60"]);
        let running = self.running_nodes(i);
        assert!(
            running.contains(&node.name),
            "{} is back but not running in the cluster: {running:?}",
            node.name
        );
    }
}

/// Where a quorum queue lives, from `list_queues`.
#[derive(Clone, Debug)]
pub struct QueuePlacement {
    /// `quorum`, `classic` or `stream`.
    pub kind: String,
    /// The node of its leader.
    pub leader: String,
    /// The nodes holding a replica.
    pub members: Vec<String>,
    /// The members that are online.
    pub online: Vec<String>,
}

fn cluster_image() -> String {
    match std::env::var(BROKER_IMAGE_ENV) {
        Ok(image) if !image.trim().is_empty() => {
            let image = image.trim().to_string();
            let (_, tag) = split_image(&image);
            let major = tag
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|m| m.parse::<u32>().ok());
            match major {
                Some(m) if m < 4 => {
                    eprintln!(
                        "{BROKER_IMAGE_ENV}={image} is older than 4.x: the cluster uses {DEFAULT_CLUSTER_IMAGE}"
                    );
                    DEFAULT_CLUSTER_IMAGE.into()
                }
                _ => image,
            }
        }
        _ => DEFAULT_CLUSTER_IMAGE.into(),
    }
}

fn help() -> &'static str {
    "Is Docker running? `bash scripts/docker.sh` installs and starts it. Without an image \
     registry, `bash scripts/broker-images.sh` builds rabbitmq:4.3 locally."
}

fn json(out: &str) -> Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

async fn wait_for_port(port: u16, timeout: Duration, what: &str) {
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < timeout,
            "{what} did not listen on 127.0.0.1:{port} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A publisher with confirms over a cluster: when its node goes away it
/// connects to the next of the nodes' URLs and publishes again every message
/// the broker had not confirmed (so those may arrive twice; each is recorded
/// in [`FailoverPublisher::republished`]).
pub struct FailoverPublisher {
    urls: Vec<String>,
    next: usize,
    session: Option<(Connection, Channel)>,
    /// Sessions opened after the first.
    pub reconnects: usize,
    /// Ids of messages published more than once.
    pub republished: BTreeSet<String>,
}

/// How long one confirm may take (a quorum queue elects a leader first).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the publisher may go without any node accepting a connection.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(60);

impl FailoverPublisher {
    /// A publisher over `urls`, connected to the first that answers.
    pub async fn connect(urls: Vec<String>) -> FailoverPublisher {
        let mut publisher = FailoverPublisher {
            urls,
            next: 0,
            session: None,
            reconnects: 0,
            republished: BTreeSet::new(),
        };
        publisher.ensure_session().await;
        publisher
    }

    /// The index (into the URLs) of the node it publishes through now.
    pub fn current(&self) -> usize {
        self.next % self.urls.len()
    }

    async fn ensure_session(&mut self) {
        if self
            .session
            .as_ref()
            .is_some_and(|(c, ch)| c.status().connected() && ch.status().connected())
        {
            return;
        }
        if self.session.take().is_some() {
            self.next += 1;
            self.reconnects += 1;
        }
        let started = Instant::now();
        loop {
            let url = &self.urls[self.next % self.urls.len()];
            let attempt = tokio::time::timeout(Duration::from_secs(10), async {
                let connection = Connection::connect(url, ConnectionProperties::default()).await?;
                let channel = connection.create_channel().await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                Ok::<_, lapin::Error>((connection, channel))
            })
            .await;
            if let Ok(Ok(session)) = attempt {
                self.session = Some(session);
                return;
            }
            assert!(
                started.elapsed() < RECONNECT_TIMEOUT,
                "the publisher reached none of {} nodes within {RECONNECT_TIMEOUT:?}",
                self.urls.len()
            );
            self.next += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Publishes each `(message_id, body)` persistently and mandatory to
    /// `exchange` with `key`, `reply_to` set, and returns once the broker
    /// has confirmed every one; a lost connection moves it to the next node
    /// and the unconfirmed ones are published again there.
    pub async fn publish_all(
        &mut self,
        exchange: &str,
        key: &str,
        reply_to: &str,
        batch: &[(String, Vec<u8>)],
    ) {
        let mut pending: Vec<&(String, Vec<u8>)> = batch.iter().collect();
        let mut round = 0;
        while !pending.is_empty() {
            round += 1;
            assert!(
                round <= 20,
                "{} messages still unconfirmed after 20 rounds",
                pending.len()
            );
            if round > 1 {
                self.republished
                    .extend(pending.iter().map(|(id, _)| id.clone()));
            }
            self.ensure_session().await;
            let channel = self
                .session
                .as_ref()
                .map(|(_, ch)| ch.clone())
                .expect("a session");
            let mut confirms = Vec::new();
            for (id, body) in &pending {
                let props = BasicProperties::default()
                    .with_message_id(id.as_str().into())
                    .with_correlation_id(id.as_str().into())
                    .with_reply_to(reply_to.into())
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into());
                let sent = channel
                    .basic_publish(
                        exchange.into(),
                        key.into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        body,
                        props,
                    )
                    .await;
                confirms.push(sent.ok());
            }
            let mut unconfirmed = Vec::new();
            let mut lost = false;
            for (msg, confirm) in pending.iter().zip(confirms) {
                let ok = match confirm {
                    Some(c) => matches!(
                        tokio::time::timeout(CONFIRM_TIMEOUT, c).await,
                        Ok(Ok(Confirmation::Ack(None)))
                    ),
                    None => false,
                };
                if !ok {
                    unconfirmed.push(*msg);
                    lost = true;
                }
            }
            if lost {
                // A nack or a confirm that never came: start over on a fresh session.
                if let Some((connection, _)) = self.session.take() {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        connection.close(200, "OK".into()),
                    )
                    .await;
                    self.next += 1;
                    self.reconnects += 1;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            pending = unconfirmed;
        }
    }

    /// Closes its connection.
    pub async fn close(mut self) {
        if let Some((connection, _)) = self.session.take() {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), connection.close(200, "OK".into()))
                    .await;
        }
    }
}
