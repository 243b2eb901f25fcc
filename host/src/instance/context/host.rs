//! The calls a guest makes into the host ([`HostContext`]), each checked against its limit and
//! gathered into the current message's effects.

use std::sync::atomic::Ordering as AtomicOrdering;
use std::time::Instant;

use super::MessageContext;
use crate::engine::broker::OutMessage;
use crate::engine::state::{Change, KeyPage, KeyPageError, StateValue};
use crate::instance::checks::{check_key, check_message};
use crate::instance::pending::PendingOutput;
use crate::limits::{
    MAX_LOG_LINES_PER_MESSAGE, MAX_METRIC_NAME_LEN, MAX_METRICS_PER_INSTANCE, MAX_PUBLISHES_PER_MESSAGE,
    MAX_STATE_TTL_MS, MAX_WRITTEN_BYTES_PER_MESSAGE,
};
use crate::names::TopicName;
use crate::runtime::{ContextError, GuestReads, HostContext, LogLevel, ProcessError};
use crate::telemetry::set_traceparent;

impl MessageContext {
    /// Counts `bytes` more written by the current message, which the host holds until the commit.
    pub(super) fn spend(&mut self, bytes: usize) -> Result<(), ContextError> {
        if self.written + bytes > MAX_WRITTEN_BYTES_PER_MESSAGE {
            return Err(ContextError::LimitExceeded(format!(
                "the message's state writes and publishes come to more than {MAX_WRITTEN_BYTES_PER_MESSAGE} bytes, the limit (MAX_WRITTEN_BYTES_PER_MESSAGE)"
            )));
        }
        self.written += bytes;
        Ok(())
    }

    /// Records a host failure: the message fails as the host's failure whatever the function does next.
    pub(super) fn fail_host(&mut self, reason: String) -> ContextError {
        self.host_failure = Some(reason.clone());
        ContextError::HostFailure(reason)
    }

    pub(super) fn topic(&mut self, name: &str) -> Result<TopicName, ContextError> {
        if let Some(topic) = self.topics.get(name) {
            return Ok(topic.clone());
        }
        let topic = TopicName::parse(name).map_err(|error| ContextError::InvalidArgument(error.to_string()))?;
        self.topic_access.check(&topic, "topic").map_err(|error| ContextError::NotPermitted(error.to_string()))?;
        self.topics.insert(name.to_owned(), topic.clone());
        Ok(topic)
    }
}

impl HostContext for MessageContext {
    fn min_log_level(&mut self) -> LogLevel {
        self.log_level.get()
    }

    fn finish_message(
        &mut self,
        result: Result<Option<Vec<u8>>, ProcessError>,
        finished_at: Instant,
        reads: GuestReads,
    ) -> bool {
        // A stopped instance takes no further message of the call; they come again.
        self.end_message(result, finished_at, reads) && !self.stop_requested()
    }

    fn stop_requested(&self) -> bool {
        self.stop.load(AtomicOrdering::Relaxed)
    }

    fn log(&mut self, level: LogLevel, message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES_PER_MESSAGE {
            if self.log_lines == MAX_LOG_LINES_PER_MESSAGE + 1 {
                self.write_log(
                    LogLevel::Warn,
                    format!(
                        "further log lines of this message are dropped: the limit (MAX_LOG_LINES_PER_MESSAGE) is {MAX_LOG_LINES_PER_MESSAGE}"
                    ),
                );
            }
            return;
        }
        self.write_log(level, message);
    }

    fn record_metric(&mut self, name: String, value: f64) {
        if name.len() > MAX_METRIC_NAME_LEN
            || (self.metrics.len() >= MAX_METRICS_PER_INSTANCE && !self.metrics.contains_key(&name))
        {
            self.write_log(
                LogLevel::Warn,
                format!(
                    "metric `{}` dropped: names are limited to MAX_METRIC_NAME_LEN ({MAX_METRIC_NAME_LEN}) bytes and MAX_METRICS_PER_INSTANCE ({MAX_METRICS_PER_INSTANCE}) names",
                    name.chars().take(64).collect::<String>()
                ),
            );
            return;
        }
        let entry = self.metrics.entry(name).or_default();
        entry.0 += 1;
        entry.1 += value;
    }

    fn get_state(&mut self, key: String) -> Result<Option<Vec<u8>>, ContextError> {
        check_key(&key)?;
        Ok(self.current(&key)?.map(StateValue::into_bytes))
    }

    fn put_state(&mut self, key: String, value: Vec<u8>) -> Result<(), ContextError> {
        self.put(key, value, self.state_ttl_ms)
    }

    fn put_state_ttl(&mut self, key: String, value: Vec<u8>, ttl_ms: u64) -> Result<(), ContextError> {
        if !(1..=MAX_STATE_TTL_MS).contains(&ttl_ms) {
            return Err(ContextError::InvalidArgument(format!(
                "a time to live of {ttl_ms} ms is out of range: give from 1 ms to {MAX_STATE_TTL_MS} ms, ten years (MAX_STATE_TTL_MS)"
            )));
        }
        self.put(key, value, Some(ttl_ms))
    }

    fn list_state_keys(
        &mut self,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<String>, ContextError> {
        let page = KeyPage::new(prefix, after, limit as usize).map_err(|error| match error {
            KeyPageError::LimitExceeded(reason) => ContextError::LimitExceeded(reason),
            KeyPageError::Invalid(reason) => ContextError::InvalidArgument(reason),
        })?;
        self.list(&page)
    }

    fn delete_state(&mut self, key: String) -> Result<(), ContextError> {
        check_key(&key)?;
        self.message_state.record(key, Change::Delete);
        Ok(())
    }

    fn incr_counter(&mut self, key: String, amount: i64) -> Result<i64, ContextError> {
        check_key(&key)?;
        let current = match self.current(&key)? {
            None => 0,
            Some(StateValue::Counter(value)) => value,
            Some(StateValue::Bytes(_)) => {
                return Err(ContextError::WrongKind(format!(
                    "state key `{key}` holds bytes, not a counter; delete it before counting under it"
                )));
            }
        };
        self.message_state.record(key, Change::Add(amount, self.state_ttl_ms));
        Ok(current.wrapping_add(amount))
    }

    fn get_counter(&mut self, key: String) -> Result<i64, ContextError> {
        check_key(&key)?;
        match self.current(&key)? {
            None => Ok(0),
            Some(StateValue::Counter(value)) => Ok(value),
            Some(StateValue::Bytes(_)) => Err(ContextError::WrongKind(format!(
                "state key `{key}` holds bytes, not a counter; read it with get-state"
            ))),
        }
    }

    fn publish(
        &mut self,
        topic: String,
        value: Vec<u8>,
        key: Option<String>,
        properties: Vec<(String, String)>,
    ) -> Result<(), ContextError> {
        if self.publishes >= MAX_PUBLISHES_PER_MESSAGE {
            return Err(ContextError::LimitExceeded(format!(
                "more than MAX_PUBLISHES_PER_MESSAGE ({MAX_PUBLISHES_PER_MESSAGE}) publishes while processing one message"
            )));
        }
        let topic = self.topic(&topic)?;
        let mut message = OutMessage { value, key, properties, event_time: None };
        check_message(&message).map_err(ContextError::LimitExceeded)?;
        // The host's own property, past the guest's MAX_PROPERTIES, as a result's are.
        if let Some(traceparent) = self.traceparent(self.call.start + self.outcomes.len()) {
            set_traceparent(&mut message.properties, traceparent);
        }
        self.spend(message.value.len() + message.key.as_ref().map_or(0, String::len))?;
        self.publishes += 1;
        self.message_outputs.push(PendingOutput::Ready(topic, message));
        Ok(())
    }

    fn ack(&mut self) {
        // Only MANUAL reads this; under the other guarantees every message is acknowledged anyway.
        self.acked = true;
    }
}
