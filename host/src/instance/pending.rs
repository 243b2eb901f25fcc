//! What a batch hands from processing to its commit: the outputs as processing recorded them, the
//! state changes, the history, and the memory the commit thread frees.

use std::sync::Arc;

use super::checks::result_properties;
use super::history::PendingHistory;
use super::trace::MessageSpan;
use crate::engine::broker::{Acks, Effects, OutMessage};
use crate::engine::state::StateChanges;
use crate::names::{Fqfn, TopicName};
use crate::runtime::GuestMessage;
use crate::telemetry::TRACEPARENT;

/// An output of a batch, as processing records it.
pub(super) enum PendingOutput {
    /// A message to append as it is: published by the function, a log line or a dead letter.
    Ready(TopicName, OutMessage),
    /// The function's result for message `index` of `batch`, for the output topic.
    /// With the `traceparent` it carries: its message's span's, or the message's own.
    Result { value: Vec<u8>, batch: Arc<[GuestMessage]>, index: usize, traceparent: Option<String> },
}

/// A batch's effects as processing leaves them.
///
/// The processing thread bounds the pipeline while the commit thread has time to spare, so
/// [`PendingBatch::into_effects`] turns results into output messages on the commit thread, which
/// also frees the batch's messages.
pub(crate) struct PendingBatch {
    pub(super) acks: Acks,
    pub(super) outputs: Vec<PendingOutput>,
    pub(super) output_topic: Option<TopicName>,
    pub(super) state: Option<(Fqfn, Arc<StateChanges>)>,
    pub(super) history: Option<PendingHistory>,
    pub(super) retired: Retired,
    /// The spans of the messages processed, ended by the commit (empty while tracing is off).
    pub(super) spans: Vec<MessageSpan>,
}

/// What a replayed message did: its result for the output topic, the messages it published, and
/// its state changes.
#[derive(Default)]
pub(super) struct ReplayedEffects {
    pub(super) result: Option<Vec<u8>>,
    pub(super) published: Vec<(TopicName, OutMessage)>,
    pub(super) changes: Option<Arc<StateChanges>>,
}

/// Memory a [`MessageContext`] is done with, held only to be freed by a commit thread.
#[derive(Default)]
pub(super) struct Retired {
    /// Fetched batches whose calls are over.
    pub(super) _batches: Vec<Arc<[GuestMessage]>>,
    /// The changes of a batch whose commit ended.
    pub(super) _changes: Option<Arc<StateChanges>>,
}

impl PendingBatch {
    /// What a replayed message did.
    pub(super) fn into_replayed(self) -> ReplayedEffects {
        let mut replayed = ReplayedEffects::default();
        for output in self.outputs {
            match output {
                PendingOutput::Ready(topic, message) => replayed.published.push((topic, message)),
                PendingOutput::Result { value, .. } => replayed.result = Some(value),
            }
        }
        replayed.changes = self.state.map(|(_, changes)| changes);
        replayed
    }

    pub(super) fn into_effects(self) -> Effects {
        let Self { acks, outputs, output_topic, state, history, retired, spans: _ } = self;
        let outputs = outputs
            .into_iter()
            .filter_map(|output| match output {
                PendingOutput::Ready(topic, message) => Some((topic, message)),
                PendingOutput::Result { value, batch, index, traceparent } => {
                    let origin = &batch[index];
                    let mut properties: Vec<(String, String)> =
                        result_properties(origin).map(|(name, value)| (name.to_owned(), value.to_owned())).into();
                    if let Some(traceparent) = traceparent {
                        properties.push((TRACEPARENT.to_owned(), traceparent));
                    }
                    let message = OutMessage { value, key: origin.key.clone(), properties, event_time: None };
                    Some((output_topic.clone()?, message))
                }
            })
            .collect();
        drop(retired);
        Effects { acks, outputs, state, history: history.map(PendingHistory::into_history) }
    }
}
