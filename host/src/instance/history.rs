//! What a batch processed, message by message, kept for the function's history.
//!
//! The processing thread bounds the pipeline, so it records as little as it can: which message
//! of which fetched batch was kept, and the message's state changes. The commit thread turns that
//! into the engine's [`BatchHistory`] ([`PendingHistory::into_history`]).

use std::sync::Arc;

use crate::engine::history::BatchHistory;
use crate::engine::state::{Change, StateChanges};
use crate::runtime::GuestMessage;

/// One message the batch kept, as the processing thread records it.
enum Recorded {
    /// Message `index` of fetched batch `batch` (an index into `batches`), whose changes end at
    /// `changes_end` in `changes` (and start where the previous message's end).
    Kept { batch: u32, index: u32, changes_end: usize },
    /// A dead-lettered message, which changed nothing.
    DeadLettered { topic: String, message_id: String },
}

/// The history of the batch being processed.
pub(super) struct HistoryBuffer {
    code_digest: Arc<str>,
    /// The fetched batches the recorded messages are in, each once.
    batches: Vec<Arc<[GuestMessage]>>,
    messages: Vec<Recorded>,
    /// Every kept message's changes, one after another.
    changes: Vec<(String, Change)>,
}

impl HistoryBuffer {
    pub(super) fn new(code_digest: &str) -> Self {
        Self { code_digest: code_digest.into(), batches: Vec::new(), messages: Vec::new(), changes: Vec::new() }
    }

    /// Records that message `index` of `batch` was kept with `changes`.
    pub(super) fn kept(&mut self, batch: &Arc<[GuestMessage]>, index: usize, changes: &StateChanges) {
        if !self.batches.last().is_some_and(|last| Arc::ptr_eq(last, batch)) {
            self.batches.push(batch.clone());
        }
        self.changes.extend(changes.iter().map(|(key, change)| (key.clone(), change.clone())));
        self.messages.push(Recorded::Kept {
            batch: (self.batches.len() - 1) as u32,
            index: index as u32,
            changes_end: self.changes.len(),
        });
    }

    /// Records that `message` was dead-lettered.
    pub(super) fn dead_lettered(&mut self, message: &GuestMessage) {
        self.messages
            .push(Recorded::DeadLettered { topic: message.topic.clone(), message_id: message.message_id.clone() });
    }

    /// What the batch recorded, for its commit, leaving the buffer empty.
    pub(super) fn take(&mut self, instance_id: u32) -> PendingHistory {
        PendingHistory {
            instance_id,
            code_digest: self.code_digest.clone(),
            batches: std::mem::take(&mut self.batches),
            messages: std::mem::take(&mut self.messages),
            changes: std::mem::take(&mut self.changes),
        }
    }
}

/// A batch's history as the processing thread left it.
pub(super) struct PendingHistory {
    instance_id: u32,
    code_digest: Arc<str>,
    batches: Vec<Arc<[GuestMessage]>>,
    messages: Vec<Recorded>,
    changes: Vec<(String, Change)>,
}

impl PendingHistory {
    /// The engine's form of the history.
    pub(super) fn into_history(self) -> BatchHistory {
        let Self { instance_id, code_digest, batches, messages, changes } = self;
        let mut history = BatchHistory::new(instance_id, code_digest);
        history.changes.reserve(changes.len());
        let mut changes = changes.into_iter();
        let mut taken = 0;
        for recorded in messages {
            match recorded {
                Recorded::Kept { batch, index, changes_end } => {
                    let message = &batches[batch as usize][index as usize];
                    history.push(
                        &message.topic,
                        message.message_id.clone(),
                        changes.by_ref().take(changes_end - taken),
                    );
                    taken = changes_end;
                }
                Recorded::DeadLettered { topic, message_id } => history.push(&topic, message_id, []),
            }
        }
        history
    }
}
