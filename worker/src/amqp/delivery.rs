//! One delivery, from receipt to settlement: process it, then settle it the
//! way [`super::retry`] decides — publish the outcome, hand it back, publish a
//! delayed copy, or dead-letter it — and ack only once what replaces it is
//! confirmed by the broker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyperlight_js_config::RetryPolicy;
use hyperlight_js_engine::CallStats;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use lapin::{Acker, BasicProperties};
use tracing::{Instrument, Span, debug, error, field, info, info_span, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::consumer::SessionContext;
use super::headers::{self, HeaderExtractor};
use super::publisher::{Attempt, PublishError};
use super::retry::{self, Decision};
use crate::codes::WorkerCode;
use crate::process::{Failure, Outcome, Processed, Request};

/// Processes one delivery and settles it.
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
        handler_version = field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&HeaderExtractor(delivery.properties.headers().as_ref()))
    });
    if let Err(e) = span.set_parent(parent) {
        debug!(error = %e, "cannot attach the message's trace context");
    }
    let Delivery {
        data,
        properties,
        acker,
        ..
    } = delivery;
    let (max, policy) = ctx
        .processor
        .delivery_policy(&key)
        .unwrap_or_else(|| (ctx.default_max_deliveries, RetryPolicy::none()));
    let this = InFlight {
        ctx: &ctx,
        at: Attempt {
            key: &key,
            message_id: &message_id,
            attempt,
        },
        properties: &properties,
        data: &data,
        acker: &acker,
        received,
    };
    this.run(max, &policy).instrument(span).await;
}

/// What the call left for the outcome's headers and the metrics.
#[derive(Clone, Copy, Debug, Default)]
struct Call<'a> {
    /// The engine's statistics, when the event reached a sandbox.
    stats: Option<&'a CallStats>,
    /// The version of the handler that judged the message.
    version: Option<&'a str>,
}

/// A delivery being processed and settled.
struct InFlight<'a> {
    ctx: &'a SessionContext,
    at: Attempt<'a>,
    properties: &'a BasicProperties,
    data: &'a [u8],
    acker: &'a Acker,
    received: Instant,
}

impl InFlight<'_> {
    async fn run(&self, max: u32, policy: &RetryPolicy) {
        let attempt = self.at.attempt;
        if attempt > max {
            // Delivered more often than allowed without an outcome: every
            // earlier attempt crashed or stalled its worker. Not run again.
            let made = attempt - 1;
            error!(
                attempts = made,
                "over the delivery limit; dead-lettering without running it"
            );
            let outcome = Outcome::Failure(Failure::new(
                WorkerCode::DeliveryLimit.as_str(),
                format!(
                    "delivered {made} times without an outcome (max_deliveries is {max}): it crashed or stalled the workers that took it"
                ),
            ));
            let this = InFlight {
                at: Attempt {
                    attempt: made,
                    ..self.at
                },
                ..*self
            };
            this.give_up(&outcome, Call::default()).await;
            return;
        }
        let processed = self.process().await;
        let outcome = processed.outcome;
        let call = Call {
            stats: processed.stats.as_ref(),
            version: processed.version.as_deref(),
        };
        Span::current().record("outcome", outcome.label());
        if let Some(v) = call.version {
            Span::current().record("handler_version", v);
        }
        match retry::decide(&outcome, attempt, max, policy) {
            Decision::Finish => self.finish(&outcome, call, attempt >= max).await,
            Decision::Requeue => {
                // The worker's environment failed, not the message: let another attempt have it.
                warn!(
                    code = outcome.label(),
                    attempt, "environment failure; returning the message to the queue"
                );
                self.requeue(outcome.label()).await;
            }
            Decision::RetryAfter { delay, clamped } => {
                if let Some(why) = clamped {
                    warn!(attempt, "RetryError delay clamped: {why}");
                }
                self.retry_after(&outcome, delay).await;
            }
            Decision::GiveUp => self.give_up(&outcome, call).await,
        }
    }

    /// Runs the handler with `ctx = {key, messageId, attempt, headers}`.
    async fn process(&self) -> Processed {
        let limits = match headers::requested_limits(self.properties) {
            Ok(limits) => limits,
            Err(failure) => {
                return Processed {
                    outcome: Outcome::Failure(failure),
                    stats: None,
                    version: self.ctx.processor.version(self.at.key),
                };
            }
        };
        let context = serde_json::json!({
            "key": self.at.key,
            "messageId": self.at.message_id,
            "attempt": self.at.attempt,
            "headers": headers::headers_json(self.properties),
        });
        self.ctx
            .processor
            .process_with_stats(Request {
                key: self.at.key.to_string(),
                body: self.data.to_vec(),
                limits,
                context: Some(context),
            })
            .await
    }

    /// Publishes the final outcome, then acks. An outcome the broker does
    /// not confirm hands the message back, or on the last attempt dead-letters it.
    async fn finish(&self, outcome: &Outcome, call: Call<'_>, last: bool) {
        let cx = Span::current().context();
        match self
            .ctx
            .publisher
            .publish(
                self.at,
                self.properties,
                outcome,
                call.stats,
                call.version,
                &cx,
            )
            .await
        {
            Ok(()) => self.ack(outcome, call.version).await,
            Err(e) if last => {
                error!(code = e.code(), error = %e, "outcome not confirmed on the last attempt; dead-lettering");
                let refused = Outcome::Failure(Failure::new(
                    e.code(),
                    format!("the outcome ({}) was not confirmed: {e}", outcome.label()),
                ));
                self.dead_letter(&refused, call.version).await;
            }
            Err(e) => {
                warn!(code = e.code(), error = %e, "outcome not confirmed; returning the message to the queue");
                self.requeue(e.code()).await;
            }
        }
    }

    /// Publishes a delayed copy (declaring its delay queue on first use),
    /// then acks the original.
    async fn retry_after(&self, outcome: &Outcome, delay: Duration) {
        match self.publish_retry(delay).await {
            Ok(queue) => {
                info!(
                    code = outcome.label(),
                    delay_ms = delay.as_millis() as u64,
                    queue,
                    "retry scheduled"
                );
                self.ctx
                    .metrics
                    .retried
                    .with_label_values(&[self.at.key, outcome.label()])
                    .inc();
                if let Err(e) = self.acker.ack(BasicAckOptions::default()).await {
                    // The copy is confirmed; the original comes back too: one more attempt.
                    warn!(error = %e, "ack failed after the retry copy was confirmed; the message will be redelivered");
                }
            }
            Err(e) => {
                warn!(code = e.code(), error = %e, "the retry copy was not confirmed; returning the message to the queue");
                self.requeue(e.code()).await;
            }
        }
    }

    async fn publish_retry(&self, delay: Duration) -> Result<String, PublishError> {
        let ms = retry::bucket_ms(delay);
        let queue = if ms == 0 {
            self.at.key.to_string()
        } else {
            let name = retry::delay_queue(self.at.key, ms);
            self.ctx.declare_delay_queue(self.at.key, &name, ms).await?;
            name
        };
        self.ctx
            .publisher
            .publish_retry(&queue, self.at, self.properties, self.data)
            .await?;
        Ok(queue)
    }

    /// The attempts ran out: publish the error outcome, then dead-letter.
    async fn give_up(&self, outcome: &Outcome, call: Call<'_>) {
        let cx = Span::current().context();
        if let Err(e) = self
            .ctx
            .publisher
            .publish(
                self.at,
                self.properties,
                outcome,
                call.stats,
                call.version,
                &cx,
            )
            .await
        {
            // The dead letter still carries the code; losing the outcome must not lose the message.
            warn!(code = e.code(), error = %e, "the final error outcome was not confirmed; dead-lettering anyway");
        }
        error!(
            code = outcome.label(),
            attempts = self.at.attempt,
            "giving up; dead-lettering the message"
        );
        self.dead_letter(outcome, call.version).await;
    }

    /// Publishes the message to the dead-letter exchange with the reason,
    /// then acks it. If that publish is not confirmed, rejects it without
    /// requeue, so the queue's own dead-lettering takes it (without the
    /// worker's headers).
    async fn dead_letter(&self, outcome: &Outcome, version: Option<&str>) {
        let (code, message) = match outcome {
            Outcome::Failure(f) => (f.code, f.message.as_str()),
            Outcome::Success(_) => ("ok", ""),
        };
        self.ctx
            .metrics
            .dead_lettered
            .with_label_values(&[self.at.key, code])
            .inc();
        match self
            .ctx
            .publisher
            .publish_dead_letter(
                &self.ctx.dead_letter_exchange,
                self.at,
                self.properties,
                self.data,
                code,
                message,
            )
            .await
        {
            Ok(()) => self.ack(outcome, version).await,
            Err(e) => {
                warn!(code = e.code(), error = %e, "the dead letter was not confirmed; rejecting to the queue's dead-letter exchange");
                if let Err(e) = self
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await
                {
                    debug!(error = %e, "reject failed");
                }
            }
        }
    }

    async fn ack(&self, outcome: &Outcome, version: Option<&str>) {
        match self.acker.ack(BasicAckOptions::default()).await {
            Ok(_) => {
                let key = self.at.key;
                let metrics = &self.ctx.metrics;
                metrics
                    .messages
                    .with_label_values(&[key, outcome.label(), version.unwrap_or("")])
                    .inc();
                metrics
                    .message_seconds
                    .with_label_values(&[key])
                    .observe(self.received.elapsed().as_secs_f64());
                info!(
                    outcome = outcome.label(),
                    elapsed_ms = self.received.elapsed().as_millis() as u64,
                    "message done"
                );
            }
            // The channel is gone: the broker redelivers the message; its outcome may repeat.
            Err(e) => {
                warn!(error = %e, "ack failed after the outcome was confirmed; the message will be redelivered")
            }
        }
    }

    /// Hands the message back with `basic.reject`: RabbitMQ 4.x counts a
    /// reject towards the delivery limit (a `basic.nack` it does not), 3.x
    /// counts both.
    async fn requeue(&self, reason: &str) {
        self.ctx
            .metrics
            .requeued
            .with_label_values(&[self.at.key, reason])
            .inc();
        if let Err(e) = self
            .acker
            .reject(BasicRejectOptions { requeue: true })
            .await
        {
            // The channel is gone; the broker returns the message by itself.
            debug!(error = %e, "reject failed");
        }
    }
}
