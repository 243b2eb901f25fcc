//! Deciding whether a span is kept before making it: at a low ratio most are not, and making a
//! span only to drop it cost the session pipeline 5% of its throughput at 0% sampling
//! (docs/BENCHMARKS.md), against the 3% at 1%.
//!
//! fnhost asks the SDK's own sampler (`OTEL_TRACES_SAMPLER`'s, or the one given) first, with the
//! trace id a new trace would get; only a kept span is then made, and the SDK is handed that same
//! trace id ([`ChosenIds`]), so its sampler, asked again, decides as fnhost's question did.

use std::cell::Cell;
use std::sync::Arc;

use opentelemetry::Context;
use opentelemetry::KeyValue;
use opentelemetry::trace::{Link, SpanBuilder, SpanId, SpanKind, TraceContextExt as _, TraceId, Tracer as _};
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, SamplingDecision, SamplingResult, SdkTracer, ShouldSample, Span,
};

thread_local! {
    /// The trace id fnhost chose for the new trace whose first span this thread is making.
    static CHOSEN_TRACE: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// The SDK's id generator: random ids, but for a new trace the id fnhost's sampling question used.
#[derive(Debug, Default)]
pub(super) struct ChosenIds {
    random: RandomIdGenerator,
}

impl IdGenerator for ChosenIds {
    fn new_trace_id(&self) -> TraceId {
        CHOSEN_TRACE.with(Cell::take).unwrap_or_else(|| self.random.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        self.random.new_span_id()
    }
}

/// One sampler shared by fnhost's question and the SDK.
#[derive(Clone, Debug)]
pub(super) struct SharedSampler(pub(super) Arc<dyn ShouldSample>);

impl ShouldSample for SharedSampler {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        self.0.should_sample(parent, trace_id, name, kind, attributes, links)
    }
}

/// The installed tracer with its sampler.
#[derive(Debug)]
pub struct Tracing {
    pub(super) tracer: SdkTracer,
    pub(super) sampler: Arc<dyn ShouldSample>,
    pub(super) ids: RandomIdGenerator,
    /// The number of the [`Telemetry`](super::Telemetry) that installed it.
    pub(super) installed_by: u64,
}

impl Tracing {
    /// Starts a span `name` of `kind` as a child of `parent` (an empty context: a new trace) if
    /// the sampler keeps it, with what `describe` adds (its attributes); `None`, having made and
    /// allocated nothing, if it does not.
    pub fn start_sampled(
        &self,
        name: &'static str,
        kind: SpanKind,
        parent: &Context,
        describe: impl FnOnce(SpanBuilder) -> SpanBuilder,
    ) -> Option<Span> {
        let parent_span = parent.span();
        let joined = parent_span.span_context().is_valid();
        let trace_id = if joined { parent_span.span_context().trace_id() } else { self.ids.new_trace_id() };
        let decision = self.sampler.should_sample(Some(parent), trace_id, name, &kind, &[], &[]).decision;
        if decision == SamplingDecision::Drop {
            return None;
        }
        if !joined {
            CHOSEN_TRACE.with(|chosen| chosen.set(Some(trace_id)));
        }
        let span = self.tracer.build_with_context(describe(SpanBuilder::from_name(name).with_kind(kind)), parent);
        // Taken by the SDK unless it made no span (a provider shut down meanwhile).
        CHOSEN_TRACE.with(Cell::take);
        Some(span)
    }

    /// Starts a child of `parent` that is kept whenever its parent is (the guest call's and the
    /// commit's spans).
    pub fn start_child(&self, builder: SpanBuilder, parent: &Context) -> Span {
        self.tracer.build_with_context(builder, parent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Span as _, TracerProvider as _};
    use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

    fn tracing(sampler: Sampler) -> Tracing {
        let sampler: Arc<dyn ShouldSample> = Arc::new(sampler);
        let provider = SdkTracerProvider::builder()
            .with_sampler(SharedSampler(sampler.clone()))
            .with_id_generator(ChosenIds::default())
            .build();
        Tracing { tracer: provider.tracer("test"), sampler, ids: RandomIdGenerator::default(), installed_by: 0 }
    }

    #[test]
    fn the_sdk_keeps_every_span_fnhost_asked_about_and_fnhost_makes_none_it_drops() {
        let half = tracing(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.5))));
        let started: Vec<Span> = (0..1_000)
            .filter_map(|_| half.start_sampled("process", SpanKind::Consumer, &Context::new(), |span| span))
            .collect();
        // Had the SDK decided on another trace id than fnhost's question, about half of these
        // would be unsampled.
        assert!(started.iter().all(|span| span.span_context().is_sampled() && span.is_recording()));
        assert!((300..700).contains(&started.len()), "{} of 1,000 kept at 50%", started.len());

        let off = tracing(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)));
        assert!(off.start_sampled("process", SpanKind::Consumer, &Context::new(), |span| span).is_none());
        // A sampled parent keeps its children, whatever the ratio of new traces.
        let parent = started[0].span_context().clone();
        let joined = off.start_sampled(
            "process",
            SpanKind::Consumer,
            &Context::new().with_remote_span_context(parent.clone()),
            |span| span,
        );
        let joined = joined.expect("a sampled parent's child is kept");
        assert_eq!(joined.span_context().trace_id(), parent.trace_id());
    }
}
