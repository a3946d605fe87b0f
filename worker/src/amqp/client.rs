//! The `publish` subcommand: sends one event to the events exchange and, with
//! `--wait`, waits for the outcome through RabbitMQ's direct reply-to.

use std::time::Duration;

use futures_util::StreamExt;
use hyperlight_js_config::BrokerConfig;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation};

use super::headers::{ERROR_CODE_HEADER, header_text, text_value};
use crate::error::WorkerError;

/// RabbitMQ's pseudo-queue for replies without a declared queue.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// One event to publish.
#[derive(Debug)]
pub struct PublishRequest {
    /// Routing key (the handler).
    pub key: String,
    /// The event, as JSON text (sent as is).
    pub body: Vec<u8>,
    /// Extra headers (`x-cpu-timeout-ms`, …).
    pub headers: Vec<(String, String)>,
    /// Wait this long for the outcome; `None`: only wait for the broker's confirm.
    pub wait: Option<Duration>,
}

/// The outcome received with `--wait`.
#[derive(Debug)]
pub struct Reply {
    /// The outcome's body.
    pub body: String,
    /// The error code header, for a failure.
    pub error_code: Option<String>,
}

/// Publishes (with confirm; an event no queue takes is an error) and
/// optionally waits for the reply.
pub async fn publish(
    broker: &BrokerConfig,
    request: PublishRequest,
) -> Result<Option<Reply>, WorkerError> {
    let connection = super::connect::connect(broker, "hyperlight-js-worker publish").await?;
    let channel = super::connect::confirm_channel(&connection).await?;
    let correlation_id = uuid::Uuid::new_v4().to_string();
    let mut replies = match request.wait {
        Some(_) => Some(
            channel
                .basic_consume(
                    DIRECT_REPLY_TO.into(),
                    "hljs-publish".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(WorkerError::broker)?,
        ),
        None => None,
    };
    let mut headers = FieldTable::default();
    for (k, v) in &request.headers {
        headers.insert(k.as_str().into(), text_value(v));
    }
    let mut props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_correlation_id(correlation_id.as_str().into())
        .with_message_id(correlation_id.as_str().into())
        .with_headers(headers);
    if replies.is_some() {
        props = props.with_reply_to(DIRECT_REPLY_TO.into());
    }
    let confirm = channel
        .basic_publish(
            broker.events_exchange.as_str().into(),
            request.key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &request.body,
            props,
        )
        .await
        .map_err(|e| publish_error(broker, &e))?
        .await
        .map_err(|e| publish_error(broker, &e))?;
    match confirm {
        Confirmation::Ack(None) => {}
        Confirmation::Ack(Some(_)) => {
            return Err(WorkerError::Broker(format!(
                "no queue is bound to exchange '{}' with key '{}': is a worker with that handler running (it declares the queue)?",
                broker.events_exchange, request.key
            )));
        }
        Confirmation::Nack(_) => {
            return Err(WorkerError::Broker(
                "the broker refused the event (nack)".into(),
            ));
        }
        Confirmation::NotRequested => {
            return Err(WorkerError::Broker("publisher confirms are off".into()));
        }
    }
    let reply = match (request.wait, replies.as_mut()) {
        (Some(timeout), Some(consumer)) => {
            let wait = async {
                while let Some(delivery) = consumer.next().await {
                    let delivery = delivery.map_err(WorkerError::broker)?;
                    let matches = delivery
                        .properties
                        .correlation_id()
                        .as_ref()
                        .map(|c| c.as_str())
                        == Some(correlation_id.as_str());
                    if matches {
                        return Ok(Reply {
                            body: String::from_utf8_lossy(&delivery.data).into_owned(),
                            error_code: header_text(&delivery.properties, ERROR_CODE_HEADER),
                        });
                    }
                }
                Err(WorkerError::Broker(
                    "the reply consumer was cancelled".into(),
                ))
            };
            Some(
                tokio::time::timeout(timeout, wait)
                    .await
                    .map_err(|_| WorkerError::ReplyTimeout(timeout.as_secs()))??,
            )
        }
        _ => None,
    };
    let _ = connection.close(200, "OK".into()).await;
    Ok(reply)
}

fn publish_error(broker: &BrokerConfig, e: &lapin::Error) -> WorkerError {
    WorkerError::Broker(format!(
        "publishing to exchange '{}' failed: {} (the worker declares the exchange when it starts)",
        broker.events_exchange,
        crate::error::redact_urls(&e.to_string())
    ))
}
