//! The pipeline benchmark: session events through `localrun`'s pipeline (embedded topic in,
//! function, state, output topic, durable batch commit), for the Rust guest and for the same
//! logic as a native Rust function in the host, with the embedded engine's raw appends and reads
//! as the storage ceiling, all in one run.
//!
//! `throughput` runs only the native and guest session pipelines, alternated, and reports medians.
//! Further parts: produce-to-output latency at a fixed rate and at saturation (`latency`); how
//! throughput grows with message size and state size (`sizes`); the same session logic as a Rust,
//! Python and JavaScript guest, each beside its logic run natively (Rust in the host, CPython,
//! node), with first deployment (build and compile), restart from the compiled cache and instance
//! start per language (`languages`); idle instances in one worker (`density`); records per second
//! through count and sliding time windows beside the same pipeline without windows (`windows`);
//! the data directory's size over a long run through two chained functions (`soak`, not in `all`);
//! appends, reads and reopening over 1 to 10,000 topics and acknowledgements over 1 to 1,000
//! subscriptions (`topics`); what keeping a function's history costs, and replay's latency (`history`);
//! what `--state-ttl` costs over 1,000,000 keys, and the sweep's speed (`ttl`); building Python and
//! JavaScript functions with third-party packages, first and cached (`packages`); the session
//! pipeline with OpenTelemetry tracing off, at 1% and at 100% (`traces`).
//!
//! Run it with `scripts/bench` (which builds the guests first), or:
//! `cargo bench -p fnhost --bench pipeline -- PATH/TO/session_duration.wasm [MESSAGES] [all|throughput|guarantees|latency|sizes|languages|density|windows|cluster|hostile|history|ttl|packages|traces|log|soak|topics]`.

use std::path::Path;

use crate::cluster::{CLUSTER_MESSAGES, cluster};
use crate::common::ROUNDS;
use crate::density::{DENSITY_STEPS, density};
use crate::history::history;
use crate::hostile::{HOSTILE_MESSAGES, hostile};
use crate::languages::{LANGUAGE_MESSAGES, languages};
use crate::latency::{LATENCY_MESSAGES, latency};
use crate::packages::packages;
use crate::sizes::{SIZE_RUN_BYTES, STATE_KEYS, sizes};
use crate::soak::{SOAK_RATE, soak};
use crate::throughput::{guarantees, throughput};
use crate::topics::{SUBSCRIPTION_COUNTS, TOPIC_COUNTS, subscriptions, topics};
use crate::traces::traces;
use crate::ttl::ttl;
use crate::windows::windows;

mod cluster;
mod common;
mod density;
mod history;
mod hostile;
mod languages;
mod latency;
mod log;
mod packages;
mod sizes;
mod soak;
mod throughput;
mod topics;
mod traces;
mod ttl;
mod windows;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|arg| arg != "--bench").collect();
    if args.is_empty() {
        return quick();
    }
    let wasm =
        args.first().ok_or_else(|| anyhow::anyhow!("usage: pipeline PATH/TO/session_duration.wasm [MESSAGES]"))?;
    let messages: usize = args.get(1).map_or(Ok(1_000_000), |n| n.parse())?;
    let part = args.get(2).map_or("all", String::as_str);
    if ![
        "all",
        "throughput",
        "guarantees",
        "latency",
        "sizes",
        "languages",
        "density",
        "windows",
        "cluster",
        "hostile",
        "history",
        "ttl",
        "packages",
        "traces",
        "log",
        "soak",
        "topics",
    ]
    .contains(&part)
    {
        anyhow::bail!(
            "unknown part `{part}`: give all, throughput, guarantees, latency, sizes, languages, density, windows, cluster, hostile, history, ttl, packages, traces, log, soak or topics"
        );
    }
    if part == "all" || part == "log" {
        log::log(messages)?;
    }
    if part == "all" || part == "topics" {
        topics(messages, &TOPIC_COUNTS)?;
        subscriptions(messages, &SUBSCRIPTION_COUNTS)?;
    }
    // Not in `all`: it runs for as long as MESSAGES take at its rate (36,000,000: 30 minutes).
    if part == "soak" {
        soak(
            Path::new(wasm),
            &Path::new(wasm).with_file_name("exclamation.wasm"),
            (messages / SOAK_RATE).max(1) as u64,
        )?;
    }
    // scripts/bench builds the exclamation guest beside the session-duration one.
    let exclamation = Path::new(wasm).with_file_name("exclamation.wasm");
    if part == "throughput" {
        throughput(Path::new(wasm), messages, ROUNDS)?;
    }
    if part == "all" || part == "guarantees" {
        guarantees(Path::new(wasm), &exclamation, messages, ROUNDS)?;
    }
    if part == "all" || part == "latency" {
        latency(Path::new(wasm), messages.min(LATENCY_MESSAGES))?;
    }
    if part == "all" || part == "sizes" {
        sizes(Path::new(wasm), &exclamation, messages, SIZE_RUN_BYTES, &STATE_KEYS)?;
    }
    if part == "all" || part == "languages" {
        languages(Path::new(wasm), messages.min(LANGUAGE_MESSAGES))?;
    }
    if part == "all" || part == "density" {
        density(&exclamation, &DENSITY_STEPS)?;
    }
    if part == "all" || part == "windows" {
        windows(&exclamation, &Path::new(wasm).with_file_name("user_counts.wasm"), messages)?;
    }
    if part == "all" || part == "cluster" {
        cluster(Path::new(wasm), messages.min(CLUSTER_MESSAGES), ROUNDS)?;
    }
    if part == "all" || part == "history" {
        // History's cost is a few percent, under this machine's noise between runs: it takes
        // more rounds than the others to show.
        history(Path::new(wasm), messages, 3 * ROUNDS)?;
    }
    if part == "all" || part == "packages" {
        packages(3)?;
    }
    if part == "all" || part == "traces" {
        traces(Path::new(wasm), messages, 18)?;
    }
    if part == "all" || part == "ttl" {
        ttl(Path::new(wasm), messages, 2 * ROUNDS)?;
    }
    if part == "all" || part == "hostile" {
        hostile(
            Path::new(wasm),
            &Path::new(wasm).with_file_name("misbehave.wasm"),
            messages.min(HOSTILE_MESSAGES),
            ROUNDS,
        )?;
    }
    Ok(())
}

/// Events per pipeline in the quick mode.
const QUICK_MESSAGES: usize = 2_000;
/// Bytes of messages in each of the quick mode's message-size runs.
const QUICK_SIZE_RUN_BYTES: usize = 16 << 20;
/// The most topics in the quick mode's topics part.
const QUICK_TOPICS: usize = 100;
/// The most subscriptions in the quick mode's subscriptions rows.
const QUICK_SUBSCRIPTIONS: usize = 100;
/// Idle instances in the quick mode's density part.
const QUICK_INSTANCES: usize = 100;

/// Every part on small inputs, when run without arguments (`cargo test --bench pipeline`, which
/// scripts/test runs), so that the benchmark cannot rot. Each part fails unless every message
/// succeeded and every instance started; how fast they were is not checked.
fn quick() -> anyhow::Result<()> {
    let guests = build_guests()?;
    let wasm = guests.join("session_duration.wasm");
    throughput(&wasm, QUICK_MESSAGES, 1)?;
    guarantees(&wasm, &guests.join("exclamation.wasm"), QUICK_MESSAGES, 1)?;
    latency(&wasm, QUICK_MESSAGES)?;
    sizes(&wasm, &guests.join("exclamation.wasm"), QUICK_MESSAGES, QUICK_SIZE_RUN_BYTES, &STATE_KEYS[..1])?;
    languages(&wasm, QUICK_MESSAGES)?;
    density(&guests.join("exclamation.wasm"), &[QUICK_INSTANCES])?;
    windows(&guests.join("exclamation.wasm"), &guests.join("user_counts.wasm"), QUICK_MESSAGES)?;
    cluster(&wasm, QUICK_MESSAGES, 1)?;
    hostile(&wasm, &guests.join("misbehave.wasm"), QUICK_MESSAGES, 1)?;
    soak(&wasm, &guests.join("exclamation.wasm"), 2)?;
    history(&wasm, QUICK_MESSAGES, 1)?;
    ttl(&wasm, QUICK_MESSAGES, 1)?;
    traces(&wasm, QUICK_MESSAGES, 1)?;
    packages(1)?;
    topics(QUICK_MESSAGES, &[1, QUICK_TOPICS])?;
    subscriptions(QUICK_MESSAGES, &[1, QUICK_SUBSCRIPTIONS])?;
    log::log(QUICK_MESSAGES)
}

/// Builds the session-duration, exclamation, user-counts and misbehave guests in a target
/// directory of the benchmark's own; returns their folder.
fn build_guests() -> anyhow::Result<std::path::PathBuf> {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-guests");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    fnhost_test_support::build_guests(
        &workspace,
        &target,
        &["session-duration", "exclamation", "user-counts", "misbehave"],
    )
    .map_err(anyhow::Error::msg)
}
