//! The state a function sees: its own changes in this message, then the batch's, then the changes
//! of the batch being committed, then the store; and the host's own changes staged with a batch.

use std::collections::BTreeMap;

use super::MessageContext;
use crate::engine::state::{Change, KeyPage, StateError, StateValue};
use crate::instance::checks::check_key;
use crate::limits::MAX_STATE_VALUE_SIZE;
use crate::runtime::ContextError;

impl MessageContext {
    /// Adds a host change to the batch (a window record stored or deleted), committed with it.
    pub(in crate::instance) fn stage(&mut self, key: String, change: Change) {
        match &mut self.history {
            Some(history) => history.staged(&mut self.batch_state, key, change),
            None => self.batch_state.record(key, change),
        }
    }

    /// The bytes under `key` as the next commit will leave them.
    pub(in crate::instance) fn read(&mut self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.current(key).map(|value| value.map(StateValue::into_bytes)).map_err(|_| {
            StateError::Storage(self.host_failure.take().unwrap_or_else(|| format!("cannot read `{key:?}`")))
        })
    }

    /// The value of `key` as this message sees it: its own changes, then the batch's, then the store.
    pub(super) fn current(&mut self, key: &str) -> Result<Option<StateValue>, ContextError> {
        let message = self.message_state.get(key);
        if let Some(change) = message
            && !change.is_add()
        {
            return Ok(change.apply(None));
        }
        let base = match self.batch_state.get(key) {
            Some(change) if !change.is_add() => change.apply(None),
            batch => {
                let committed = match self.in_flight.get(key) {
                    Some(Change::Add(..)) => self.in_flight_counters.get(key).cloned().flatten(),
                    Some(absolute) => absolute.apply(None),
                    None => match self.state.get(key) {
                        Ok(stored) => stored.map(|versioned| versioned.value),
                        Err(error) => return Err(self.fail_host(error.to_string())),
                    },
                };
                match batch {
                    Some(change) => change.apply(committed),
                    None => committed,
                }
            }
        };
        Ok(match message {
            Some(change) => change.apply(base),
            None => base,
        })
    }

    /// Stores `value` under `key`, to live `ttl_ms` from the commit when given.
    pub(super) fn put(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), ContextError> {
        check_key(&key)?;
        if value.len() > MAX_STATE_VALUE_SIZE {
            return Err(ContextError::LimitExceeded(format!(
                "state value is {} bytes; the limit (MAX_STATE_VALUE_SIZE) is {MAX_STATE_VALUE_SIZE}",
                value.len()
            )));
        }
        self.spend(key.len() + value.len())?;
        self.message_state.record(key, Change::Put(value, ttl_ms));
        Ok(())
    }

    /// The page as this message sees it: the committed keys under the changes not yet committed
    /// (the batch being committed, this batch's, this message's), newest last.
    pub(super) fn list(&mut self, page: &KeyPage) -> Result<Vec<String>, ContextError> {
        let mut pending: BTreeMap<&str, bool> = BTreeMap::new();
        for changes in [&*self.in_flight, &self.batch_state, &self.message_state] {
            for (key, change) in changes.iter().filter(|(key, _)| page.holds(key)) {
                pending.insert(key, !matches!(change, Change::Delete));
            }
        }
        // A pending removal may hide a committed key: ask for one more key per removal.
        let removed = pending.values().filter(|exists| !**exists).count();
        let committed_page = KeyPage { limit: page.limit + removed, ..page.clone() };
        let committed = match self.state.list(&committed_page) {
            Ok(keys) => keys,
            Err(error) => return Err(self.fail_host(error.to_string())),
        };
        let mut keys: Vec<String> =
            committed.into_iter().filter(|key| pending.get(key.as_str()).is_none_or(|exists| *exists)).collect();
        keys.extend(pending.iter().filter(|(_, exists)| **exists).map(|(key, _)| (*key).to_owned()));
        keys.sort_unstable();
        keys.dedup();
        keys.truncate(page.limit);
        Ok(keys)
    }
}
