//! A function's history on the worker: replay and state read at a point of the past or traced
//! to its writer, on the engine's [`StateHistory`](crate::engine::history::StateHistory) port,
//! committing nothing; and re-drive of its dead letters, which commits as the function does.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use regex::RegexBuilder;

use super::api::FunctionState;
use super::api::history::{RedriveAnswer, RedriveRequest, ReplayAnswer, ReplayRequest, StateProvenance};
use super::topic_admin::broker_error;
use super::{Worker, WorkerError, lock};
use crate::engine::broker::{BrokerError, Position};
use crate::engine::history::{HistoryError, HistoryPoint};
use crate::engine::state::{StateStore, check_user_key};
use crate::instance::{FunctionLauncher, LogSink, RedriveFilter, ReplayError};
use crate::limits::{MAX_REDRIVE_PATTERN_LEN, MAX_REPLAY_MESSAGES};
use crate::metrics::Stats;
use crate::names::{Fqfn, TopicName};

/// Where `querystate --as-of` reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AsOf {
    /// Just before the function processed this message of this topic (the function's only input
    /// when `None`).
    Message(Option<String>, String),
    /// At this time, in milliseconds since the Unix epoch.
    Time(u64),
}

pub(super) fn history_error(error: HistoryError) -> WorkerError {
    match error {
        HistoryError::UnknownMessage { .. } => WorkerError::NotFound(error.to_string()),
        HistoryError::BadRange(reason) => WorkerError::BadRequest(reason),
        // 410 would fit, but Pulsar's clients know 409 as "the state forbids it".
        HistoryError::BeyondRetention(reason) => WorkerError::Conflict(reason),
        HistoryError::Broker(error) => broker_error(error),
        HistoryError::State(error) => WorkerError::Internal(error.into()),
    }
}

impl Worker {
    /// The input topic a request names, or the function's only one.
    fn history_topic(&self, fqfn: &Fqfn, topic: Option<&str>) -> Result<TopicName, WorkerError> {
        let function = self.function(fqfn)?;
        let config = lock(&function).config.clone();
        config.input_topic(topic).map_err(WorkerError::BadRequest)
    }

    /// Runs the messages `request` names through the function (its current code, or the
    /// component `code`) on its state as it was just before the first, and says what each would
    /// do, committing nothing.
    pub fn replay(
        &self,
        fqfn: &Fqfn,
        request: &ReplayRequest,
        code: Option<Vec<u8>>,
    ) -> Result<ReplayAnswer, WorkerError> {
        let topic = self.history_topic(fqfn, request.topic.as_deref())?;
        // A replay starts an instance, and may compile a component: it counts as a change.
        self.rates.take_change(fqfn.tenant(), self.access.quota(fqfn.tenant()).max_function_changes_per_minute)?;
        let (config, current) = {
            let function = self.function(fqfn)?;
            let function = lock(&function);
            (function.config.clone(), (function.record.digest.clone(), function.prepared.clone()))
        };
        let (digest, prepared) = match code {
            Some(bytes) => self.prepare(&bytes, "the replayed component")?,
            None => current,
        };
        let last = request.last.as_deref().unwrap_or(&request.message);
        let messages =
            self.store.messages(&topic, &request.message, last, MAX_REPLAY_MESSAGES).map_err(history_error)?;
        let replay =
            crate::instance::replay(&config, prepared, &digest, self.store.as_ref(), messages).map_err(|error| {
                match error {
                    ReplayError::History(error) => history_error(error),
                    ReplayError::Refused(reason) => WorkerError::BadRequest(reason),
                    ReplayError::Start(error) => {
                        WorkerError::BadRequest(format!("the function could not start for the replay: {error}"))
                    }
                    ReplayError::State(error) => WorkerError::Internal(error.into()),
                }
            })?;
        Ok(ReplayAnswer::of(replay, &digest))
    }

    /// The value `key` of the function's state had at `as_of`.
    pub fn query_state_as_of(&self, fqfn: &Fqfn, key: &str, as_of: &AsOf) -> Result<FunctionState, WorkerError> {
        check_user_key(key).map_err(WorkerError::BadRequest)?;
        let point = match as_of {
            AsOf::Message(topic, message_id) => HistoryPoint::BeforeMessage {
                topic: self.history_topic(fqfn, topic.as_deref())?,
                message_id: message_id.clone(),
            },
            AsOf::Time(time) => {
                self.function(fqfn)?;
                HistoryPoint::AtTime(*time)
            }
        };
        let past = self.store.past_table(fqfn, &point).map_err(history_error)?;
        match past.table.get(key).map_err(anyhow::Error::from)? {
            Some(stored) => Ok(FunctionState::of(key, stored)),
            None => Err(WorkerError::NotFound(format!("function {fqfn} had no state under key `{key}` then"))),
        }
    }

    /// Who wrote the current value of `key`.
    pub fn state_provenance(&self, fqfn: &Fqfn, key: &str) -> Result<StateProvenance, WorkerError> {
        self.function(fqfn)?;
        check_user_key(key).map_err(WorkerError::BadRequest)?;
        let provenance = self.store.last_write(fqfn, key).map_err(history_error)?;
        Ok(StateProvenance::of(key, provenance))
    }
}

impl Worker {
    /// Sends the function's dead letters back through it (its current code), under its
    /// guarantee, each acknowledged on the re-drive subscription in the commit of its effects.
    pub fn redrive(&self, fqfn: &Fqfn, request: &RedriveRequest) -> Result<RedriveAnswer, WorkerError> {
        let (config, digest, prepared) = {
            let function = self.function(fqfn)?;
            let function = lock(&function);
            (function.config.clone(), function.record.digest.clone(), function.prepared.clone())
        };
        let dead_letters = match &request.from_dlq {
            Some(name) => {
                let topic = TopicName::parse(name).map_err(|error| WorkerError::BadRequest(error.to_string()))?;
                config
                    .topic_access
                    .check(&topic, "dead-letter topic")
                    .map_err(|error| WorkerError::Forbidden(error.to_string()))?;
                topic
            }
            None => config.dead_letter_topic.clone(),
        };
        let where_error = match &request.where_error {
            Some(pattern) if pattern.len() > MAX_REDRIVE_PATTERN_LEN => {
                return Err(WorkerError::BadRequest(format!(
                    "--where-error is {} bytes; the limit (MAX_REDRIVE_PATTERN_LEN) is {MAX_REDRIVE_PATTERN_LEN}",
                    pattern.len()
                )));
            }
            Some(pattern) => {
                Some(RegexBuilder::new(pattern).size_limit(MAX_REDRIVE_PATTERN_LEN * 1024).build().map_err(
                    |error| WorkerError::BadRequest(format!("--where-error is not a regular expression: {error}")),
                )?)
            }
            None => None,
        };
        // A re-drive starts an instance: it counts as a change.
        self.rates.take_change(fqfn.tenant(), self.access.quota(fqfn.tenant()).max_function_changes_per_minute)?;
        let _redriving = RedriveGuard::take(&self.redrives, fqfn)?;
        let answer = |processed: &Stats, left| RedriveAnswer {
            dead_letter_topic: dead_letters.to_string(),
            processed: processed.received,
            succeeded: processed.succeeded,
            dead_lettered_again: processed.dead_lettered,
            left,
        };
        // Only the dead letters there now: one that fails again goes to the end, for a later re-drive.
        let end = match self.store.examine(&dead_letters, Position::Latest, 1) {
            Ok(Some(last)) => last.sequence + 1,
            Ok(None) | Err(BrokerError::NoSuchTopic(_)) => return Ok(answer(&Stats::default(), 0)),
            Err(error) => return Err(broker_error(error)),
        };
        let launcher = FunctionLauncher::new(
            &config,
            prepared,
            &digest,
            &*self.store as &dyn StateStore,
            LogSink::Worker(self.live_logs.of(&config.fqfn)),
        )
        .map_err(|error| WorkerError::BadRequest(error.to_string()))?;
        let executor = launcher.executor(0).map_err(|error| WorkerError::Conflict(error.to_string()))?;
        let filter = RedriveFilter { where_error, limit: request.limit };
        let stop = AtomicBool::new(false);
        let redriven =
            crate::instance::redrive(&*self.store, &config, &dead_letters, end, filter, Box::new(executor), &stop)
                .map_err(anyhow::Error::from)?;
        tracing::info!(%fqfn, processed = redriven.stats.received, left = redriven.left, "re-drove dead letters");
        Ok(answer(&redriven.stats, redriven.left))
    }
}

/// Marks a function as being re-driven until dropped: one re-drive of a function at a time.
struct RedriveGuard<'a> {
    redrives: &'a Mutex<BTreeSet<Fqfn>>,
    fqfn: Fqfn,
}

impl<'a> RedriveGuard<'a> {
    fn take(redrives: &'a Mutex<BTreeSet<Fqfn>>, fqfn: &Fqfn) -> Result<Self, WorkerError> {
        if !lock(redrives).insert(fqfn.clone()) {
            return Err(WorkerError::Conflict(format!(
                "{fqfn} is being re-driven already; wait for that re-drive to end"
            )));
        }
        Ok(Self { redrives, fqfn: fqfn.clone() })
    }
}

impl Drop for RedriveGuard<'_> {
    fn drop(&mut self) {
        lock(self.redrives).remove(&self.fqfn);
    }
}
