//! Declares what the worker needs, idempotently: the events exchange with a
//! durable quorum queue per routing key (named by the key, bound with it),
//! the results exchange, and the dead-letter exchange with its queue.
//!
//! The per-key queues are quorum queues: the broker counts deliveries
//! (`x-delivery-count`, and `x-acquired-count` on 4.x). The worker settles
//! every attempt itself, dead-lettering on the last one (see
//! [`super::retry`]); a message that crashed or stalled the worker on every
//! attempt arrives once more, past `max_deliveries`, and is dead-lettered
//! unrun. `x-delivery-limit` (`max_deliveries` + 1 deliveries) is the
//! broker's backstop should even that delivery crash.
//! Delay queues (`<key>.delay-<ms>ms`) are declared on first use.
//!
//! The dead-letter queue is a quorum queue too: a classic queue lives on one
//! node of a cluster, and while that node is down declaring it fails on every
//! other node, so no worker could set up a session anywhere (found by
//! `tests/tests/cluster.rs`).

use hyperlight_js_config::BrokerConfig;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use crate::error::WorkerError;

/// Arguments of a handler's queue. Declaring an existing queue with other
/// arguments fails with `PRECONDITION_FAILED`, reported as `ERR_TOPOLOGY`.
pub fn queue_arguments(broker: &BrokerConfig, max_deliveries: u32) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".to_string().into()),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(broker.dead_letter_exchange.clone().into()),
    );
    // The limit counts returns: `max_deliveries` returns allow one delivery
    // past the last attempt, which the worker dead-letters with its reason.
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::from(max_deliveries)),
    );
    args
}

/// A delivery limit no dead letter reaches: a replay returns the dead letters
/// it skips by closing its channel, which 4.x counts as a failed delivery, and
/// 4.x quorum queues default to a limit of 20 (past it, with no dead-letter
/// exchange of its own, a dead letter would be dropped). `-1` (none) is 4.x
/// only; this value means the same on 3.x and 4.x.
const DEAD_LETTER_DELIVERY_LIMIT: i64 = 1 << 30;

/// Arguments of the dead-letter queue: a quorum queue, replicated, with no
/// delivery limit in practice.
pub fn dead_letter_queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".to_string().into()),
    );
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DEAD_LETTER_DELIVERY_LIMIT),
    );
    args
}

/// Declares exchanges, queues and bindings for `keys`.
pub async fn declare(
    channel: &Channel,
    broker: &BrokerConfig,
    keys: &[(String, u32)],
) -> Result<(), WorkerError> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    for (name, kind) in [
        (&broker.events_exchange, ExchangeKind::Direct),
        (&broker.results_exchange, ExchangeKind::Topic),
        (&broker.dead_letter_exchange, ExchangeKind::Topic),
    ] {
        channel
            .exchange_declare(name.as_str().into(), kind, durable, FieldTable::default())
            .await
            .map_err(|e| topology(format!("exchange '{name}'"), &e))?;
    }
    let dlq = broker.dead_letter_queue();
    let queue_opts = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(dlq.into(), queue_opts, dead_letter_queue_arguments())
        .await
        .map_err(|e| {
            topology(
                format!("dead-letter queue '{dlq}' (a durable quorum queue)"),
                &e,
            )
        })?;
    channel
        .queue_bind(
            dlq.into(),
            broker.dead_letter_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| topology(format!("binding of '{dlq}'"), &e))?;
    for (key, max_deliveries) in keys {
        channel
            .queue_declare(
                key.as_str().into(),
                queue_opts,
                queue_arguments(broker, *max_deliveries),
            )
            .await
            .map_err(|e| {
                topology(
                    format!("queue '{key}' (a durable quorum queue with the dead-letter settings)"),
                    &e,
                )
            })?;
        channel
            .queue_bind(
                key.as_str().into(),
                broker.events_exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| topology(format!("binding of '{key}'"), &e))?;
    }
    Ok(())
}

fn topology(what: String, e: &lapin::Error) -> WorkerError {
    WorkerError::Topology(format!(
        "declaring {what} failed: {} (an existing object with other settings must be deleted or renamed)",
        crate::error::redact_urls(&e.to_string())
    ))
}
