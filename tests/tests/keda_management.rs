//! What KEDA's rabbitmq scaler sees of a backlog the workers are busy with
//! (charts/README.md, "Autoscaling with KEDA").
//!
//! A broker container of `HLJS_TEST_BROKER_IMAGE` (default `rabbitmq:4.3`)
//! with the management plugin on a port of its own. A quorum queue gets a
//! known backlog, and a consumer with prefetch holds part of it unacked, as a
//! worker's prefetch does. Then:
//!
//! - over AMQP (KEDA's `protocol: amqp`, a passive `queue.declare`) only the
//!   ready messages count;
//! - the management API's `GET /api/queues/VHOST/QUEUE` (KEDA's `protocol:
//!   http`) reports `messages` = the whole backlog, in flight included, which
//!   KEDA uses with `excludeUnacknowledged: "false"`, its default; and
//!   `messages_ready` = what `excludeUnacknowledged: "true"` uses.
//!
//! See <https://keda.sh/docs/2.16/scalers/rabbitmq-queue/>.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hyperlight_js_e2e::unique;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use serde_json::Value;
use testcontainers::core::WaitFor;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

/// Messages published to the queue.
const BACKLOG: u64 = 30;
/// Messages a consumer holds unacked (its prefetch), like a busy worker.
const IN_FLIGHT: u64 = 8;
/// The management API's statistics are refreshed every 5 s by default.
const STATS_WAIT: Duration = Duration::from_secs(90);

/// `N` ports from the tests' allocator (outside the kernel's ephemeral range).
fn free_ports<const N: usize>() -> [u16; N] {
    hyperlight_js_e2e::ports::free_ports(N).try_into().unwrap()
}

struct Broker {
    container: ContainerAsync<GenericImage>,
    amqp_url: String,
    management: u16,
}

async fn broker_with_management() -> Broker {
    let image = std::env::var("HLJS_TEST_BROKER_IMAGE")
        .ok()
        .filter(|i| !i.trim().is_empty())
        .unwrap_or_else(|| "rabbitmq:4.3".into());
    let (name, tag) = image.rsplit_once(':').unwrap_or((image.as_str(), "latest"));
    let [amqp, epmd, dist, management] = free_ports::<4>();
    let node = format!("{}@localhost", unique("keda"));
    let container = GenericImage::new(name, tag)
        .with_wait_for(WaitFor::message_on_stdout("Server startup complete"))
        .with_network("host")
        .with_env_var("RABBITMQ_NODE_PORT", amqp.to_string())
        .with_env_var("ERL_EPMD_PORT", epmd.to_string())
        .with_env_var("RABBITMQ_DIST_PORT", dist.to_string())
        .with_env_var("RABBITMQ_NODENAME", node.as_str())
        .with_env_var("RABBITMQ_LOGS", "-")
        // The management listener on a port of its own (brokers share the host network).
        .with_env_var(
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
            format!(
                "+sbwt none +sbwtdcpu none +sbwtdio none -rabbitmq_management tcp_config [{{port,{management}}}]"
            ),
        )
        .with_startup_timeout(Duration::from_secs(180))
        .start()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot start a broker container of {image}: {e}\n\
                 `bash scripts/docker.sh` starts Docker, `bash scripts/broker-images.sh` builds the images"
            )
        });
    let out = Command::new("docker")
        .args(["exec", container.id(), "rabbitmq-plugins", "enable"])
        .arg("rabbitmq_management")
        .output()
        .expect("docker exec rabbitmq-plugins");
    assert!(
        out.status.success(),
        "rabbitmq-plugins enable rabbitmq_management: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Broker {
        container,
        amqp_url: format!("amqp://guest:guest@127.0.0.1:{amqp}/%2f"),
        management,
    }
}

/// `GET path` on the management API as guest; the status code and the JSON body.
fn management_get(port: u16, path: &str) -> Option<(u16, Value)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    // guest:guest
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nAccept: application/json\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_management_api_counts_the_backlog_with_messages_in_flight() {
    let broker = broker_with_management().await;
    let queue = unique("keda.backlog");
    let connection = Connection::connect(&broker.amqp_url, ConnectionProperties::default())
        .await
        .unwrap();

    // A durable quorum queue, as the worker declares for each key.
    let channel = connection.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".to_string().into()),
    );
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for i in 0..BACKLOG {
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                format!("{{\"n\":{i}}}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(matches!(confirm, Confirmation::Ack(None)), "{confirm:?}");
    }

    // A busy worker: prefetch IN_FLIGHT, nothing acked.
    let busy = connection.create_channel().await.unwrap();
    busy.basic_qos(IN_FLIGHT as u16, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = busy
        .basic_consume(
            queue.as_str().into(),
            "busy-worker".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..IN_FLIGHT {
        tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .expect("a delivery within 20 s")
            .expect("the consumer is open")
            .unwrap();
    }

    // protocol: amqp — what KEDA's AMQP path reads (a passive declare): ready messages only.
    let started = Instant::now();
    let ready_over_amqp = loop {
        let n = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count();
        if u64::from(n) == BACKLOG - IN_FLIGHT || started.elapsed() > Duration::from_secs(20) {
            break u64::from(n);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        ready_over_amqp,
        BACKLOG - IN_FLIGHT,
        "over AMQP the messages in flight do not count"
    );

    // protocol: http — the management API, once its statistics caught up.
    let path = format!("/api/queues/%2F/{queue}");
    let started = Instant::now();
    let stats = loop {
        let got = tokio::task::spawn_blocking({
            let path = path.clone();
            let port = broker.management;
            move || management_get(port, &path)
        })
        .await
        .unwrap();
        if let Some((200, q)) = &got
            && q["messages"].as_u64() == Some(BACKLOG)
            && q["messages_unacknowledged"].as_u64() == Some(IN_FLIGHT)
        {
            break q.clone();
        }
        assert!(
            started.elapsed() < STATS_WAIT,
            "the management API on 127.0.0.1:{} did not report {BACKLOG} messages with {IN_FLIGHT} unacknowledged within {STATS_WAIT:?}: {got:?}",
            broker.management
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // excludeUnacknowledged "false" (KEDA's default over http): the whole backlog.
    assert_eq!(stats["messages"].as_u64(), Some(BACKLOG), "{stats}");
    // excludeUnacknowledged "true": ready messages only, the same as over AMQP.
    assert_eq!(
        stats["messages_ready"].as_u64(),
        Some(BACKLOG - IN_FLIGHT),
        "{stats}"
    );
    assert_eq!(
        stats["messages_unacknowledged"].as_u64(),
        Some(IN_FLIGHT),
        "{stats}"
    );
    let _ = connection.close(200, "OK".into()).await;
    drop(broker.container);
}
