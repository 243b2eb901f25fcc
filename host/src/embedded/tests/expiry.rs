//! Expired state is removed by the cleaner's sweep, through the log, without losing its history.

use super::*;
use crate::engine::history::{HistoryPoint, StateHistory};
use crate::engine::state::{Change, KeyPage};

const TTL_MS: u64 = 60_000;

/// Whether the sweep visits the function: its tree has held a value that expires.
fn swept(store: &EmbeddedStore, fqfn: &Fqfn) -> bool {
    store.inner.db.open_tree(state::STATE_EXPIRING_TREE).unwrap().contains_key(fqfn.to_string()).unwrap()
}

fn sweep(store: &EmbeddedStore) -> usize {
    store.sweep_expired().unwrap().0
}

#[test]
fn the_sweep_removes_expired_values_from_the_tree_once_and_their_history_stays() {
    let dir = tempfile::tempdir().unwrap();
    let fqfn = Fqfn::parse("t/ns/sessions").unwrap();
    let store = open(dir.path());
    let subscription = store.subscribe(spec(&["in"], None, Position::Earliest)).unwrap();
    let put = |ttl| Change::Put(b"login".to_vec(), ttl);
    commit_state(
        subscription.as_ref(),
        &fqfn,
        &[("expires", put(Some(TTL_MS))), ("rewritten", put(Some(TTL_MS))), ("lasts", put(None))],
    );
    let committed_at = store.clock().now_millis();
    store.checkpoint(&store.state_table(&fqfn).unwrap()).unwrap();
    assert_eq!(tree_values(&store, &fqfn).len(), 3);
    assert!(swept(&store, &fqfn), "its tree holds values that expire");
    assert_eq!(sweep(&store), 0, "nothing is due yet");

    // Written again before its expiry: a new life.
    store.clock().advance(Duration::from_millis(TTL_MS / 2));
    commit_state(subscription.as_ref(), &fqfn, &[("rewritten", put(Some(TTL_MS)))]);
    store.checkpoint(&store.state_table(&fqfn).unwrap()).unwrap();
    store.clock().advance(Duration::from_millis(TTL_MS / 2 + 1_000));
    assert_eq!(value(&store, &fqfn, "expires"), None, "expired: it reads as absent before any sweep");
    assert!(tree_values(&store, &fqfn).contains_key("expires"), "but it is still stored");

    assert_eq!(sweep(&store), 1, "only the key that expired, not the one written again");
    assert_eq!(sweep(&store), 0, "a second sweep finds nothing");
    store.checkpoint(&store.state_table(&fqfn).unwrap()).unwrap();
    let stored = tree_values(&store, &fqfn);
    assert!(!stored.contains_key("expires") && stored.contains_key("rewritten") && stored.contains_key("lasts"));
    let listed = store.table(&fqfn).unwrap().list(&KeyPage::new(String::new(), None, 10).unwrap()).unwrap();
    assert_eq!(listed, ["lasts", "rewritten"]);

    // The removal was a logged step with the value before it: the past still reads the value.
    let past = store.past_table(&fqfn, &HistoryPoint::AtTime(committed_at + 1_000)).unwrap();
    assert_eq!(
        past.table.get("expires").unwrap().map(|stored| stored.value),
        Some(StateValue::Bytes(b"login".to_vec()))
    );
    let later = store.past_table(&fqfn, &HistoryPoint::AtTime(committed_at + TTL_MS + 10)).unwrap();
    assert_eq!(later.table.get("expires").unwrap(), None, "and reads it as expired once its time had passed");

    drop((past, later, subscription, store));
    let store = open(dir.path());
    store.clock().advance(Duration::from_millis(TTL_MS + 1_000));
    assert_eq!(value(&store, &fqfn, "expires"), None, "the removal survives a reopen");
    assert_eq!(value(&store, &fqfn, "lasts"), Some(StateValue::Bytes(b"login".to_vec())));
}

#[test]
fn a_value_that_expired_before_its_checkpoint_is_written_as_a_removal() {
    let dir = tempfile::tempdir().unwrap();
    let fqfn = Fqfn::parse("t/ns/short").unwrap();
    let store = open(dir.path());
    let subscription = store.subscribe(spec(&["in"], None, Position::Earliest)).unwrap();
    commit_state(subscription.as_ref(), &fqfn, &[("brief", Change::Put(b"x".to_vec(), Some(1)))]);
    store.clock().advance(Duration::from_secs(1));
    store.checkpoint(&store.state_table(&fqfn).unwrap()).unwrap();
    assert!(tree_values(&store, &fqfn).is_empty());
    assert!(!swept(&store, &fqfn), "nothing to sweep later");
}

#[test]
fn a_sweep_reads_a_bounded_number_of_keys_and_goes_on_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let fqfn = Fqfn::parse("t/ns/many").unwrap();
    let store = open(dir.path());
    let subscription = store.subscribe(spec(&["in"], None, Position::Earliest)).unwrap();
    let keys = MAX_KEYS_SCANNED_PER_SWEEP + 5_000;
    let changes: Vec<(String, Change)> =
        (0..keys).map(|index| (format!("k{index:06}"), Change::Put(vec![1], Some(TTL_MS)))).collect();
    let changes: Vec<(&str, Change)> = changes.iter().map(|(key, change)| (key.as_str(), change.clone())).collect();
    commit_state(subscription.as_ref(), &fqfn, &changes);
    store.checkpoint(&store.state_table(&fqfn).unwrap()).unwrap();
    store.clock().advance(Duration::from_millis(TTL_MS + 1));
    let (removed, scanned) = store.sweep_expired().unwrap();
    assert_eq!((removed, scanned), (MAX_KEYS_SCANNED_PER_SWEEP, MAX_KEYS_SCANNED_PER_SWEEP));
    let (removed, _) = store.sweep_expired().unwrap();
    assert_eq!(removed, 5_000, "the next pass goes on from there");
    assert_eq!(
        store.table(&fqfn).unwrap().list(&KeyPage::new(String::new(), None, 10).unwrap()).unwrap(),
        Vec::<String>::new()
    );
}
