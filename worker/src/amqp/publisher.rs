//! Publishes outcomes on a channel with publisher confirms.

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::options::BasicPublishOptions;
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tracing::{Instrument, info_span};

use super::headers::{ERROR_CODE_HEADER, HeaderInjector, KEY_HEADER, OUTCOME_HEADER, text_value};
use crate::error::WorkerError;
use crate::process::Outcome;

/// Why an outcome is not confirmed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker refused it (`basic.nack`), e.g. a full reply queue.
    #[error("the broker refused the outcome (nack)")]
    Nacked,
    /// The channel or connection failed.
    #[error("publishing failed: {0}")]
    Broker(String),
}

impl PublishError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Nacked => "ERR_PUBLISH_NACKED",
            Self::Broker(_) => "ERR_BROKER",
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

    /// Publishes `outcome` (persistent, JSON, with the code header and the
    /// trace context of `cx`) and waits for the broker's confirm.
    pub async fn publish(
        &self,
        key: &str,
        message_id: &str,
        incoming: &BasicProperties,
        outcome: &Outcome,
        cx: &opentelemetry::Context,
    ) -> Result<(), PublishError> {
        let dest = self.destination(key, incoming);
        let mut headers = FieldTable::default();
        headers.insert(KEY_HEADER.into(), text_value(key));
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
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(message_id.into())
            .with_timestamp(timestamp)
            .with_headers(headers);
        if let Some(c) = incoming.correlation_id() {
            props = props.with_correlation_id(c.clone());
        }
        let body = outcome.to_json();
        let span = info_span!("outcome.publish", key, message_id, exchange = %dest.exchange, routing_key = %dest.routing_key);
        async {
            let confirm = self
                .channel
                .basic_publish(
                    dest.exchange,
                    dest.routing_key,
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    props,
                )
                .await
                .map_err(|e| PublishError::Broker(e.to_string()))?
                .await
                .map_err(|e| PublishError::Broker(e.to_string()))?;
            match confirm {
                Confirmation::Ack(_) => Ok(()),
                Confirmation::Nack(_) => Err(PublishError::Nacked),
                Confirmation::NotRequested => {
                    Err(PublishError::Broker("publisher confirms are off".into()))
                }
            }
        }
        .instrument(span)
        .await
    }
}
