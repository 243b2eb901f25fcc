//! Reading the store back at open: the checkpointed cursors from sled, then every step in the log,
//! in order, into the topics' indexes, the unsaved cursors and the functions' pending state.

use std::collections::HashMap;
use std::sync::Arc;

use super::cursor::{RangeSet, decode_cursor, parse_cursor_key};
use super::journal::{StateStep, for_each_step, unreadable};
use super::state::{FunctionTable, Record, applied_id};
use super::stored_history::input_topics;
use super::topic::Extent;
use super::{EmbeddedStore, UnsavedCursor, lock, storage};
use crate::engine::broker::BrokerError;
use crate::names::{Fqfn, TopicName};

pub(super) fn recover(store: &EmbeddedStore) -> Result<(), BrokerError> {
    let inner = &store.inner;
    let mut ends: HashMap<TopicName, u64> = HashMap::new();
    for entry in inner.topic_ends.iter() {
        let (key, value) = entry.map_err(storage)?;
        if let (Some(topic), Ok(end)) = (
            std::str::from_utf8(&key).ok().and_then(|name| TopicName::parse(name).ok()),
            <[u8; 8]>::try_from(&value[..]),
        ) {
            ends.insert(topic, u64::from_be_bytes(end));
        }
    }
    for entry in inner.cursors.iter() {
        let (key, value) = entry.map_err(storage)?;
        let Some((subscription, topic)) = parse_cursor_key(&key) else { continue };
        let (mark, _) = decode_cursor(&value).map_err(|reason| BrokerError::Corrupt {
            topic: topic.clone(),
            sequence: 0,
            reason: format!("the cursor of subscription `{subscription}`: {reason}"),
        })?;
        store.topic(&topic).set_mark(&subscription, Some(mark));
    }

    let mut applied: HashMap<Fqfn, Option<u64>> = HashMap::new();
    let empty_record = crate::codec::encode(&Record::new());
    for_each_step(&inner.log, 0, |ids, step| -> Result<bool, BrokerError> {
        // A long step is known by its first record's id.
        let id = ids.start;
        let corrupt = |reason: String| unreadable(id, reason);
        for append in &step.appends {
            let topic = TopicName::parse(&append.topic).map_err(|error| corrupt(error.to_string()))?;
            store.topic(&topic).record(Extent::of(append, &ids));
            let end = ends.entry(topic).or_default();
            *end = (*end).max(append.first + u64::from(append.count));
        }
        for moved in &step.cursors {
            let (subscription, topic) = moved.names().map_err(corrupt)?;
            let position = moved.position.clone().map(|(mark, ranges)| (mark, RangeSet::from_ranges(ranges)));
            store.topic(&topic).set_mark(&subscription, position.as_ref().map(|(mark, _)| *mark));
            lock(&inner.unsaved_cursors).insert((subscription, topic), UnsavedCursor { log_id: id, position });
        }
        for deleted in &step.deleted_topics {
            let topic = TopicName::parse(deleted).map_err(|error| corrupt(error.to_string()))?;
            if let Some(gone) = lock(&inner.topics).remove(&topic) {
                gone.clear();
            }
            ends.remove(&topic);
            inner.topic_ends.remove(deleted.as_bytes()).map_err(storage)?;
        }
        let state = match step.state {
            Some(StateStep::Recorded { fqfn, record, history }) => {
                lock(&inner.history_inputs).extend(input_topics(&history));
                Some(StateStep::Changes { fqfn, record })
            }
            other => other,
        };
        match state {
            // A commit that changed no state carries its history only.
            Some(StateStep::Changes { record, .. }) if record == empty_record => {}
            Some(StateStep::Changes { fqfn, record }) => {
                let fqfn = Fqfn::parse(&fqfn).map_err(|error| corrupt(error.to_string()))?;
                let table = table(store, &fqfn)?;
                let applied = match applied.get(&fqfn) {
                    Some(applied) => *applied,
                    None => *applied
                        .entry(fqfn.clone())
                        .or_insert(applied_id(&inner.state_applied, &fqfn.to_string()).map_err(storage)?),
                };
                if applied.is_none_or(|applied| id > applied) {
                    table.replayed(id, crate::codec::decode(&record).map_err(|error| corrupt(error.to_string()))?);
                }
            }
            Some(StateStep::Dropped { fqfn }) => {
                let fqfn = Fqfn::parse(&fqfn).map_err(|error| corrupt(error.to_string()))?;
                let table = table(store, &fqfn)?;
                table.delete(table.lock_for_delete(), &inner.db, &inner.state_applied).map_err(storage)?;
                lock(&inner.state_tables).remove(&fqfn);
                applied.insert(fqfn, None);
            }
            Some(StateStep::Recorded { .. }) | None => {}
        }
        Ok(true)
    })?;
    for topic in ends.keys() {
        store.topic(topic);
    }

    let topics: Vec<_> = lock(&inner.topics).values().cloned().collect();
    for topic in topics {
        let end = ends.get(&topic.name).copied().unwrap_or_default().max(topic.highest_mark().unwrap_or_default());
        topic.restore_end(end);
        topic.check_contiguous()?;
    }
    Ok(())
}

fn table(store: &EmbeddedStore, fqfn: &Fqfn) -> Result<Arc<FunctionTable>, BrokerError> {
    store.state_table(fqfn).map_err(storage)
}
