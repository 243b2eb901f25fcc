//! The data plane of the admin API: trigger, state, produce, and the JSON of messages and state.

use std::time::{Duration, Instant};

use super::api::{FunctionState, ReceivedMessage, StateKeys, TriggerAnswer};
use super::{InstanceSlot, TRIGGER_POLL, Worker, WorkerError, lock};
use crate::engine::broker::{Message, OutMessage, Position, SubscriptionSpec};
use crate::engine::state::{KeyPage, StateValue, Versioned};
use crate::function::ProcessingGuarantee;
use crate::instance::{self, INPUT_MESSAGE_ID_PROPERTY, INPUT_TOPIC_PROPERTY};
use crate::limits::{MAX_BATCH_MESSAGES, MAX_STATE_KEY_LEN, MAX_STATE_VALUE_SIZE, TRIGGER_TIMEOUT_MS};
use crate::names::{Fqfn, TopicName};

impl Worker {
    /// Puts `value` on `topic` (default: the function's only input topic), waits until the function
    /// has processed it, and returns its output, if it had one.
    pub fn trigger(&self, fqfn: &Fqfn, topic: Option<&str>, value: Vec<u8>) -> Result<TriggerAnswer, WorkerError> {
        let function = self.function(fqfn)?;
        self.check_disk()?;
        let config = {
            let mut function = lock(&function);
            // In a cluster the instances may run on other workers; their status tells.
            if !self.placement.shares_records() && !function.instances.iter_mut().any(InstanceSlot::is_running) {
                return Err(WorkerError::Conflict(format!(
                    "{fqfn} has no running instance to process the trigger; start it first"
                )));
            }
            function.config.clone()
        };
        let topic = config.input_topic(topic).map_err(WorkerError::BadRequest)?;
        let message = OutMessage::new(value);
        instance::check_message(&message).map_err(WorkerError::BadRequest)?;
        // The reader starts before the message exists, so the output cannot slip past it.
        let reader = match &config.output {
            Some(output) => Some(
                self.store
                    .subscribe(SubscriptionSpec::single(vec![output.clone()], None, Position::Latest))
                    .map_err(anyhow::Error::from)?,
            ),
            None => None,
        };
        let sequence = self.store.produce(&topic, vec![message]).map_err(anyhow::Error::from)?[0];
        let message_id = crate::engine::broker::message_id(sequence);
        let deadline = Instant::now() + Duration::from_millis(TRIGGER_TIMEOUT_MS);
        let is_output = |message: &Message| {
            let property = |name: &str| {
                message.body.properties.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
            };
            property(INPUT_TOPIC_PROPERTY) == Some(topic.as_str())
                && property(INPUT_MESSAGE_ID_PROPERTY) == Some(message_id.as_str())
        };
        // Under ATMOST_ONCE the acknowledgement comes before processing, so only an output tells
        // that the message was processed.
        let acknowledged_when_processed = config.guarantee != ProcessingGuarantee::AtMostOnce;
        loop {
            // Read after the check: once acknowledged, the output (committed with it) is readable.
            let processed = acknowledged_when_processed
                && self.store.is_acknowledged(&config.subscription, &topic, sequence).map_err(anyhow::Error::from)?;
            if let Some(reader) = &reader {
                loop {
                    let messages = reader.fetch(MAX_BATCH_MESSAGES, Duration::ZERO).map_err(anyhow::Error::from)?;
                    if let Some(output) = messages.iter().find(|message| is_output(message)) {
                        let output = Some(ReceivedMessage::of(output));
                        return Ok(TriggerAnswer { input_message_id: message_id.clone(), output });
                    }
                    if messages.is_empty() {
                        break;
                    }
                }
            }
            if processed {
                return Ok(TriggerAnswer { input_message_id: message_id.clone(), output: None });
            }
            if Instant::now() >= deadline {
                let why = if acknowledged_when_processed {
                    "did not process"
                } else {
                    "gave no output for (under ATMOST_ONCE only an output shows that a message was processed)"
                };
                return Err(WorkerError::Timeout(format!(
                    "{fqfn} {why} message {message_id} of {topic} within TRIGGER_TIMEOUT_MS ({TRIGGER_TIMEOUT_MS} ms); see its status"
                )));
            }
            std::thread::sleep(TRIGGER_POLL);
        }
    }

    /// The committed value of a state key.
    pub fn query_state(&self, fqfn: &Fqfn, key: &str) -> Result<FunctionState, WorkerError> {
        self.function(fqfn)?;
        crate::engine::state::check_user_key(key).map_err(WorkerError::BadRequest)?;
        let stored = self.store.table(fqfn).and_then(|table| table.get(key)).map_err(anyhow::Error::from)?;
        match stored {
            Some(stored) => Ok(FunctionState::of(key, stored)),
            None => Err(WorkerError::NotFound(format!("function {fqfn} has no state under key `{key}`"))),
        }
    }

    /// A page of the function's state keys.
    pub fn list_state(&self, fqfn: &Fqfn, page: KeyPage) -> Result<StateKeys, WorkerError> {
        self.function(fqfn)?;
        let keys = self.store.table(fqfn).and_then(|table| table.list(&page)).map_err(anyhow::Error::from)?;
        let next_after = (keys.len() == page.limit).then(|| keys.last().cloned()).flatten();
        Ok(StateKeys { keys, next_after })
    }

    /// Sets a state key to bytes; counters are refused, both as the new value and as the old one.
    pub fn put_state(&self, fqfn: &Fqfn, key: &str, value: Vec<u8>) -> Result<FunctionState, WorkerError> {
        self.function(fqfn)?;
        self.check_disk()?;
        crate::engine::state::check_user_key(key).map_err(WorkerError::BadRequest)?;
        if key.len() > MAX_STATE_KEY_LEN {
            return Err(WorkerError::BadRequest(format!(
                "state key is {} bytes; the limit (MAX_STATE_KEY_LEN) is {MAX_STATE_KEY_LEN}",
                key.len()
            )));
        }
        if value.len() > MAX_STATE_VALUE_SIZE {
            return Err(WorkerError::BadRequest(format!(
                "state value is {} bytes; the limit (MAX_STATE_VALUE_SIZE) is {MAX_STATE_VALUE_SIZE}",
                value.len()
            )));
        }
        let current = self.store.table(fqfn).and_then(|table| table.get(key)).map_err(anyhow::Error::from)?;
        if matches!(current, Some(Versioned { value: StateValue::Counter(_), .. })) {
            return Err(WorkerError::BadRequest(format!(
                "state key `{key}` of {fqfn} is a counter; putstate does not set counters, only the function's incr-counter changes them"
            )));
        }
        let stored = self.store.put(fqfn, key, StateValue::Bytes(value)).map_err(anyhow::Error::from)?;
        Ok(FunctionState::of(key, stored))
    }

    /// Appends messages to a topic; returns their ids.
    pub fn produce(&self, topic: &TopicName, messages: Vec<OutMessage>) -> Result<Vec<String>, WorkerError> {
        for (index, message) in messages.iter().enumerate() {
            instance::check_message(message)
                .map_err(|limit| WorkerError::BadRequest(format!("message {} was refused: {limit}", index + 1)))?;
        }
        self.check_disk()?;
        self.check_storage_quota(topic.tenant())?;
        let sequences = self.produce_batches.produce(topic, messages).map_err(super::topic_admin::broker_error)?;
        Ok(sequences.into_iter().map(crate::engine::broker::message_id).collect())
    }
}

/// Bytes that `message` takes in [`ReceivedMessage`]'s JSON encoding, at most: what bounds an answer and
/// counts against a tenant's receive rate, since text of control characters takes six times its
/// size once escaped.
pub fn message_json_len(message: &Message) -> usize {
    /// The fixed fields and their names, with the longest numbers and topic name.
    const FIELDS: usize = 256 + crate::limits::MAX_TOPIC_NAME_LEN;
    let body = &message.body;
    let value = match std::str::from_utf8(&body.value) {
        Ok(text) => escaped_len(text),
        Err(_) => body.value.len().div_ceil(3) * 4,
    };
    let key = body.key.as_deref().map_or(0, escaped_len);
    let properties: usize =
        body.properties.iter().map(|(name, value)| escaped_len(name) + escaped_len(value) + 6).sum();
    FIELDS + value + key + properties
}

/// The length of `text` as a JSON string, quotes included.
pub(super) fn escaped_len(text: &str) -> usize {
    2 + text
        .bytes()
        .map(|byte| match byte {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..0x20 => 6,
            _ => 1,
        })
        .sum::<usize>()
}
