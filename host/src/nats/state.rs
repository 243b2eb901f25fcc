//! Function state on NATS: a changelog and a key-value view per function (`changelog`), read
//! through a cache of the values this process last wrote or read.

use std::sync::Arc;

use async_nats::jetstream::kv;

use super::failure::is_not_found;
use super::history::{EncodedHistory, Source};
use super::logged::{Held, Logged};
use super::names::{STATE_BUCKET_PREFIX, token};
use super::{Inner, NatsEngine, ValueCache, remember, state_storage};
use crate::engine::clock::{Clock, now_millis};
use crate::engine::state::{KeyPage, StateError, StateStore, StateTable, StateValue, Versioned, live};
use crate::names::Fqfn;

impl StateStore for NatsEngine {
    fn table(&self, fqfn: &Fqfn) -> Result<Box<dyn StateTable>, StateError> {
        let inner = &self.inner;
        let cache = inner.cache(fqfn);
        let opening = inner.opening(fqfn);
        // Another instance of the function in this process may be reading meanwhile: it waits
        // until the view holds what the cache no longer does.
        let store = {
            let _opening = opening.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            // Emptied before the view is brought up to date: a commit remembered after this is in
            // the cache, and one remembered before is in the changelog the view is brought up to.
            // A commit's read in between (of a counter) brings the view up to date itself.
            let emptied = cache.lock().unwrap().empty();
            let store = inner.block_on(async {
                inner.materialise(fqfn).await?;
                inner.table(fqfn).await
            })?;
            cache.lock().unwrap().view_caught_up(emptied);
            store
        };
        Ok(Box::new(NatsTable { inner: inner.clone(), fqfn: fqfn.clone(), store, cache, opening }))
    }

    fn put(&self, fqfn: &Fqfn, key: &str, value: StateValue) -> Result<Versioned, StateError> {
        let inner = &self.inner;
        inner.block_on(async {
            let id = inner.commit_id();
            let operator = EncodedHistory::new(now_millis(), Source::Operator, inner.entry_bytes);
            let version = inner
                .log_changes(
                    fqfn,
                    vec![(key.to_owned(), Logged::to(Some(&Held::lasting(value.clone()))))],
                    &id,
                    Some(&operator),
                )
                .await
                .map_err(|error| StateError::Storage(error.to_string()))?;
            let stored = Versioned::lasting(value, version);
            remember(&inner.cache(fqfn), key, Some(stored.clone()));
            Ok(stored)
        })
    }

    fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    fn delete_table(&self, fqfn: &Fqfn) -> Result<(), StateError> {
        let inner = &self.inner;
        let bucket = format!("{STATE_BUCKET_PREFIX}{}", token(&fqfn.to_string()));
        inner.tables.lock().unwrap().remove(fqfn);
        inner.caches.lock().unwrap().remove(fqfn);
        inner.openings.lock().unwrap().remove(fqfn);
        inner.block_on(async {
            inner.delete_changelog(fqfn).await?;
            match inner.jetstream.delete_key_value(&bucket).await {
                Ok(_) => Ok(()),
                Err(error) if is_not_found(&error) => Ok(()),
                Err(error) => Err(state_storage(error)),
            }
        })
    }

    fn materialise_views(&self) -> Result<(), StateError> {
        let inner = &self.inner;
        inner.block_on(async {
            for fqfn in inner.logged_functions().await? {
                inner.materialise(&fqfn).await?;
                let asked = inner.sweep_expired(&fqfn).await?;
                if asked > 0 {
                    tracing::debug!(%fqfn, asked, "asked for expired state values to be removed");
                }
            }
            Ok(())
        })
    }
}

/// A function's state view, read by one instance.
pub(super) struct NatsTable {
    inner: Arc<Inner>,
    fqfn: Fqfn,
    store: kv::Store,
    cache: ValueCache,
    /// Held for reading by each read, so that none falls inside another instance's opening.
    opening: Arc<std::sync::RwLock<()>>,
}

impl StateTable for NatsTable {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StateError> {
        let now = self.inner.clock.now_millis();
        let _reading = self.opening.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(known) = self.cache.lock().unwrap().get(key) {
            return Ok(live(known.clone(), now));
        }
        let stored = self.inner.block_on(self.inner.read_missed(&self.fqfn, &self.store, &self.cache, key))?;
        remember(&self.cache, key, stored.clone());
        Ok(live(stored, now))
    }

    fn list(&self, page: &KeyPage) -> Result<Vec<String>, StateError> {
        let inner = &self.inner;
        // The view has no order of its own: its keys are read whole, then their values, in
        // order, until the page is full (a value read is fresh: the view is brought up to date first).
        inner.block_on(async {
            inner.materialise(&self.fqfn).await?;
            let keys = inner.view_keys(&self.store).await?;
            let now = inner.clock.now_millis();
            let mut listed = Vec::with_capacity(page.limit.min(1024));
            for key in keys.into_iter().filter(|key| page.holds(key)) {
                if listed.len() == page.limit {
                    break;
                }
                let entry = inner.view_entry(&self.fqfn, &self.store, &key).await?;
                if entry.and_then(|(entry, _)| entry.versioned()).is_some_and(|value| !value.expired_at(now)) {
                    listed.push(key);
                }
            }
            Ok(listed)
        })
    }
}

#[cfg(test)]
mod tests {
    use fnhost_test_support::Nats;

    use super::*;
    use crate::nats::NatsSecurity;

    #[test]
    fn a_value_the_full_cache_let_go_of_is_read_as_committed_not_from_the_view_behind() {
        let nats = Nats::start(1);
        let mut engine = NatsEngine::connect(&nats.urls(), 1, &NatsSecurity::default()).unwrap();
        Arc::get_mut(&mut engine.inner).expect("the engine is not shared yet").cached_keys = 4;
        let fqfn = Fqfn::parse("public/default/f").unwrap();
        let table = engine.table(&fqfn).unwrap();
        let value = |index: u64| StateValue::Bytes(format!("value {index}").into_bytes());
        // The view is brought up to date only when a table opens, or a worker asks: these
        // writes are in the changelog only, and the fifth empties the full cache.
        for index in 0..6 {
            engine.put(&fqfn, &format!("k{index}"), value(index)).unwrap();
        }
        for index in 0..6 {
            let read = table.get(&format!("k{index}")).unwrap().map(|versioned| versioned.value);
            assert_eq!(read, Some(value(index)), "k{index}");
        }
    }
}
