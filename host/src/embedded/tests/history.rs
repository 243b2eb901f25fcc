//! The embedded engine's history: the state before any message, exact within a batch and across
//! batches, through checkpoints, reopens and the cleaner, and refused once retention freed it.

use super::*;
use crate::engine::broker::Acks;
use crate::engine::history::{BatchHistory, HistoryError, HistoryPoint, MessageChange, StateHistory};
use crate::engine::state::{Change, StateChanges};
use crate::engine::topics::{NamespacePolicies, Retention, TopicAdmin};

const MESSAGES: u64 = 100;

/// Processes every message of `in` as a counting function would, in batches of 7: each message
/// adds one to `count`, puts its id under `last` and its value under `seen-ID` (a key no other
/// message changes, which its history names by index), and the batch commits with its history.
fn count_every_message(store: &EmbeddedStore, fqfn: &Fqfn) {
    // Values long enough, and appended in enough steps, to spread over several segments.
    let values: Vec<String> = (0..MESSAGES).map(padded).collect();
    for chunk in values.chunks(10) {
        produce(store, "in", &chunk.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let subscription = store.subscribe(spec(&["in"], Some("f"), Position::Earliest)).unwrap();
    loop {
        let batch = subscription.fetch(7, Duration::ZERO).unwrap();
        if batch.is_empty() {
            break;
        }
        let mut state = StateChanges::default();
        let mut history = BatchHistory::new(0, "digest".into());
        for message in &batch {
            let shared = [
                ("count".to_owned(), Change::Add(1, None)),
                ("last".to_owned(), Change::Put(message.body.value.clone(), None)),
            ];
            for (key, change) in &shared {
                state.record(key.clone(), change.clone());
            }
            let seen = state.len() as u32;
            state.record(format!("seen-{}", message.id()), Change::Put(message.body.value.clone(), None));
            let changes = shared.into_iter().map(|(key, change)| MessageChange::Own(key, change));
            history.push(message.topic.as_str(), &message.id(), changes.chain([MessageChange::Sole(seen)]));
        }
        let effects = Effects {
            acks: Acks::of(&batch),
            state: Some((fqfn.clone(), state.into())),
            history: Some(history),
            ..Effects::default()
        };
        subscription.commit(effects).unwrap();
    }
}

/// Message `n`'s value.
fn padded(n: u64) -> String {
    format!("{n:0>100}")
}

/// Checks that the state just before each message is what the messages before it left.
fn assert_exact_before_every_message(store: &EmbeddedStore, fqfn: &Fqfn) {
    for sequence in 0..MESSAGES {
        let point = HistoryPoint::BeforeMessage { topic: topic("in"), message_id: sequence.to_string() };
        let past = store.past_table(fqfn, &point).unwrap();
        assert!(past.processed, "message {sequence}");
        let read = |key: &str| past.table.get(key).unwrap().map(|versioned| versioned.value);
        let expected_count = (sequence > 0).then_some(StateValue::Counter(sequence as i64));
        assert_eq!(read("count"), expected_count, "before message {sequence}");
        let expected_last = sequence.checked_sub(1).map(|last| StateValue::Bytes(padded(last).into_bytes()));
        assert_eq!(read("last"), expected_last, "before message {sequence}");
        let seen = |sequence: u64| read(&format!("seen-{sequence}"));
        assert_eq!(seen(sequence), None, "before message {sequence}, its own key is not written yet");
        if let Some(previous) = sequence.checked_sub(1) {
            assert_eq!(seen(previous), Some(StateValue::Bytes(padded(previous).into_bytes())), "before {sequence}");
        }
    }
}

#[test]
fn the_state_before_every_message_is_exact_through_checkpoints_reopens_and_the_cleaner() {
    let dir = tempfile::tempdir().unwrap();
    let fqfn = Fqfn::parse("public/default/f").unwrap();
    {
        let store = open_small(dir.path());
        let forever = Retention { time: None, size_bytes: None };
        store
            .set_policies("public", "default", &NamespacePolicies { retention: Some(forever), ..Default::default() })
            .unwrap();
        count_every_message(&store, &fqfn);
        assert!(store.inner.log.segment_ids().len() > 2, "the test needs several segments");
        assert_exact_before_every_message(&store, &fqfn);
        store.checkpoint(&store.state_table(&fqfn).unwrap()).unwrap();
        store.clean().unwrap();
        assert!(!unapplied(&store, &fqfn), "the checkpoint folded the log into the tree");
        assert_exact_before_every_message(&store, &fqfn);
        let why = store.last_write(&fqfn, "count").unwrap().unwrap().writer.unwrap();
        assert_eq!((why.message_id.as_str(), why.code_digest.as_str()), ("99", "digest"));
        let why = store.last_write(&fqfn, "seen-42").unwrap().unwrap().writer.unwrap();
        assert_eq!(why.message_id, "42", "a key its writer alone changed in its batch");
    }
    let store = open_small(dir.path());
    assert_exact_before_every_message(&store, &fqfn);
}

#[test]
fn history_freed_with_its_messages_is_refused_naming_retention() {
    let dir = tempfile::tempdir().unwrap();
    let fqfn = Fqfn::parse("public/default/f").unwrap();
    let store = open_small(dir.path());
    count_every_message(&store, &fqfn);
    store.checkpoint(&store.state_table(&fqfn).unwrap()).unwrap();
    store.clean().unwrap();
    let point = HistoryPoint::BeforeMessage { topic: topic("in"), message_id: "0".into() };
    match store.past_table(&fqfn, &point) {
        Err(HistoryError::BeyondRetention(reason)) => assert!(reason.contains("set-retention"), "{reason}"),
        Err(other) => panic!("expected a refusal naming retention, got {other}"),
        Ok(_) => panic!("expected a refusal naming retention, got a table"),
    }
    let unknown = HistoryPoint::BeforeMessage { topic: topic("in"), message_id: MESSAGES.to_string() };
    assert!(matches!(store.past_table(&fqfn, &unknown), Err(HistoryError::UnknownMessage { .. })));
    // A message the function has not processed yet sees the current state.
    produce(&store, "in", &["new"]);
    let past = store.past_table(&fqfn, &unknown).unwrap();
    assert!(!past.processed);
    let count = past.table.get("count").unwrap().map(|versioned| versioned.value);
    assert_eq!(count, Some(StateValue::Counter(MESSAGES as i64)));
}
