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

use crate::common::{Code, Measured, Workload, pipeline_measured, session_events};

/// The ratios compared: off, then each sampling ratio.
const RATIOS: [Option<f64>; 3] = [None, Some(0.01), Some(1.0)];

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
    let mut measured: [Vec<Measured>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut exported = [0; 3];
    for round in 0..rounds {
        // The order rotates, so that no setting always follows another's clean-up.
        let order = [[0, 1, 2], [2, 1, 0], [1, 0, 2], [2, 0, 1], [0, 2, 1], [1, 2, 0]][round % 6];
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
    let cost = |run: usize, of: fn(&Measured) -> Duration| {
        let mut ratios: Vec<f64> = measured[run]
            .iter()
            .zip(&measured[0])
            .map(|(with, without)| of(with).as_secs_f64() / of(without).as_secs_f64())
            .collect();
        ratios.sort_by(f64::total_cmp);
        ratios[ratios.len() / 2] - 1.0
    };
    let rate = |run: usize| {
        let mut rates: Vec<f64> = measured[run].iter().map(|run| messages as f64 / run.elapsed.as_secs_f64()).collect();
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
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
    Ok(())
}
