//! Publishes on a channel with publisher confirms: outcomes, the delayed
//! copies of messages to retry, and dead letters. Each publish waits for the
//! broker's confirm; the caller acks the original message only after it.

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tracing::{Instrument, info_span};

use hyperlight_js_engine::{CallStats, CancelReason};

use super::headers::{
    ATTEMPT_HEADER, ATTEMPTS_HEADER, CPU_MS_HEADER, ERROR_CODE_HEADER, ERROR_MESSAGE_HEADER,
    HANDLER_VERSION_HEADER, HeaderInjector, KEY_HEADER, OUTCOME_HEADER, TERMINATED_BY_HEADER,
    WALL_MS_HEADER, text_value, without_bookkeeping,
};
use crate::codes::WorkerCode;
use crate::error::WorkerError;
use crate::process::Outcome;

/// Why a publish is not confirmed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker refused it (`basic.nack`), e.g. a full reply queue.
    #[error("the broker refused the message (nack)")]
    Nacked,
    /// A mandatory publish matched no queue.
    #[error("no queue is bound for '{0}'")]
    Unroutable(String),
    /// The channel or connection failed.
    #[error("publishing failed: {0}")]
    Broker(String),
}

impl PublishError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Nacked | Self::Unroutable(_) => WorkerCode::PublishNacked.as_str(),
            Self::Broker(_) => WorkerCode::Broker.as_str(),
        }
    }
}

/// A confirm-mode channel for outcomes.
#[derive(Clone, Debug)]
pub struct Publisher {
    channel: Channel,
    results_exchange: ShortString,
}

/// Where one outcome goes.
#[derive(Debug)]
pub struct Destination {
    /// Exchange (`""` for a `reply_to` queue).
    pub exchange: ShortString,
    /// Routing key.
    pub routing_key: ShortString,
}

/// The identity of one message and its attempt, for outcome and copy headers.
#[derive(Clone, Copy, Debug)]
pub struct Attempt<'a> {
    /// Routing key.
    pub key: &'a str,
    /// The event's `message_id`, or one the worker gave it.
    pub message_id: &'a str,
    /// This attempt, from 1.
    pub attempt: u32,
}

/// Longest `x-hljs-error-message` header, in bytes (headers share a frame with the body's metadata).
const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

impl Publisher {
    /// Opens the channel and turns on confirms.
    pub async fn open(
        connection: &Connection,
        results_exchange: &str,
    ) -> Result<Self, WorkerError> {
        let channel = super::connect::confirm_channel(connection).await?;
        Ok(Self {
            channel,
            results_exchange: results_exchange.into(),
        })
    }

    /// The confirm-mode channel.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// `reply_to` with the default exchange when the message has one, else
    /// the results exchange with the routing key.
    pub fn destination(&self, key: &str, incoming: &BasicProperties) -> Destination {
        match incoming.reply_to() {
            Some(r) if !r.as_str().is_empty() => Destination {
                exchange: "".into(),
                routing_key: r.clone(),
            },
            _ => Destination {
                exchange: self.results_exchange.clone(),
                routing_key: key.into(),
            },
        }
    }

    /// Publishes `outcome` (persistent, JSON, with the code header, the
    /// event's message id, the handler's `version` and the trace context of
    /// `cx`) and waits for the broker's confirm.
    pub async fn publish(
        &self,
        at: Attempt<'_>,
        incoming: &BasicProperties,
        outcome: &Outcome,
        stats: Option<&CallStats>,
        version: Option<&str>,
        cx: &opentelemetry::Context,
    ) -> Result<(), PublishError> {
        let dest = self.destination(at.key, incoming);
        let mut headers = FieldTable::default();
        if let Some(stats) = stats {
            let ms = |d: std::time::Duration| AMQPValue::Double(d.as_secs_f64() * 1000.0);
            headers.insert(CPU_MS_HEADER.into(), ms(stats.cpu_time));
            headers.insert(WALL_MS_HEADER.into(), ms(stats.wall_clock));
            if let Some(reason) = stats.terminated_by {
                let by = match reason {
                    CancelReason::CpuTime(_) => "cpu",
                    CancelReason::WallClock(_) => "wall",
                    CancelReason::Killed => "kill",
                };
                headers.insert(TERMINATED_BY_HEADER.into(), text_value(by));
            }
        }
        headers.insert(KEY_HEADER.into(), text_value(at.key));
        if let Some(v) = version {
            headers.insert(HANDLER_VERSION_HEADER.into(), text_value(v));
        }
        headers.insert(
            ATTEMPT_HEADER.into(),
            AMQPValue::LongLongInt(i64::from(at.attempt)),
        );
        match outcome.code() {
            None => {
                headers.insert(OUTCOME_HEADER.into(), text_value("ok"));
            }
            Some(code) => {
                headers.insert(OUTCOME_HEADER.into(), text_value("error"));
                headers.insert(ERROR_CODE_HEADER.into(), text_value(code));
            }
        }
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(cx, &mut HeaderInjector(&mut headers))
        });
        let mut props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(at.message_id.into())
            .with_timestamp(now_secs())
            .with_headers(headers);
        if let Some(c) = incoming.correlation_id() {
            props = props.with_correlation_id(c.clone());
        }
        let body = outcome.to_json();
        let span = info_span!("outcome.publish", key = at.key, message_id = at.message_id, exchange = %dest.exchange, routing_key = %dest.routing_key);
        self.confirmed(
            dest.exchange,
            dest.routing_key,
            false,
            body.as_bytes(),
            props,
        )
        .instrument(span)
        .await
    }

    /// Publishes a copy of a message to retry to `queue` (through the default
    /// exchange), recording the attempts made so far, and waits for the
    /// confirm. The copy keeps the message's id, correlation id, reply-to and
    /// headers, less the broker's delivery counts.
    pub async fn publish_retry(
        &self,
        queue: &str,
        at: Attempt<'_>,
        incoming: &BasicProperties,
        body: &[u8],
    ) -> Result<(), PublishError> {
        let mut headers = without_bookkeeping(incoming);
        headers.insert(
            ATTEMPTS_HEADER.into(),
            AMQPValue::LongLongInt(i64::from(at.attempt)),
        );
        let props = copy_properties(incoming, at.message_id).with_headers(headers);
        let span = info_span!(
            "retry.publish",
            key = at.key,
            message_id = at.message_id,
            queue
        );
        self.confirmed("".into(), queue.into(), true, body, props)
            .instrument(span)
            .await
    }

    /// Publishes a message whose attempts ran out to the dead-letter
    /// exchange with the reason in `x-hljs-error-code`,
    /// `x-hljs-error-message`, `x-hljs-attempts` and `x-hljs-key`, and waits
    /// for the confirm.
    pub async fn publish_dead_letter(
        &self,
        exchange: &str,
        at: Attempt<'_>,
        incoming: &BasicProperties,
        body: &[u8],
        code: &str,
        message: &str,
    ) -> Result<(), PublishError> {
        let mut headers = without_bookkeeping(incoming);
        headers.insert(KEY_HEADER.into(), text_value(at.key));
        headers.insert(ERROR_CODE_HEADER.into(), text_value(code));
        headers.insert(
            ERROR_MESSAGE_HEADER.into(),
            text_value(truncate(message, MAX_ERROR_MESSAGE_BYTES)),
        );
        headers.insert(
            ATTEMPTS_HEADER.into(),
            AMQPValue::LongLongInt(i64::from(at.attempt)),
        );
        let props = copy_properties(incoming, at.message_id).with_headers(headers);
        let span = info_span!(
            "dead_letter.publish",
            key = at.key,
            message_id = at.message_id,
            exchange
        );
        self.confirmed(exchange.into(), at.key.into(), true, body, props)
            .instrument(span)
            .await
    }

    /// Publishes `body` and waits for the confirm; a mandatory publish that
    /// no queue takes is [`PublishError::Unroutable`].
    pub async fn confirmed(
        &self,
        exchange: ShortString,
        routing_key: ShortString,
        mandatory: bool,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), PublishError> {
        let target = format!("{exchange}/{routing_key}");
        let confirm = self
            .channel
            .basic_publish(
                exchange,
                routing_key,
                BasicPublishOptions {
                    mandatory,
                    ..BasicPublishOptions::default()
                },
                body,
                props,
            )
            .await
            .map_err(|e| PublishError::Broker(e.to_string()))?
            .await
            .map_err(|e| PublishError::Broker(e.to_string()))?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable(target)),
            Confirmation::Nack(_) => Err(PublishError::Nacked),
            Confirmation::NotRequested => {
                Err(PublishError::Broker("publisher confirms are off".into()))
            }
        }
    }
}

/// The properties of a republished message: those of `incoming` that
/// describe the message (not `user_id`, which the broker checks against the
/// connection's user, nor `expiration`, which would cut a delay short),
/// persistent, with `message_id` set.
pub fn copy_properties(incoming: &BasicProperties, message_id: &str) -> BasicProperties {
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(message_id.into())
        .with_timestamp(incoming.timestamp().unwrap_or_else(now_secs));
    if let Some(v) = incoming.content_type() {
        props = props.with_content_type(v.clone());
    }
    if let Some(v) = incoming.content_encoding() {
        props = props.with_content_encoding(v.clone());
    }
    if let Some(v) = incoming.correlation_id() {
        props = props.with_correlation_id(v.clone());
    }
    if let Some(v) = incoming.reply_to() {
        props = props.with_reply_to(v.clone());
    }
    if let Some(v) = incoming.priority() {
        props = props.with_priority(*v);
    }
    if let Some(v) = incoming.kind() {
        props = props.with_type(v.clone());
    }
    if let Some(v) = incoming.app_id() {
        props = props.with_app_id(v.clone());
    }
    props
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_keep_identity_and_drop_user_id_and_expiration() {
        let incoming = BasicProperties::default()
            .with_correlation_id("c-1".into())
            .with_reply_to("replies".into())
            .with_user_id("guest".into())
            .with_expiration("100".into())
            .with_timestamp(7);
        let p = copy_properties(&incoming, "m-1");
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("m-1"));
        assert_eq!(p.correlation_id().as_ref().map(|s| s.as_str()), Some("c-1"));
        assert_eq!(p.reply_to().as_ref().map(|s| s.as_str()), Some("replies"));
        assert_eq!(*p.timestamp(), Some(7));
        assert_eq!(*p.delivery_mode(), Some(2));
        assert!(p.user_id().is_none() && p.expiration().is_none());
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("ok", 10), "ok");
    }
}
