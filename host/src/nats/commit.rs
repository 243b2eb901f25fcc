//! A cluster commit, which JetStream cannot make atomic: the intent an ordered consumer writes
//! first (its outputs and each changed key's final value), which a successor replays, then the
//! outputs and the state changelog message (with message ids the streams de-duplicate), and the
//! acknowledgements.

use std::collections::{BTreeSet, HashMap};

use bincode::{Decode, Encode};

use super::entry;
use super::history::EncodedHistory;
use super::logged::{Held, Logged};
use super::names::kv_key;
use super::subscription::{INTENT_PREFIX, NatsSubscription};
use super::{Inner, encode, remember, storage};
use crate::engine::broker::{BrokerError, Effects, OutMessage, SubscriptionSpec, SubscriptionType};
use crate::engine::state::{Change, live};
use crate::names::{Fqfn, SubscriptionName, TopicName};

/// How many times a commit that failed for a passing reason is repeated.
const COMMIT_RETRIES: u32 = 50;
/// Room left in the servers' largest message for a bucket entry's headers and subject.
const INTENT_MARGIN: usize = 4 << 10;

impl Inner {
    /// Forgets, in every commit intent of `subscription`, what was committed of `topic`.
    pub(super) async fn forget_committed(
        &self,
        subscription: &SubscriptionName,
        topic: &TopicName,
    ) -> Result<(), BrokerError> {
        let prefix = format!("{INTENT_PREFIX}{subscription}/");
        for (key, bytes) in
            super::metadata::records(&self.jetstream, super::METADATA_BUCKET, &prefix).await.map_err(storage)?
        {
            let (mut intent, history) = Intent::decode(&key, &bytes)?;
            intent.forget_topic(topic);
            self.metadata.put(kv_key(&key), intent.encode(history.as_ref()).into()).await.map_err(storage)?;
        }
        Ok(())
    }
}

impl NatsSubscription {
    /// Commits `effects`: writes them, records the acknowledged messages of entries still partly
    /// unacknowledged, then acknowledges the entries now acknowledged whole.
    pub(super) fn commit_effects(&self, effects: Effects) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let positions = || {
            effects.acks.iter().flat_map(|(topic, ranges)| {
                ranges.iter().flat_map(move |&(start, end)| (start..end).map(move |at| (topic, at)))
            })
        };
        let mut replies = Vec::new();
        let mut records = Vec::new();
        let mut forget = Vec::new();
        let mut done = Vec::new();
        let mut highest: HashMap<TopicName, u64> = HashMap::new();
        {
            let mut delivered = inner.delivered.lock().unwrap();
            // A reader has no subscription, so nothing was delivered to it for acknowledgement.
            let unknown = positions().find(|&(topic, position)| {
                let (stream_sequence, index) = entry::entry_of(position);
                self.spec.name.as_ref().is_none_or(|name| {
                    delivered
                        .get(&self.entry_key(name, topic, stream_sequence))
                        .is_none_or(|held| !held.unacked.contains(&index))
                })
            });
            if let Some((topic, position)) = unknown {
                return Err(BrokerError::Storage(format!(
                    "message {position} of {topic} was not received by subscription `{}` through this worker; acknowledge it on the worker that received it",
                    self.spec.name.as_ref().map(ToString::to_string).unwrap_or_default()
                )));
            }
            let mut touched = BTreeSet::new();
            if let Some(name) = &self.spec.name {
                for (topic, position) in positions() {
                    let (stream_sequence, index) = entry::entry_of(position);
                    let key = self.entry_key(name, topic, stream_sequence);
                    delivered.get_mut(&key).expect("checked above").unacked.remove(&index);
                    touched.insert(key);
                    let high = highest.entry(topic.clone()).or_default();
                    *high = (*high).max(position);
                }
            }
            for key in touched {
                let held = delivered.get_mut(&key).expect("checked above");
                if held.unacked.is_empty() {
                    if held.recorded {
                        forget.push(key.record());
                    }
                    replies.push(held.reply.clone());
                    delivered.remove(&key);
                    done.push((key.topic, key.stream_sequence));
                } else {
                    records.push((key.record(), held.acknowledged()));
                    held.recorded = true;
                }
            }
        }
        let commit = inner.commit_id();
        let mut attempt = 0;
        inner.block_on(async {
            loop {
                let applied = match self.apply(&effects, &commit, &highest).await {
                    Ok(()) => inner.record_partial(&records).await,
                    failed => failed,
                };
                match applied {
                    Err(error) if attempt < COMMIT_RETRIES && super::is_transient(&error) => {
                        attempt += 1;
                        tracing::debug!(attempt, "committing again: {error}");
                        tokio::time::sleep(super::RETRY_PAUSE).await;
                    }
                    result => break result,
                }
            }?;
            inner.acknowledge(replies).await?;
            inner.forget_partial(&forget).await;
            Ok::<_, BrokerError>(())
        })?;
        let mut held = self.held.lock().unwrap();
        for entry in &done {
            held.remove(entry);
        }
        Ok(())
    }

    /// Finishes the commit a predecessor of this consumer may have left half done, and learns
    /// what it committed.
    pub(super) fn finish_intent(&self) -> Result<(), BrokerError> {
        let Some(key) = &self.intent_key else { return Ok(()) };
        let inner = &self.inner;
        inner.block_on(async {
            let Some(bytes) = inner.metadata.get(kv_key(key)).await.map_err(storage)? else { return Ok(()) };
            let (intent, history) = Intent::decode(key, &bytes)?;
            let mut committed = HashMap::new();
            for (topic, position) in &intent.committed {
                if let Ok(topic) = TopicName::parse(topic) {
                    committed.insert(topic, *position);
                }
            }
            // Applying it again is harmless: outputs keep their message ids and state its final values.
            apply_intent(inner, &intent, history.as_ref()).await?;
            *self.committed.lock().unwrap() = committed;
            Ok(())
        })
    }

    /// Writes a commit's effects (not its acknowledgements); repeating it is harmless, because
    /// outputs keep their ids (`commit`) and an ordered subscription writes final values.
    pub(super) async fn apply(
        &self,
        effects: &Effects,
        commit: &str,
        highest: &HashMap<TopicName, u64>,
    ) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let mut history = effects
            .state
            .as_ref()
            .map(|(_, changes)| EncodedHistory::of_batch(effects.history.as_ref(), changes, inner.entry_bytes / 2));
        let intent = match (&self.intent_key, &effects.state) {
            (Some(key), state) => {
                let (fqfn, finals) = match state {
                    Some((fqfn, changes)) => (Some(fqfn.to_string()), self.final_values(fqfn, changes).await?),
                    None => (None, Vec::new()),
                };
                let mut committed = self.committed.lock().unwrap().clone();
                for (topic, high) in highest {
                    let entry = committed.entry(topic.clone()).or_default();
                    *entry = (*entry).max(*high);
                }
                let intent = Intent {
                    commit: commit.to_owned(),
                    outputs: effects
                        .outputs
                        .iter()
                        .map(|(topic, message)| IntentOutput {
                            topic: topic.to_string(),
                            value: message.value.clone(),
                            key: message.key.clone(),
                            properties: message.properties.clone(),
                            event_time: message.event_time,
                        })
                        .collect(),
                    fqfn,
                    state: finals,
                    committed: committed.iter().map(|(topic, high)| (topic.to_string(), *high)).collect(),
                };
                let mut bytes = intent.encode(history.as_ref());
                // The intent is one message: a batch's history that would not fit is left out.
                if bytes.len() > inner.entry_bytes * 2 - INTENT_MARGIN {
                    history = history.map(|history| history.unkept());
                    bytes = intent.encode(history.as_ref());
                }
                inner.metadata.put(kv_key(key), bytes.into()).await.map_err(|error| {
                    storage(format!(
                        "cannot write the commit intent (lower --batch-size if the batch's effects are large): {error}"
                    ))
                })?;
                Some((intent, committed))
            }
            _ => None,
        };
        match intent {
            Some((intent, committed)) => {
                apply_intent(inner, &intent, history.as_ref()).await?;
                *self.committed.lock().unwrap() = committed;
            }
            None => {
                // Neither write depends on the other, and the acknowledgement waits for both.
                let state = async {
                    if let Some((fqfn, changes)) = &effects.state {
                        log_shared(inner, fqfn, changes, commit, history.as_ref()).await?;
                    }
                    Ok(())
                };
                tokio::try_join!(publish_outputs(inner, effects.outputs.iter().cloned(), commit), state)?;
            }
        }
        Ok(())
    }

    /// Resolves `effects.state` into final values, reading the counters it adds to: from the
    /// cache, where an ordered instance, its keys' only writer, finds what it wrote, else from
    /// the view, which its table's opening brought up to date.
    async fn final_values(
        &self,
        fqfn: &Fqfn,
        changes: &crate::engine::state::StateChanges,
    ) -> Result<Vec<(String, Option<Held>)>, BrokerError> {
        let inner = &self.inner;
        let cache = inner.cache(fqfn);
        let now = inner.clock.now_millis();
        let mut finals = Vec::with_capacity(changes.len());
        for (key, change) in changes.iter() {
            let stored = match change {
                Change::Add(..) => {
                    let cached = cache.lock().unwrap().get(key).cloned();
                    let known = match cached {
                        Some(known) => known,
                        None => {
                            let view = inner.table(fqfn).await.map_err(storage)?;
                            inner.read_missed(fqfn, &view, &cache, key).await.map_err(storage)?
                        }
                    };
                    live(known, now)
                }
                _ => None,
            };
            finals.push((key.clone(), change.committed(stored, 0, now).map(Held::from)));
        }
        Ok(finals)
    }
}

/// The metadata key of the commit intent of the consumer `spec` makes of subscription `name`.
///
/// Key-shared consumers of different instance counts split the keys differently, so each count
/// has intents of its own: what instance 0 of 3 committed says nothing of what instance 0 of 2
/// may skip.
pub(super) fn intent_key(name: &SubscriptionName, spec: &SubscriptionSpec) -> String {
    let (share, count) = spec.key_shares;
    match spec.subscription_type == SubscriptionType::KeyShared && count > 1 {
        true => format!("{INTENT_PREFIX}{name}/{share}_{count}"),
        false => format!("{INTENT_PREFIX}{name}/{share}"),
    }
}

/// A commit's effects with every state change resolved to the value it leaves, written before
/// the commit applies them, so that the instance that takes over can finish it.
#[derive(Debug, PartialEq, Encode, Decode)]
pub(crate) struct Intent {
    /// The id prefix of the commit's output message ids.
    commit: String,
    /// The outputs, in order.
    outputs: Vec<IntentOutput>,
    /// The function's state bucket is that of this fully qualified name.
    fqfn: Option<String>,
    /// Each changed key and what it holds after the commit (`None`: removed).
    state: Vec<(String, Option<Held>)>,
    /// For each topic, the highest position this consumer has committed.
    committed: Vec<(String, u64)>,
}

impl Intent {
    /// The intent as the metadata bucket keeps it: followed by its commit's history, which an
    /// older fnhost neither wrote nor reads.
    fn encode(&self, history: Option<&EncodedHistory>) -> Vec<u8> {
        let mut bytes = encode(self);
        if let Some(history) = history {
            bytes.extend_from_slice(history.head());
        }
        bytes
    }

    /// The intent stored under `key`, and its commit's history if it has one.
    fn decode(key: &str, bytes: &[u8]) -> Result<(Self, Option<EncodedHistory>), BrokerError> {
        let (intent, history) = crate::codec::decode_leading::<Self>(bytes).map_err(|reason| {
            storage(format!(
                "the commit intent `{key}` cannot be decoded ({reason}); remove it from the metadata bucket"
            ))
        })?;
        Ok((intent, EncodedHistory::from_head(history)))
    }

    /// Forgets what was committed of `topic`: its subscription's cursor there was moved, and what
    /// comes again is to be processed again.
    pub(super) fn forget_topic(&mut self, topic: &TopicName) {
        self.committed.retain(|(committed, _)| *committed != topic.as_str());
    }
}

/// One output of an [`Intent`].
#[derive(Debug, PartialEq, Encode, Decode)]
pub(super) struct IntentOutput {
    topic: String,
    value: Vec<u8>,
    key: Option<String>,
    properties: Vec<(String, String)>,
    event_time: Option<u64>,
}

/// Applies an intent: publishes its outputs (the streams drop repeats by message id) and writes its final values.
pub(super) async fn apply_intent(
    inner: &Inner,
    intent: &Intent,
    history: Option<&EncodedHistory>,
) -> Result<(), BrokerError> {
    let outputs = intent
        .outputs
        .iter()
        .map(|output| {
            let message = OutMessage {
                value: output.value.clone(),
                key: output.key.clone(),
                properties: output.properties.clone(),
                event_time: output.event_time,
            };
            Ok((TopicName::parse(&output.topic).map_err(storage)?, message))
        })
        .collect::<Result<Vec<_>, BrokerError>>()?;
    publish_outputs(inner, outputs, &intent.commit).await?;
    if let Some(fqfn) = &intent.fqfn {
        let fqfn = Fqfn::parse(fqfn).map_err(storage)?;
        let logged = intent.state.iter().map(|(key, value)| (key.clone(), Logged::to(value.as_ref()))).collect();
        let version = inner.log_changes(&fqfn, logged, &intent.commit, history).await?;
        let cache = inner.cache(&fqfn);
        for (key, value) in &intent.state {
            remember(&cache, key, value.clone().map(|held| held.versioned(version)));
        }
    }
    Ok(())
}

/// Publishes a commit's outputs, topic by topic in the order each first appears, as entries
/// whose ids are `COMMIT-TOPIC-ENTRY`.
pub(super) async fn publish_outputs(
    inner: &Inner,
    outputs: impl IntoIterator<Item = (TopicName, OutMessage)>,
    commit: &str,
) -> Result<(), BrokerError> {
    let mut topics: Vec<TopicName> = Vec::new();
    let mut messages: Vec<Vec<OutMessage>> = Vec::new();
    for (topic, message) in outputs {
        match topics.iter().position(|known| *known == topic) {
            Some(position) => messages[position].push(message),
            None => {
                topics.push(topic);
                messages.push(vec![message]);
            }
        }
    }
    let publishes = topics.iter().zip(messages).enumerate().map(|(index, (topic, messages))| async move {
        let id = format!("{commit}-{index}");
        inner.publish(topic, messages, Some(&id)).await
    });
    futures_util::future::try_join_all(publishes).await.map(drop)
}

/// Logs changes that other instances may be making to the same keys at the same time, as they
/// are: increments stay deltas, which the view adds in changelog order, so none is lost. What
/// this instance knows afterwards is cached: a value put or removed, and a counter it had read
/// plus its delta; a counter it had not read is read from the view when asked.
pub(super) async fn log_shared(
    inner: &Inner,
    fqfn: &Fqfn,
    changes: &crate::engine::state::StateChanges,
    commit: &str,
    history: Option<&EncodedHistory>,
) -> Result<(), BrokerError> {
    let now = inner.clock.now_millis();
    let logged = changes.iter().map(|(key, change)| (key.clone(), Logged::of(change, now))).collect();
    let version = inner.log_changes(fqfn, logged, commit, history).await?;
    let cache = inner.cache(fqfn);
    for (key, change) in changes.iter() {
        let known = match change {
            Change::Add(..) => match cache.lock().unwrap().get(key).cloned() {
                Some(known) => change.committed(known, version, now),
                None => continue,
            },
            _ => change.committed(None, version, now),
        };
        remember(&cache, key, known);
    }
    Ok(())
}
