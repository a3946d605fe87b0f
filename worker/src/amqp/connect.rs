//! Opening a connection: `amqp://` or `amqps://` (rustls with the ring
//! backend, certificates verified against the system roots plus an optional
//! CA file). The URL is never logged or put in an error unredacted.

use hyperlight_js_config::{BrokerConfig, SecretUrl};
use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, ConnectionProperties};

use crate::error::WorkerError;

/// Connects to the first of the broker's URLs that answers.
pub async fn connect(broker: &BrokerConfig, name: &str) -> Result<Connection, WorkerError> {
    let mut last = WorkerError::Broker("no broker URL is configured".into());
    for url in broker.endpoints() {
        match connect_to(broker, url, name).await {
            Ok(c) => return Ok(c),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Connects to `url` with the TLS settings of `broker`.
pub async fn connect_to(
    broker: &BrokerConfig,
    url: &SecretUrl,
    name: &str,
) -> Result<Connection, WorkerError> {
    let tls = match &broker.tls_ca_file {
        Some(path) => OwnedTLSConfig {
            identity: None,
            cert_chain: Some(std::fs::read_to_string(path).map_err(|e| {
                WorkerError::Broker(format!(
                    "cannot read [broker] tls_ca_file {}: {e}",
                    path.display()
                ))
            })?),
        },
        None => OwnedTLSConfig::default(),
    };
    let props = ConnectionProperties::default().with_connection_name(name.to_string().into());
    let runtime = lapin::runtime::default_runtime().map_err(WorkerError::broker)?;
    Connection::connect_with_config(url.expose(), props, tls, runtime)
        .await
        .map_err(|e| {
            WorkerError::Broker(format!(
                "cannot connect to {}: {}",
                url.redacted(),
                crate::error::redact_urls(&e.to_string())
            ))
        })
}

/// Opens a channel with publisher confirms turned on: every publish of the
/// worker and of `publish` waits for the broker's confirm.
pub async fn confirm_channel(
    connection: &lapin::Connection,
) -> Result<lapin::Channel, WorkerError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(WorkerError::broker)?;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .map_err(WorkerError::broker)?;
    Ok(channel)
}
