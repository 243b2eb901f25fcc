//! fnhost's segmented log on its own (`log`): the latency of one durable append beside a lone
//! `fdatasync` of the same size (the disk's floor), group commit's throughput as appenders are
//! added, and batched appends and reads (the log's ceiling).

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fnhost::limits::DEFAULT_LOG_SEGMENT_BYTES;
use fnhost::seglog::SegmentLog;

/// Bytes per record: a small message with its header, as a producer's append writes it.
const RECORD_BYTES: usize = 256;
/// Appenders at once in the group-commit rows.
const APPENDERS: [usize; 4] = [1, 4, 16, 64];
/// Records per append in the batched row (a producer's batch).
const BATCH_RECORDS: usize = 4096;

/// The quantile (0 to 1) of sorted durations, in milliseconds.
pub(crate) fn quantile(sorted: &[Duration], quantile: f64) -> f64 {
    let rank = ((sorted.len() as f64 * quantile).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e3
}

/// `appends` durable one-record appends, each alone, and as many `fdatasync`s of one record's
/// bytes written to a plain file: sorted latencies of each.
fn lone_latencies(appends: usize) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let dir = tempfile::tempdir()?;
    let (log, _) = SegmentLog::open(&dir.path().join("log"), DEFAULT_LOG_SEGMENT_BYTES)?;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(dir.path().join("plain"))?;
    let record = vec![7u8; RECORD_BYTES];
    let (mut logged, mut synced) = (Vec::with_capacity(appends), Vec::with_capacity(appends));
    // Alternated, so that both see the same disk.
    for _ in 0..appends {
        let started = Instant::now();
        log.append(vec![record.clone()])?;
        logged.push(started.elapsed());
        let started = Instant::now();
        file.write_all(&record)?;
        file.sync_data()?;
        synced.push(started.elapsed());
    }
    logged.sort();
    synced.sort();
    Ok((logged, synced))
}

/// `count` `fdatasync`s, each of `bytes` bytes written to a plain file in `dir` first: their
/// latencies in the order measured. The disk's floor for one durable step.
pub(crate) fn lone_fdatasyncs(dir: &std::path::Path, count: usize, bytes: usize) -> anyhow::Result<Vec<Duration>> {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("plain"))?;
    let record = vec![7u8; bytes];
    let mut synced = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        file.write_all(&record)?;
        file.sync_data()?;
        synced.push(started.elapsed());
    }
    Ok(synced)
}

/// Records a second with `appenders` threads each appending one record at a time, for
/// `records` records in all.
fn grouped_rate(appenders: usize, records: usize) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let (log, _) = SegmentLog::open(dir.path(), DEFAULT_LOG_SEGMENT_BYTES)?;
    let log = Arc::new(log);
    let each = records / appenders;
    let started = Instant::now();
    let threads: Vec<_> = (0..appenders)
        .map(|_| {
            let log = log.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                for _ in 0..each {
                    log.append(vec![vec![7u8; RECORD_BYTES]])?;
                }
                Ok(())
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("an appender does not panic")?;
    }
    Ok((each * appenders) as f64 / started.elapsed().as_secs_f64())
}

/// Records a second appended in batches of `BATCH_RECORDS` and then read back.
fn batched_rates(records: usize) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let (log, _) = SegmentLog::open(dir.path(), DEFAULT_LOG_SEGMENT_BYTES)?;
    let started = Instant::now();
    for _ in 0..records.div_ceil(BATCH_RECORDS) {
        log.append(vec![vec![7u8; RECORD_BYTES]; BATCH_RECORDS])?;
    }
    let appended = log.end_id() as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut next = 0;
    while next < log.end_id() {
        let read = log.read(next, BATCH_RECORDS, usize::MAX)?;
        next = read.last().map_or(next, |(id, _)| id + 1);
    }
    Ok((appended, next as f64 / started.elapsed().as_secs_f64()))
}

/// The log part: `messages` bounds the records of each throughput row; the latency rows take
/// a tenth of them, at most 10,000.
pub(crate) fn log(messages: usize) -> anyhow::Result<()> {
    let appends = (messages / 10).clamp(100, 10_000);
    let (logged, synced) = lone_latencies(appends)?;
    println!("| {appends} lone appends of {RECORD_BYTES} B, alternated | p50 ms | p99 ms | p999 ms |");
    println!("|---|---|---|---|");
    for (name, sorted) in [("a lone `fdatasync` (the disk's floor)", &synced), ("one log append, durable", &logged)] {
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} |",
            quantile(sorted, 0.5),
            quantile(sorted, 0.99),
            quantile(sorted, 0.999)
        );
    }
    println!();
    println!("| {messages} records of {RECORD_BYTES} B | records/s |");
    println!("|---|---|");
    for appenders in APPENDERS {
        let rate = grouped_rate(appenders, messages.min(appenders * 5_000))?;
        println!("| {appenders} appenders, one record per append (group commit) | {rate:.0} |");
    }
    let (appended, read) = batched_rates(messages)?;
    println!("| appends of {BATCH_RECORDS} records (the log's ceiling) | {appended:.0} |");
    println!("| reads of {BATCH_RECORDS} records | {read:.0} |");
    Ok(())
}
