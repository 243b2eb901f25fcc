//! fnhost's own append-only log: numbered records in segment files, made durable by group
//! commit, readable only once durable, and freed a whole segment at a time.
//!
//! - **Records** (`record.rs`) carry a length, a CRC and their id; ids are consecutive from 0.
//! - **Segments** (`segment.rs`) are files named by their first id; a new one starts once the
//!   active one passes its size. At open every record is checked: a damaged record in the last
//!   segment is a write that never finished (it was never acknowledged, since an append returns
//!   only after its group's `fdatasync`), so it and what follows are cut, and the cut is
//!   reported; damage in any other segment is an error that names the file and offset.
//! - **Group commit:** every append in the process joins the next group. One caller, the
//!   leader, writes the whole group with one `write` and makes it durable with one
//!   `fdatasync`, then releases every caller of the group together; a caller that arrives
//!   while a group is being written waits for the next one, which the leader writes as soon as
//!   the current one is durable. A lone append is written at once by its own thread.
//! - **Failure:** after a failed write or sync the log takes no more appends (what reached the
//!   disk is unknown until the next open checks it), and every caller of that group gets the error.
//!
//! Lock order: the log's one mutex (`state`) is taken alone; no I/O but segment creation,
//! deletion and reads happens under it, and the leader writes and syncs without it.

mod record;
mod segment;

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

pub use segment::Cut;
use segment::Segment;

use crate::limits::MAX_LOG_RECORD_BYTES;

/// Why the log failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The file system refused an operation.
    #[error("cannot {action} {}: {reason}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// What the system said.
        reason: String,
        /// Its kind.
        kind: std::io::ErrorKind,
    },
    /// A segment other than the last is damaged: not a torn write, but a disk or a hand that
    /// changed it.
    #[error(
        "{} is damaged at byte {offset} ({reason}); it is not the end of the log, so this is not an unfinished write: restore the data directory from a backup",
        path.display()
    )]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Where its first damaged record starts.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// A write or sync failed earlier; the log takes no more appends until it is opened again.
    #[error(
        "the log takes no more writes after a failed write or sync ({0}); restart the worker, which recovers what is durable"
    )]
    Stopped(String),
    /// A record is longer than any the log holds.
    #[error("a record of {0} bytes is over MAX_LOG_RECORD_BYTES ({MAX_LOG_RECORD_BYTES})")]
    TooLarge(usize),
}

impl LogError {
    fn io(path: &Path, action: &'static str, error: std::io::Error) -> Self {
        Self::Io { path: path.to_owned(), action, reason: error.to_string(), kind: error.kind() }
    }
}

/// An append-only log in a directory of segments.
pub struct SegmentLog {
    dir: PathBuf,
    segment_bytes: u64,
    state: Mutex<State>,
    /// Signalled whenever a group becomes durable or fails.
    group_done: Condvar,
}

struct State {
    /// Oldest first; the last is the one appended to. Ids between two segments belong to
    /// segments removed as a whole.
    segments: Vec<Segment>,
    /// Records below this id are durable, and readable.
    durable_end: u64,
    /// Submitted records not yet written, from id `durable_end` (or `durable_end` plus the
    /// group being written) on, in id order.
    pending: Vec<Vec<u8>>,
    /// The id the next submitted record gets.
    next_id: u64,
    /// Whether a leader is writing a group now.
    writing: bool,
    /// Why the log stopped taking appends, if it did.
    stopped: Option<String>,
}

impl SegmentLog {
    /// Opens the log in `dir` (created if missing), starting a new segment once the active one
    /// passes `segment_bytes`. Checks every record, cuts a torn end off the last segment, and
    /// returns what it cut.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<(Self, Option<Cut>), LogError> {
        std::fs::create_dir_all(dir).map_err(|error| LogError::io(dir, "create", error))?;
        let mut firsts: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
            .map_err(|error| LogError::io(dir, "list", error))?
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let first = segment::first_id_of(entry.file_name().to_str()?)?;
                Some((first, entry.path()))
            })
            .collect();
        firsts.sort();
        let mut segments = Vec::with_capacity(firsts.len());
        let mut cut = None;
        for (index, (first_id, path)) in firsts.iter().enumerate() {
            let last = index + 1 == firsts.len();
            let (segment, segment_cut) = Segment::open(path, *first_id, last)?;
            // A gap between segments is one removed as a whole; an overlap is damage.
            if let Some(previous) = segments.last().map(Segment::end_id)
                && previous > *first_id
            {
                return Err(LogError::Corrupt {
                    path: path.clone(),
                    offset: 0,
                    reason: format!("it starts at record {first_id}, but the segment before it ends at {previous}"),
                });
            }
            if let Some(segment_cut) = &segment_cut {
                tracing::warn!(
                    path = %path.display(),
                    bytes = segment_cut.bytes,
                    "cut an unfinished write off the end of the log: {}",
                    segment_cut.reason
                );
            }
            cut = segment_cut;
            segments.push(segment);
        }
        if segments.is_empty() {
            segments.push(Segment::create(dir, 0, segment_bytes)?);
            sync_dir(dir)?;
        }
        let durable_end = segments.last().expect("one segment at least").end_id();
        let state =
            State { segments, durable_end, pending: Vec::new(), next_id: durable_end, writing: false, stopped: None };
        let log = Self { dir: dir.to_owned(), segment_bytes, state: Mutex::new(state), group_done: Condvar::new() };
        Ok((log, cut))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends `records`, in order and together, and returns their ids once they are durable.
    pub fn append(&self, records: Vec<Vec<u8>>) -> Result<Range<u64>, LogError> {
        let ids = self.submit(records)?;
        self.wait(ids.end)?;
        Ok(ids)
    }

    /// Queues `records` for the next group and returns the ids they will have, at once: records
    /// submitted one after another get ids in that order, so a caller holding its own lock across
    /// `submit` orders its records as it orders its calls. They become durable (and readable) only
    /// when [`SegmentLog::wait`] for them returns.
    pub fn submit(&self, records: Vec<Vec<u8>>) -> Result<Range<u64>, LogError> {
        self.submit_with(records, |_, _| {})
    }

    /// [`SegmentLog::submit`], first calling `stamp` with the id the first record gets, under the
    /// log's lock, so that records can carry it (a step split over several records names its
    /// first one in each).
    pub fn submit_with(
        &self,
        mut records: Vec<Vec<u8>>,
        stamp: impl FnOnce(u64, &mut [Vec<u8>]),
    ) -> Result<Range<u64>, LogError> {
        if let Some(record) = records.iter().find(|record| record.len() > MAX_LOG_RECORD_BYTES) {
            return Err(LogError::TooLarge(record.len()));
        }
        let mut state = self.lock();
        if let Some(reason) = &state.stopped {
            return Err(LogError::Stopped(reason.clone()));
        }
        let ids = state.next_id..state.next_id + records.len() as u64;
        stamp(ids.start, &mut records);
        state.next_id = ids.end;
        state.pending.extend(records);
        Ok(ids)
    }

    /// Returns once every record below `end` is durable, writing groups itself when no other
    /// caller is: the leader of group commit is whoever waits first.
    pub fn wait(&self, end: u64) -> Result<(), LogError> {
        let mut state = self.lock();
        loop {
            if state.durable_end >= end {
                return Ok(());
            }
            if let Some(reason) = &state.stopped {
                return Err(LogError::Stopped(reason.clone()));
            }
            if !state.writing {
                state = self.lead(state);
                continue;
            }
            state = self.group_done.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Writes every pending record as one group, then the records that arrived meanwhile, until
    /// none is pending; returns with the lock held.
    fn lead<'a>(&'a self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        state.writing = true;
        while !state.pending.is_empty() && state.stopped.is_none() {
            let group = std::mem::take(&mut state.pending);
            let written = match self.roll_if_full(&mut state) {
                Ok(()) => {
                    let first_id = state.durable_end;
                    let active = state.segments.last().expect("an active segment");
                    let (file, offset) = (active.file.clone(), active.bytes());
                    drop(state);
                    let written = self.write_group(&file, offset, first_id, &group);
                    state = self.lock();
                    written
                }
                Err(error) => Err(error),
            };
            match written {
                Ok(lengths) => {
                    state.segments.last_mut().expect("an active segment").extend(lengths);
                    state.durable_end += group.len() as u64;
                }
                Err(error) => {
                    tracing::error!("the log stops taking writes: {error}");
                    state.stopped = Some(error.to_string());
                }
            }
            self.group_done.notify_all();
        }
        state.writing = false;
        state
    }

    /// Writes a group's records from `first_id` on at `offset` with one write and one sync;
    /// returns each record's length on disk.
    fn write_group(&self, file: &File, offset: u64, first_id: u64, group: &[Vec<u8>]) -> Result<Vec<u64>, LogError> {
        let total: usize = group.iter().map(|record| record.len() + record::HEADER_BYTES).sum();
        let mut buffer = Vec::with_capacity(total);
        let mut lengths = Vec::with_capacity(group.len());
        for (id, record) in (first_id..).zip(group) {
            let before = buffer.len();
            record::encode(&mut buffer, id, record);
            lengths.push((buffer.len() - before) as u64);
        }
        let path = &self.dir;
        file.write_all_at(&buffer, offset).map_err(|error| LogError::io(path, "write to the log in", error))?;
        file.sync_data().map_err(|error| LogError::io(path, "sync the log in", error))?;
        Ok(lengths)
    }

    /// Starts a new segment when the active one has passed the segment size.
    fn roll_if_full(&self, state: &mut State) -> Result<(), LogError> {
        let active = state.segments.last().expect("an active segment");
        if active.bytes() < self.segment_bytes {
            return Ok(());
        }
        active.seal()?;
        let segment = Segment::create(&self.dir, active.end_id(), self.segment_bytes)?;
        sync_dir(&self.dir)?;
        state.segments.push(segment);
        Ok(())
    }

    /// The durable records from id `from` on, in order, skipping ids of removed segments: at
    /// most `max_records`, and past the first at most `max_bytes` of payload and headers. Empty
    /// when `from` is the end. The file is read without the log's lock.
    pub fn read(&self, from: u64, max_records: usize, max_bytes: usize) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        let mut records = Vec::new();
        let mut next = from;
        let mut bytes = 0usize;
        while records.len() < max_records {
            let left = max_bytes.saturating_sub(bytes);
            if !records.is_empty() && left == 0 {
                break;
            }
            let Some(span) = self.lock().span(next, max_records - records.len(), left.max(1)) else { break };
            let taken = span.read()?;
            bytes += taken.iter().map(|(_, payload)| payload.len() + record::HEADER_BYTES).sum::<usize>();
            let reached = taken.last().map_or(span.segment_end, |(id, _)| id + 1);
            records.extend(taken);
            if reached < span.segment_end {
                // Cut short inside its segment (by the budget, or where the durable records end):
                // going on from the next segment would skip the rest of this one.
                break;
            }
            next = reached;
        }
        Ok(records)
    }

    /// The id the next record will have: every id below it is durable.
    pub fn end_id(&self) -> u64 {
        self.lock().durable_end
    }

    /// The id of the oldest record still kept.
    pub fn first_id(&self) -> u64 {
        self.lock().segments.first().expect("an active segment").first_id
    }

    /// Bytes the log's segments take.
    pub fn disk_bytes(&self) -> u64 {
        self.lock().segments.iter().map(Segment::bytes).sum()
    }

    /// Deletes every segment whose records all have ids below `id` (never the active one), and
    /// returns the bytes freed.
    pub fn remove_before(&self, id: u64) -> Result<u64, LogError> {
        self.remove_where(|ids| ids.end <= id)
    }

    /// Deletes every segment but the active one for whose ids `dead` is true, and returns the
    /// bytes freed. Reads skip the ids of removed segments.
    pub fn remove_where(&self, mut dead: impl FnMut(Range<u64>) -> bool) -> Result<u64, LogError> {
        let mut state = self.lock();
        let mut freed = 0;
        let mut failed = None;
        let count = state.segments.len();
        let mut index = 0;
        state.segments.retain(|segment| {
            index += 1;
            if index == count || failed.is_some() || !dead(segment.first_id..segment.end_id()) {
                return true;
            }
            match std::fs::remove_file(&segment.path) {
                Ok(()) => {
                    freed += segment.bytes();
                    false
                }
                Err(error) => {
                    failed = Some(LogError::io(&segment.path, "delete", error));
                    true
                }
            }
        });
        if let Some(error) = failed {
            return Err(error);
        }
        if freed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(freed)
    }

    /// The ids each kept segment holds, oldest first.
    pub fn segment_ids(&self) -> Vec<Range<u64>> {
        self.lock().segments.iter().map(|segment| segment.first_id..segment.end_id()).collect()
    }
}

impl State {
    /// Where the durable records from `from` on are: the first segment holding any, what part of
    /// it to read, and its end id. `None` when there are none.
    fn span(&self, from: u64, max_records: usize, max_bytes: usize) -> Option<segment::Span> {
        let segment = self.segments.iter().find(|segment| segment.end_id() > from)?;
        segment.span(from.max(segment.first_id), self.durable_end, max_records, max_bytes)
    }
}

/// Makes a directory's entries (a segment created or deleted) durable.
fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir).and_then(|handle| handle.sync_all()).map_err(|error| LogError::io(dir, "sync", error))
}

#[cfg(test)]
mod tests;
