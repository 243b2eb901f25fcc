//! What a batch processed, message by message, kept for the function's history.
//!
//! The processing thread bounds the pipeline, so it records as little as it can: which message
//! of which fetched batch was kept, and the message's state changes, each named by its key's
//! index in the batch's changes while one message alone changed the key ([`MessageChange::Sole`]),
//! copied only once a second change to the key makes the first message's differ from the batch's.
//! The commit thread turns that into the engine's [`BatchHistory`] ([`PendingHistory::into_history`]).

use std::sync::Arc;

use crate::engine::history::{BatchHistory, MessageChange};
use crate::engine::state::{Change, StateChanges};
use crate::runtime::GuestMessage;

/// One message the batch kept, as the processing thread records it.
enum Recorded {
    /// Message `index` of fetched batch `batch` (an index into `batches`), whose changes end at
    /// `changes_end` in `changes` (and start where the previous message's end).
    Kept { batch: u32, index: u32, changes_end: usize },
    /// A dead-lettered message (its topic and id), which changed nothing: rare, so boxed to keep
    /// the common entry small.
    DeadLettered(Box<(String, String)>),
}

/// The history of the batch being processed.
pub(super) struct HistoryBuffer {
    code_digest: Arc<str>,
    /// The fetched batches the recorded messages are in, each once.
    batches: Vec<Arc<[GuestMessage]>>,
    messages: Vec<Recorded>,
    /// Every kept message's changes, one after another.
    changes: Vec<MessageChange>,
    /// For each key of the batch's changes, by index: where in `changes` the entry of the one
    /// message that changed it is, while one message alone has.
    sole_writers: Vec<Option<u32>>,
}

impl HistoryBuffer {
    pub(super) fn new(code_digest: &str) -> Self {
        Self {
            code_digest: code_digest.into(),
            batches: Vec::new(),
            messages: Vec::new(),
            changes: Vec::new(),
            sole_writers: Vec::new(),
        }
    }

    /// Moves the changes of message `index` of `batch`, which the batch keeps, from
    /// `message_state` into `batch_state`, recording them.
    pub(super) fn kept(
        &mut self,
        batch: &Arc<[GuestMessage]>,
        index: usize,
        batch_state: &mut StateChanges,
        message_state: &mut StateChanges,
    ) {
        if !self.batches.last().is_some_and(|last| Arc::ptr_eq(last, batch)) {
            self.batches.push(batch.clone());
        }
        batch_state.absorb_noting(message_state, |key_index, key, earlier, change| {
            self.note(key_index, key, earlier, Some(change));
        });
        self.messages.push(Recorded::Kept {
            batch: (self.batches.len() - 1) as u32,
            index: index as u32,
            changes_end: self.changes.len(),
        });
    }

    /// Moves changes that no message made (a window function's) from `unattributed` into
    /// `batch_state`.
    pub(super) fn absorbed(&mut self, batch_state: &mut StateChanges, unattributed: &mut StateChanges) {
        batch_state.absorb_noting(unattributed, |key_index, key, earlier, _| self.note(key_index, key, earlier, None));
    }

    /// Records the host's `change` to `key` (a window record) in `batch_state`.
    pub(super) fn staged(&mut self, batch_state: &mut StateChanges, key: String, change: Change) {
        batch_state.record_noting(key, change, |key_index, key, earlier, _| self.note(key_index, key, earlier, None));
    }

    /// Notes a change to the batch's key `key_index`, on which `earlier` was pending, made by a
    /// kept message (`by_message`) or by no message.
    #[inline]
    fn note(&mut self, key_index: usize, key: &str, earlier: Option<&Change>, by_message: Option<&Change>) {
        match earlier {
            // The common case, on the pipeline's path: a key new to the batch, the next index.
            None => {
                let sole = by_message.map(|_| self.changes.len() as u32);
                if key_index > self.sole_writers.len() {
                    // Keys were added that no note saw (a window's changes): they have no sole writer.
                    self.sole_writers.resize(key_index, None);
                }
                match self.sole_writers.get_mut(key_index) {
                    Some(writer) => *writer = sole,
                    None => self.sole_writers.push(sole),
                }
                if sole.is_some() {
                    self.changes.push(MessageChange::Sole(key_index as u32));
                }
            }
            Some(earlier) => self.note_again(key_index, key, earlier, by_message),
        }
    }

    /// [`HistoryBuffer::note`] of a key the batch changed before.
    #[cold]
    fn note_again(&mut self, key_index: usize, key: &str, earlier: &Change, by_message: Option<&Change>) {
        if let Some(entry) = self.sole_writers.get_mut(key_index).and_then(Option::take) {
            // The batch's change will differ from its one writer's so far, which was `earlier`.
            self.changes[entry as usize] = MessageChange::Own(key.to_owned(), earlier.clone());
        }
        if let Some(change) = by_message {
            self.changes.push(MessageChange::Own(key.to_owned(), change.clone()));
        }
    }

    /// Records that `message` was dead-lettered.
    pub(super) fn dead_lettered(&mut self, message: &GuestMessage) {
        self.messages.push(Recorded::DeadLettered(Box::new((message.topic.clone(), message.message_id.clone()))));
    }

    /// What the batch recorded, for its commit, leaving the buffer empty.
    pub(super) fn take(&mut self, instance_id: u32) -> PendingHistory {
        // The next batch's changes start empty, and their indices with them.
        self.sole_writers.clear();
        // The next batch likely records as many: its lists then grow without copying.
        let (messages, changes) = (self.messages.len(), self.changes.len());
        PendingHistory {
            instance_id,
            code_digest: self.code_digest.clone(),
            batches: std::mem::take(&mut self.batches),
            messages: std::mem::replace(&mut self.messages, Vec::with_capacity(messages)),
            changes: std::mem::replace(&mut self.changes, Vec::with_capacity(changes)),
        }
    }
}

/// A batch's history as the processing thread left it.
pub(super) struct PendingHistory {
    instance_id: u32,
    code_digest: Arc<str>,
    batches: Vec<Arc<[GuestMessage]>>,
    messages: Vec<Recorded>,
    changes: Vec<MessageChange>,
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
                    history.push(&message.topic, &message.message_id, changes.by_ref().take(changes_end - taken));
                    taken = changes_end;
                }
                Recorded::DeadLettered(letter) => {
                    let (topic, message_id) = &*letter;
                    history.push(topic, message_id, []);
                }
            }
        }
        history
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::broker::OutMessage;
    use crate::instance::pipeline::to_guest;
    use crate::names::TopicName;

    /// A reproducible stream of numbers below `bound`.
    struct Dice(u64);

    impl Dice {
        fn roll(&mut self, bound: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % bound
        }
    }

    #[test]
    fn each_message_reads_back_its_own_changes_whether_kept_once_or_copied() {
        let topic = TopicName::parse("persistent://public/default/in").unwrap();
        let mut dice = Dice(7);
        for round in 0..200 {
            let messages: Arc<[GuestMessage]> =
                (0..20).map(|sequence| to_guest(&topic, sequence, OutMessage::new("v").stamp(0))).collect();
            let mut buffer = HistoryBuffer::new("digest");
            let mut batch_state = StateChanges::default();
            let mut expected: Vec<Vec<(String, Change)>> = Vec::new();
            for index in 0..messages.len() {
                // A window record the host stages between messages, now and then.
                if dice.roll(5) == 0 {
                    buffer.staged(&mut batch_state, format!("k{}", dice.roll(8)), Change::Put(b"host".to_vec(), None));
                }
                let mut message_state = StateChanges::default();
                for _ in 0..dice.roll(4) {
                    let change = match dice.roll(3) {
                        0 => Change::Put(format!("{round}-{index}").into_bytes(), None),
                        1 => Change::Delete,
                        _ => Change::Add(dice.roll(10) as i64, None),
                    };
                    message_state.record(format!("k{}", dice.roll(8)), change);
                }
                let mine = message_state.iter().map(|(key, change)| (key.clone(), change.clone())).collect();
                if dice.roll(6) == 0 {
                    buffer.dead_lettered(&messages[index]);
                    expected.push(Vec::new());
                } else {
                    buffer.kept(&messages, index, &mut batch_state, &mut message_state);
                    assert!(message_state.is_empty(), "the message's changes moved into the batch");
                    expected.push(mine);
                }
            }
            let history = buffer.take(3).into_history();
            let read: Vec<Vec<(String, Change)>> = history
                .resolved(&batch_state)
                .map(|(_, changes)| changes.map(|(key, change)| (key.to_owned(), change.clone())).collect())
                .collect();
            assert_eq!(read, expected, "round {round}");
            let sole = history.changes.iter().filter(|change| matches!(change, MessageChange::Sole(_))).count();
            assert!(sole <= batch_state.len(), "round {round}: a key is kept once at most");
            assert!(buffer.sole_writers.is_empty(), "the next batch starts afresh");
        }
    }
}
