//! One consumer per routing key (its own channel, prefetch = pool size) and
//! the handling of one delivery: process → publish the outcome → wait for the
//! confirm → ack. Nothing is acked before its outcome is confirmed.

use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span, debug, error, field, info, info_span, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::headers::{self, HeaderExtractor};
use super::publisher::Publisher;
use crate::error::WorkerError;
use crate::metrics::Metrics;
use crate::process::{Outcome, Processor, Request};

/// What every delivery of one broker session needs.
#[derive(Debug)]
pub struct SessionContext {
    /// The pools.
    pub processor: Arc<Processor>,
    /// The confirm-mode outcome channel.
    pub publisher: Publisher,
    /// Deliveries of one message before it is dead-lettered.
    pub max_deliveries: u32,
    /// Metrics.
    pub metrics: Metrics,
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

/// Processes one delivery and settles it.
pub async fn handle_delivery(ctx: Arc<SessionContext>, key: String, delivery: Delivery) {
    let received = Instant::now();
    let message_id = uuid::Uuid::new_v4().to_string();
    let span = info_span!(
        "message",
        key = %key,
        message_id = %message_id,
        delivery_tag = delivery.delivery_tag,
        redelivered = delivery.redelivered,
        outcome = field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&HeaderExtractor(delivery.properties.headers().as_ref()))
    });
    if let Err(e) = span.set_parent(parent) {
        debug!(error = %e, "cannot attach the message's trace context");
    }
    async move {
        let Delivery { data, properties, acker, .. } = delivery;
        let deliveries = headers::delivery_count(&properties) + 1;
        let outcome = match headers::requested_limits(&properties) {
            Ok(limits) => ctx.processor.process(Request { key: key.clone(), body: data, limits }).await,
            Err(failure) => Outcome::Failure(failure),
        };
        Span::current().record("outcome", outcome.label());
        let last_attempt = deliveries >= u64::from(ctx.max_deliveries);
        if outcome.retryable() && !last_attempt {
            // The worker's environment failed, not the message: let another attempt have it.
            warn!(code = outcome.label(), deliveries, "retryable failure; returning the message to the queue");
            ctx.metrics.requeued.with_label_values(&[key.as_str(), outcome.label()]).inc();
            nack(&acker, true).await;
            return;
        }
        let cx = Span::current().context();
        match ctx.publisher.publish(&key, &message_id, &properties, &outcome, &cx).await {
            Ok(()) if outcome.retryable() => {
                // Last attempt of a retryable failure: the outcome is out; park the message.
                error!(code = outcome.label(), deliveries, "giving up; rejecting the message to the dead-letter exchange");
                ctx.metrics.dead_lettered.with_label_values(&[key.as_str()]).inc();
                nack(&acker, false).await;
                finish(&ctx, &key, &outcome, received);
            }
            Ok(()) => {
                match acker.ack(BasicAckOptions::default()).await {
                    Ok(_) => finish(&ctx, &key, &outcome, received),
                    // The channel is gone: the broker redelivers the message; its outcome may repeat.
                    Err(e) => warn!(error = %e, "ack failed after the outcome was confirmed; the message will be redelivered"),
                }
            }
            Err(e) => {
                warn!(code = e.code(), error = %e, deliveries, "outcome not confirmed; returning the message to the queue");
                ctx.metrics.requeued.with_label_values(&[key.as_str(), e.code()]).inc();
                nack(&acker, true).await;
            }
        }
    }
    .instrument(span)
    .await;
}

fn finish(ctx: &SessionContext, key: &str, outcome: &Outcome, received: Instant) {
    ctx.metrics
        .messages
        .with_label_values(&[key, outcome.label()])
        .inc();
    ctx.metrics
        .message_seconds
        .with_label_values(&[key])
        .observe(received.elapsed().as_secs_f64());
    info!(
        outcome = outcome.label(),
        elapsed_ms = received.elapsed().as_millis() as u64,
        "message done"
    );
}

async fn nack(acker: &lapin::Acker, requeue: bool) {
    if let Err(e) = acker
        .nack(BasicNackOptions {
            requeue,
            multiple: false,
        })
        .await
    {
        // The channel is gone; the broker returns the message by itself.
        debug!(error = %e, "nack failed");
    }
}
