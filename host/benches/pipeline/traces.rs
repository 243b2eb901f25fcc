//! What tracing costs (`traces`): the session pipeline (Rust guest) with tracing off, with
//! OpenTelemetry traces sampled at 1% and at 100%, alternated, exporting over OTLP/HTTP to a
//! collector on loopback in this process (it decodes and counts the spans of the last round only).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::time::Duration;

use fnhost::function::{Ordering, ProcessingGuarantee};
use fnhost::telemetry::Telemetry;
use fnhost_test_support::HttpSink;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;

use crate::common::{Code, Measured, Workload, median_cost, median_rate, pipeline_measured, session_events};

/// The settings compared: off, then each sampling ratio (0%: every message asks the sampler and
/// none is kept, what tracing costs before any span is made).
const RATIOS: [Option<f64>; 4] = [None, Some(0.0), Some(0.01), Some(1.0)];

pub(crate) fn traces(wasm: &Path, messages: usize, rounds: usize) -> anyhow::Result<()> {
    let events = session_events(messages);
    let sessions = Workload::sessions(&events);
    let scratch = tempfile::tempdir()?;
    let spans = Arc::new(AtomicU64::new(0));
    // Decoding takes the collector's CPU, which shares this machine's two cores with the
    // pipeline: only the last round's exports are decoded and counted.
    let decode = Arc::new(AtomicBool::new(false));
    let (counted, decoding) = (spans.clone(), decode.clone());
    let collector = HttpSink::start(move |(_, body)| {
        if !decoding.load(AtomicOrdering::Relaxed) {
            return;
        }
        let request = ExportTraceServiceRequest::decode(&body[..]).expect("an OTLP protobuf export");
        let count: usize = request
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len())
            .sum();
        counted.fetch_add(count as u64, AtomicOrdering::Relaxed);
    })?;
    let settings = (ProcessingGuarantee::AtLeastOnce, Ordering::Unordered, 1);
    let mut measured: [Vec<Measured>; RATIOS.len()] = Default::default();
    let mut exported = [0; RATIOS.len()];
    for round in 0..rounds {
        // The order rotates, and every other round runs backwards, so that no setting always
        // follows the same other one's clean-up.
        let mut order: Vec<usize> = (0..RATIOS.len()).map(|run| (run + round) % RATIOS.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        decode.store(round + 1 == rounds, AtomicOrdering::Relaxed);
        for run in order {
            let dir = scratch.path().join(format!("traces-{round}-{run}"));
            spans.store(0, AtomicOrdering::Relaxed);
            let telemetry = RATIOS[run]
                .map(|ratio| Telemetry::start_sampling(&collector.url, "fnhost-bench", ratio))
                .transpose()?;
            measured[run].push(pipeline_measured(&dir, &sessions, Code::Wasm(wasm), settings)?);
            // Outside the timing: what is left in the exporter's queue goes out.
            drop(telemetry);
            exported[run] = spans.load(AtomicOrdering::Relaxed);
            std::fs::remove_dir_all(&dir)?;
        }
    }
    if exported[0] != 0 {
        anyhow::bail!("spans were exported with tracing off");
    }
    let cost = |run: usize, of: fn(&Measured) -> Duration| median_cost(&measured[run], &measured[0], of);
    let rate = |run: usize| median_rate(&measured[run], messages);
    println!(
        "| {messages} session events, Rust guest, ATLEAST_ONCE, {rounds} rounds in rotating order | msg/s (median) | cost in elapsed time | in CPU time (medians of the rounds' ratios) | spans the collector got (last round) |"
    );
    println!("|---|---|---|---|---|");
    for (run, ratio) in RATIOS.iter().enumerate() {
        let name = match ratio {
            None => "tracing off".to_owned(),
            Some(ratio) => format!("OTLP traces, {}% sampled", ratio * 100.0),
        };
        let (elapsed, cpu) = match run {
            0 => (String::new(), String::new()),
            _ => (
                format!("{:+.1}%", cost(run, |measured| measured.elapsed) * 100.0),
                format!("{:+.1}%", cost(run, |measured| measured.cpu) * 100.0),
            ),
        };
        println!("| {name} | {:.0} | {elapsed} | {cpu} | {} |", rate(run), exported[run]);
    }
    sampling_decision(&collector.url, rate(0))
}

/// Decisions timed on their own.
const DECISIONS: u32 = 2_000_000;

/// What a message costs tracing when the sampler drops it (read its properties, ask the sampler),
/// timed alone over DECISIONS messages, beside a message's whole time in the pipeline without
/// tracing (`off_rate` messages a second): a figure the machine's noise does not blur.
fn sampling_decision(collector: &str, off_rate: f64) -> anyhow::Result<()> {
    let _telemetry = Telemetry::start_sampling(collector, "fnhost-bench", 0.0)?;
    let tracing = fnhost::telemetry::tracing().ok_or_else(|| anyhow::anyhow!("tracing is not on"))?;
    let properties: Vec<(String, String)> = Vec::new();
    let started = std::time::Instant::now();
    for _ in 0..DECISIONS {
        let parent = fnhost::telemetry::context_of(&properties);
        let kept = tracing.start_sampled("process", opentelemetry::trace::SpanKind::Consumer, &parent, |span| span);
        std::hint::black_box(kept);
    }
    let each = started.elapsed().as_secs_f64() / f64::from(DECISIONS);
    println!();
    println!(
        "| a message the sampler drops, {DECISIONS} timed alone | ns | share of a message's time with tracing off |"
    );
    println!("|---|---|---|");
    println!("| read its properties and ask the sampler | {:.0} | {:.2}% |", each * 1e9, each * off_rate * 100.0);
    Ok(())
}
