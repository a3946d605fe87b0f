//! Logs (human or JSON, to standard error) and OpenTelemetry traces.
//!
//! Spans always get OpenTelemetry trace and span ids, so the W3C trace
//! context taken from a message's headers reaches the published outcome even
//! when nothing is exported; with `[telemetry] otlp_endpoint` set, spans are
//! also exported over OTLP/gRPC.

use hyperlight_js_config::{LogFormat, TelemetryConfig};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::error::WorkerError;

/// Log filter when `RUST_LOG` is not set.
pub const DEFAULT_LOG_FILTER: &str = "info,hyperlight_host=error,hyperlight_js_engine=off";
/// Which spans become OpenTelemetry spans.
const TRACE_FILTER: &str = "info,hyperlight_host=off";

/// Keeps the tracer provider alive; [`shutdown`](Self::shutdown) flushes it.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Flushes pending spans and stops the exporter.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("telemetry: flushing traces failed: {e}");
        }
    }
}

/// Installs the global subscriber and the W3C trace-context propagator.
/// Must run inside the tokio runtime (the OTLP client needs it). `RUST_LOG`
/// sets the filter (default `info`).
pub fn init(config: &TelemetryConfig) -> Result<Telemetry, WorkerError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = &config.otlp_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|e| WorkerError::Telemetry(format!("OTLP exporter for {endpoint}: {e}")))?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let tracer = provider.tracer("hyperlight-js-worker");
    opentelemetry::global::set_tracer_provider(provider.clone());

    // Logs: RUST_LOG, by default info without the engine's own per-call error events (a
    // handler that throws is an outcome, not a worker error) and without hyperlight's chatter.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let fmt = match config.log_format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    // Traces: every span of the worker and the engine (message, pool.acquire, sandbox.call, …).
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(EnvFilter::new(TRACE_FILTER));
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()
        .map_err(|e| WorkerError::Telemetry(e.to_string()))?;
    if let Some(endpoint) = &config.otlp_endpoint {
        tracing::info!(endpoint = %hyperlight_js_config::redact_url(endpoint), "exporting traces over OTLP");
    }
    Ok(Telemetry { provider })
}
