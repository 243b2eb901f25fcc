//! The embedded engine's own tests: storage, dispatch and recovery details that the
//! conformance suite does not cover.

use std::time::Instant;

use super::*;
use crate::engine::broker::{Acks, Effects, Message, SubscriptionType};
use crate::engine::state::{Change, StateChanges};

/// Opens the store in `dir`. A store dropped a moment ago in this process may still hold the
/// directory's lock (a reopen failed with `Locked` once under CI load): sled's background
/// threads outlive the dropped handle.
fn open(dir: &Path) -> EmbeddedStore {
    open_with(dir, &StoreOptions::default()).unwrap()
}

fn open_with(dir: &Path, options: &StoreOptions) -> Result<EmbeddedStore, OpenError> {
    for _ in 0..100 {
        match EmbeddedStore::open_with(dir, options) {
            Err(OpenError::Locked(_)) => std::thread::sleep(Duration::from_millis(50)),
            opened => return opened,
        }
    }
    EmbeddedStore::open_with(dir, options)
}

fn topic(name: &str) -> TopicName {
    TopicName::parse(name).unwrap()
}

fn spec(topics: &[&str], name: Option<&str>, position: Position) -> SubscriptionSpec {
    let name = name.map(|name| SubscriptionName::new("public", "default", name).unwrap());
    SubscriptionSpec::single(topics.iter().map(|t| topic(t)).collect(), name, position)
}

fn values(messages: &[Message]) -> Vec<String> {
    messages.iter().map(|m| String::from_utf8(m.body.value.clone()).unwrap()).collect()
}

fn produce(store: &EmbeddedStore, name: &str, values: &[&str]) -> Vec<u64> {
    store.produce(&topic(name), values.iter().map(|v| OutMessage::new(v.as_bytes())).collect()).unwrap()
}

#[test]
fn appends_are_read_in_order_from_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(produce(&store, "t", &["a", "b"]), vec![0, 1]);
    assert_eq!(produce(&store, "t", &["c"]), vec![2]);
    let subscription = store.subscribe(spec(&["t"], Some("s"), Position::Earliest)).unwrap();
    assert_eq!(values(&subscription.fetch(2, Duration::ZERO).unwrap()), ["a", "b"]);
    assert_eq!(values(&subscription.fetch(10, Duration::ZERO).unwrap()), ["c"]);
    assert!(subscription.fetch(10, Duration::ZERO).unwrap().is_empty());
}

/// Opens the store in `dir` with small segments and a cleaner that waits for the test to call it.
fn open_small(dir: &Path) -> EmbeddedStore {
    let options = StoreOptions { log_segment_bytes: 4096, clean_interval: Duration::from_secs(3600) };
    open_with(dir, &options).unwrap()
}

fn ack_everything(subscription: &dyn Subscription) -> usize {
    let mut acked = 0;
    loop {
        let messages = subscription.fetch(100, Duration::ZERO).unwrap();
        if messages.is_empty() {
            return acked;
        }
        acked += messages.len();
        subscription.commit(Effects { acks: Acks::of(&messages), ..Effects::default() }).unwrap();
    }
}

#[test]
fn unacknowledged_messages_are_redelivered_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        produce(&store, "t", &["a", "b", "c"]);
        let subscription = store.subscribe(spec(&["t"], Some("s"), Position::Earliest)).unwrap();
        let first = subscription.fetch(1, Duration::ZERO).unwrap();
        assert_eq!(values(&first), ["a"]);
        subscription.commit(Effects { acks: Acks::of(&first), ..Effects::default() }).unwrap();
        assert_eq!(values(&subscription.fetch(10, Duration::ZERO).unwrap()), ["b", "c"]);
    }
    let store = open(dir.path());
    let subscription = store.subscribe(spec(&["t"], Some("s"), Position::Earliest)).unwrap();
    assert_eq!(values(&subscription.fetch(10, Duration::ZERO).unwrap()), ["b", "c"]);
    let other = store.subscribe(spec(&["t"], Some("other"), Position::Latest)).unwrap();
    assert!(other.fetch(10, Duration::ZERO).unwrap().is_empty());
    produce(&store, "t", &["d"]);
    assert_eq!(values(&other.fetch(10, Duration::ZERO).unwrap()), ["d"]);
}

#[test]
fn a_commit_writes_outputs_state_and_cursor_together() {
    let dir = tempfile::tempdir().unwrap();
    let fqfn = Fqfn::parse("t/ns/f").unwrap();
    {
        let store = open(dir.path());
        produce(&store, "in", &["x"]);
        let subscription = store.subscribe(spec(&["in"], Some("s"), Position::Earliest)).unwrap();
        let fetched = subscription.fetch(10, Duration::ZERO).unwrap();
        let mut changes = StateChanges::default();
        changes.record("k".into(), Change::Put(b"v".to_vec(), None));
        changes.record("n".into(), Change::Add(5, None));
        let effects = Effects {
            acks: Acks::of(&fetched),
            outputs: vec![(topic("out"), OutMessage::new("y")), (topic("other"), OutMessage::new("z"))],
            state: Some((fqfn.clone(), changes.into())),
            history: None,
        };
        subscription.commit(effects).unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.table(&fqfn).unwrap().get("k").unwrap().unwrap().value, StateValue::Bytes(b"v".to_vec()));
    assert_eq!(store.table(&fqfn).unwrap().get("n").unwrap().unwrap().value, StateValue::Counter(5));
    let out = store.subscribe(spec(&["out", "other"], None, Position::Earliest)).unwrap();
    let mut seen = values(&out.fetch(10, Duration::ZERO).unwrap());
    seen.sort();
    assert_eq!(seen, ["y", "z"]);
    let input = store.subscribe(spec(&["in"], Some("s"), Position::Earliest)).unwrap();
    assert!(input.fetch(10, Duration::ZERO).unwrap().is_empty(), "the input was acknowledged");
}

fn consumer(store: &EmbeddedStore, kind: SubscriptionType, shares: (u32, u32)) -> Box<dyn Subscription> {
    let spec =
        SubscriptionSpec { subscription_type: kind, key_shares: shares, ..spec(&["t"], Some("s"), Position::Earliest) };
    store.subscribe(spec).unwrap()
}

fn ack(subscription: &dyn Subscription, messages: &[Message]) {
    subscription.commit(Effects { acks: Acks::of(messages), ..Effects::default() }).unwrap();
}

#[test]
fn individual_acknowledgements_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        produce(&store, "t", &["a", "b", "c", "d"]);
        let subscription = consumer(&store, SubscriptionType::Shared, (0, 1));
        let fetched = subscription.fetch(10, Duration::ZERO).unwrap();
        ack(subscription.as_ref(), &[fetched[0].clone(), fetched[2].clone()]);
        assert!(!subscription.drained(), "b and d are unacknowledged");
    }
    let store = open(dir.path());
    let subscription = consumer(&store, SubscriptionType::Shared, (0, 1));
    let again = subscription.fetch(10, Duration::ZERO).unwrap();
    assert_eq!(values(&again), ["b", "d"]);
    ack(subscription.as_ref(), &again);
    assert!(subscription.drained());
}

#[test]
fn shared_consumers_split_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    produce(&store, "t", &["a", "b", "c", "d"]);
    let first = consumer(&store, SubscriptionType::Shared, (0, 2));
    let second = consumer(&store, SubscriptionType::Shared, (1, 2));
    assert_eq!(values(&first.fetch(10, Duration::ZERO).unwrap()), ["a", "b"]);
    assert_eq!(values(&second.fetch(10, Duration::ZERO).unwrap()), ["c", "d"]);
}

#[test]
fn key_shared_consumers_each_get_all_of_their_keys_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let keyed: Vec<OutMessage> =
        (0..40).map(|i| OutMessage { key: Some(format!("k{}", i % 5)), ..OutMessage::new(format!("{i}")) }).collect();
    store.produce(&topic("t"), keyed).unwrap();
    let consumers =
        [consumer(&store, SubscriptionType::KeyShared, (0, 2)), consumer(&store, SubscriptionType::KeyShared, (1, 2))];
    let mut owner: HashMap<String, usize> = HashMap::new();
    let mut last: HashMap<String, i32> = HashMap::new();
    let mut seen = 0;
    for _ in 0..10 {
        for (index, consumer) in consumers.iter().enumerate() {
            for message in consumer.fetch(3, Duration::ZERO).unwrap() {
                let key = message.body.key.clone().unwrap();
                let value: i32 = String::from_utf8(message.body.value).unwrap().parse().unwrap();
                assert_eq!(*owner.entry(key.clone()).or_insert(index), index, "{key} stays on one consumer");
                assert!(last.insert(key, value).is_none_or(|before| before < value), "in order");
                seen += 1;
            }
        }
    }
    assert_eq!(seen, 40);
    assert_eq!(owner.values().collect::<HashSet<_>>().len(), 2, "both consumers got keys");
}

#[test]
fn failover_gives_everything_to_the_first_consumer_and_its_leftovers_to_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    produce(&store, "t", &["a", "b", "c"]);
    let active = consumer(&store, SubscriptionType::Failover, (0, 2));
    let standby = consumer(&store, SubscriptionType::Failover, (1, 2));
    let fetched = active.fetch(2, Duration::ZERO).unwrap();
    assert!(standby.fetch(10, Duration::ZERO).unwrap().is_empty());
    ack(active.as_ref(), &fetched[..1]);
    drop(active);
    let taken_over = standby.fetch(10, Duration::ZERO).unwrap();
    assert_eq!(values(&taken_over), ["b", "c"]);
    assert_eq!(taken_over.iter().map(|m| m.redelivery_count).collect::<Vec<_>>(), [1, 0]);
}

#[test]
fn unacknowledged_messages_come_back_after_the_ack_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    produce(&store, "t", &["a", "b"]);
    let spec = SubscriptionSpec {
        subscription_type: SubscriptionType::Shared,
        ack_timeout: Some(Duration::from_millis(20)),
        ..spec(&["t"], Some("s"), Position::Earliest)
    };
    let subscription = store.subscribe(spec).unwrap();
    let first = subscription.fetch(10, Duration::ZERO).unwrap();
    ack(subscription.as_ref(), &first[1..]);
    let again = subscription.fetch(10, Duration::from_secs(5)).unwrap();
    assert_eq!((values(&again), again[0].redelivery_count), (vec!["a".to_owned()], 1));
    ack(subscription.as_ref(), &again);
    assert!(subscription.drained());
}

#[test]
fn released_messages_go_to_the_next_fetch_as_first_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    produce(&store, "t", &["a", "b", "c"]);
    let first = consumer(&store, SubscriptionType::Shared, (0, 1));
    let fetched = first.fetch(10, Duration::ZERO).unwrap();
    ack(first.as_ref(), &fetched[..1]);
    assert!(!first.drained());
    first.release(fetched[1..].to_vec());
    assert!(first.drained(), "released messages are no longer this consumer's");
    let second = consumer(&store, SubscriptionType::Shared, (0, 1));
    let again = second.fetch(10, Duration::ZERO).unwrap();
    assert_eq!(values(&again), ["b", "c"]);
    assert_eq!(again.iter().map(|m| m.redelivery_count).collect::<Vec<_>>(), [0, 0]);
    // A release takes back only a delivery the consumer holds.
    first.release(again.clone());
    ack(second.as_ref(), &again);
    assert!(second.drained());
}

#[test]
fn a_pattern_subscription_finds_topics_created_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    produce(&store, "in-1", &["a"]);
    let pattern = TopicPattern::parse("in-.*", "public", "default").unwrap();
    let spec = SubscriptionSpec {
        inputs: Inputs { topics: Vec::new(), pattern: Some(pattern) },
        ..spec(&[], Some("s"), Position::Latest)
    };
    let subscription = store.subscribe(spec).unwrap();
    assert!(subscription.fetch(10, Duration::ZERO).unwrap().is_empty(), "in-1 is read from the latest message");
    produce(&store, "in-2", &["b"]);
    produce(&store, "other", &["c"]);
    assert_eq!(values(&subscription.fetch(10, Duration::ZERO).unwrap()), ["b"], "in-2 is read from its start");
}

#[test]
fn counters_add_to_the_committed_value_and_deletes_remove_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let fqfn = Fqfn::parse("t/ns/f").unwrap();
    let subscription = store.subscribe(spec(&["in"], None, Position::Earliest)).unwrap();
    // One table read across commits: its cache must follow every commit.
    let table = store.table(&fqfn).unwrap();
    assert_eq!(table.get("c").unwrap(), None);
    for (change, expected) in [
        (Change::Add(2, None), Some(StateValue::Counter(2))),
        (Change::Add(-5, None), Some(StateValue::Counter(-3))),
        (Change::Delete, None),
        (Change::Put(b"p".to_vec(), None), Some(StateValue::Bytes(b"p".to_vec()))),
    ] {
        let mut changes = StateChanges::default();
        changes.record("c".into(), change.clone());
        subscription.commit(Effects { state: Some((fqfn.clone(), changes.into())), ..Effects::default() }).unwrap();
        assert_eq!(table.get("c").unwrap().map(|v| v.value), expected, "{change:?}");
    }
}

/// Commits `changes` to `fqfn`'s state through `subscription`, as one batch.
fn commit_state(subscription: &dyn Subscription, fqfn: &Fqfn, changes: &[(&str, Change)]) {
    let mut state = StateChanges::default();
    for (key, change) in changes {
        state.record((*key).to_owned(), change.clone());
    }
    subscription.commit(Effects { state: Some((fqfn.clone(), state.into())), ..Effects::default() }).unwrap();
}

fn value(store: &EmbeddedStore, fqfn: &Fqfn, key: &str) -> Option<StateValue> {
    store.table(fqfn).unwrap().get(key).unwrap().map(|versioned| versioned.value)
}

/// Whether the function has values not yet checkpointed into its tree.
fn unapplied(store: &EmbeddedStore, fqfn: &Fqfn) -> bool {
    store.state_table(fqfn).unwrap().oldest_pending().is_some()
}

/// The values in a function's sled tree, as a checkpoint or a replay left them.
fn tree_values(store: &EmbeddedStore, fqfn: &Fqfn) -> BTreeMap<String, Vec<u8>> {
    let tree = store.inner.db.open_tree(format!("{}{fqfn}", state::STATE_TREE_PREFIX)).unwrap();
    tree.iter().map(|entry| entry.unwrap()).map(|(k, v)| (String::from_utf8(k.to_vec()).unwrap(), v.to_vec())).collect()
}

/// What the commits of [`several_commits`] leave: `a` deleted, `b` = "b3", `n` = 6.
fn several_commits(subscription: &dyn Subscription, fqfn: &Fqfn) {
    commit_state(subscription, fqfn, &[("a", Change::Put(b"a1".to_vec(), None)), ("n", Change::Add(1, None))]);
    commit_state(subscription, fqfn, &[("b", Change::Put(b"b1".to_vec(), None)), ("n", Change::Add(2, None))]);
    commit_state(subscription, fqfn, &[("a", Change::Delete), ("b", Change::Put(b"b3".to_vec(), None))]);
    commit_state(subscription, fqfn, &[("n", Change::Add(3, None))]);
}

fn assert_several_commits(store: &EmbeddedStore, fqfn: &Fqfn) {
    assert_eq!(value(store, fqfn, "a"), None);
    assert_eq!(value(store, fqfn, "b"), Some(StateValue::Bytes(b"b3".to_vec())));
    assert_eq!(value(store, fqfn, "n"), Some(StateValue::Counter(6)));
}

#[test]
fn state_committed_before_a_checkpoint_is_read_back_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let fqfn = Fqfn::parse("t/ns/f").unwrap();
    {
        let store = open(dir.path());
        let subscription = store.subscribe(spec(&["in"], None, Position::Earliest)).unwrap();
        several_commits(subscription.as_ref(), &fqfn);
        assert!(unapplied(&store, &fqfn), "no checkpoint yet");
        assert!(tree_values(&store, &fqfn).is_empty());
        assert_several_commits(&store, &fqfn);
    }
    let store = open(dir.path());
    assert!(unapplied(&store, &fqfn), "opening reads the changes back from the log");
    assert_several_commits(&store, &fqfn);
    store.checkpoint(&store.state_table(&fqfn).unwrap()).unwrap();
    assert!(!unapplied(&store, &fqfn));
    assert_eq!(tree_values(&store, &fqfn).len(), 2);
    assert_several_commits(&store, &fqfn);
}

#[test]
fn the_cleaner_checkpoints_state_that_holds_an_old_segment_and_then_frees_it() {
    let dir = tempfile::tempdir().unwrap();
    let fqfn = Fqfn::parse("t/ns/f").unwrap();
    let store = open_small(dir.path());
    let subscription = store.subscribe(spec(&["in"], None, Position::Earliest)).unwrap();
    // A key of its own per commit, so that the oldest segments hold values nothing superseded.
    let keys: Vec<String> = (0..40).map(|round| format!("k{round}")).collect();
    for key in &keys {
        commit_state(subscription.as_ref(), &fqfn, &[(key, Change::Put(format!("{key:0>200}").into_bytes(), None))]);
    }
    commit_state(
        subscription.as_ref(),
        &fqfn,
        &[("k0", Change::Put(b"last".to_vec(), None)), ("n", Change::Add(7, None))],
    );
    assert!(unapplied(&store, &fqfn));
    let segments = store.inner.log.segment_ids().len();
    assert!(segments > 2, "{segments}");
    // The pass asks for the checkpoint, which runs on the checkpointer's thread.
    store.clean().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while unapplied(&store, &fqfn) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!unapplied(&store, &fqfn));
    store.clean().unwrap();
    assert_eq!(store.inner.log.segment_ids().len(), 1, "nothing holds the old segments any more");
    assert_eq!(tree_values(&store, &fqfn).len(), keys.len() + 1);
    assert_eq!(value(&store, &fqfn, "k0"), Some(StateValue::Bytes(b"last".to_vec())));
    // Values read after the checkpoint come from the tree, and later commits still build on them.
    commit_state(subscription.as_ref(), &fqfn, &[("n", Change::Add(1, None))]);
    drop((subscription, store));
    let store = open(dir.path());
    assert_eq!(value(&store, &fqfn, "n"), Some(StateValue::Counter(8)));
    assert_eq!(value(&store, &fqfn, "k0"), Some(StateValue::Bytes(b"last".to_vec())));
}

#[test]
fn a_checkpoint_of_more_keys_than_a_chunk_writes_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let fqfn = Fqfn::parse("t/ns/f").unwrap();
    let store = open(dir.path());
    let subscription = store.subscribe(spec(&["in"], None, Position::Earliest)).unwrap();
    let keys: Vec<String> = (0..2 * state::CHECKPOINT_CHUNK + 1).map(|i| format!("k{i}")).collect();
    let changes: Vec<(&str, Change)> = keys.iter().map(|key| (key.as_str(), Change::Add(1, None))).collect();
    commit_state(subscription.as_ref(), &fqfn, &changes);
    store.checkpoint(&store.state_table(&fqfn).unwrap()).unwrap();
    assert!(!unapplied(&store, &fqfn));
    assert_eq!(tree_values(&store, &fqfn).len(), keys.len());
}

#[test]
fn records_applied_again_over_a_checkpointed_tree_leave_the_same_state() {
    // A crash between a checkpoint's tree writes and its note of the applied id leaves the tree
    // newer than its applied id says.
    let dir = tempfile::tempdir().unwrap();
    let fqfn = Fqfn::parse("t/ns/f").unwrap();
    {
        let store = open(dir.path());
        let subscription = store.subscribe(spec(&["in"], None, Position::Earliest)).unwrap();
        several_commits(subscription.as_ref(), &fqfn);
        store.checkpoint(&store.state_table(&fqfn).unwrap()).unwrap();
        assert!(!unapplied(&store, &fqfn));
        store.inner.state_applied.remove(fqfn.to_string().as_bytes()).unwrap();
        store.inner.db.flush().unwrap();
    }
    let store = open(dir.path());
    assert_several_commits(&store, &fqfn);
}

#[test]
fn deleting_a_table_removes_its_records_too() {
    let dir = tempfile::tempdir().unwrap();
    let (deleted, kept) = (Fqfn::parse("t/ns/f").unwrap(), Fqfn::parse("t/ns/f2").unwrap());
    {
        let store = open(dir.path());
        let subscription = store.subscribe(spec(&["in"], None, Position::Earliest)).unwrap();
        several_commits(subscription.as_ref(), &deleted);
        several_commits(subscription.as_ref(), &kept);
        store.delete_table(&deleted).unwrap();
        assert_eq!(value(&store, &deleted, "b"), None);
    }
    let store = open(dir.path());
    assert_eq!(value(&store, &deleted, "b"), None);
    assert_eq!(value(&store, &deleted, "n"), None);
    assert_several_commits(&store, &kept);
}

#[test]
fn a_state_put_outside_commits_is_ordered_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let fqfn = Fqfn::parse("t/ns/f").unwrap();
    {
        let store = open(dir.path());
        let subscription = store.subscribe(spec(&["in"], None, Position::Earliest)).unwrap();
        commit_state(subscription.as_ref(), &fqfn, &[("n", Change::Add(1, None))]);
        let put = store.put(&fqfn, "n", StateValue::Counter(10)).unwrap();
        assert_eq!(put.value, StateValue::Counter(10));
        commit_state(subscription.as_ref(), &fqfn, &[("n", Change::Add(5, None))]);
        assert_eq!(value(&store, &fqfn, "n"), Some(StateValue::Counter(15)));
    }
    assert_eq!(value(&open(dir.path()), &fqfn, "n"), Some(StateValue::Counter(15)));
}

mod expiry;
mod history;
mod log;
mod policies;
