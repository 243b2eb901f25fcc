//! W3C Trace Context in message properties: what a message's `traceparent` says of the trace it
//! is in, and what the messages a span sends carry.

use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// The message property that carries W3C trace context (`00-TRACE-SPAN-FLAGS`).
pub const TRACEPARENT: &str = "traceparent";

/// The trace context `properties` carry, as the parent of a span; an empty context when they carry
/// none or a malformed one (a new trace then starts).
pub fn context_of<'a>(properties: impl IntoIterator<Item = &'a (String, String)>) -> opentelemetry::Context {
    let mut carrier = Carrier(Vec::new());
    for (name, value) in properties {
        if name == TRACEPARENT || name == "tracestate" {
            carrier.0.push((name.clone(), value.clone()));
        }
    }
    if carrier.0.is_empty() {
        // No trace to join (most messages): a new one starts.
        return opentelemetry::Context::new();
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// The `traceparent` of a span, to write into the messages it sends (W3C Trace Context, version 00).
pub fn traceparent_of(span: &opentelemetry::trace::SpanContext) -> Option<String> {
    span.is_valid().then(|| format!("00-{}-{}-{:02x}", span.trace_id(), span.span_id(), span.trace_flags().to_u8()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState};

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
}
