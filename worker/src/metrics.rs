//! Prometheus metrics, served at `/metrics`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric the worker exports (names prefixed `hljs_`).
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Messages finished, by key, outcome (`ok` or the error code) and
    /// `handler_version` (empty for a message no handler judged).
    pub messages: IntCounterVec,
    /// Receipt to acknowledgement, by key.
    pub message_seconds: HistogramVec,
    /// Time inside the sandbox call, by key.
    pub handler_seconds: HistogramVec,
    /// Snapshot restores after a message, by key and result (`ok`, `rebuilt`, `lost`).
    pub restores: IntCounterVec,
    /// Snapshot cache lookups at pool load, by key and outcome (`hit`,
    /// `miss`, `rebuild`; `stored` when this worker wrote the entry).
    pub snapshot_cache: IntCounterVec,
    /// Configured sandboxes per key.
    pub pool_size: IntGaugeVec,
    /// Sandboxes currently running a message, by key.
    pub pool_busy: IntGaugeVec,
    /// Messages handed back to the queue (`basic.reject` with requeue), by key and reason.
    pub requeued: IntCounterVec,
    /// Messages the worker dead-lettered, by key and error code.
    pub dead_lettered: IntCounterVec,
    /// Delayed retries scheduled, by key and the code that caused them.
    pub retried: IntCounterVec,
    /// Broker sessions re-established after a lost connection.
    pub reconnects: IntCounter,
    /// 1 while a broker session is up.
    pub broker_connected: IntGauge,
    /// 1 for the handler version each key serves now, by key and `handler_version`.
    pub handler_version: IntGaugeVec,
    /// Hot reloads that swapped in a key's new handler (code or settings), by key.
    pub reloads: IntCounterVec,
    /// Hot reloads refused, by key (`*`: the configuration as a whole) and
    /// error code; the key keeps serving its current version.
    pub reload_failures: IntCounterVec,
}

const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| unreachable_metric(name, e));
            register(&registry, Box::new(c.clone()), name);
            c
        };
        let hist_vec = |name: &str, help: &str| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
                &["key"],
            )
            .unwrap_or_else(|e| unreachable_metric(name, e));
            register(&registry, Box::new(h.clone()), name);
            h
        };
        let gauge_vec = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["key"])
                .unwrap_or_else(|e| unreachable_metric(name, e));
            register(&registry, Box::new(g.clone()), name);
            g
        };
        let messages = counter_vec(
            "hljs_messages_total",
            "Messages finished, by routing key, outcome (ok or error code) and handler version.",
            &["key", "outcome", "handler_version"],
        );
        let message_seconds = hist_vec(
            "hljs_message_duration_seconds",
            "Receipt of a message to its acknowledgement (or outcome line).",
        );
        let handler_seconds = hist_vec(
            "hljs_handler_duration_seconds",
            "Time inside the sandbox call.",
        );
        let restores = counter_vec(
            "hljs_restores_total",
            "Snapshot restores after a message, by result.",
            &["key", "result"],
        );
        let snapshot_cache = counter_vec(
            "hljs_snapshot_cache_total",
            "Snapshot cache lookups at pool load, by outcome (hit, miss, rebuild, stored).",
            &["key", "outcome"],
        );
        let pool_size = gauge_vec("hljs_pool_size", "Sandboxes configured per routing key.");
        let pool_busy = gauge_vec("hljs_pool_busy", "Sandboxes currently running a message.");
        let requeued = counter_vec(
            "hljs_requeued_total",
            "Messages handed back to their queue, by reason.",
            &["key", "reason"],
        );
        let dead_lettered = counter_vec(
            "hljs_dead_lettered_total",
            "Messages the worker dead-lettered after their last attempt, by error code.",
            &["key", "code"],
        );
        let retried = counter_vec(
            "hljs_retries_total",
            "Delayed retries scheduled, by the error code that caused them.",
            &["key", "code"],
        );
        let reconnects = IntCounter::new(
            "hljs_reconnects_total",
            "Broker sessions re-established after a lost connection.",
        )
        .unwrap_or_else(|e| unreachable_metric("hljs_reconnects_total", e));
        register(
            &registry,
            Box::new(reconnects.clone()),
            "hljs_reconnects_total",
        );
        let broker_connected =
            IntGauge::new("hljs_broker_connected", "1 while a broker session is up.")
                .unwrap_or_else(|e| unreachable_metric("hljs_broker_connected", e));
        register(
            &registry,
            Box::new(broker_connected.clone()),
            "hljs_broker_connected",
        );
        let handler_version = IntGaugeVec::new(
            Opts::new(
                "hljs_handler_version",
                "1 for the handler version (short hash of its code) each key serves now.",
            ),
            &["key", "handler_version"],
        )
        .unwrap_or_else(|e| unreachable_metric("hljs_handler_version", e));
        register(
            &registry,
            Box::new(handler_version.clone()),
            "hljs_handler_version",
        );
        let reloads = counter_vec(
            "hljs_reloads_total",
            "Hot reloads that swapped in a key's new handler (code or settings).",
            &["key"],
        );
        let reload_failures = counter_vec(
            "hljs_reload_failures_total",
            "Hot reloads refused (the key keeps its current version), by key ('*': the whole configuration) and code.",
            &["key", "code"],
        );
        Self {
            registry,
            messages,
            message_seconds,
            handler_seconds,
            restores,
            snapshot_cache,
            pool_size,
            pool_busy,
            requeued,
            dead_lettered,
            retried,
            reconnects,
            broker_connected,
            handler_version,
            reloads,
            reload_failures,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn register(registry: &Registry, c: Box<dyn prometheus::core::Collector>, name: &str) {
    if let Err(e) = registry.register(c) {
        unreachable_metric(name, e)
    }
}

/// Metric definitions are constants: a failure here is a programming error
/// caught by the unit test below, never a run-time condition.
#[allow(clippy::panic)]
fn unreachable_metric(name: &str, e: prometheus::Error) -> ! {
    panic!("metric {name} is misdefined: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_once_used() {
        let m = Metrics::new();
        m.messages
            .with_label_values(&["greet", "ok", "0123456789ab"])
            .inc();
        m.handler_version
            .with_label_values(&["greet", "0123456789ab"])
            .set(1);
        m.reload_failures
            .with_label_values(&["greet", "ERR_COMPILE"])
            .inc();
        m.message_seconds.with_label_values(&["greet"]).observe(0.1);
        m.pool_size.with_label_values(&["greet"]).set(2);
        m.reconnects.inc();
        let text = m.render();
        for name in [
            "hljs_messages_total{handler_version=\"0123456789ab\",key=\"greet\",outcome=\"ok\"} 1",
            "hljs_handler_version{handler_version=\"0123456789ab\",key=\"greet\"} 1",
            "hljs_reload_failures_total{code=\"ERR_COMPILE\",key=\"greet\"} 1",
            "hljs_message_duration_seconds_bucket",
            "hljs_pool_size{key=\"greet\"} 2",
            "hljs_reconnects_total 1",
            "hljs_broker_connected 0",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
