//! One segment: a file of consecutive records, named by the id of its first record.

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::LogError;
use super::record::{Scanned, scan};

/// The file name of the segment whose first record is `first_id`.
pub(super) fn file_name(first_id: u64) -> String {
    format!("{first_id:020}.seg")
}

/// The first id a segment file's name gives, if it is a segment's name.
pub(super) fn first_id_of(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|byte| byte.is_ascii_digit())).then(|| digits.parse().ok())?
}

/// A segment's file and where each of its records starts.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) path: PathBuf,
    pub(super) file: Arc<File>,
    /// The id of its first record (also of the next record when it has none).
    pub(super) first_id: u64,
    /// The offset of each record, in id order, and the end of the last.
    offsets: Vec<u64>,
}

/// What opening the last segment cut from its end.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cut {
    /// Bytes removed.
    pub bytes: u64,
    /// Why the first of them could not be read.
    pub reason: String,
}

impl Segment {
    /// Creates an empty segment for records from `first_id` on, with `preallocate` bytes
    /// allocated: an `fdatasync` after a write into allocated space need not also make a new
    /// file size durable, which took it from about 0.16 ms to 0.11 ms here (ext4).
    pub(super) fn create(dir: &Path, first_id: u64, preallocate: u64) -> Result<Self, LogError> {
        let path = dir.join(file_name(first_id));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|error| LogError::io(&path, "create", error))?;
        if preallocate > 0
            && let Err(error) = rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, preallocate)
        {
            // A file system without it only loses the speed-up.
            tracing::debug!(path = %path.display(), "cannot preallocate a log segment: {error}");
        }
        Ok(Self { path, file: Arc::new(file), first_id, offsets: vec![0] })
    }

    /// Opens a segment and checks every record. A damaged record in the last segment (`last`)
    /// is a write the process did not finish: it and what follows are cut, and the cut is
    /// returned. In any other segment it is damage, and an error.
    pub(super) fn open(path: &Path, first_id: u64, last: bool) -> Result<(Self, Option<Cut>), LogError> {
        let file =
            OpenOptions::new().read(true).write(true).open(path).map_err(|error| LogError::io(path, "open", error))?;
        let bytes = std::fs::read(path).map_err(|error| LogError::io(path, "read", error))?;
        let mut offsets = vec![0u64];
        let mut offset = 0usize;
        let mut cut = None;
        loop {
            let expected = first_id + offsets.len() as u64 - 1;
            let damage = match scan(&bytes, offset) {
                Scanned::End => break,
                // The active segment's preallocated space, never written.
                _ if last && bytes[offset..].iter().all(|byte| *byte == 0) => break,
                Scanned::Record { id, len, .. } if id == expected => {
                    offset += len;
                    offsets.push(offset as u64);
                    continue;
                }
                Scanned::Record { id, .. } => format!("record {id} where record {expected} belongs"),
                Scanned::Damaged(reason) => reason,
            };
            if !last {
                return Err(LogError::Corrupt { path: path.to_owned(), offset: offset as u64, reason: damage });
            }
            let bytes_cut = (bytes.len() - offset) as u64;
            file.set_len(offset as u64).map_err(|error| LogError::io(path, "cut the torn end of", error))?;
            file.sync_data().map_err(|error| LogError::io(path, "sync", error))?;
            cut = Some(Cut { bytes: bytes_cut, reason: format!("at byte {offset}: {damage}") });
            break;
        }
        Ok((Self { path: path.to_owned(), file: Arc::new(file), first_id, offsets }, cut))
    }

    /// How many records it holds.
    pub(super) fn len(&self) -> u64 {
        self.offsets.len() as u64 - 1
    }

    /// The id its next record would have.
    pub(super) fn end_id(&self) -> u64 {
        self.first_id + self.len()
    }

    /// Its size in bytes.
    pub(super) fn bytes(&self) -> u64 {
        *self.offsets.last().expect("offsets hold the end")
    }

    /// Gives back the preallocated space after its last record, durably, when it stops being the
    /// active segment: a segment before the last must end with its last record.
    pub(super) fn seal(&self) -> Result<(), LogError> {
        self.file.set_len(self.bytes()).map_err(|error| LogError::io(&self.path, "seal", error))?;
        self.file.sync_all().map_err(|error| LogError::io(&self.path, "sync", error))
    }

    /// Notes records written at its end, `lengths` bytes each, in order.
    pub(super) fn extend(&mut self, lengths: impl IntoIterator<Item = u64>) {
        let mut end = self.bytes();
        for length in lengths {
            end += length;
            self.offsets.push(end);
        }
    }

    /// Where records `from..until` (ids) are in the file: at most `max_records` of them and,
    /// past the first, at most `max_bytes` in all. `None` when there is none to read.
    pub(super) fn span(&self, from: u64, until: u64, max_records: usize, max_bytes: usize) -> Option<Span> {
        let until = until.min(self.end_id());
        if from >= until || max_records == 0 {
            return None;
        }
        let index = |id: u64| (id - self.first_id) as usize;
        // Records are small and consecutive: the span is read with one pread, then split.
        let mut last = from;
        let mut bytes = 0u64;
        while last < until && (last - from) < max_records as u64 {
            let size = self.offsets[index(last) + 1] - self.offsets[index(last)];
            if last > from && bytes + size > max_bytes as u64 {
                break;
            }
            bytes += size;
            last += 1;
        }
        Some(Span {
            file: self.file.clone(),
            path: self.path.clone(),
            start: self.offsets[index(from)],
            bytes,
            ids: from..last,
            segment_end: self.end_id(),
        })
    }
}

/// Consecutive records of one segment, to be read without the log's lock.
pub(super) struct Span {
    file: Arc<File>,
    path: PathBuf,
    start: u64,
    bytes: u64,
    ids: Range<u64>,
    /// The id after the segment's last record.
    pub(super) segment_end: u64,
}

impl Span {
    /// The payloads of its records, with their ids.
    pub(super) fn read(&self) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        let mut bytes = vec![0u8; self.bytes as usize];
        self.file.read_exact_at(&mut bytes, self.start).map_err(|error| LogError::io(&self.path, "read", error))?;
        let mut records = Vec::with_capacity((self.ids.end - self.ids.start) as usize);
        let mut offset = 0usize;
        for id in self.ids.clone() {
            match scan(&bytes, offset) {
                Scanned::Record { id: read, payload, len } if read == id => {
                    records.push((id, bytes[payload].to_vec()));
                    offset += len;
                }
                _ => {
                    return Err(LogError::Corrupt {
                        path: self.path.clone(),
                        offset: self.start + offset as u64,
                        reason: format!("record {id} no longer reads back as it was written"),
                    });
                }
            }
        }
        Ok(records)
    }
}
