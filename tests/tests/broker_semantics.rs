//! RabbitMQ's documented behaviour that the worker relies on, checked with
//! plain lapin on whichever broker [`TestBroker`] gives (the local one, or a
//! container of `HLJS_TEST_BROKER_IMAGE`), per version where 3.x and 4.x
//! differ:
//!
//! - quorum queues: the `x-delivery-count` and `x-acquired-count` headers on
//!   the first delivery and after `basic.nack(requeue)`, `basic.reject(requeue)`
//!   and a channel closed with the message unacked. On 4.x a nack is "not
//!   processed" and does not count towards `x-delivery-count` (nor the delivery
//!   limit), a reject and a channel close do, and `x-acquired-count` counts
//!   every acquisition; 3.x counts every return in `x-delivery-count` and has
//!   no `x-acquired-count`;
//! - a message returned past `x-delivery-limit` is dead-lettered;
//! - a delay queue (a quorum queue with `x-message-ttl` whose dead letters go,
//!   at least once, to a target queue) moves a message after the TTL, not
//!   before.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hyperlight_js_e2e::{TestBroker, unique};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer};

/// The longest wait for one delivery.
const DELIVERY: Duration = Duration::from_secs(20);

async fn connect(broker: &TestBroker) -> Connection {
    Connection::connect(broker.url(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", broker.url()))
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.to_string().into())
}

/// Declares a durable quorum queue with more `args`.
async fn quorum_queue(channel: &Channel, name: &str, args: &[(&str, AMQPValue)]) {
    let mut table = FieldTable::default();
    table.insert("x-queue-type".into(), text("quorum"));
    for (k, v) in args {
        table.insert((*k).into(), v.clone());
    }
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            table,
        )
        .await
        .unwrap_or_else(|e| panic!("declare the quorum queue {name}: {e}"));
}

/// Publishes a persistent message to `queue` through the default exchange and waits for the confirm.
async fn publish(connection: &Connection, queue: &str, body: &[u8]) {
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        matches!(confirm, Confirmation::Ack(None)),
        "publishing to {queue} was not accepted: {confirm:?}"
    );
    let _ = channel.close(200, "OK".into()).await;
}

/// A channel with prefetch 1 (per consumer: 4.x refuses global QoS) consuming `queue`.
async fn consumer(connection: &Connection, queue: &str) -> (Channel, Consumer) {
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap();
    let consumer = channel
        .basic_consume(
            queue.into(),
            unique("sem").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    (channel, consumer)
}

/// The next delivery, or `None` when nothing comes within `wait`.
async fn next_within(consumer: &mut Consumer, wait: Duration) -> Option<Delivery> {
    match tokio::time::timeout(wait, consumer.next()).await {
        Ok(Some(Ok(d))) => Some(d),
        Ok(Some(Err(e))) => panic!("consumer error: {e}"),
        Ok(None) => panic!("the consumer ended"),
        Err(_) => None,
    }
}

async fn next(consumer: &mut Consumer, what: &str) -> Delivery {
    next_within(consumer, DELIVERY)
        .await
        .unwrap_or_else(|| panic!("no delivery within {DELIVERY:?}: {what}"))
}

/// An integer header (RabbitMQ sends them as long or long long ints).
fn int_header(d: &Delivery, name: &str) -> Option<i64> {
    let value = d.properties.headers().as_ref()?.inner().get(name)?.clone();
    Some(match value {
        AMQPValue::ShortShortInt(v) => v.into(),
        AMQPValue::ShortShortUInt(v) => v.into(),
        AMQPValue::ShortInt(v) => v.into(),
        AMQPValue::ShortUInt(v) => v.into(),
        AMQPValue::LongInt(v) => v.into(),
        AMQPValue::LongUInt(v) => v.into(),
        AMQPValue::LongLongInt(v) => v,
        other => panic!("header {name} is not an integer: {other:?}"),
    })
}

fn text_header(d: &Delivery, name: &str) -> Option<String> {
    match d.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        other => panic!("header {name} is not text: {other:?}"),
    }
}

/// (`x-delivery-count`, `x-acquired-count`) of a delivery.
fn counts(d: &Delivery) -> (Option<i64>, Option<i64>) {
    (
        int_header(d, "x-delivery-count"),
        int_header(d, "x-acquired-count"),
    )
}

fn show(c: (Option<i64>, Option<i64>)) -> String {
    let f = |v: Option<i64>| v.map_or_else(|| "absent".to_string(), |n| n.to_string());
    format!("x-delivery-count {}, x-acquired-count {}", f(c.0), f(c.1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queue_delivery_headers_after_nack_reject_and_channel_close() {
    let broker = TestBroker::start("sem-headers").await;
    let connection = connect(&broker).await;
    let setup = connection.create_channel().await.unwrap();
    let queue = unique("sem.headers");
    quorum_queue(
        &setup,
        &queue,
        &[("x-delivery-limit", AMQPValue::LongInt(10))],
    )
    .await;
    publish(&connection, &queue, b"m").await;

    let (first_channel, mut first) = consumer(&connection, &queue).await;
    let d1 = next(&mut first, "the first delivery").await;
    let c1 = counts(&d1);
    d1.nack(BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    })
    .await
    .unwrap();
    let d2 = next(&mut first, "the delivery after basic.nack(requeue)").await;
    let c2 = counts(&d2);
    d2.reject(BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    let d3 = next(&mut first, "the delivery after basic.reject(requeue)").await;
    let c3 = counts(&d3);
    // Left unacked: closing the channel returns it to the queue.
    first_channel.close(200, "OK".into()).await.unwrap();
    let (_second_channel, mut second) = consumer(&connection, &queue).await;
    let d4 = next(&mut second, "the delivery after the channel closed").await;
    let c4 = counts(&d4);
    d4.ack(BasicAckOptions::default()).await.unwrap();

    eprintln!("RabbitMQ {} quorum queue headers:", broker.version());
    eprintln!("  first delivery:        {}", show(c1));
    eprintln!("  after nack(requeue):   {}", show(c2));
    eprintln!("  after reject(requeue): {}", show(c3));
    eprintln!("  after channel close:   {}", show(c4));
    assert!(!d1.redelivered, "the first delivery is not a redelivery");
    assert!(d2.redelivered && d3.redelivered && d4.redelivered);
    if broker.is_4x() {
        // 4.x: x-delivery-count counts failed deliveries (reject, channel close), not nacks;
        // x-acquired-count counts every earlier acquisition.
        assert_eq!(c1, (None, None), "4.x first delivery");
        assert_eq!(c2, (None, Some(1)), "4.x after nack: not a failure");
        assert_eq!(c3, (Some(1), Some(2)), "4.x after reject: a failure");
        assert_eq!(c4, (Some(2), Some(3)), "4.x after channel close: a failure");
    } else {
        // 3.x: every return counts; no x-acquired-count.
        assert_eq!(c1, (None, None), "3.x first delivery");
        assert_eq!(c2, (Some(1), None), "3.x after nack");
        assert_eq!(c3, (Some(2), None), "3.x after reject");
        assert_eq!(c4, (Some(3), None), "3.x after channel close");
    }
}

/// Returns the message of `queue` with `ret` until it stops coming back
/// (at most `max` deliveries); the number of deliveries seen.
async fn deliveries_until_gone(
    connection: &Connection,
    queue: &str,
    max: usize,
    ret: impl Fn(&Delivery) -> bool,
) -> usize {
    let (channel, mut consumer) = consumer(connection, queue).await;
    let mut seen = 0;
    // After the last return the message is dead-lettered; nothing more comes.
    while seen < max {
        let wait = if seen == 0 {
            DELIVERY
        } else {
            Duration::from_secs(3)
        };
        let Some(d) = next_within(&mut consumer, wait).await else {
            break;
        };
        seen += 1;
        if ret(&d) {
            d.reject(BasicRejectOptions { requeue: true })
                .await
                .unwrap();
        } else {
            d.nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .unwrap();
        }
    }
    let _ = channel.close(200, "OK".into()).await;
    seen
}

async fn dead_lettered(connection: &Connection, dlq: &str) -> Option<Delivery> {
    let (channel, mut consumer) = consumer(connection, dlq).await;
    let d = next_within(&mut consumer, Duration::from_secs(10)).await;
    if let Some(d) = &d {
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    let _ = channel.close(200, "OK".into()).await;
    d
}

/// A quorum queue with `x-delivery-limit = limit` whose dead letters go to a fresh queue.
async fn limited_queue(connection: &Connection, prefix: &str, limit: i32) -> (String, String) {
    let channel = connection.create_channel().await.unwrap();
    let queue = unique(prefix);
    let dlq = format!("{queue}.dead");
    quorum_queue(&channel, &dlq, &[]).await;
    quorum_queue(
        &channel,
        &queue,
        &[
            ("x-delivery-limit", AMQPValue::LongInt(limit)),
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text(&dlq)),
        ],
    )
    .await;
    (queue, dlq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_rejected_past_the_delivery_limit_is_dead_lettered() {
    let broker = TestBroker::start("sem-limit").await;
    let connection = connect(&broker).await;
    let limit = 2;
    let (queue, dlq) = limited_queue(&connection, "sem.limit", limit).await;
    publish(&connection, &queue, b"poison").await;
    let seen = deliveries_until_gone(&connection, &queue, 10, |_| true).await;
    assert_eq!(
        seen,
        limit as usize + 1,
        "delivered once, returned {limit} times, then dead-lettered on the next return (RabbitMQ {})",
        broker.version()
    );
    let dead = dead_lettered(&connection, &dlq)
        .await
        .unwrap_or_else(|| panic!("nothing reached {dlq}"));
    assert_eq!(dead.data, b"poison");
    let reason = text_header(&dead, "x-first-death-reason");
    eprintln!(
        "RabbitMQ {}: dead-lettered after {seen} deliveries, x-first-death-reason {reason:?}",
        broker.version()
    );
    assert_eq!(reason.as_deref(), Some("delivery_limit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacks_count_towards_the_delivery_limit_on_3x_only() {
    let broker = TestBroker::start("sem-nack").await;
    let connection = connect(&broker).await;
    let limit = 2;
    let (queue, dlq) = limited_queue(&connection, "sem.nack", limit).await;
    publish(&connection, &queue, b"nacked").await;
    let max = limit as usize + 4;
    let seen = deliveries_until_gone(&connection, &queue, max, |_| false).await;
    eprintln!(
        "RabbitMQ {}: {seen} deliveries answered with nack(requeue) (limit {limit}, at most {max} tried)",
        broker.version()
    );
    if broker.is_4x() {
        assert_eq!(seen, max, "4.x: nacks never reach the delivery limit");
        let (channel, mut consumer) = consumer(&connection, &queue).await;
        let d = next(&mut consumer, "the nacked message, still in its queue").await;
        d.ack(BasicAckOptions::default()).await.unwrap();
        let _ = channel.close(200, "OK".into()).await;
        assert!(dead_lettered(&connection, &dlq).await.is_none());
    } else {
        assert_eq!(seen, limit as usize + 1, "3.x: a nack counts like a reject");
        assert!(dead_lettered(&connection, &dlq).await.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_queue_moves_a_message_to_its_target_after_the_ttl_not_before() {
    let broker = TestBroker::start("sem-delay").await;
    let connection = connect(&broker).await;
    let channel = connection.create_channel().await.unwrap();
    let target = unique("sem.target");
    let delay = format!("{target}.delay");
    let ttl = Duration::from_millis(2000);
    quorum_queue(&channel, &target, &[]).await;
    quorum_queue(
        &channel,
        &delay,
        &[
            ("x-message-ttl", AMQPValue::LongInt(ttl.as_millis() as i32)),
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text(&target)),
            ("x-dead-letter-strategy", text("at-least-once")),
            ("x-overflow", text("reject-publish")),
        ],
    )
    .await;
    let (_consumer_channel, mut consumer) = consumer(&connection, &target).await;
    let published = Instant::now();
    publish(&connection, &delay, b"later").await;
    let early = next_within(&mut consumer, ttl.mul_f32(0.75)).await;
    assert!(
        early.is_none(),
        "the message reached {target} after {:?}, before its TTL of {ttl:?}",
        published.elapsed()
    );
    let d = next(&mut consumer, "the delayed message in its target queue").await;
    let after = published.elapsed();
    d.ack(BasicAckOptions::default()).await.unwrap();
    assert_eq!(d.data, b"later");
    assert_eq!(d.routing_key, ShortString::from(target.as_str()));
    let reason = text_header(&d, "x-first-death-reason");
    eprintln!(
        "RabbitMQ {}: delayed message arrived after {after:?} (TTL {ttl:?}), x-first-death-reason {reason:?}",
        broker.version()
    );
    assert!(after >= ttl, "arrived after {after:?}, TTL {ttl:?}");
    assert!(
        after < ttl + DELIVERY,
        "arrived after {after:?}, long past the TTL"
    );
    assert_eq!(reason.as_deref(), Some("expired"));
    let queued = channel
        .queue_declare(
            delay.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count();
    assert_eq!(queued, 0, "the delay queue is empty");
}
