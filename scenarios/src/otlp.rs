//! OTLP export of the platform's spans (cargo feature `otlp`, real build;
//! off by default): `fafnir up --otlp-endpoint http://collector:4318`
//! sends every RPC span and every hop of an order (engine match, portfolio
//! settlement) to an OpenTelemetry collector over OTLP/HTTP, each joined to
//! the order's trace (the `traceparent` the platform carries in gRPC
//! metadata and NATS headers; see `fafnir_platform::telemetry::trace`).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::Layer;

/// The span exporter; [`Exporter::shutdown`] sends what it still holds.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Exports every span ended so far and stops.
    pub fn shutdown(self) {
        let _ = self.provider.force_flush();
        let _ = self.provider.shutdown();
    }
}

/// A tracing layer that exports the platform's spans (target
/// [`fafnir_platform::telemetry::SPANS`]) to the OTLP/HTTP collector at
/// `endpoint` (for example `http://127.0.0.1:4318`), in batches from a
/// thread of its own, as `service_name`.
pub fn layer<S>(endpoint: &str, service_name: &str) -> Result<(impl Layer<S>, Exporter), String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(traces)
        .with_timeout(std::time::Duration::from_secs(5))
        .with_headers(Default::default())
        .build()
        .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service_name.to_string()).build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    let tracer = provider.tracer("fafnir");
    let only_spans = Targets::new().with_target(fafnir_platform::telemetry::SPANS, LevelFilter::DEBUG);
    let layer = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(only_spans);
    Ok((layer, Exporter { provider }))
}
