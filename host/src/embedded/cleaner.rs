//! Retention: the thread that frees the log's segments once nothing in them is needed, and the
//! checkpoints it asks for first.
//!
//! A segment other than the active one is deleted when
//! - every topic with messages in it has them acknowledged by all its durable subscriptions (a
//!   topic with no subscription keeps its messages, so that a function made after them reads them),
//!   and its namespace's retention does not keep them (then a topic with no subscription keeps
//!   only what retention keeps),
//! - every cursor move in it is checkpointed into the cursor tree, or superseded, and
//! - every state change in it is checkpointed into its function's tree, and
//! - it comes after no kept message of a function's input topic: the commits that processed
//!   those messages are the function's history (`history.rs`), kept as long as the messages are.
//!
//! Deleting the file is what gives the space back: there is no compaction.

use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use super::cursor::{cursor_key, encode_cursor};
use super::{EmbeddedStore, Inner, lock, storage};
use crate::engine::broker::BrokerError;

/// Stops the cleaner's thread when dropped or closed.
#[derive(Default)]
pub(super) struct Cleaner {
    stop: Mutex<Option<Sender<()>>>,
}

impl Cleaner {
    /// Starts the thread, which runs a pass every `interval` while the store lives.
    pub(super) fn start(&self, inner: Weak<Inner>, interval: Duration) -> std::io::Result<()> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new().name("fnhost-log-cleaner".into()).spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                let Some(inner) = inner.upgrade() else { return };
                if let Err(error) = (EmbeddedStore { inner }).clean() {
                    tracing::error!("freeing the log's segments failed (the next pass tries again): {error}");
                }
            }
        })?;
        *lock(&self.stop) = Some(stop);
        Ok(())
    }

    /// Stops the thread after its current pass; it does not wait for it.
    pub(super) fn close(&self) {
        lock(&self.stop).take();
    }
}

impl EmbeddedStore {
    /// One pass: samples the topics' rates, applies message TTL and backlog eviction, removes
    /// expired state values, checkpoints what holds back the segments before the active one, deletes those
    /// no longer needed, and returns the bytes freed.
    pub(crate) fn clean(&self) -> Result<u64, BrokerError> {
        let inner = &self.inner;
        let topics: Vec<_> = lock(&inner.topics).values().cloned().collect();
        let now = std::time::Instant::now();
        for topic in &topics {
            topic.sample_rates(now);
        }
        self.apply_policies(&topics)?;
        // Before the checkpoints below, which then write fewer values that have expired.
        let (expired, _) = self.sweep_expired().map_err(|error| BrokerError::Storage(error.to_string()))?;
        if expired > 0 {
            tracing::debug!(expired, "removed expired state values");
        }
        let segments = inner.log.segment_ids();
        let Some(active) = segments.last().map(|ids| ids.start).filter(|_| segments.len() > 1) else { return Ok(0) };
        self.save_cursors(active)?;
        self.save_topic_ends()?;
        let mut keep_from = u64::MAX;
        for table in lock(&inner.state_tables).values() {
            if let Some(oldest) = table.oldest_pending() {
                keep_from = keep_from.min(oldest);
                if oldest < active {
                    inner.checkpointer.request(table);
                }
            }
        }
        if let Some(oldest) = lock(&inner.unsaved_cursors).values().map(|unsaved| unsaved.log_id).min() {
            keep_from = keep_from.min(oldest);
        }
        let now_millis = crate::engine::clock::now_millis();
        let history_inputs = lock(&inner.history_inputs).clone();
        let live: Vec<_> = topics
            .iter()
            .filter_map(|topic| {
                let needed = topic.needed(inner.policies.of(&topic.name).retention.as_ref(), now_millis)?;
                // The commits that processed a function's kept input messages come after them:
                // its history is kept as long as they are.
                Some(match history_inputs.contains(topic.name.as_str()) {
                    true => *needed.start()..=u64::MAX,
                    false => needed,
                })
            })
            .collect();
        let freed = inner
            .log
            .remove_where(|ids| {
                // Only segments full before this pass looked at the topics: one filled since may
                // hold messages that `live` does not know of yet.
                ids.end <= active
                    && ids.end <= keep_from
                    && !live.iter().any(|kept| *kept.start() < ids.end && *kept.end() >= ids.start)
            })
            .map_err(super::journal::log_failed)?;
        if freed > 0 {
            let kept = inner.log.segment_ids();
            for topic in &topics {
                topic.forget_removed(&kept);
            }
            tracing::debug!(freed, "freed log segments");
        }
        Ok(freed)
    }

    /// Writes the cursors logged before record `before` into the cursor tree.
    fn save_cursors(&self, before: u64) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let saving: Vec<_> = lock(&inner.unsaved_cursors)
            .iter()
            .filter(|(_, unsaved)| unsaved.log_id < before)
            .map(|(key, unsaved)| (key.clone(), unsaved.clone()))
            .collect();
        if saving.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for ((subscription, topic), unsaved) in &saving {
            let key = cursor_key(subscription, topic);
            match &unsaved.position {
                Some((mark, acked)) => batch.insert(key, encode_cursor(*mark, acked)),
                None => batch.remove(key),
            }
        }
        inner.cursors.apply_batch(batch).map_err(storage)?;
        inner.db.flush().map_err(storage)?;
        let mut unsaved = lock(&inner.unsaved_cursors);
        for (key, saved) in saving {
            if unsaved.get(&key).is_some_and(|now| now.log_id == saved.log_id) {
                unsaved.remove(&key);
            }
        }
        Ok(())
    }

    /// Writes each topic's next sequence number into the topic-ends tree, so that a topic whose
    /// messages are all deleted does not number its next ones from 0 after a restart.
    fn save_topic_ends(&self) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let topics: Vec<_> = lock(&inner.topics).values().cloned().collect();
        let mut batch = sled::Batch::default();
        let mut changed = Vec::new();
        for topic in &topics {
            let end = topic.length.load(std::sync::atomic::Ordering::Acquire);
            if topic.saved_end() != end {
                batch.insert(topic.name.as_str().as_bytes(), &end.to_be_bytes());
                changed.push((topic, end));
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        inner.topic_ends.apply_batch(batch).map_err(storage)?;
        inner.db.flush().map_err(storage)?;
        for (topic, end) in changed {
            topic.set_saved_end(end);
        }
        Ok(())
    }
}
