//! One consumer per routing key (its own channel, prefetch =
//! `prefetch_per_sandbox` × pool size), each delivery handed to
//! [`super::delivery`], and what every delivery of a session shares.

use std::sync::Arc;

use futures_util::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::delivery::handle_delivery;
use super::publisher::{PublishError, Publisher};
use super::retry;
use crate::error::WorkerError;
use crate::metrics::Metrics;
use crate::process::Processor;

/// What every delivery of one broker session needs.
#[derive(Debug)]
pub struct SessionContext {
    /// The pools.
    pub processor: Arc<Processor>,
    /// The confirm-mode outcome channel.
    pub publisher: Publisher,
    /// `[broker] max_deliveries`, for a key the processor does not know.
    pub default_max_deliveries: u32,
    /// Where the worker dead-letters messages whose attempts ran out.
    pub dead_letter_exchange: String,
    /// A channel for declaring delay queues on first use (so that a refused
    /// declaration closes it, never the publisher's channel).
    pub topology: tokio::sync::Mutex<TopologyChannel>,
    /// Metrics.
    pub metrics: Metrics,
}

/// The channel delay queues are declared on, and the ones already declared.
#[derive(Debug)]
pub struct TopologyChannel {
    /// The channel. A refused declaration closes it; later declarations
    /// then fail and their messages go back to the queue.
    pub channel: Channel,
    /// Delay queues declared in this session.
    pub declared: std::collections::BTreeSet<String>,
}

impl SessionContext {
    /// Declares `key`'s delay queue `name` with a TTL of `ms`, once per session.
    pub async fn declare_delay_queue(
        &self,
        key: &str,
        name: &str,
        ms: u64,
    ) -> Result<(), PublishError> {
        let mut t = self.topology.lock().await;
        if t.declared.contains(name) {
            return Ok(());
        }
        t.channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                retry::delay_queue_arguments(key, ms),
            )
            .await
            .map_err(|e| {
                PublishError::Broker(format!("declaring the delay queue '{name}' failed: {e}"))
            })?;
        t.declared.insert(name.to_string());
        Ok(())
    }
}

/// A running consumer of one key's queue.
pub struct KeyConsumer {
    channel: Channel,
    consumer: lapin::Consumer,
    key: String,
    tag: String,
}

impl KeyConsumer {
    /// Opens a channel with prefetch `prefetch` and starts consuming `key`'s queue.
    pub async fn start(
        connection: &Connection,
        key: &str,
        prefetch: u16,
    ) -> Result<Self, WorkerError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(WorkerError::broker)?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(WorkerError::broker)?;
        let tag = format!("hljs-{key}-{}", uuid::Uuid::new_v4().simple());
        let consumer = channel
            .basic_consume(
                key.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(WorkerError::broker)?;
        Ok(Self {
            channel,
            consumer,
            key: key.to_string(),
            tag,
        })
    }

    /// The consumer's channel (deliveries are acked over it).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Hands every delivery to a task in `tracker` until `stop` (then the
    /// consumer is cancelled: deliveries not yet taken stay unacked and go
    /// back to the queue when the channel closes) or until the channel fails.
    pub async fn run(
        mut self,
        ctx: Arc<SessionContext>,
        tracker: TaskTracker,
        stop: CancellationToken,
    ) -> Result<(), String> {
        loop {
            let next = tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    if let Err(e) = self.channel.basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default()).await {
                        debug!(key = %self.key, error = %e, "basic.cancel failed");
                    }
                    return Ok(());
                }
                next = self.consumer.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    tracker.spawn(handle_delivery(
                        Arc::clone(&ctx),
                        self.key.clone(),
                        delivery,
                    ));
                }
                Some(Err(e)) => {
                    return Err(format!(
                        "consumer of '{}' failed: {}",
                        self.key,
                        crate::error::redact_urls(&e.to_string())
                    ));
                }
                None => {
                    return Err(format!(
                        "the broker cancelled the consumer of '{}'",
                        self.key
                    ));
                }
            }
        }
    }
}
