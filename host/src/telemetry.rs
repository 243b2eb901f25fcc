//! OpenTelemetry traces: the exporter (OTLP over HTTP, protobuf) and W3C trace context in message
//! properties, so that a message's way through a producer and a chain of functions is one trace.
//!
//! Tracing is on in a process only when an OTLP endpoint is given (`--otlp-endpoint`, or the
//! standard `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); otherwise
//! [`tracer`] is `None` and the hot path only copies an input's `traceparent` to its outputs.
//! Sampling follows `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`, as the SDK reads them.

use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::worker::client::OtlpTransport;

/// The message property that carries W3C trace context (`00-TRACE-SPAN-FLAGS`).
pub const TRACEPARENT: &str = "traceparent";

/// The environment variables that name a collector, as OpenTelemetry defines them.
const ENDPOINT_VARIABLES: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"];

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The process's tracer, when tracing is on.
pub fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

/// Exports spans while it lives; dropping it sends what is left.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Starts exporting to `endpoint` (a collector's base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// has it) or to the collector the environment names; `None` when neither names one, or when
    /// `OTEL_SDK_DISABLED` is `true`. `service` is the resource's `service.name` unless
    /// `OTEL_SERVICE_NAME` says otherwise.
    pub fn start(endpoint: Option<&str>, service: &'static str) -> anyhow::Result<Option<Self>> {
        let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|value| value.eq_ignore_ascii_case("true"));
        let from_environment = ENDPOINT_VARIABLES.iter().any(|name| std::env::var_os(name).is_some());
        if disabled || (endpoint.is_none() && !from_environment) {
            return Ok(None);
        }
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
        let provider =
            SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build();
        // A process exports to one collector: a second start (tests that open many workers in
        // one process) keeps the first tracer.
        let _ = TRACER.set(provider.tracer("fnhost"));
        Ok(Some(Self { provider }))
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
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

/// The trace context `properties` carry, as the parent of a span; an empty context when they carry
/// none or a malformed one (a new trace then starts).
pub fn context_of<'a>(properties: impl IntoIterator<Item = &'a (String, String)>) -> opentelemetry::Context {
    let carrier = Carrier(
        properties.into_iter().filter(|(name, _)| name == TRACEPARENT || name == "tracestate").cloned().collect(),
    );
    TraceContextPropagator::new().extract(&carrier)
}

/// The `traceparent` of a span, to write into the messages it sends.
pub fn traceparent_of(span: &opentelemetry::trace::SpanContext) -> Option<String> {
    let context = opentelemetry::Context::new().with_remote_span_context(span.clone());
    let mut carrier = Carrier(Vec::new());
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.0.into_iter().find(|(name, _)| name == TRACEPARENT).map(|(_, value)| value)
}

/// Starts a producer's span for a message to `topic`, child of the trace `properties` already
/// name (if any), and writes its context into them; `None` while tracing is off. End it when
/// the message is stored.
pub fn start_send(topic: &str, properties: &mut Vec<(String, String)>) -> Option<opentelemetry_sdk::trace::Span> {
    use opentelemetry::trace::Tracer as _;
    let tracer = tracer()?;
    let parent = context_of(properties.iter());
    let span = tracer
        .span_builder("send")
        .with_kind(opentelemetry::trace::SpanKind::Producer)
        .with_attributes([
            opentelemetry::KeyValue::new("messaging.system", "fnhost"),
            opentelemetry::KeyValue::new("messaging.destination.name", topic.to_owned()),
        ])
        .start_with_context(tracer, &parent);
    if let Some(traceparent) = traceparent_of(opentelemetry::trace::Span::span_context(&span)) {
        set_traceparent(properties, traceparent);
    }
    Some(span)
}

/// Sets `properties`' `traceparent` to `traceparent`, replacing any there.
pub fn set_traceparent(properties: &mut Vec<(String, String)>, traceparent: String) {
    match properties.iter_mut().find(|(name, _)| name == TRACEPARENT) {
        Some((_, value)) => *value = traceparent,
        None => properties.push((TRACEPARENT.to_owned(), traceparent)),
    }
}

/// Message properties as OpenTelemetry's propagators read and write them.
struct Carrier(Vec<(String, String)>);

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(name, _)| name.eq_ignore_ascii_case(key)).map(|(_, value)| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_str()).collect()
    }
}

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    #[test]
    fn trace_context_goes_through_message_properties_and_a_malformed_one_starts_a_new_trace() {
        let span = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let traceparent = traceparent_of(&span).unwrap();
        assert_eq!(traceparent, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let mut properties = vec![("a".to_owned(), "b".to_owned())];
        set_traceparent(&mut properties, traceparent.clone());
        set_traceparent(&mut properties, traceparent);
        assert_eq!(properties.len(), 2, "a second write replaces the first");
        let parent = context_of(&properties);
        assert_eq!(parent.span().span_context().trace_id(), span.trace_id());
        assert_eq!(parent.span().span_context().span_id(), span.span_id());
        for malformed in ["", "00-zz-00f067aa0ba902b7-01", &"0".repeat(10_000)] {
            let properties = vec![(TRACEPARENT.to_owned(), malformed.to_owned())];
            assert!(!context_of(&properties).span().span_context().is_valid(), "{malformed:.20}");
        }
    }

    #[test]
    fn an_endpoint_is_a_base_url_unless_it_names_the_traces_path() {
        assert_eq!(traces_url("http://127.0.0.1:4318"), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(traces_url("http://127.0.0.1:4318/"), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(traces_url("http://collector/v1/traces"), "http://collector/v1/traces");
    }
}
