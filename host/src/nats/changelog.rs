//! Function state as a changelog and a view: a commit's state changes go out as one JetStream
//! message per function (the changelog, stream `FNC-<fqfn>`), and are applied to the key-value
//! view (bucket `FNS-<fqfn>`) afterwards, many commits at once.
//!
//! A key-value write per changed key made the server, not the host, set cluster mode's pace. Now
//! a commit writes one message whatever its number of keys, and a key changed by many commits in
//! a row is written to the view once.
//!
//! Each view entry holds the changelog sequence that last changed it. Applying, any process may
//! do it: the cluster's leader every half second, and every process that opens the table
//! (an instance starting, `querystate`) first, so that what it reads holds every committed change.
//! Appliers take the changelog in order from the view's mark (`view/<fqfn>` in the metadata
//! bucket), and apply to a key only the changes after its entry's sequence, with a revision check;
//! so two appliers at once apply each change once, increments included.
//!
//! An applier remembers each view entry it last read or wrote, with its revision
//! ([`AppliedViews`]): the leader applies every round, so its next write to a key is checked
//! against the revision it wrote last, without reading the key first; a key it has not seen is
//! created as a new one. A write that another applier came before, or a create of a key that
//! exists, fails its revision check, and the key is read.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_nats::jetstream::{kv, stream};

use super::history::{EncodedHistory, HistoryRecord, LoggedTrailer, history_subject};
use super::logged::{Held, Logged, ViewEntry};
use super::names::{kv_key, kv_key_name, token};
use super::{Inner, RETRY_PAUSE, decode, encode, state_storage, storage};
use crate::engine::broker::BrokerError;
use crate::engine::state::StateError;
use crate::names::Fqfn;

/// Streams holding function state changelogs are named this followed by the function's token.
pub const CHANGELOG_PREFIX: &str = "FNC-";
/// Most changelog messages one applying round reads, so that a round stays short.
const MESSAGES_PER_ROUND: u64 = 1_024;
/// Metadata keys of the views' marks start with this, then the function's name.
const MARK_PREFIX: &str = "view/";
/// Most view entries a function's [`Applied`] holds; past it the memory starts again empty.
const MAX_REMEMBERED_VIEW_ENTRIES: usize = 65_536;

/// What this process last read or wrote of one function's view: each key's entry and revision.
pub(super) type AppliedView = Arc<Mutex<Applied>>;

/// Each key's view entry and revision, as this process last read or wrote them.
#[derive(Default)]
pub(super) struct Applied {
    /// When the changelog these entries came from was made. A function deleted and made again
    /// has a new changelog and view whose revisions start again, so a remembered revision could
    /// match a key of the new view by chance: what was remembered of the old one is forgotten.
    changelog_created: Option<time::OffsetDateTime>,
    /// The revision of the view's mark this process last moved: while the mark still has it, no
    /// other applier applied anything since, and `entries` hold every change up to the mark.
    mark_revision: Option<u64>,
    /// Whether `entries` hold every key of the view: this process applied every change since
    /// the view was empty, alone, and forgot none. A key it does not remember then has no entry,
    /// and is not read to learn its value before a change.
    complete: bool,
    entries: HashMap<String, (ViewEntry, u64)>,
    /// Whether this process made sure the function's expiry sweep has a mark (`expiry`).
    expiry_marked: bool,
}

/// Each changelog message's keys' values just before it, from an applying round.
#[derive(Default)]
pub(super) struct Befores {
    values: HashMap<u64, HashMap<String, Option<Held>>>,
    /// Messages another applier got to first, and recorded.
    recorded_elsewhere: std::collections::HashSet<u64>,
}

/// The [`AppliedView`] of each function this process applied changes to.
pub(super) type AppliedViews = Mutex<HashMap<Fqfn, AppliedView>>;

/// The changelog stream of `fqfn`.
pub(super) fn changelog_stream(fqfn: &Fqfn) -> String {
    format!("{CHANGELOG_PREFIX}{}", token(&fqfn.to_string()))
}

fn changelog_subject(fqfn: &Fqfn) -> String {
    format!("fnc.{}", token(&fqfn.to_string()))
}

fn mark_key(fqfn: &Fqfn) -> String {
    kv_key(&format!("{MARK_PREFIX}{fqfn}"))
}

/// Splits `changes` into records of about `max_bytes` each.
fn records(changes: Vec<(String, Logged)>, max_bytes: usize) -> Vec<Vec<(String, Logged)>> {
    if changes.is_empty() {
        return Vec::new();
    }
    let mut records = vec![Vec::new()];
    let mut bytes = 0;
    for (key, change) in changes {
        let size = key.len()
            + match &change {
                Logged::Put(value) | Logged::PutExpiring(value, _) => value.len(),
                _ => 0,
            }
            + 16;
        if bytes + size > max_bytes && !records.last().is_none_or(Vec::is_empty) {
            records.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        records.last_mut().expect("one record at least").push((key, change));
    }
    records
}

impl Inner {
    /// The changelog stream of `fqfn`, created on first use.
    async fn changelog(&self, fqfn: &Fqfn) -> Result<stream::Stream, BrokerError> {
        if let Some(stream) = self.changelogs.lock().unwrap().get(fqfn) {
            return Ok(stream.clone());
        }
        let stream = self
            .jetstream
            .get_or_create_stream(stream::Config {
                name: changelog_stream(fqfn),
                subjects: vec![changelog_subject(fqfn)],
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                duplicate_window: super::DUPLICATE_WINDOW,
                ..Default::default()
            })
            .await
            .map_err(|error| storage(format!("cannot open the state changelog of {fqfn}: {error}")))?;
        self.changelogs.lock().unwrap().insert(fqfn.clone(), stream.clone());
        Ok(stream)
    }

    /// Appends a commit's state changes to `fqfn`'s changelog as one message (several if they
    /// pass half the servers' largest message), with ids `ID-s0`, `ID-s1`, … so that a repeated
    /// commit adds nothing; returns the sequence of the last (0 for no changes). Each message
    /// carries the commit's `history` after its changes (see `history`).
    pub(super) async fn log_changes(
        &self,
        fqfn: &Fqfn,
        changes: Vec<(String, Logged)>,
        id: &str,
        history: Option<&EncodedHistory>,
    ) -> Result<u64, BrokerError> {
        self.changelog(fqfn).await?;
        let subject = changelog_subject(fqfn);
        let mut pending = Vec::new();
        for (index, record) in records(changes, self.entry_bytes).into_iter().enumerate() {
            let mut payload = encode(&record);
            if let Some(history) = history {
                payload.extend_from_slice(history.of_message(index));
            }
            let publish = async_nats::jetstream::context::Publish::build()
                .payload(payload.into())
                .message_id(format!("{id}-s{index}"));
            pending.push(self.jetstream.send_publish(subject.clone(), publish).await.map_err(storage)?);
        }
        let mut last = 0;
        for ack in pending {
            last = ack.await.map_err(storage)?.sequence;
        }
        Ok(last)
    }

    /// The view entry of `key`, and its revision in the bucket.
    pub(super) async fn view_entry(
        &self,
        fqfn: &Fqfn,
        view: &kv::Store,
        key: &str,
    ) -> Result<Option<(ViewEntry, u64)>, StateError> {
        let Some(entry) = view.entry(kv_key(key)).await.map_err(state_storage)? else { return Ok(None) };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let stored = decode::<ViewEntry>(&entry.value).map_err(|reason| StateError::Corrupt {
            fqfn: fqfn.clone(),
            key: key.into(),
            reason,
        })?;
        Ok(Some((stored, entry.revision)))
    }

    /// The state keys of a view, in byte order: every key with an entry, removed ones included.
    pub(super) async fn view_keys(&self, view: &kv::Store) -> Result<Vec<String>, StateError> {
        use futures_util::TryStreamExt as _;
        let names: Vec<String> =
            view.keys().await.map_err(state_storage)?.try_collect().await.map_err(state_storage)?;
        let mut keys: Vec<String> = names.iter().filter_map(|name| kv_key_name(name)).collect();
        keys.sort_unstable();
        Ok(keys)
    }

    /// Applies `fqfn`'s changelog to its view, from the view's mark to the changelog's end as it
    /// is now, then moves the mark and frees the changelog up to it.
    pub(super) async fn materialise(&self, fqfn: &Fqfn) -> Result<(), StateError> {
        // Asked of the servers each time, not taken from `changelogs`: another process may have
        // deleted the function and made it again since this one last looked.
        self.changelogs.lock().unwrap().remove(fqfn);
        let changelog = self.changelog(fqfn).await.map_err(|error| StateError::Storage(error.to_string()))?;
        let info = changelog.cached_info();
        let (end, created) = (info.state.last_sequence, info.created);
        let applied = self.applied_view(fqfn);
        let remade = {
            let mut applied = applied.lock().unwrap();
            let remade = applied.changelog_created != Some(created);
            if remade {
                *applied = Applied { changelog_created: Some(created), ..Applied::default() };
            }
            remade
        };
        if remade {
            // The view bucket this process opened may be the deleted function's.
            self.tables.lock().unwrap().remove(fqfn);
        }
        let view = self.table(fqfn).await?;
        // Whether the history stream could be opened: asked once a call, when there is a change.
        let mut keeps_history = None;
        loop {
            let (mark, mark_revision) = match self.metadata.entry(mark_key(fqfn)).await.map_err(state_storage)? {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    (decode::<u64>(&entry.value).map_err(state_storage)?, Some(entry.revision))
                }
                _ => (0, None),
            };
            if mark >= end {
                return Ok(());
            }
            let last = end.min(mark + MESSAGES_PER_ROUND);
            let mut changes: BTreeMap<String, Vec<(u64, Logged)>> = BTreeMap::new();
            let mut logged = Vec::new();
            let reads = (mark + 1..=last).map(|sequence| {
                let changelog = &changelog;
                async move { (sequence, changelog.get_raw_message(sequence).await) }
            });
            for (sequence, message) in futures_util::future::join_all(reads).await {
                // Gone: freed by another applier, after it applied it.
                let Ok(message) = message else { continue };
                let undecodable = |reason: &dyn std::fmt::Display| {
                    StateError::Storage(format!("changelog message {sequence} of {fqfn} cannot be decoded: {reason}"))
                };
                let (record, rest) = crate::codec::decode_leading::<Vec<(String, Logged)>>(&message.payload)
                    .map_err(|reason| undecodable(&reason))?;
                // Written by an fnhost that kept no history: it has none.
                let history = match rest.is_empty() {
                    true => None,
                    false => Some(LoggedTrailer::read(rest).map_err(|reason| undecodable(&reason))?),
                };
                logged.push((sequence, record.iter().map(|(key, _)| key.clone()).collect::<Vec<_>>(), history));
                for (key, change) in record {
                    changes.entry(key).or_default().push((sequence, change));
                }
            }
            // The view is what running instances read, so history that cannot be written (its
            // stream cannot be made while too few servers run, say) does not hold it back: that
            // history keeps a gap, which its readers refuse (`past::Past::later`).
            let keeps_history = match keeps_history {
                Some(keeps) => keeps,
                None => *keeps_history.insert(match self.history(fqfn).await {
                    Ok(_) => true,
                    Err(error) => {
                        tracing::warn!(%fqfn, %error, "state history: cannot open it, so these changes go unrecorded");
                        false
                    }
                }),
            };
            // Also when history is not kept: it keeps what this process remembers of the view true.
            let befores = self.values_before(fqfn, &view, &applied, mark_revision, &changes).await?;
            if keeps_history && let Err(error) = self.record_history(fqfn, logged, befores).await {
                tracing::warn!(%fqfn, %error, "state history: a round of changes was not recorded");
            }
            let writes = changes.iter().map(|(key, changes)| self.apply_to_view(fqfn, &view, &applied, key, changes));
            futures_util::future::try_join_all(writes).await?;
            let moved = match mark_revision {
                Some(revision) => self.metadata.update(mark_key(fqfn), encode(&last).into(), revision).await.ok(),
                None => self.metadata.create(mark_key(fqfn), encode(&last).into()).await.ok(),
            };
            // Another applier moved the mark first: read it again and go on from there.
            if let Some(revision) = moved {
                applied.lock().unwrap().mark_revision = Some(revision);
                changelog.purge().sequence(last + 1).await.map_err(state_storage)?;
            }
        }
    }

    /// Each changelog message's keys and their values just before it (only for messages every key
    /// of which has a view entry older than it: another applier recorded the others), read from
    /// the view entries as they are before this round's writes.
    async fn values_before(
        &self,
        fqfn: &Fqfn,
        view: &kv::Store,
        applied: &AppliedView,
        mark_revision: Option<u64>,
        changes: &BTreeMap<String, Vec<(u64, Logged)>>,
    ) -> Result<Befores, StateError> {
        {
            let mut applied = applied.lock().unwrap();
            if mark_revision.is_none() {
                // Nothing was ever applied: the view is empty.
                applied.complete = applied.entries.is_empty();
            } else if applied.mark_revision != mark_revision {
                // Another applier moved the mark since this process did: what this one remembers
                // may miss that applier's changes, which this round does not read.
                applied.entries.clear();
                applied.mark_revision = None;
                applied.complete = false;
            }
        }
        let entries = changes.keys().map(|key| async move {
            let (remembered, complete) = {
                let applied = applied.lock().unwrap();
                (applied.entries.get(key).cloned(), applied.complete)
            };
            let entry = match remembered {
                Some(remembered) => Some(remembered),
                None if complete => None,
                None => {
                    let read = self.view_entry(fqfn, view, key).await?;
                    if let Some(read) = &read {
                        applied.lock().unwrap().entries.insert(key.clone(), read.clone());
                    }
                    read
                }
            };
            Ok::<_, StateError>((key, entry.map(|(entry, _)| entry)))
        });
        let mut befores = Befores::default();
        for (key, entry) in futures_util::future::try_join_all(entries).await? {
            let (mut value, applied_up_to) = entry.map_or((None, 0), |entry| (entry.value, entry.sequence));
            for (sequence, change) in &changes[key] {
                if *sequence <= applied_up_to {
                    befores.recorded_elsewhere.insert(*sequence);
                    continue;
                }
                befores.values.entry(*sequence).or_default().insert(key.clone(), value.clone());
                value = change.apply(value);
            }
        }
        Ok(befores)
    }

    /// Writes the history of this round's changelog `messages` (sequence, keys, history), each key
    /// with its value before from `befores`, in order, before the view is written.
    async fn record_history(
        &self,
        fqfn: &Fqfn,
        messages: Vec<(u64, Vec<String>, Option<LoggedTrailer>)>,
        mut befores: Befores,
    ) -> Result<(), StateError> {
        let subject = history_subject(fqfn);
        let mut pending = Vec::new();
        for (sequence, keys, history) in messages {
            let Some(history) = history else { continue };
            if befores.recorded_elsewhere.contains(&sequence) {
                continue;
            }
            let mut values = befores.values.remove(&sequence).unwrap_or_default();
            let before = keys
                .into_iter()
                .map(|key| {
                    let value = values.remove(&key).flatten();
                    (key, value)
                })
                .collect();
            // Published in order on one connection, so that the stream holds them in order.
            for part in HistoryRecord::parts(sequence, before, history, self.entry_bytes) {
                let publish = async_nats::jetstream::context::Publish::build()
                    .payload(encode(&part).into())
                    .message_id(part.id());
                pending.push(self.jetstream.send_publish(subject.clone(), publish).await.map_err(state_storage)?);
            }
        }
        for ack in pending {
            ack.await.map_err(state_storage)?;
        }
        Ok(())
    }

    /// What this process last read or wrote of `fqfn`'s view.
    fn applied_view(&self, fqfn: &Fqfn) -> AppliedView {
        self.applied_views.lock().unwrap().entry(fqfn.clone()).or_default().clone()
    }

    /// Applies to `key`'s view entry the `changes` (in changelog order) newer than it.
    async fn apply_to_view(
        &self,
        fqfn: &Fqfn,
        view: &kv::Store,
        applied: &AppliedView,
        key: &str,
        changes: &[(u64, Logged)],
    ) -> Result<(), StateError> {
        let mut attempt = 0;
        // A key this process has not seen is first taken to be new, as most are when a function
        // starts: its create fails if it exists, and then it is read.
        let mut read = false;
        loop {
            let remembered = applied.lock().unwrap().entries.get(key).cloned();
            let stored = match remembered {
                Some(remembered) => Some(remembered),
                None if read => self.view_entry(fqfn, view, key).await?,
                None => None,
            };
            let (mut value, applied_up_to, revision) = match stored {
                Some((entry, revision)) => (entry.value, entry.sequence, Some(revision)),
                None => (None, 0, None),
            };
            let newer: Vec<&(u64, Logged)> = changes.iter().filter(|(sequence, _)| *sequence > applied_up_to).collect();
            let Some(&&(sequence, _)) = newer.last() else { return Ok(()) };
            for (_, change) in newer {
                value = change.apply(value);
            }
            let entry = ViewEntry { value, sequence };
            let encoded = encode(&entry).into();
            let written = match revision {
                Some(revision) => view
                    .update(kv_key(key), encoded, revision)
                    .await
                    .map_err(|error| (error.kind() == kv::UpdateErrorKind::WrongLastRevision, state_storage(error))),
                None => view
                    .create(kv_key(key), encoded)
                    .await
                    .map_err(|error| (error.kind() == kv::CreateErrorKind::AlreadyExists, state_storage(error))),
            };
            let expires_at = entry.value.as_ref().and_then(|held| held.expires_at);
            match written {
                Ok(revision) => {
                    if let Some(expires_at) = expires_at {
                        let mut marked = applied.lock().unwrap().expiry_marked;
                        self.index_expiry(fqfn, view, key, expires_at, &mut marked).await?;
                        applied.lock().unwrap().expiry_marked = marked;
                    }
                    let mut applied = applied.lock().unwrap();
                    if applied.entries.len() >= MAX_REMEMBERED_VIEW_ENTRIES && !applied.entries.contains_key(key) {
                        applied.entries.clear();
                        applied.complete = false;
                    }
                    applied.entries.insert(key.to_owned(), (entry, revision));
                    return Ok(());
                }
                // Another applier wrote the key in between (or since this process last did), or it
                // was not new: read it.
                Err((true, _)) => {
                    let mut applied = applied.lock().unwrap();
                    applied.entries.remove(key);
                    applied.complete = false;
                    read = true;
                }
                Err((false, error)) if attempt < 50 => {
                    attempt += 1;
                    tracing::debug!(%fqfn, key, "applying again: {error}");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err((false, error)) => return Err(error),
            }
        }
    }

    /// Forgets `fqfn`'s changelog and mark, with its view.
    pub(super) async fn delete_changelog(&self, fqfn: &Fqfn) -> Result<(), StateError> {
        self.changelogs.lock().unwrap().remove(fqfn);
        self.applied_views.lock().unwrap().remove(fqfn);
        self.delete_history(fqfn).await?;
        match self.jetstream.delete_stream(changelog_stream(fqfn)).await {
            Ok(_) => {}
            Err(error) if super::failure::is_not_found(&error) => {}
            Err(error) => return Err(state_storage(error)),
        }
        self.delete_expiry_mark(fqfn).await?;
        self.metadata.purge(mark_key(fqfn)).await.map_err(state_storage)
    }

    /// Every function with a changelog.
    pub(super) async fn logged_functions(&self) -> Result<Vec<Fqfn>, StateError> {
        use futures_util::TryStreamExt as _;
        let names: Vec<String> = self.jetstream.stream_names().try_collect().await.map_err(state_storage)?;
        Ok(names
            .iter()
            .filter_map(|name| name.strip_prefix(CHANGELOG_PREFIX))
            .filter_map(super::names::untoken)
            .filter_map(|name| Fqfn::parse(&name).ok())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_split_into_records_of_about_the_bound_in_order() {
        let changes: Vec<(String, Logged)> =
            (0..100).map(|index| (format!("k{index}"), Logged::Put(vec![0; 100]))).collect();
        let split = records(changes.clone(), 1_000);
        assert!(split.len() > 1 && split.iter().all(|record| !record.is_empty()));
        assert_eq!(split.concat(), changes, "every change once, in order");
        assert!(records(Vec::new(), 1_000).is_empty(), "a commit without changes logs nothing");
        let large = vec![("big".to_owned(), Logged::Put(vec![0; 5_000]))];
        assert_eq!(records(large.clone(), 1_000), vec![large], "a change larger than the bound goes alone");
    }
}
