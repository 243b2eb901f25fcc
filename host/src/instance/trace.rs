//! A processed message's OpenTelemetry span, child of the span its `traceparent` names, with a
//! child for the guest call and one for the commit; made only while tracing is on
//! ([`telemetry::tracing`]) and only for a message the sampler keeps.
//!
//! The message's span starts when its batch reaches the function, so that its outputs carry its
//! context, and ends when the batch's commit returns; the guest call's and the commit's spans
//! are written then, with the times they were measured at.

use std::time::{Duration, SystemTime};

use opentelemetry::trace::{Span as _, SpanBuilder, SpanKind, Status, TraceContextExt as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::Span;

use crate::engine::broker::BrokerError;
use crate::names::Fqfn;
use crate::runtime::GuestMessage;
use crate::telemetry::{self, Tracing};

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

/// The span of a sampled message of a batch (an unsampled message has none: most, at a low ratio).
pub(super) struct MessageSpan(Box<Recording>);

struct Recording {
    span: Span,
    /// How many times the message was delivered before.
    redeliveries: u32,
    /// When the function's last try of it started and ended.
    guest_call: Option<(SystemTime, SystemTime)>,
}

impl MessageSpan {
    /// Starts the span of `message`, delivered `redeliveries` times before, for instance
    /// `instance_id` of `fqfn`, if the sampler keeps it.
    pub(super) fn start(
        tracing: &Tracing,
        fqfn: &Fqfn,
        instance_id: u32,
        message: &GuestMessage,
        redeliveries: u32,
    ) -> Option<Self> {
        let parent = telemetry::context_of(&message.properties);
        let span = tracing.start_sampled("process", SpanKind::Consumer, &parent, |span| {
            span.with_attributes([
                KeyValue::new("fnhost.function", fqfn.to_string()),
                KeyValue::new("fnhost.instance", i64::from(instance_id)),
                KeyValue::new("messaging.system", "fnhost"),
                KeyValue::new("messaging.destination.name", message.topic.clone()),
                KeyValue::new("messaging.message.id", message.message_id.clone()),
            ])
        })?;
        Some(Self(Box::new(Recording { span, redeliveries, guest_call: None })))
    }

    /// The `traceparent` the message's outputs carry, if it is sampled.
    ///
    /// An unsampled message's outputs carry what its input carried, as when tracing is off: a
    /// `traceparent` on every output cost the session pipeline 10% of its throughput
    /// (docs/BENCHMARKS.md), and leaving it out loses nothing of a sampled trace.
    pub(super) fn traceparent(&self) -> Option<String> {
        let context = self.0.span.span_context();
        context.is_sampled().then(|| telemetry::traceparent_of(context)).flatten()
    }

    /// Notes how the message ended, after `tries` tries of which the last took `elapsed`.
    pub(super) fn processed(&mut self, outcome: TracedOutcome, tries: u32, elapsed: Duration) {
        let recording = &mut *self.0;
        let ended = SystemTime::now();
        recording.guest_call = Some((ended.checked_sub(elapsed).unwrap_or(ended), ended));
        recording.span.set_attribute(KeyValue::new("fnhost.outcome", outcome.name()));
        let retries = recording.redeliveries.saturating_add(tries.saturating_sub(1));
        recording.span.set_attribute(KeyValue::new("fnhost.retries", i64::from(retries)));
    }
}

/// Ends the spans of a batch whose commit started at `started` and returned `result` just now.
pub(super) fn committed(spans: Vec<MessageSpan>, started: SystemTime, result: &Result<(), BrokerError>) {
    let Some(tracing) = telemetry::tracing() else { return };
    let ended = SystemTime::now();
    for MessageSpan(recording) in spans {
        let Recording { mut span, guest_call, .. } = *recording;
        if let Err(error) = result {
            span.set_status(Status::error(error.to_string()));
        }
        let parent = Context::new().with_span(span);
        if let Some((start, end)) = guest_call {
            let call = SpanBuilder::from_name("guest call").with_start_time(start);
            tracing.start_child(call, &parent).end_with_timestamp(end);
        }
        let mut commit = tracing.start_child(SpanBuilder::from_name("commit").with_start_time(started), &parent);
        if let Err(error) = result {
            commit.set_status(Status::error(error.to_string()));
        }
        commit.end_with_timestamp(ended);
        parent.span().end_with_timestamp(ended);
    }
}
