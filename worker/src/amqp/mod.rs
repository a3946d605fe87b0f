//! The broker path: connect, declare, consume each key's queue, publish
//! outcomes with confirms, reconnect with backoff, drain on shutdown.

pub mod client;
pub mod connect;
pub mod consumer;
pub mod delivery;
pub mod headers;
pub mod publisher;
pub mod replay;
pub mod retry;
pub mod topology;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hyperlight_js_config::WorkerConfig;
use lapin::Connection;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::error::WorkerError;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::process::Processor;
use consumer::{KeyConsumer, SessionContext};
use publisher::Publisher;

/// Runs the broker path until `shutdown` is cancelled, then drains: stops
/// consuming, lets in-flight messages finish within the drain timeout (each
/// is acked after its outcome is confirmed), and closes the connection, so
/// unfinished messages go back to their queues.
pub async fn run(
    config: &WorkerConfig,
    processor: Arc<Processor>,
    health: Arc<Health>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let tracker = TaskTracker::new();
    let mut backoff = Backoff::new(
        Duration::from_millis(config.broker.reconnect_initial_ms),
        Duration::from_millis(config.broker.reconnect_max_ms),
    );
    let drain = Duration::from_secs(config.shutdown.drain_timeout_secs);
    let endpoints = config.broker.endpoints();
    // The URL to try next: after a failure or a lost connection, the next
    // node's; a full round of failures waits for the backoff.
    let mut next = 0usize;
    let mut failed_in_round = 0usize;
    let mut sessions = 0u64;
    while !shutdown.is_cancelled() {
        let Some(url) = endpoints.get(next % endpoints.len().max(1)) else {
            return Err(WorkerError::Broker("no broker URL is configured".into()));
        };
        let connection = tokio::select! {
            _ = shutdown.cancelled() => break,
            c = connect::connect_to(&config.broker, url, "hyperlight-js-worker") => c,
        };
        let connection = match connection {
            Ok(c) => c,
            Err(e) => {
                next += 1;
                failed_in_round += 1;
                if failed_in_round < endpoints.len() {
                    warn!(code = e.code(), error = %e, "broker unavailable; trying the next URL");
                    continue;
                }
                failed_in_round = 0;
                let delay = backoff.next_delay();
                warn!(code = e.code(), error = %e, retry_in_ms = delay.as_millis() as u64, "broker unavailable");
                sleep_or_shutdown(delay, &shutdown).await;
                continue;
            }
        };
        let mut session = match Session::start(&connection, config, &processor, &metrics, &tracker)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                next += 1;
                let delay = backoff.next_delay();
                warn!(code = e.code(), error = %e, retry_in_ms = delay.as_millis() as u64, "broker session setup failed");
                close(&connection).await;
                sleep_or_shutdown(delay, &shutdown).await;
                continue;
            }
        };
        backoff.reset();
        failed_in_round = 0;
        if sessions > 0 {
            metrics.reconnects.inc();
        }
        sessions += 1;
        health.set_broker_connected(true);
        metrics.broker_connected.set(1);
        info!(broker = %url.redacted(), keys = ?processor.keys().collect::<Vec<_>>(), "connected; consuming");

        let end = session.wait(&connection, &shutdown).await;
        health.set_broker_connected(false);
        metrics.broker_connected.set(0);
        match end {
            SessionEnd::Shutdown => {
                // The channels stay open while draining: acks go over them.
                drain_tasks(&tracker, drain).await;
                session.close().await;
                close(&connection).await;
                info!("drained; connection closed");
                return Ok(());
            }
            SessionEnd::Lost(reason) => {
                session.close().await;
                close(&connection).await;
                if endpoints.len() > 1 {
                    // Another node may serve at once; the backoff starts if none does.
                    next += 1;
                    warn!(reason = %reason, "broker connection lost; connecting to the next URL");
                    let pause = Duration::from_millis(config.broker.reconnect_initial_ms);
                    sleep_or_shutdown(pause, &shutdown).await;
                } else {
                    warn!(reason = %reason, "broker connection lost; reconnecting");
                    sleep_or_shutdown(backoff.next_delay(), &shutdown).await;
                }
            }
        }
    }
    // Shut down while disconnected: in-flight messages cannot be acked any more.
    drain_tasks(&tracker, drain).await;
    Ok(())
}

enum SessionEnd {
    Shutdown,
    Lost(String),
}

struct Session {
    consumers: JoinSet<Result<(), String>>,
    stop: CancellationToken,
    /// Every channel of the session: dropping the last handle of a channel
    /// closes it, which would fail the acks of messages still in flight.
    channels: Vec<lapin::Channel>,
}

impl Session {
    async fn start(
        connection: &Connection,
        config: &WorkerConfig,
        processor: &Arc<Processor>,
        metrics: &Metrics,
        tracker: &TaskTracker,
    ) -> Result<Self, WorkerError> {
        let keys: Vec<String> = processor.keys().map(str::to_string).collect();
        let setup = connection
            .create_channel()
            .await
            .map_err(WorkerError::broker)?;
        let limits: Vec<(String, u32)> = keys
            .iter()
            .map(|k| {
                let max = processor
                    .delivery_policy(k)
                    .map_or(config.broker.max_deliveries, |(max, _)| max);
                (k.clone(), max)
            })
            .collect();
        topology::declare(&setup, &config.broker, &limits).await?;
        let publisher = Publisher::open(connection, &config.broker.results_exchange).await?;
        let mut channels = vec![setup.clone(), publisher.channel().clone()];
        let ctx = Arc::new(SessionContext {
            processor: Arc::clone(processor),
            publisher,
            default_max_deliveries: config.broker.max_deliveries,
            dead_letter_exchange: config.broker.dead_letter_exchange.clone(),
            topology: tokio::sync::Mutex::new(consumer::TopologyChannel {
                channel: setup,
                declared: Default::default(),
            }),
            metrics: metrics.clone(),
        });
        let stop = CancellationToken::new();
        let mut consumers = JoinSet::new();
        for key in &keys {
            // Sized to the pool: `prefetch_per_sandbox` messages per sandbox.
            let pool = processor.pool(key).map_or(1, |p| p.size());
            let prefetch = u16::try_from(pool)
                .unwrap_or(u16::MAX)
                .saturating_mul(config.broker.prefetch_per_sandbox);
            let consumer = match KeyConsumer::start(connection, key, prefetch).await {
                Ok(c) => c,
                Err(e) => {
                    stop.cancel();
                    return Err(e);
                }
            };
            channels.push(consumer.channel().clone());
            consumers.spawn(consumer.run(Arc::clone(&ctx), tracker.clone(), stop.clone()));
        }
        Ok(Self {
            consumers,
            stop,
            channels,
        })
    }

    async fn wait(&mut self, connection: &Connection, shutdown: &CancellationToken) -> SessionEnd {
        let mut events = connection.events_listener();
        let end = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break SessionEnd::Shutdown,
                done = self.consumers.join_next() => {
                    break SessionEnd::Lost(match done {
                        Some(Ok(Err(reason))) => reason,
                        Some(Ok(Ok(()))) => "a consumer stopped".into(),
                        Some(Err(e)) => format!("a consumer task failed: {e}"),
                        None => "no consumers".into(),
                    });
                }
                event = events.next() => match event {
                    Some(lapin::Event::Error(e)) => break SessionEnd::Lost(crate::error::redact_urls(&e.to_string())),
                    Some(lapin::Event::ConnectionBlocked(reason)) => warn!(%reason, "the broker blocked the connection"),
                    Some(lapin::Event::ConnectionUnblocked) => info!("the broker unblocked the connection"),
                    Some(_) => {}
                    None => break SessionEnd::Lost("the connection's event stream ended".into()),
                },
            }
        };
        // Stop taking deliveries; consumers cancel themselves at the broker.
        self.stop.cancel();
        while self.consumers.join_next().await.is_some() {}
        end
    }

    async fn close(self) {
        for channel in self.channels {
            if channel.status().connected()
                && let Err(e) = channel.close(200, "OK".into()).await
            {
                tracing::debug!(error = %e, "closing a channel failed");
            }
        }
    }
}

async fn drain_tasks(tracker: &TaskTracker, timeout: Duration) {
    tracker.close();
    if tracker.is_empty() {
        return;
    }
    info!(
        in_flight = tracker.len(),
        timeout_secs = timeout.as_secs(),
        "draining in-flight messages"
    );
    if tokio::time::timeout(timeout, tracker.wait()).await.is_err() {
        error!(
            unfinished = tracker.len(),
            "drain timeout: unfinished messages are returned to their queues when the connection closes"
        );
    }
}

async fn close(connection: &Connection) {
    if connection.status().connected()
        && let Err(e) = connection.close(200, "OK".into()).await
    {
        warn!(error = %e, "closing the connection failed");
    }
}

async fn sleep_or_shutdown(delay: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}

/// Exponential backoff with jitter (50–100 % of the step).
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `initial`, doubles per attempt, caps at `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let step = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as u32;
        step / 2 + step / 2 * jitter / 1000
    }

    /// Back to the initial delay after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let d: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[2] >= Duration::from_millis(200) && d[2] <= Duration::from_millis(400));
        assert!(d.iter().all(|x| *x <= Duration::from_millis(1000)));
        assert!(d[7] >= Duration::from_millis(500));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
