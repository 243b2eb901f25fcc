//! `/metrics` in the Prometheus text format, with Pulsar's metric names and labels.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::limits::MAX_METRIC_SERIES_PER_TENANT;
use crate::metrics::Stats;
use crate::names::Fqfn;

/// Every metric name starts with Pulsar's prefix, so that dashboards built for Pulsar work.
const PREFIX: &str = "pulsar_function_";
/// The latency quantiles Pulsar reports.
const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

/// A counter family: its name, help text, and how to read it.
type Counter = (&'static str, &'static str, fn(&Stats) -> u64);

/// Renders the counts of every instance, one metric family at a time.
pub(super) fn render(instances: &[(Fqfn, u32, Stats)]) -> String {
    let labelled: Vec<(String, &Stats)> =
        instances.iter().map(|(fqfn, instance_id, stats)| (labels(fqfn, *instance_id), stats)).collect();
    let mut out = String::new();
    let counters: [Counter; 6] = [
        ("received_total", "Messages delivered to the function.", |stats| stats.received),
        ("processed_successfully_total", "Messages processed without an exception.", |stats| stats.succeeded),
        ("user_exceptions_total", "Failures the function returned.", |stats| stats.user_exceptions),
        ("system_exceptions_total", "Traps, timeouts, memory limits and host failures.", |stats| {
            stats.system_exceptions
        }),
        ("dead_lettered_total", "Messages sent to the dead-letter topic (fnhost).", |stats| stats.dead_lettered),
        ("restarts_total", "Instance restarts (fnhost).", |stats| stats.restarts),
    ];
    for (name, help, value) in counters {
        family(&mut out, name, "counter", help);
        for (labels, stats) in &labelled {
            let _ = writeln!(out, "{PREFIX}{name}{{{labels}}} {}", value(stats));
        }
    }
    family(&mut out, "process_latency_ms", "summary", "Time to process one message, in milliseconds.");
    for (labels, stats) in &labelled {
        for quantile in QUANTILES {
            let _ = writeln!(
                out,
                "{PREFIX}process_latency_ms{{{labels},quantile=\"{quantile}\"}} {}",
                stats.latency.quantile_millis(quantile)
            );
        }
        let _ = writeln!(out, "{PREFIX}process_latency_ms_sum{{{labels}}} {}", stats.latency.sum_millis());
        let _ = writeln!(out, "{PREFIX}process_latency_ms_count{{{labels}}} {}", stats.latency.count());
    }
    family(&mut out, "last_invocation", "gauge", "When a message was last processed, in milliseconds since the epoch.");
    for (labels, stats) in &labelled {
        let _ = writeln!(out, "{PREFIX}last_invocation{{{labels}}} {}", stats.last_invocation.unwrap_or(0));
    }
    // Names that differ only in characters Prometheus refuses are one metric.
    let mut user: BTreeMap<String, BTreeMap<&str, (u64, f64)>> = BTreeMap::new();
    let mut series: BTreeMap<&str, usize> = BTreeMap::new();
    let mut left_out: BTreeMap<&str, usize> = BTreeMap::new();
    for ((labels, stats), (fqfn, _, _)) in labelled.iter().zip(instances) {
        let tenant = fqfn.tenant();
        for (name, (count, sum)) in &stats.user_metrics {
            let taken = series.entry(tenant).or_default();
            if *taken >= MAX_METRIC_SERIES_PER_TENANT {
                *left_out.entry(tenant).or_default() += 1;
                continue;
            }
            *taken += 1;
            let sample = user.entry(metric_name(name)).or_default().entry(labels).or_default();
            sample.0 += count;
            sample.1 += sum;
        }
    }
    for (tenant, count) in left_out {
        let _ = writeln!(
            out,
            "# {count} user metric series of tenant {} left out: MAX_METRIC_SERIES_PER_TENANT is {MAX_METRIC_SERIES_PER_TENANT}",
            escape(tenant)
        );
    }
    for (name, samples) in user {
        family(&mut out, &format!("user_metric_{name}"), "summary", "A metric the function records.");
        for (labels, (count, sum)) in samples {
            let _ = writeln!(out, "{PREFIX}user_metric_{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{PREFIX}user_metric_{name}_count{{{labels}}} {count}");
        }
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {PREFIX}{name} {help}");
    let _ = writeln!(out, "# TYPE {PREFIX}{name} {kind}");
}

fn labels(fqfn: &Fqfn, instance_id: u32) -> String {
    format!(
        "tenant=\"{}\",namespace=\"{}\",name=\"{}\",instance_id=\"{instance_id}\",fqfn=\"{}\"",
        escape(fqfn.tenant()),
        escape(fqfn.namespace()),
        escape(fqfn.name()),
        escape(&fqfn.to_string())
    )
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A user metric's name with every character Prometheus does not allow replaced by `_`.
fn metric_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}
