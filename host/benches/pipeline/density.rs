//! Idle instances in one worker: memory per instance and idle CPU at each step (`density`).

use std::path::Path;
use std::time::{Duration, Instant};

use fnhost::limits::MAX_PARALLELISM;
use fnhost::spec::FunctionSpec;

use crate::common::{cpu_time, in_process_worker, memory_total_bytes, resident_bytes};

/// How many idle instances the density part measures at, in one worker.
pub(crate) const DENSITY_STEPS: [usize; 2] = [1_000, 10_000];

/// How long the density part watches the idle worker's CPU time at each step.
pub(crate) const IDLE_WATCH: Duration = Duration::from_secs(5);

/// Idle instances of the exclamation function in one in-process worker, created through the
/// worker's own API in functions of `MAX_PARALLELISM` instances: resident memory, the time to
/// start them, and the CPU the idle instances burn.
pub(crate) fn density(exclamation: &Path, steps: &[usize]) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let most = steps.iter().copied().max().unwrap_or_default();
    let worker = in_process_worker(scratch.path(), most as u32)?;
    let wasm = std::fs::read(exclamation)?;
    let before = resident_bytes()?;
    let maps =
        || fnhost::worker::memory_maps().ok_or_else(|| anyhow::anyhow!("no /proc/self/maps or vm.max_map_count"));
    let (maps_before, map_limit) = maps()?;
    println!();
    println!(
        "| idle exclamation instances in one worker | resident MiB | KiB per instance | memory maps per instance | start ms per instance | idle CPU (% of one core) |"
    );
    println!("|---|---|---|---|---|---|");
    let mut created = 0;
    let mut per_instance = 0;
    let mut maps_per_instance = 0;
    for &step in steps {
        // Past the kernel's limit on memory maps a thread cannot start and the process aborts.
        let maps_needed = maps_before + step * maps_per_instance * 5 / 4;
        if maps_per_instance > 0 && maps_needed > map_limit {
            println!(
                "| {step} | not run: needs about {maps_needed} memory maps, and vm.max_map_count is {map_limit} (`sysctl -w vm.max_map_count=262144`) | | | | |"
            );
            break;
        }
        let started = Instant::now();
        while created < step {
            let parallelism = (step - created).min(MAX_PARALLELISM as usize);
            let spec: FunctionSpec = serde_json::from_value(serde_json::json!({
                "name": format!("shout-{created}"),
                "inputs": [format!("words-{created}")],
                "parallelism": parallelism,
            }))?;
            worker.create(spec, Some(wasm.clone()))?;
            created += parallelism;
        }
        let start = started.elapsed();
        // The instances' threads reach their first idle wait before anything is read.
        std::thread::sleep(Duration::from_secs(1));
        let resident = resident_bytes()?;
        let cpu_before = cpu_time(rustix::time::ClockId::ProcessCPUTime);
        std::thread::sleep(IDLE_WATCH);
        let idle =
            (cpu_time(rustix::time::ClockId::ProcessCPUTime) - cpu_before).as_secs_f64() / IDLE_WATCH.as_secs_f64();
        per_instance = resident.saturating_sub(before) / created as u64;
        maps_per_instance = maps()?.0.saturating_sub(maps_before).div_ceil(created);
        println!(
            "| {created} | {:.0} | {:.0} | {maps_per_instance} | {:.3} | {:.0} |",
            resident as f64 / (1 << 20) as f64,
            per_instance as f64 / 1024.0,
            start.as_secs_f64() * 1e3 / created as f64,
            idle * 100.0,
        );
    }
    let memory = memory_total_bytes()?;
    println!();
    let resident_before = before as f64 / (1 << 20) as f64;
    if per_instance == 0 {
        // Density runs after the other parts (in the quick mode and `all`): the instances may fit in memory they freed.
        println!(
            "Resident before the first instance: {resident_before:.0} MiB. The instances fit in memory the process had already: no figure per instance."
        );
    } else {
        println!(
            "Resident before the first instance: {resident_before:.0} MiB. At {:.0} KiB an instance, this machine's {:.1} GiB would hold about {} idle instances.",
            per_instance as f64 / 1024.0,
            memory as f64 / (1u64 << 30) as f64,
            memory.saturating_sub(before) / per_instance,
        );
    }
    let started = Instant::now();
    worker.shutdown();
    println!("Stopping all {created} took {:.1} s.", started.elapsed().as_secs_f64());
    Ok(())
}
