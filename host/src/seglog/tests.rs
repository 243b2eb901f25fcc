//! The log's promises: what was appended reads back after a reopen, concurrent appends share
//! groups without losing or reordering anything, a torn or damaged end is cut back to the last
//! whole record and nothing before it, damage elsewhere is an error, and whole segments are freed.

use std::sync::Arc;

use super::*;

/// A small deterministic generator, so that a failure names a seed that repeats it.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

fn payload(id: u64) -> Vec<u8> {
    format!("record {id} {}", "x".repeat((id % 37) as usize)).into_bytes()
}

/// A log in `dir` holding records 0..count, in batches of up to five.
fn filled(dir: &Path, segment_bytes: u64, count: u64) -> SegmentLog {
    let (log, cut) = SegmentLog::open(dir, segment_bytes).unwrap();
    assert_eq!(cut, None);
    let mut id = 0;
    while id < count {
        let batch: Vec<Vec<u8>> = (id..count.min(id + 1 + id % 5)).map(payload).collect();
        let ids = log.append(batch).unwrap();
        assert_eq!(ids.start, id);
        id = ids.end;
    }
    log
}

fn all(log: &SegmentLog) -> Vec<(u64, Vec<u8>)> {
    log.read(0, usize::MAX, usize::MAX).unwrap()
}

fn expected(ids: Range<u64>) -> Vec<(u64, Vec<u8>)> {
    ids.map(|id| (id, payload(id))).collect()
}

#[test]
fn records_read_back_in_order_after_a_reopen_and_reads_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let log = filled(dir.path(), 1024, 300);
    assert_eq!(all(&log), expected(0..300));
    assert_eq!(log.read(290, 5, usize::MAX).unwrap(), expected(290..295));
    assert_eq!(log.read(300, 5, usize::MAX).unwrap(), vec![]);
    // The byte bound stops a read, but never before its first record.
    assert_eq!(log.read(10, 100, 1).unwrap(), expected(10..11));
    drop(log);
    let (log, cut) = SegmentLog::open(dir.path(), 1024).unwrap();
    assert_eq!(cut, None);
    assert_eq!(log.end_id(), 300);
    assert_eq!(all(&log), expected(0..300));
    assert_eq!(log.append(vec![payload(300)]).unwrap(), 300..301);
}

/// A reader that goes on from the last id it got, as recovery and history do, with any byte
/// budget, sees every record once, in order: a read cut short by its budget inside a segment
/// must not go on from the next segment.
#[test]
fn reads_bounded_by_bytes_miss_no_record_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = filled(dir.path(), 1024, 300);
    for budget in [1, 40, 100, 333, 1000, 5000] {
        let mut read = Vec::new();
        let mut next = log.first_id();
        loop {
            let records = log.read(next, 7, budget).unwrap();
            let Some((last, _)) = records.last() else { break };
            next = last + 1;
            read.extend(records);
        }
        assert_eq!(read, expected(0..300), "a budget of {budget} bytes");
    }
}

#[test]
fn concurrent_appends_share_groups_and_lose_or_reorder_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = SegmentLog::open(dir.path(), 4096).unwrap();
    let log = Arc::new(log);
    let threads: Vec<_> = (0..8u64)
        .map(|thread| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for n in 0..100u64 {
                    let batch: Vec<Vec<u8>> =
                        (0..1 + n % 3).map(|k| format!("{thread}/{n}/{k}").into_bytes()).collect();
                    let ids = log.append(batch.clone()).unwrap();
                    assert_eq!(ids.end - ids.start, batch.len() as u64);
                    mine.extend(ids.zip(batch));
                }
                mine
            })
        })
        .collect();
    let mut written: Vec<(u64, Vec<u8>)> = threads.into_iter().flat_map(|thread| thread.join().unwrap()).collect();
    written.sort();
    let total = written.len() as u64;
    assert_eq!(written.iter().map(|(id, _)| *id).collect::<Vec<_>>(), (0..total).collect::<Vec<_>>());
    assert_eq!(all(&log), written);
    drop(log);
    let (log, _) = SegmentLog::open(dir.path(), 4096).unwrap();
    assert_eq!(all(&log), written);
}

#[test]
fn a_torn_end_is_cut_back_to_the_last_whole_record_at_any_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = filled(dir.path(), 2048, 120);
    drop(log);
    let segments = segment_paths(dir.path());
    let last = segments.last().unwrap().clone();
    let first_of_last = segment::first_id_of(last.file_name().unwrap().to_str().unwrap()).unwrap();
    // The bytes written: the rest of the file is preallocated zeros, which are not a torn write.
    let length = *record_ends(&std::fs::read(&last).unwrap()).last().unwrap();
    let mut random = Random(0x5eed_0001);
    for _ in 0..40 {
        let offset = random.below(length + 1);
        let copy = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), copy.path());
        let file = OpenOptions::new().write(true).open(copy.path().join(last.file_name().unwrap())).unwrap();
        file.set_len(offset).unwrap();
        drop(file);
        let (log, cut) = SegmentLog::open(copy.path(), 2048).unwrap();
        let kept = whole_records_within(&std::fs::read(&last).unwrap(), first_of_last, offset);
        assert_eq!(log.end_id(), kept, "cut at byte {offset}");
        assert_eq!(cut.is_some(), offset != length && !is_boundary(&last, offset), "cut at byte {offset}: {cut:?}");
        assert_eq!(all(&log), expected(0..kept), "cut at byte {offset}");
        // The log goes on from where it was cut.
        assert_eq!(log.append(vec![payload(kept)]).unwrap(), kept..kept + 1);
    }
}

#[test]
fn a_flipped_bit_in_the_last_segment_cuts_from_its_record_and_keeps_everything_before() {
    let dir = tempfile::tempdir().unwrap();
    drop(filled(dir.path(), 2048, 120));
    let last = segment_paths(dir.path()).last().unwrap().clone();
    let first_of_last = segment::first_id_of(last.file_name().unwrap().to_str().unwrap()).unwrap();
    let bytes = std::fs::read(&last).unwrap();
    let mut random = Random(0x5eed_0002);
    for _ in 0..40 {
        let offset = random.below(bytes.len() as u64);
        let copy = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), copy.path());
        let mut damaged = bytes.clone();
        damaged[offset as usize] ^= 1 << random.below(8);
        std::fs::write(copy.path().join(last.file_name().unwrap()), &damaged).unwrap();
        let (log, cut) = SegmentLog::open(copy.path(), 2048).unwrap();
        // Every record that ends before the flipped byte is kept; the one holding it is not.
        let kept = whole_records_within(&bytes, first_of_last, offset);
        assert_eq!(log.end_id(), kept, "flip at byte {offset}");
        assert!(cut.is_some(), "flip at byte {offset} was not reported");
        assert_eq!(all(&log), expected(0..kept));
    }
}

#[test]
fn damage_before_the_last_segment_is_an_error_that_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    drop(filled(dir.path(), 1024, 200));
    let segments = segment_paths(dir.path());
    assert!(segments.len() >= 3, "{segments:?}");
    let middle = &segments[1];
    let mut bytes = std::fs::read(middle).unwrap();
    bytes[40] ^= 0x10;
    std::fs::write(middle, &bytes).unwrap();
    match SegmentLog::open(dir.path(), 1024) {
        Err(LogError::Corrupt { path, .. }) => assert_eq!(&path, middle),
        Err(other) => panic!("expected damage in {}, got {other}", middle.display()),
        Ok(_) => panic!("damage in {} went unnoticed", middle.display()),
    }
    // Segments overlapping in ids are damage too; a gap is a segment removed as a whole, which
    // the store above the log checks against what it still needs.
    std::fs::write(middle, std::fs::read(&segments[0]).unwrap()).unwrap();
    std::fs::rename(middle, dir.path().join(segment::file_name(1))).unwrap();
    assert!(matches!(SegmentLog::open(dir.path(), 1024), Err(LogError::Corrupt { .. })));
}

#[test]
fn any_segment_but_the_active_one_can_go_and_reads_skip_its_ids() {
    let dir = tempfile::tempdir().unwrap();
    let log = filled(dir.path(), 1024, 400);
    let ids = log.segment_ids();
    assert!(ids.len() > 3, "{ids:?}");
    let gone = ids[1].clone();
    let freed = log.remove_where(|segment| segment == gone).unwrap();
    assert!(freed > 0);
    let kept: Vec<u64> = all(&log).into_iter().map(|(id, _)| id).collect();
    let wanted: Vec<u64> = (0..400).filter(|id| !gone.contains(id)).collect();
    assert_eq!(kept, wanted);
    assert_eq!(log.read(gone.start, 1, usize::MAX).unwrap(), expected(gone.end..gone.end + 1));
    drop(log);
    let (log, cut) = SegmentLog::open(dir.path(), 1024).unwrap();
    assert_eq!((cut, log.end_id()), (None, 400));
    assert_eq!(all(&log).len(), wanted.len());
}

#[test]
fn submitted_records_get_their_ids_at_once_and_are_readable_only_once_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = SegmentLog::open(dir.path(), 4096).unwrap();
    let first = log.submit(vec![payload(0), payload(1)]).unwrap();
    let second = log.submit(vec![payload(2)]).unwrap();
    assert_eq!((first.clone(), second.clone()), (0..2, 2..3));
    assert_eq!((log.end_id(), all(&log)), (0, vec![]));
    log.wait(second.end).unwrap();
    assert_eq!(all(&log), expected(0..3));
}

#[test]
fn whole_segments_are_freed_below_an_id_and_the_active_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let log = filled(dir.path(), 1024, 400);
    let before = log.disk_bytes();
    let segments = segment_paths(dir.path()).len();
    assert!(segments > 3, "{segments}");
    let freed = log.remove_before(200).unwrap();
    assert!(freed > 0 && log.disk_bytes() == before - freed);
    let first = log.first_id();
    assert!(first <= 200 && first > 0, "{first}");
    assert_eq!(all(&log), expected(first..400));
    // Only whole segments go, and never the one being written.
    log.remove_before(u64::MAX).unwrap();
    assert_eq!(segment_paths(dir.path()).len(), 1);
    assert_eq!(log.append(vec![payload(400)]).unwrap(), 400..401);
    drop(log);
    let (log, _) = SegmentLog::open(dir.path(), 1024).unwrap();
    assert_eq!(log.end_id(), 401);
}

#[test]
fn a_record_over_the_limit_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = SegmentLog::open(dir.path(), 1024).unwrap();
    let huge = vec![0u8; MAX_LOG_RECORD_BYTES + 1];
    assert_eq!(log.append(vec![b"small".to_vec(), huge]), Err(LogError::TooLarge(MAX_LOG_RECORD_BYTES + 1)));
    assert_eq!(log.end_id(), 0);
    assert_eq!(log.disk_bytes(), 0);
}

#[test]
fn after_a_failed_write_every_waiting_and_later_append_gets_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    // Every group after the first starts a segment, and the directory is gone by then.
    let (log, _) = SegmentLog::open(&path, 1).unwrap();
    assert_eq!(log.append(vec![payload(0)]).unwrap(), 0..1);
    std::fs::remove_dir_all(&path).unwrap();
    let log = Arc::new(log);
    let appenders: Vec<_> = (0..4)
        .map(|_| {
            let log = log.clone();
            std::thread::spawn(move || log.append(vec![payload(1)]))
        })
        .collect();
    for appender in appenders {
        assert!(matches!(appender.join().unwrap(), Err(LogError::Io { .. } | LogError::Stopped(_))));
    }
    assert!(matches!(log.append(vec![payload(1)]), Err(LogError::Stopped(_))));
    assert_eq!(log.end_id(), 1);
}

fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().path()).collect();
    paths.sort();
    paths
}

fn copy_dir(from: &Path, to: &Path) {
    for path in segment_paths(from) {
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

/// Where each whole record of `bytes` ends, in order.
fn record_ends(bytes: &[u8]) -> Vec<u64> {
    let mut ends = Vec::new();
    let mut position = 0usize;
    while let record::Scanned::Record { len, .. } = record::scan(bytes, position) {
        position += len;
        ends.push(position as u64);
    }
    ends
}

/// The id after the last record of `bytes` (a segment starting at `first_id`) that ends at or
/// before `offset`.
fn whole_records_within(bytes: &[u8], first_id: u64, offset: u64) -> u64 {
    first_id + record_ends(bytes).iter().filter(|end| **end <= offset).count() as u64
}

/// Whether `offset` of `segment` is where a record starts (or the file ends).
fn is_boundary(segment: &Path, offset: u64) -> bool {
    offset == 0 || record_ends(&std::fs::read(segment).unwrap()).contains(&offset)
}

use std::fs::OpenOptions;
