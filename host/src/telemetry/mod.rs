//! OpenTelemetry traces: the exporter (OTLP over HTTP, protobuf) and W3C trace context in message
//! properties, so that a message's way through a producer and a chain of functions is one trace.
//!
//! Tracing is on in a process only when an OTLP endpoint is given (`--otlp-endpoint`, or the
//! standard `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); otherwise
//! [`tracing()`] is `None` and the hot path only copies an input's `traceparent` to its outputs.
//! Sampling follows `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`, as the SDK reads them.

mod propagation;
mod sampling;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use opentelemetry::trace::{Span as _, SpanKind, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::trace::{RandomIdGenerator, Sampler, SdkTracerProvider, ShouldSample};

pub use propagation::{TRACEPARENT, context_of, set_traceparent, traceparent_of};
pub use sampling::Tracing;

use crate::worker::client::OtlpTransport;
use sampling::{ChosenIds, SharedSampler};

/// The environment variables that name a collector, as OpenTelemetry defines them.
const ENDPOINT_VARIABLES: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"];

/// Whether a tracer is installed: the one thing the hot path reads while tracing is off.
static ENABLED: AtomicBool = AtomicBool::new(false);
/// The installed tracer.
static INSTALLED: RwLock<Option<Arc<Tracing>>> = RwLock::new(None);
/// Numbers the [`Telemetry`]s a process starts.
static STARTED: AtomicU64 = AtomicU64::new(0);

/// The process's tracer, while tracing is on.
pub fn tracing() -> Option<Arc<Tracing>> {
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    INSTALLED.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
}

/// Exports spans while it lives; dropping it sends what is left and turns tracing off.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    number: u64,
}

impl Telemetry {
    /// Starts exporting to `endpoint` (a collector's base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// has it) or to the collector the environment names; `None` when neither names one, or when
    /// `OTEL_SDK_DISABLED` is `true`. `service` is the resource's `service.name` unless
    /// `OTEL_SERVICE_NAME` says otherwise; sampling is `OTEL_TRACES_SAMPLER`'s.
    pub fn start(endpoint: Option<&str>, service: &'static str) -> anyhow::Result<Option<Self>> {
        let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|value| value.eq_ignore_ascii_case("true"));
        let from_environment = ENDPOINT_VARIABLES.iter().any(|name| std::env::var_os(name).is_some());
        if disabled || (endpoint.is_none() && !from_environment) {
            return Ok(None);
        }
        // The SDK's default configuration is the environment's sampler.
        let sampler = opentelemetry_sdk::trace::Config::default().sampler;
        Self::install(endpoint, service, Arc::from(sampler)).map(Some)
    }

    /// Starts exporting to `endpoint`, tracing a `ratio` (0 to 1) of new traces and every message
    /// whose trace is sampled, whatever the environment says: for the benchmark, which compares
    /// ratios in one process.
    pub fn start_sampling(endpoint: &str, service: &'static str, ratio: f64) -> anyhow::Result<Self> {
        let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)));
        Self::install(Some(endpoint), service, Arc::new(sampler))
    }

    fn install(endpoint: Option<&str>, service: &'static str, sampler: Arc<dyn ShouldSample>) -> anyhow::Result<Self> {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_http_client(OtlpTransport::new());
        if let Some(endpoint) = endpoint {
            exporter = exporter.with_endpoint(traces_url(endpoint));
        }
        let exporter = exporter.build().map_err(|error| {
            anyhow::anyhow!("cannot export traces ({error}); check --otlp-endpoint or OTEL_EXPORTER_OTLP_ENDPOINT")
        })?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(service);
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .with_sampler(SharedSampler(sampler.clone()))
            .with_id_generator(ChosenIds::default())
            .build();
        let number = STARTED.fetch_add(1, Ordering::Relaxed);
        let tracing = Tracing {
            tracer: provider.tracer("fnhost"),
            sampler,
            ids: RandomIdGenerator::default(),
            installed_by: number,
        };
        *INSTALLED.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(tracing));
        ENABLED.store(true, Ordering::Relaxed);
        Ok(Self { provider, number })
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let mut installed = INSTALLED.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if installed.as_ref().is_some_and(|tracing| tracing.installed_by == self.number) {
            ENABLED.store(false, Ordering::Relaxed);
            *installed = None;
        }
        drop(installed);
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!("some spans may not have been exported: {error}");
        }
    }
}

/// The OTLP/HTTP traces URL under a collector's base URL.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    match base.ends_with("/v1/traces") {
        true => base.to_owned(),
        false => format!("{base}/v1/traces"),
    }
}

/// Starts a producer's span for a message to `topic`, child of the trace `properties` already
/// name (if any), and writes its context into them; `None` while tracing is off or when the span
/// is not sampled. End it when the message is stored.
pub fn start_send(topic: &str, properties: &mut Vec<(String, String)>) -> Option<opentelemetry_sdk::trace::Span> {
    let tracing = tracing()?;
    let parent = context_of(properties.iter());
    let span = tracing.start_sampled("send", SpanKind::Producer, &parent, |span| {
        span.with_attributes([
            opentelemetry::KeyValue::new("messaging.system", "fnhost"),
            opentelemetry::KeyValue::new("messaging.destination.name", topic.to_owned()),
        ])
    })?;
    if let Some(traceparent) = traceparent_of(span.span_context()) {
        set_traceparent(properties, traceparent);
    }
    Some(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_a_base_url_unless_it_names_the_traces_path() {
        assert_eq!(traces_url("http://127.0.0.1:4318"), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(traces_url("http://127.0.0.1:4318/"), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(traces_url("http://collector/v1/traces"), "http://collector/v1/traces");
    }
}
