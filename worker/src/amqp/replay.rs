//! `hyperlight-js-worker replay`: moves dead letters back to their key's
//! queue, attempts reset.
//!
//! Looks at as many dead letters as the queue held when it started (so new
//! dead letters arriving meanwhile cannot make it run for ever). Each one
//! that matches `--key` (and is within `--limit`) is republished to its
//! key's queue through the default exchange, without the broker's delivery
//! counts or the worker's attempt and error headers; only once that publish
//! is confirmed is the dead letter acked. The others stay unacked until the
//! end and then go back to the dead-letter queue as they were.

use hyperlight_js_config::BrokerConfig;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde::Serialize;
use tracing::{info, warn};

use super::headers::{KEY_HEADER, header_text, without_bookkeeping};
use super::publisher::{Publisher, copy_properties};
use crate::error::WorkerError;

/// What to replay.
#[derive(Clone, Debug, Default)]
pub struct ReplayRequest {
    /// Only dead letters of this key.
    pub key: Option<String>,
    /// At most this many.
    pub limit: Option<u64>,
}

/// What a replay did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReplaySummary {
    /// Dead letters moved back to their key's queue.
    pub moved: u64,
    /// Dead letters left in place (another key, or past the limit).
    pub skipped: u64,
    /// Dead letters left in place because their move was not confirmed.
    pub failed: u64,
}

/// The key a dead letter belongs to: the worker's `x-hljs-key`, else the
/// queue the broker dead-lettered it from, else its routing key.
pub fn dead_letter_key(props: &BasicProperties, routing_key: &str) -> String {
    header_text(props, KEY_HEADER)
        .or_else(|| header_text(props, "x-first-death-queue"))
        .unwrap_or_else(|| routing_key.to_string())
}

/// Runs one replay against `broker`'s dead-letter queue.
pub async fn replay(
    broker: &BrokerConfig,
    request: &ReplayRequest,
) -> Result<ReplaySummary, WorkerError> {
    let connection = super::connect::connect(broker, "hyperlight-js-worker replay").await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(WorkerError::broker)?;
    let dlq = broker.dead_letter_queue();
    let pending = channel
        .queue_declare(
            dlq.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| WorkerError::Broker(format!("the dead-letter queue '{dlq}': {e}")))?
        .message_count();
    let publisher = Publisher::open(&connection, &broker.results_exchange).await?;
    let mut summary = ReplaySummary::default();
    for _ in 0..pending {
        let Some(message) = channel
            .basic_get(dlq.into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(WorkerError::broker)?
        else {
            break;
        };
        let d = &message.delivery;
        let key = dead_letter_key(&d.properties, d.routing_key.as_str());
        let wanted = request.key.as_deref().is_none_or(|k| k == key);
        let room = request.limit.is_none_or(|l| summary.moved < l);
        if !(wanted && room) {
            // Left unacked: it returns to the queue when the channel closes.
            summary.skipped += 1;
            continue;
        }
        let message_id = d
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_string())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let props = copy_properties(&d.properties, &message_id)
            .with_headers(without_bookkeeping(&d.properties));
        match publisher
            .confirmed("".into(), key.as_str().into(), true, &d.data, props)
            .await
        {
            Ok(()) => {
                d.acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(WorkerError::broker)?;
                summary.moved += 1;
                info!(key, message_id, "dead letter moved back to its queue");
            }
            Err(e) => {
                summary.failed += 1;
                warn!(key, message_id, code = e.code(), error = %e, "dead letter not moved");
            }
        }
    }
    for ch in [&channel, publisher.channel()] {
        if let Err(e) = ch.close(200, "OK".into()).await {
            tracing::debug!(error = %e, "closing a channel failed");
        }
    }
    if let Err(e) = connection.close(200, "OK".into()).await {
        tracing::debug!(error = %e, "closing the connection failed");
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::headers::text_value;

    #[test]
    fn the_key_comes_from_the_worker_then_the_broker_then_the_routing_key() {
        let mut t = FieldTable::default();
        t.insert("x-first-death-queue".into(), text_value("from-broker"));
        let broker = BasicProperties::default().with_headers(t.clone());
        assert_eq!(dead_letter_key(&broker, "rk"), "from-broker");
        t.insert(KEY_HEADER.into(), text_value("from-worker"));
        let worker = BasicProperties::default().with_headers(t);
        assert_eq!(dead_letter_key(&worker, "rk"), "from-worker");
        assert_eq!(dead_letter_key(&BasicProperties::default(), "rk"), "rk");
    }
}
