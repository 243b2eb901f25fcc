//! A processed message's OpenTelemetry span, child of the span its `traceparent` names, with a
//! child for the guest call and one for the commit; made only while tracing is on
//! ([`telemetry::tracer`]).
//!
//! The message's span starts when its batch reaches the function, so that its outputs carry its
//! context, and ends when the batch's commit returns; the guest call's and the commit's spans
//! are written then, with the times they were measured at.

use std::time::{Duration, SystemTime};

use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, Span};

use crate::engine::broker::BrokerError;
use crate::names::Fqfn;
use crate::runtime::GuestMessage;
use crate::telemetry;

/// How a traced message ended, as its span's `fnhost.outcome` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TracedOutcome {
    /// The function succeeded and the message is acknowledged.
    Succeeded,
    /// The function succeeded but did not acknowledge the message (MANUAL).
    NotAcknowledged,
    /// Every try failed, and the message went to the dead-letter topic.
    DeadLettered,
}

impl TracedOutcome {
    fn name(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::NotAcknowledged => "not-acknowledged",
            Self::DeadLettered => "dead-lettered",
        }
    }
}

/// The span of one message of a batch.
pub(super) struct MessageSpan {
    span: Span,
    /// Its context as the messages it sends carry it.
    traceparent: Option<String>,
    /// How many times the message was delivered before.
    redeliveries: u32,
    /// When the function's last try of it started and ended.
    guest_call: Option<(SystemTime, SystemTime)>,
}

impl MessageSpan {
    /// Starts the span of `message`, delivered `redeliveries` times before, for instance
    /// `instance_id` of `fqfn`.
    pub(super) fn start(
        tracer: &SdkTracer,
        fqfn: &Fqfn,
        instance_id: u32,
        message: &GuestMessage,
        redeliveries: u32,
    ) -> Self {
        let parent = telemetry::context_of(&message.properties);
        let span = tracer
            .span_builder("process")
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new("fnhost.function", fqfn.to_string()),
                KeyValue::new("fnhost.instance", i64::from(instance_id)),
                KeyValue::new("messaging.system", "fnhost"),
                KeyValue::new("messaging.destination.name", message.topic.clone()),
                KeyValue::new("messaging.message.id", message.message_id.clone()),
            ])
            .start_with_context(tracer, &parent);
        let traceparent = telemetry::traceparent_of(span.span_context());
        Self { span, traceparent, redeliveries, guest_call: None }
    }

    /// The `traceparent` the message's outputs carry.
    pub(super) fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// Notes how the message ended, after `tries` tries of which the last took `elapsed`.
    pub(super) fn processed(&mut self, outcome: TracedOutcome, tries: u32, elapsed: Duration) {
        let ended = SystemTime::now();
        self.guest_call = Some((ended.checked_sub(elapsed).unwrap_or(ended), ended));
        self.span.set_attribute(KeyValue::new("fnhost.outcome", outcome.name()));
        let retries = self.redeliveries.saturating_add(tries.saturating_sub(1));
        self.span.set_attribute(KeyValue::new("fnhost.retries", i64::from(retries)));
    }
}

/// Ends the spans of a batch whose commit started at `started` and returned `result` just now.
pub(super) fn committed(spans: Vec<MessageSpan>, started: SystemTime, result: &Result<(), BrokerError>) {
    let Some(tracer) = telemetry::tracer() else { return };
    let ended = SystemTime::now();
    for message in spans {
        let MessageSpan { mut span, guest_call, .. } = message;
        if !span.is_recording() {
            continue;
        }
        if let Err(error) = result {
            span.set_status(Status::error(error.to_string()));
        }
        let parent = Context::new().with_span(span);
        if let Some((start, end)) = guest_call {
            let mut call = tracer.span_builder("guest call").with_start_time(start).start_with_context(tracer, &parent);
            call.end_with_timestamp(end);
        }
        let mut commit = tracer.span_builder("commit").with_start_time(started).start_with_context(tracer, &parent);
        if let Err(error) = result {
            commit.set_status(Status::error(error.to_string()));
        }
        commit.end_with_timestamp(ended);
        parent.span().end_with_timestamp(ended);
    }
}
