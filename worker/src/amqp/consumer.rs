//! One consumer per routing key (its own channel, prefetch =
//! `prefetch_per_sandbox` × pool size) and the handling of one delivery:
//! process → publish the outcome (or a delayed copy, or a dead letter) →
//! wait for the confirm → ack. Nothing is acked before what replaces it is
//! confirmed.

use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use hyperlight_js_config::RetryPolicy;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span, debug, error, field, info, info_span, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::headers::{self, HeaderExtractor};
use super::publisher::{Attempt, PublishError, Publisher};
use super::retry::{self, Decision};
use crate::codes::WorkerCode;
use crate::error::WorkerError;
use crate::metrics::Metrics;
use crate::process::{Failure, Outcome, Processor, Request};

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

/// Processes one delivery and settles it (see [`super::retry`] for the contract).
pub async fn handle_delivery(ctx: Arc<SessionContext>, key: String, delivery: Delivery) {
    let received = Instant::now();
    // The event's own id when it has one, so that the outcome of a
    // redelivered event can be recognised; the delayed copies keep it.
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.as_str().to_string())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let attempt = headers::prior_attempts(&delivery.properties).saturating_add(1);
    let span = info_span!(
        "message",
        key = %key,
        message_id = %message_id,
        attempt,
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
        let (max, policy) = match ctx.processor.delivery_policy(&key) {
            Some((max, policy)) => (max, policy.clone()),
            None => (ctx.default_max_deliveries, RetryPolicy::none()),
        };
        let at = Attempt { key: &key, message_id: &message_id, attempt };
        if attempt > max {
            // Delivered more often than allowed without an outcome: every
            // earlier attempt crashed or stalled its worker. Not run again.
            let failure = Failure::new(
                WorkerCode::DeliveryLimit.as_str(),
                format!("delivered {} times without an outcome (max_deliveries is {max}): it crashed or stalled the workers that took it", attempt - 1),
            );
            error!(attempts = attempt - 1, "over the delivery limit; dead-lettering without running it");
            let outcome = Outcome::Failure(failure);
            // Attempts made: the earlier deliveries; this one is not run.
            let made = Attempt { attempt: attempt - 1, ..at };
            give_up(&ctx, made, &properties, &data, &acker, &outcome, received).await;
            return;
        }
        let context = serde_json::json!({
            "key": key,
            "messageId": message_id,
            "attempt": attempt,
            "headers": headers::headers_json(&properties),
        });
        let outcome = match headers::requested_limits(&properties) {
            Ok(limits) => {
                ctx.processor
                    .process(Request { key: key.clone(), body: data.clone(), limits, context: Some(context) })
                    .await
            }
            Err(failure) => Outcome::Failure(failure),
        };
        Span::current().record("outcome", outcome.label());
        match retry::decide(&outcome, attempt, max, &policy) {
            Decision::Finish => {
                let cx = Span::current().context();
                match ctx.publisher.publish(at, &properties, &outcome, &cx).await {
                    Ok(()) => ack(&ctx, &acker, &key, &outcome, received).await,
                    Err(e) if attempt >= max => {
                        // The outcome cannot be delivered, and this was the last attempt.
                        error!(code = e.code(), error = %e, attempt, "outcome not confirmed on the last attempt; dead-lettering");
                        let refused = Outcome::Failure(Failure::new(e.code(), format!("the outcome ({}) was not confirmed: {e}", outcome.label())));
                        dead_letter(&ctx, at, &properties, &data, &acker, &refused, received).await;
                    }
                    Err(e) => {
                        warn!(code = e.code(), error = %e, attempt, "outcome not confirmed; returning the message to the queue");
                        requeue(&ctx, &acker, &key, e.code()).await;
                    }
                }
            }
            Decision::Requeue => {
                // The worker's environment failed, not the message: let another attempt have it.
                warn!(code = outcome.label(), attempt, "environment failure; returning the message to the queue");
                requeue(&ctx, &acker, &key, outcome.label()).await;
            }
            Decision::RetryAfter { delay, clamped } => {
                if let Some(why) = clamped {
                    warn!(attempt, "RetryError delay clamped: {why}");
                }
                match schedule_retry(&ctx, at, &properties, &data, delay).await {
                    Ok(queue) => {
                        info!(code = outcome.label(), attempt, delay_ms = delay.as_millis() as u64, queue, "retry scheduled");
                        ctx.metrics.retried.with_label_values(&[key.as_str(), outcome.label()]).inc();
                        if let Err(e) = acker.ack(BasicAckOptions::default()).await {
                            // The copy is confirmed; the original comes back too: one more attempt.
                            warn!(error = %e, "ack failed after the retry copy was confirmed; the message will be redelivered");
                        }
                    }
                    Err(e) => {
                        warn!(code = e.code(), error = %e, "the retry copy was not confirmed; returning the message to the queue");
                        requeue(&ctx, &acker, &key, e.code()).await;
                    }
                }
            }
            Decision::GiveUp => give_up(&ctx, at, &properties, &data, &acker, &outcome, received).await,
        }
    }
    .instrument(span)
    .await;
}

/// The attempts ran out: publish the error outcome, then dead-letter.
async fn give_up(
    ctx: &SessionContext,
    at: Attempt<'_>,
    properties: &BasicProperties,
    data: &[u8],
    acker: &lapin::Acker,
    outcome: &Outcome,
    received: Instant,
) {
    let cx = Span::current().context();
    if let Err(e) = ctx.publisher.publish(at, properties, outcome, &cx).await {
        // The dead letter still carries the code; losing the outcome must not lose the message.
        warn!(code = e.code(), error = %e, "the final error outcome was not confirmed; dead-lettering anyway");
    }
    error!(
        code = outcome.label(),
        attempts = at.attempt,
        "giving up; dead-lettering the message"
    );
    dead_letter(ctx, at, properties, data, acker, outcome, received).await;
}

/// Publishes the message to the dead-letter exchange with the reason, then
/// acks it. If that publish is not confirmed, rejects it without requeue, so
/// the queue's own dead-lettering takes it (without the worker's headers).
async fn dead_letter(
    ctx: &SessionContext,
    at: Attempt<'_>,
    properties: &BasicProperties,
    data: &[u8],
    acker: &lapin::Acker,
    outcome: &Outcome,
    received: Instant,
) {
    let (code, message) = match outcome {
        Outcome::Failure(f) => (f.code, f.message.as_str()),
        Outcome::Success(_) => ("ok", ""),
    };
    ctx.metrics
        .dead_lettered
        .with_label_values(&[at.key, code])
        .inc();
    match ctx
        .publisher
        .publish_dead_letter(
            &ctx.dead_letter_exchange,
            at,
            properties,
            data,
            code,
            message,
        )
        .await
    {
        Ok(()) => ack(ctx, acker, at.key, outcome, received).await,
        Err(e) => {
            warn!(code = e.code(), error = %e, "the dead letter was not confirmed; rejecting to the queue's dead-letter exchange");
            if let Err(e) = acker.reject(BasicRejectOptions { requeue: false }).await {
                debug!(error = %e, "reject failed");
            }
        }
    }
}

/// Publishes the delayed copy (declaring its delay queue on first use) and
/// returns the queue it went to.
async fn schedule_retry(
    ctx: &SessionContext,
    at: Attempt<'_>,
    properties: &BasicProperties,
    data: &[u8],
    delay: std::time::Duration,
) -> Result<String, PublishError> {
    let ms = retry::bucket_ms(delay);
    let queue = if ms == 0 {
        at.key.to_string()
    } else {
        let name = retry::delay_queue(at.key, ms);
        ctx.declare_delay_queue(at.key, &name, ms).await?;
        name
    };
    ctx.publisher
        .publish_retry(&queue, at, properties, data)
        .await?;
    Ok(queue)
}

async fn ack(
    ctx: &SessionContext,
    acker: &lapin::Acker,
    key: &str,
    outcome: &Outcome,
    received: Instant,
) {
    match acker.ack(BasicAckOptions::default()).await {
        Ok(_) => finish(ctx, key, outcome, received),
        // The channel is gone: the broker redelivers the message; its outcome may repeat.
        Err(e) => {
            warn!(error = %e, "ack failed after the outcome was confirmed; the message will be redelivered")
        }
    }
}

/// Hands the message back with `basic.reject`: RabbitMQ 4.x counts a reject
/// towards the delivery limit (a `basic.nack` it does not), 3.x counts both.
async fn requeue(ctx: &SessionContext, acker: &lapin::Acker, key: &str, reason: &str) {
    ctx.metrics.requeued.with_label_values(&[key, reason]).inc();
    if let Err(e) = acker.reject(BasicRejectOptions { requeue: true }).await {
        // The channel is gone; the broker returns the message by itself.
        debug!(error = %e, "reject failed");
    }
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
