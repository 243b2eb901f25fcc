//! A function's recent log lines, kept in memory by the worker for whoever reads or follows them
//! (`fnhost functions logs`, the console): a ring bounded in lines and bytes, numbered so that a
//! follower asks for what came after the last line it saw.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::log::level_name;
use crate::limits::{MAX_LIVE_LOG_BYTES, MAX_LIVE_LOG_LINES, MAX_LOG_FOLLOWERS_PER_FUNCTION};
use crate::runtime::LogLevel;

/// One log line of a function, as the live log keeps and serves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    /// Its number in the function's live log: growing, from 1, never reused while the worker runs.
    pub sequence: u64,
    /// When it was written, in milliseconds since the Unix epoch.
    pub time: u64,
    /// The instance that wrote it.
    pub instance_id: u32,
    /// Its level, as Pulsar writes it (`INFO`).
    pub level: String,
    /// The line.
    pub message: String,
}

/// A function's live log.
pub struct LiveLog {
    lines: Mutex<Lines>,
    /// The newest line's sequence, for followers to wait on.
    newest: tokio::sync::watch::Sender<u64>,
    followers: AtomicUsize,
}

#[derive(Default)]
struct Lines {
    kept: VecDeque<LogLine>,
    bytes: usize,
    next_sequence: u64,
}

impl Default for LiveLog {
    fn default() -> Self {
        Self {
            lines: Mutex::new(Lines { next_sequence: 1, ..Lines::default() }),
            newest: tokio::sync::watch::Sender::new(0),
            followers: AtomicUsize::new(0),
        }
    }
}

impl LiveLog {
    /// Keeps a line, letting the oldest go past [`MAX_LIVE_LOG_LINES`] or [`MAX_LIVE_LOG_BYTES`].
    pub fn push(&self, instance_id: u32, level: LogLevel, message: &str) {
        let mut lines = self.lines.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let sequence = lines.next_sequence;
        lines.next_sequence += 1;
        let line = LogLine {
            sequence,
            time: crate::engine::clock::now_millis(),
            instance_id,
            level: level_name(level).to_owned(),
            message: message.to_owned(),
        };
        lines.bytes += line.message.len();
        lines.kept.push_back(line);
        while lines.kept.len() > MAX_LIVE_LOG_LINES || lines.bytes > MAX_LIVE_LOG_BYTES {
            let Some(oldest) = lines.kept.pop_front() else { break };
            lines.bytes -= oldest.message.len();
        }
        drop(lines);
        self.newest.send_replace(sequence);
    }

    /// Up to `most` lines after sequence `after` (of `instance` only, if given), oldest first:
    /// the newest such lines when there are more.
    pub fn lines(&self, after: u64, instance: Option<u32>, most: usize) -> Vec<LogLine> {
        let lines = self.lines.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let wanted = |line: &&LogLine| line.sequence > after && instance.is_none_or(|id| line.instance_id == id);
        let mut found: Vec<LogLine> = lines.kept.iter().rev().filter(wanted).take(most).cloned().collect();
        found.reverse();
        found
    }

    /// Something to wait on for lines newer than those seen.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.newest.subscribe()
    }

    /// A place among the log's followers, or `None` when it has [`MAX_LOG_FOLLOWERS_PER_FUNCTION`].
    pub fn follow(self: &Arc<Self>) -> Option<Follower> {
        let taken = self.followers.fetch_update(Ordering::AcqRel, Ordering::Acquire, |followers| {
            (followers < MAX_LOG_FOLLOWERS_PER_FUNCTION).then_some(followers + 1)
        });
        taken.ok().map(|_| Follower(self.clone()))
    }
}

/// A follower's place, given back when it is dropped.
pub struct Follower(Arc<LiveLog>);

impl Drop for Follower {
    fn drop(&mut self) {
        self.0.followers.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_lines_within_its_bounds_and_serves_what_came_after() {
        let log = LiveLog::default();
        for line in 0..MAX_LIVE_LOG_LINES + 10 {
            log.push((line % 2) as u32, LogLevel::Info, &format!("line {line}"));
        }
        let all = log.lines(0, None, usize::MAX);
        assert_eq!(all.len(), MAX_LIVE_LOG_LINES);
        assert_eq!(all[0].message, "line 10", "the oldest went first");
        let newest = all.last().unwrap().sequence;
        assert_eq!(log.lines(newest, None, 10), vec![]);
        let tail = log.lines(0, Some(1), 3);
        assert_eq!(tail.len(), 3);
        assert!(tail.iter().all(|line| line.instance_id == 1));
        assert_eq!(tail.last().unwrap().sequence, newest, "the newest of instance 1");
        // Large lines: the byte bound holds first.
        let big = "x".repeat(64 * 1024);
        for _ in 0..40 {
            log.push(0, LogLevel::Warn, &big);
        }
        let kept = log.lines(0, None, usize::MAX);
        assert!(kept.iter().map(|line| line.message.len()).sum::<usize>() <= MAX_LIVE_LOG_BYTES);
        assert_eq!(kept.last().unwrap().level, "WARN");
    }

    #[test]
    fn followers_are_bounded_and_a_place_comes_back_when_a_follower_leaves() {
        let log = Arc::new(LiveLog::default());
        let followers: Vec<Follower> = (0..MAX_LOG_FOLLOWERS_PER_FUNCTION).map(|_| log.follow().unwrap()).collect();
        assert!(log.follow().is_none());
        drop(followers);
        assert!(log.follow().is_some());
    }
}
