//! State that expires, in cluster mode. NATS 2.9's key-value buckets have no time to live per
//! key (a bucket's `max_age` applies to every key alike), so the host sweeps.
//!
//! A value read after its expiry reads as absent wherever it is (`engine::state::live`); the
//! sweep gives its space back. When an applier writes a view entry whose value expires, it also
//! writes an index key in the same bucket, `x.<minute>.<key>`, the minute being when it expires
//! (never one the sweep has passed: [`SWEEP_MARGIN_MINUTES`]). The cluster's leader, every round,
//! sweeps each function's minutes that are over, from its mark (`expiry/<fqfn>` in the metadata
//! bucket, made with the first index key): it asks the bucket's stream for the subjects of the
//! minute (no consumer, no values read), logs one [`Logged::Expire`] per key to the changelog,
//! which removes the key only if it has expired by the sweep's time (a commit logged before it
//! that wrote the key again keeps it, and one logged after it comes after the removal: expiry is
//! ordered with commits by the changelog), purges the minute's index keys, and moves the mark.
//!
//! Cost: an index write per expiring value an applier writes (once per round per key, not per
//! commit), and per swept minute a stream-info request, one changelog message per
//! `entry_bytes` of keys and a purge; at most [`MAX_SWEPT_MINUTES_PER_ROUND`] minutes per
//! function per round. Keys that never expire cost nothing.

use async_nats::jetstream::kv;

use super::history::{EncodedHistory, Source};
use super::logged::Logged;
use super::names::{kv_key, kv_key_name};
use super::{Inner, decode, encode, state_storage};
use crate::engine::state::StateError;
use crate::names::Fqfn;

/// Metadata keys of the sweeps' marks start with this, then the function's name.
const MARK_PREFIX: &str = "expiry/";
/// An expiring value is indexed at least this many minutes after the applier's present minute,
/// so that a sweeper whose clock runs a little ahead has not passed its minute yet.
const SWEEP_MARGIN_MINUTES: u64 = 2;
/// Most minutes one round sweeps per function: a leader that was away catches up over rounds.
const MAX_SWEPT_MINUTES_PER_ROUND: u64 = 16;

const MINUTE_MS: u64 = 60_000;

fn mark_key(fqfn: &Fqfn) -> String {
    kv_key(&format!("{MARK_PREFIX}{fqfn}"))
}

/// The index key of `key`, which expires in `minute`.
fn index_key(minute: u64, key: &str) -> String {
    format!("x.{minute}.{}", kv_key(key))
}

impl Inner {
    /// Indexes `key` of `fqfn`'s view, whose value now expires at `expires_at`; makes the
    /// function's sweep mark first, once per process (`marked`).
    pub(super) async fn index_expiry(
        &self,
        fqfn: &Fqfn,
        view: &kv::Store,
        key: &str,
        expires_at: u64,
        marked: &mut bool,
    ) -> Result<(), StateError> {
        let now_minute = self.clock.now_millis() / MINUTE_MS;
        let minute = (expires_at / MINUTE_MS).max(now_minute + SWEEP_MARGIN_MINUTES);
        if !*marked {
            // Made at most once: a mark that exists is further on than this minute or sweeps it.
            if let Err(error) = self.metadata.create(mark_key(fqfn), encode(&now_minute).into()).await
                && error.kind() != kv::CreateErrorKind::AlreadyExists
            {
                return Err(state_storage(error));
            }
            *marked = true;
        }
        view.put(index_key(minute, key), bytes::Bytes::new()).await.map_err(state_storage)?;
        Ok(())
    }

    /// Sweeps `fqfn`'s minutes that are over, from its mark (see the module's comment); returns
    /// how many keys it asked to remove.
    pub(super) async fn sweep_expired(&self, fqfn: &Fqfn) -> Result<usize, StateError> {
        let Some(entry) = self.metadata.entry(mark_key(fqfn)).await.map_err(state_storage)? else { return Ok(0) };
        if entry.operation != kv::Operation::Put {
            return Ok(0);
        }
        let (mut next, mut revision) = (decode::<u64>(&entry.value).map_err(state_storage)?, entry.revision);
        let now = self.clock.now_millis();
        let view = self.table(fqfn).await?;
        let mut asked = 0;
        for _ in 0..MAX_SWEPT_MINUTES_PER_ROUND {
            // Only a minute that is over: an applier indexes nothing in it any more.
            if next >= now / MINUTE_MS {
                break;
            }
            let filter = format!("{}x.{next}.>", view.prefix);
            let mut subjects = view.stream.info_with_subjects(&filter).await.map_err(state_storage)?;
            let mut keys = Vec::new();
            while let Some((subject, _)) =
                futures_util::TryStreamExt::try_next(&mut subjects).await.map_err(state_storage)?
            {
                let name = subject.rsplit('.').next().unwrap_or_default();
                keys.extend(kv_key_name(name));
            }
            if !keys.is_empty() {
                asked += keys.len();
                let changes = keys.into_iter().map(|key| (key, Logged::Expire(now))).collect();
                let id = format!("expire-{fqfn}-{next}-{revision}");
                // With a history of its own, as an operator's write has: the applier records the
                // values before it, so that a replay across the sweep still reads them.
                let history = EncodedHistory::new(now, Source::Operator, self.entry_bytes);
                self.log_changes(fqfn, changes, &id, Some(&history))
                    .await
                    .map_err(|error| StateError::Storage(error.to_string()))?;
                view.stream.purge().filter(&filter).await.map_err(state_storage)?;
            }
            next += 1;
            // Another sweeper moved the mark first: it sweeps from there.
            match self.metadata.update(mark_key(fqfn), encode(&next).into(), revision).await {
                Ok(moved) => revision = moved,
                Err(_) => break,
            }
        }
        Ok(asked)
    }

    /// Forgets `fqfn`'s sweep mark (its view, with the index, goes with the function).
    pub(super) async fn delete_expiry_mark(&self, fqfn: &Fqfn) -> Result<(), StateError> {
        self.metadata.purge(mark_key(fqfn)).await.map_err(state_storage)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use fnhost_test_support::Nats;

    use super::*;
    use crate::engine::broker::{Acks, Broker, Effects, OutMessage, Position, SubscriptionSpec};
    use crate::engine::state::{Change, KeyPage, StateChanges, StateStore, StateValue};
    use crate::names::{SubscriptionName, TopicName};
    use crate::nats::{NatsEngine, NatsSecurity};

    #[test]
    fn the_leader_sweeps_expired_values_from_the_view_and_keeps_what_was_written_again() {
        let nats = Nats::start(1);
        let engine = NatsEngine::connect(&nats.urls(), 1, &NatsSecurity::default()).unwrap();
        let fqfn = Fqfn::parse("public/default/sessions").unwrap();
        let input = TopicName::parse("logins").unwrap();
        engine.produce(&input, (0..2).map(|index| OutMessage::new(vec![index])).collect()).unwrap();
        let spec = SubscriptionSpec {
            name: Some(SubscriptionName::of_function(&fqfn)),
            ..SubscriptionSpec::single(vec![input], None, Position::Earliest)
        };
        let consumer = engine.subscribe(spec).unwrap();
        let commit = |changes: &[(&str, Change)]| {
            let messages = consumer.fetch(1, Duration::from_secs(30)).unwrap();
            let mut state = StateChanges::default();
            for (key, change) in changes {
                state.record((*key).to_owned(), change.clone());
            }
            let effects = Effects {
                acks: Acks::of(&messages),
                state: Some((fqfn.clone(), Arc::new(state))),
                ..Effects::default()
            };
            consumer.commit(effects).unwrap();
        };
        let minute_ms = MINUTE_MS;
        commit(&[
            ("expires", Change::Put(b"a".to_vec(), Some(minute_ms))),
            ("rewritten", Change::Put(b"b".to_vec(), Some(minute_ms))),
            ("lasts", Change::Put(b"c".to_vec(), None)),
        ]);
        engine.materialise_views().unwrap();
        let inner = &engine.inner;
        let view = inner.block_on(inner.table(&fqfn)).unwrap();
        let index_keys = || {
            let keys: Vec<String> = inner
                .block_on(async {
                    use futures_util::TryStreamExt as _;
                    view.keys().await.unwrap().try_collect::<Vec<String>>().await
                })
                .unwrap();
            keys.into_iter().filter(|key| key.starts_with("x.")).count()
        };
        assert_eq!(index_keys(), 2, "the two values that expire are indexed");
        // Written again just before its expiry, then the minutes pass.
        engine.clock().advance(Duration::from_millis(minute_ms - 1_000));
        commit(&[("rewritten", Change::Put(b"b2".to_vec(), Some(60 * minute_ms)))]);
        engine.clock().advance(Duration::from_millis((SWEEP_MARGIN_MINUTES + 2) * minute_ms));
        let asked = inner.block_on(inner.sweep_expired(&fqfn)).unwrap();
        assert_eq!(asked, 2, "both index entries of the swept minutes are due");
        engine.materialise_views().unwrap();
        let entry = |key: &str| inner.block_on(inner.view_entry(&fqfn, &view, key)).unwrap().map(|(entry, _)| entry);
        assert_eq!(entry("expires").and_then(|entry| entry.value), None, "removed from the view");
        assert_eq!(
            entry("rewritten").and_then(|entry| entry.value).map(|held| held.value),
            Some(StateValue::Bytes(b"b2".to_vec())),
            "a write logged before the sweep's removal keeps the key"
        );
        assert_eq!(index_keys(), 1, "the swept minutes' index keys are purged; the rewritten key's new one stays");
        let table = engine.table(&fqfn).unwrap();
        assert_eq!(table.list(&KeyPage::new(String::new(), None, 10).unwrap()).unwrap(), ["lasts", "rewritten"]);
        assert_eq!(inner.block_on(inner.sweep_expired(&fqfn)).unwrap(), 0, "the mark moved past the swept minutes");
    }
}
