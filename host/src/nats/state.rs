//! Function state on NATS: one key-value bucket per function, read through a cache of the
//! values this process wrote or read.

use std::sync::Arc;

use async_nats::jetstream::kv;

use super::failure::is_not_found;
use super::names::{STATE_BUCKET_PREFIX, kv_key, token};
use super::{Inner, NatsEngine, ValueCache, decode, remember, state_storage};
use crate::codec::encode;
use crate::engine::state::{StateError, StateStore, StateTable, StateValue, Versioned};
use crate::names::Fqfn;

/// A stored value in a state bucket.
pub(super) fn decode_state(fqfn: &Fqfn, key: &str, entry: kv::Entry) -> Result<Option<Versioned>, StateError> {
    if entry.operation != kv::Operation::Put {
        return Ok(None);
    }
    let value = decode::<StateValue>(&entry.value).map_err(|reason| StateError::Corrupt {
        fqfn: fqfn.clone(),
        key: key.into(),
        reason,
    })?;
    Ok(Some(Versioned { value, version: entry.revision }))
}

impl StateStore for NatsEngine {
    fn table(&self, fqfn: &Fqfn) -> Result<Box<dyn StateTable>, StateError> {
        let inner = &self.inner;
        let store = inner.block_on(inner.table(fqfn))?;
        let cache = inner.cache(fqfn);
        cache.lock().unwrap().clear();
        Ok(Box::new(NatsTable { inner: inner.clone(), fqfn: fqfn.clone(), store, cache }))
    }

    fn put(&self, fqfn: &Fqfn, key: &str, value: StateValue) -> Result<Versioned, StateError> {
        let inner = &self.inner;
        inner.block_on(async {
            let store = inner.table(fqfn).await?;
            let version = store.put(kv_key(key), encode(&value).into()).await.map_err(state_storage)?;
            let stored = Versioned { value, version };
            remember(&inner.cache(fqfn), key, Some(stored.clone()));
            Ok(stored)
        })
    }

    fn delete_table(&self, fqfn: &Fqfn) -> Result<(), StateError> {
        let inner = &self.inner;
        let bucket = format!("{STATE_BUCKET_PREFIX}{}", token(&fqfn.to_string()));
        inner.tables.lock().unwrap().remove(fqfn);
        inner.caches.lock().unwrap().remove(fqfn);
        inner.block_on(async {
            match inner.jetstream.delete_key_value(&bucket).await {
                Ok(_) => Ok(()),
                Err(error) if is_not_found(&error) => Ok(()),
                Err(error) => Err(state_storage(error)),
            }
        })
    }
}

/// A function's state bucket, read by one instance.
pub(super) struct NatsTable {
    inner: Arc<Inner>,
    fqfn: Fqfn,
    store: kv::Store,
    cache: ValueCache,
}

impl StateTable for NatsTable {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StateError> {
        if let Some(known) = self.cache.lock().unwrap().get(key) {
            return Ok(known.clone());
        }
        let entry = self.inner.block_on(self.store.entry(kv_key(key))).map_err(state_storage)?;
        let stored = match entry {
            Some(entry) => decode_state(&self.fqfn, key, entry)?,
            None => None,
        };
        remember(&self.cache, key, stored.clone());
        Ok(stored)
    }
}
