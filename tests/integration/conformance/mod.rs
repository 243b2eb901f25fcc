//! One suite of the engine contract's semantics (`fnhost::engine`), run against both engines: the
//! embedded one over a scratch data directory, and NATS JetStream on a loopback server of the
//! test's own. Each behaviour is one generic function over a [`Rig`]; `conformance!` makes a test
//! of it for each engine.
//!
//! What one engine does not give is declared here, with the reason, rather than skipped:
//! - **A commit's atomicity.** The embedded engine writes a commit's outputs, state and cursors in
//!   one sled transaction: after a crash all of it happened or none. NATS has no transaction
//!   across streams: it writes the outputs (deduplicated by message id) and the state first and
//!   acknowledges last, so after a crash between the two the effects are there and the messages
//!   come again, and their second commit changes nothing. What both promise, and what
//!   [`a_commit_makes_outputs_state_and_acknowledgements_visible_together`] checks, is that when
//!   `commit` returns all of it is durable and readable.
//! - **Refusing a join over other topics.** The embedded engine refuses a consumer that joins a
//!   live subscription with other topics, type or key split (`BrokerError::Mismatch`). A NATS
//!   consumer is one durable consumer per topic, so a join over other topics is a join of other
//!   consumers; the subscription's name, which carries its tenant, is what keeps tenants apart
//!   there ([`subscription_names_carry_their_tenant`]).
//! - **Who a failover subscription's active consumer is.** The embedded engine gives everything to
//!   the oldest open consumer and, when it leaves, to the next at once. On NATS the consumer of
//!   key share 0 (instance 0) is the active one; the others stand by until the cluster's leader
//!   places instance 0 again, on a live worker, which goes on after the acknowledged messages.
//! - **Dense positions.** The embedded engine numbers a topic's messages 0, 1, 2, …; NATS
//!   numbers a message by its batched entry and its index there (Pulsar's entry id and batch
//!   index), so positions grow in append order but jump from one entry to the next.
//! - **Counting entries.** A topic's `msgInCounter` and a subscription's `msgBacklog` count
//!   messages on the embedded engine and entries on NATS (as Pulsar's backlog counts entries).
//! - **Acknowledgements past a hole.** `is_acknowledged` on NATS is true below the consumer's
//!   acknowledgement floor and for the acknowledged messages of an entry acknowledged in part
//!   (fnhost records those); JetStream does not say which entries past the first unacknowledged
//!   one were acknowledged whole. Trigger, its user, may therefore wait longer on NATS: until
//!   the messages before its own are acknowledged too.
//! - **A late copy after an ack timeout.** Under load, NATS may hand over a message's first
//!   delivery after its redelivery was processed and acknowledged, which at-least-once allows;
//!   the embedded engine never delivers a message again once it is acknowledged.
//! - **Skipping a count of messages** and **holding a producer** (`producer_request_hold`):
//!   JetStream counts entries, not messages, and cannot hold a publish, so NATS refuses them as
//!   `BrokerError::Unsupported`, naming the verb. (reset-cursor and clear-backlog make the
//!   subscription's consumers again at the new position.)
//! - **Peeking past a hole.** NATS peeks from the subscription's acknowledgement floor, so an
//!   entry acknowledged whole past the first unacknowledged one is shown again; the embedded
//!   engine leaves it out.
//! - **Deleting a topic with consumers attached.** The embedded engine refuses it even forced; on
//!   NATS a forced delete removes the stream and its consumers, and attached instances fail.
//! - **Membership** (`Membership`) exists only in cluster mode; one process needs none.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fnhost::embedded::{EmbeddedStore, OpenError};
use fnhost::engine::Engine;
use fnhost::engine::broker::{
    Acks, BrokerError, Effects, Inputs, Message, OutMessage, Position, Subscription, SubscriptionSpec, SubscriptionType,
};
use fnhost::engine::history::{BatchHistory, HistoryError, HistoryPoint, MessageChange};
use fnhost::engine::state::{Change, StateChanges, StateValue};
use fnhost::names::{Fqfn, SubscriptionName, TopicName, TopicPattern};
use fnhost::nats::{NatsEngine, NatsSecurity};

use fnhost_test_support::Nats;

mod expiry;
use expiry::{
    state_expires_after_its_time_to_live_unless_written_again,
    state_keys_are_listed_in_pages_by_prefix_without_expired_or_host_keys,
};

/// Longest a test waits for messages it expects: long enough for a busy machine and for NATS's
/// redelivery after its acknowledgement wait.
const PATIENCE: Duration = Duration::from_secs(60);
/// How long a test listens for messages that must not come.
const QUIET: Duration = Duration::from_millis(1_500);

/// An engine under test, and the storage it keeps across restarts.
trait Rig {
    /// A handle on the engine's storage; a second `open` after the first handle is dropped is a
    /// restart.
    fn open(&self) -> Arc<dyn Engine>;
    /// Which engine this is, for the declarations above.
    fn kind(&self) -> Kind;
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Embedded,
    Nats,
}

struct EmbeddedRig {
    dir: tempfile::TempDir,
}

impl EmbeddedRig {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }
}

impl Rig for EmbeddedRig {
    fn open(&self) -> Arc<dyn Engine> {
        Arc::new(open_embedded(self.dir.path()))
    }

    fn kind(&self) -> Kind {
        Kind::Embedded
    }
}

/// Opens the store in `dir`; a store dropped a moment ago may still hold the directory's lock,
/// since sled's background threads outlive the dropped handle.
fn open_embedded(dir: &Path) -> EmbeddedStore {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match EmbeddedStore::open(dir) {
            Err(OpenError::Locked(_)) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            opened => return opened.unwrap(),
        }
    }
}

struct NatsRig {
    nats: Nats,
}

impl NatsRig {
    fn new() -> Self {
        Self { nats: Nats::start(1) }
    }
}

impl Rig for NatsRig {
    fn open(&self) -> Arc<dyn Engine> {
        Arc::new(NatsEngine::connect(&self.nats.urls(), 1, &NatsSecurity::default()).unwrap())
    }

    fn kind(&self) -> Kind {
        Kind::Nats
    }
}

/// A test of each behaviour on each engine.
macro_rules! conformance {
    ($($behaviour:ident),* $(,)?) => {
        mod embedded {
            $(#[test] fn $behaviour() { super::$behaviour(&super::EmbeddedRig::new()) })*
        }
        mod nats {
            $(#[test] fn $behaviour() { super::$behaviour(&super::NatsRig::new()) })*
        }
    };
}

conformance!(
    appends_are_fetched_in_order_at_growing_positions,
    individual_acknowledgements_and_their_holes_survive_a_restart,
    shared_consumers_split_the_messages_without_overlap,
    failover_gives_everything_to_the_first_consumer_and_the_rest_to_the_next,
    key_shared_consumers_each_get_all_of_their_keys_in_order,
    unacknowledged_messages_come_again_after_the_ack_timeout,
    a_leaving_consumers_messages_go_to_the_others,
    a_commit_makes_outputs_state_and_acknowledgements_visible_together,
    state_reads_see_commits_and_counters_add_their_deltas,
    a_pattern_subscription_reads_topics_created_after_it,
    metadata_records_and_packages_are_kept_across_a_restart,
    subscription_names_carry_their_tenant,
    topics_are_created_listed_examined_and_deleted,
    peek_shows_what_a_subscription_has_not_acknowledged_without_taking_it,
    namespace_policies_are_kept_and_what_an_engine_cannot_do_is_refused,
    acknowledged_messages_are_freed_unless_retention_keeps_them_for_a_replay,
    a_functions_history_gives_the_state_before_each_message_and_who_wrote_a_value,
    state_expires_after_its_time_to_live_unless_written_again,
    state_keys_are_listed_in_pages_by_prefix_without_expired_or_host_keys,
);

fn topic(name: &str) -> TopicName {
    TopicName::parse(name).unwrap()
}

fn subscription(topic: &TopicName, local: &str) -> SubscriptionName {
    SubscriptionName::on_topic(topic, local).unwrap()
}

fn spec(
    inputs: &[&TopicName],
    name: &SubscriptionName,
    kind: SubscriptionType,
    shares: (u32, u32),
) -> SubscriptionSpec {
    SubscriptionSpec {
        inputs: inputs.iter().map(|topic| (*topic).clone()).collect::<Vec<_>>().into(),
        name: Some(name.clone()),
        initial_position: Position::Earliest,
        subscription_type: kind,
        key_shares: shares,
        ack_timeout: None,
    }
}

fn keyed(value: impl Into<Vec<u8>>, key: &str) -> OutMessage {
    OutMessage { key: Some(key.into()), ..OutMessage::new(value) }
}

/// Fetches until `count` messages came (failing after [`PATIENCE`]).
fn fetch_exactly(consumer: &dyn Subscription, count: usize) -> Vec<Message> {
    let deadline = Instant::now() + PATIENCE;
    let mut messages = Vec::new();
    while messages.len() < count {
        assert!(Instant::now() < deadline, "{} of {count} messages came: {messages:?}", messages.len());
        messages.extend(consumer.fetch(count - messages.len(), Duration::from_millis(500)).unwrap());
    }
    assert_eq!(messages.len(), count, "no more than asked for");
    messages
}

/// Asserts that nothing comes to `consumer` for [`QUIET`].
fn fetch_nothing(consumer: &dyn Subscription) {
    let deadline = Instant::now() + QUIET;
    while Instant::now() < deadline {
        let messages = consumer.fetch(16, Duration::from_millis(250)).unwrap();
        assert!(messages.is_empty(), "nothing more should come: {messages:?}");
    }
}

fn acknowledge(consumer: &dyn Subscription, messages: &[Message]) {
    consumer.commit(Effects { acks: Acks::of(messages), ..Effects::default() }).unwrap();
}

fn sequences(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|message| message.sequence).collect()
}

fn appends_are_fetched_in_order_at_growing_positions(rig: &dyn Rig) {
    let engine = rig.open();
    let input = topic("ordered");
    let produced: Vec<OutMessage> =
        (0..30).map(|index| keyed(format!("v{index}"), &format!("k{}", index % 3))).collect();
    let mut ids = engine.produce(&input, produced[..10].to_vec()).unwrap();
    ids.extend(engine.produce(&input, produced[10..].to_vec()).unwrap());
    assert_eq!(ids[..10], (0..10).collect::<Vec<u64>>(), "one append's positions are dense and start at 0");
    assert!(ids.is_sorted() && ids.windows(2).all(|pair| pair[0] < pair[1]), "positions grow: {ids:?}");
    if rig.kind() == Kind::Embedded {
        // Declared above: NATS numbers a message by its entry and its index in the entry.
        assert_eq!(ids, (0..30).collect::<Vec<u64>>(), "sequence numbers are dense");
    }
    let consumer =
        engine.subscribe(spec(&[&input], &subscription(&input, "s"), SubscriptionType::Failover, (0, 1))).unwrap();
    let messages = fetch_exactly(consumer.as_ref(), 30);
    assert_eq!(sequences(&messages), ids, "fetched in append order");
    for (message, out) in messages.iter().zip(&produced) {
        assert_eq!((&message.body.value, &message.body.key), (&out.value, &out.key));
        assert_eq!((&message.topic, message.redelivery_count), (&input, 0));
        assert!(message.body.publish_time > 0, "the broker stamps the publish time");
    }
}

fn individual_acknowledgements_and_their_holes_survive_a_restart(rig: &dyn Rig) {
    let input = topic("holes");
    let name = subscription(&input, "s");
    {
        let engine = rig.open();
        engine.produce(&input, (0..10).map(|index| OutMessage::new(vec![index])).collect()).unwrap();
        let consumer = engine.subscribe(spec(&[&input], &name, SubscriptionType::Shared, (0, 1))).unwrap();
        let messages = fetch_exactly(consumer.as_ref(), 10);
        let acked: Vec<Message> =
            messages.into_iter().filter(|message| [0, 1, 2, 5, 7].contains(&message.sequence)).collect();
        acknowledge(consumer.as_ref(), &acked);
        assert!(engine.is_acknowledged(&name, &input, 2).unwrap(), "below the first hole");
        for sequence in [5, 7] {
            assert!(engine.is_acknowledged(&name, &input, sequence).unwrap(), "{sequence} is acknowledged");
        }
        assert!(!engine.is_acknowledged(&name, &input, 3).unwrap(), "3 is a hole");
    }
    let engine = rig.open();
    let consumer = engine.subscribe(spec(&[&input], &name, SubscriptionType::Shared, (0, 1))).unwrap();
    let mut again = sequences(&fetch_exactly(consumer.as_ref(), 5));
    again.sort_unstable();
    assert_eq!(again, [3, 4, 6, 8, 9], "exactly the holes come again");
    fetch_nothing(consumer.as_ref());
}

fn shared_consumers_split_the_messages_without_overlap(rig: &dyn Rig) {
    let engine = rig.open();
    let input = topic("shared");
    let name = subscription(&input, "s");
    let first = engine.subscribe(spec(&[&input], &name, SubscriptionType::Shared, (0, 1))).unwrap();
    let second = engine.subscribe(spec(&[&input], &name, SubscriptionType::Shared, (0, 1))).unwrap();
    engine.produce(&input, (0..40).map(|index| OutMessage::new(vec![index])).collect()).unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mut seen = Vec::new();
    while seen.len() < 40 {
        assert!(Instant::now() < deadline, "{} of 40 messages came", seen.len());
        for consumer in [&first, &second] {
            let messages = consumer.fetch(5, Duration::from_millis(200)).unwrap();
            acknowledge(consumer.as_ref(), &messages);
            seen.extend(sequences(&messages));
        }
    }
    let distinct: BTreeSet<u64> = seen.iter().copied().collect();
    assert_eq!((seen.len(), distinct), (40, (0..40).collect()), "every message once, to one consumer");
}

fn failover_gives_everything_to_the_first_consumer_and_the_rest_to_the_next(rig: &dyn Rig) {
    let engine = rig.open();
    let input = topic("failover");
    let name = subscription(&input, "s");
    // Two instances of a function, as the worker makes them: instance 0 of 2, then instance 1.
    let first = engine.subscribe(spec(&[&input], &name, SubscriptionType::Failover, (0, 2))).unwrap();
    let standby = engine.subscribe(spec(&[&input], &name, SubscriptionType::Failover, (1, 2))).unwrap();
    engine.produce(&input, (0..10).map(|index| OutMessage::new(vec![index])).collect()).unwrap();
    let taken = fetch_exactly(first.as_ref(), 4);
    assert_eq!(sequences(&taken), [0, 1, 2, 3]);
    acknowledge(first.as_ref(), &taken);
    fetch_nothing(standby.as_ref());
    drop(first);
    let successor = match rig.kind() {
        Kind::Embedded => standby,
        // Declared above: on NATS the consumer of share 0 is the active one, and the instance
        // takes over where the cluster's leader places instance 0 again.
        Kind::Nats => engine.subscribe(spec(&[&input], &name, SubscriptionType::Failover, (0, 2))).unwrap(),
    };
    let rest = fetch_exactly(successor.as_ref(), 6);
    assert_eq!(sequences(&rest), [4, 5, 6, 7, 8, 9], "the next consumer goes on in order after the acknowledged");
}

fn key_shared_consumers_each_get_all_of_their_keys_in_order(rig: &dyn Rig) {
    let engine = rig.open();
    let input = topic("keyed");
    let name = subscription(&input, "s");
    let consumers: Vec<Box<dyn Subscription>> = (0..2)
        .map(|share| engine.subscribe(spec(&[&input], &name, SubscriptionType::KeyShared, (share, 2))).unwrap())
        .collect();
    let produced: Vec<OutMessage> = (0..48).map(|index| keyed(vec![index], &format!("key-{}", index % 8))).collect();
    engine.produce(&input, produced).unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mut by_consumer: Vec<BTreeMap<String, Vec<u64>>> = vec![BTreeMap::new(); 2];
    while by_consumer.iter().flat_map(BTreeMap::values).map(Vec::len).sum::<usize>() < 48 {
        assert!(Instant::now() < deadline, "not every message came: {by_consumer:?}");
        for (consumer, keys) in consumers.iter().zip(&mut by_consumer) {
            let messages = consumer.fetch(6, Duration::from_millis(200)).unwrap();
            acknowledge(consumer.as_ref(), &messages);
            for message in messages {
                keys.entry(message.body.key.clone().unwrap()).or_default().push(message.sequence);
            }
        }
    }
    let keys: Vec<BTreeSet<&String>> = by_consumer.iter().map(|keys| keys.keys().collect()).collect();
    assert!(keys[0].is_disjoint(&keys[1]), "a key goes to one consumer only: {keys:?}");
    for (key, sequences) in by_consumer.iter().flatten() {
        assert_eq!(sequences.len(), 6, "every message of {key}");
        assert!(sequences.is_sorted(), "{key} in order: {sequences:?}");
    }
}

fn unacknowledged_messages_come_again_after_the_ack_timeout(rig: &dyn Rig) {
    let engine = rig.open();
    let input = topic("timeout");
    let name = subscription(&input, "s");
    let consumer = engine
        .subscribe(SubscriptionSpec {
            ack_timeout: Some(Duration::from_secs(1)),
            ..spec(&[&input], &name, SubscriptionType::Shared, (0, 1))
        })
        .unwrap();
    engine.produce(&input, (0..3).map(|index| OutMessage::new(vec![index])).collect()).unwrap();
    let first = fetch_exactly(consumer.as_ref(), 3);
    assert!(first.iter().all(|message| message.redelivery_count == 0));
    let again = fetch_exactly(consumer.as_ref(), 3);
    let mut redelivered = sequences(&again);
    redelivered.sort_unstable();
    assert_eq!(redelivered, sequences(&first), "the same messages come again");
    assert!(again.iter().all(|message| message.redelivery_count >= 1), "counted as redeliveries: {again:?}");
    acknowledge(consumer.as_ref(), &again);
    match rig.kind() {
        Kind::Embedded => fetch_nothing(consumer.as_ref()),
        // Declared above: a late first delivery may still come; it is one of the three.
        Kind::Nats => {
            let deadline = Instant::now() + QUIET;
            while Instant::now() < deadline {
                for late in consumer.fetch(16, Duration::from_millis(250)).unwrap() {
                    assert!(redelivered.contains(&late.sequence), "only a late copy may come: {late:?}");
                    acknowledge(consumer.as_ref(), &[late]);
                }
            }
        }
    }
}

fn a_leaving_consumers_messages_go_to_the_others(rig: &dyn Rig) {
    let engine = rig.open();
    let input = topic("leaving");
    let name = subscription(&input, "s");
    let leaving = engine.subscribe(spec(&[&input], &name, SubscriptionType::Shared, (0, 1))).unwrap();
    engine.produce(&input, (0..4).map(|index| OutMessage::new(vec![index])).collect()).unwrap();
    let taken = fetch_exactly(leaving.as_ref(), 4);
    let staying = engine.subscribe(spec(&[&input], &name, SubscriptionType::Shared, (0, 1))).unwrap();
    drop(leaving);
    let mut given = sequences(&fetch_exactly(staying.as_ref(), 4));
    given.sort_unstable();
    assert_eq!(given, sequences(&taken));
}

fn a_commit_makes_outputs_state_and_acknowledgements_visible_together(rig: &dyn Rig) {
    let (input, output) = (topic("commit-in"), topic("commit-out"));
    let name = subscription(&input, "s");
    let fqfn = Fqfn::new("public", "default", "committer").unwrap();
    {
        let engine = rig.open();
        engine.produce(&input, (0..3).map(|index| OutMessage::new(vec![index])).collect()).unwrap();
        let consumer = engine.subscribe(spec(&[&input], &name, SubscriptionType::Failover, (0, 1))).unwrap();
        let messages = fetch_exactly(consumer.as_ref(), 3);
        let mut changes = StateChanges::default();
        changes.record("word".into(), Change::Put(b"hello".to_vec(), None));
        changes.record("count".into(), Change::Add(3, None));
        let outputs = messages.iter().map(|message| (output.clone(), OutMessage::new(message.body.value.clone())));
        consumer
            .commit(Effects {
                acks: Acks::of(&messages),
                outputs: outputs.collect(),
                state: Some((fqfn.clone(), Arc::new(changes))),
                history: None,
            })
            .unwrap();
        for message in &messages {
            assert!(engine.is_acknowledged(&name, &input, message.sequence).unwrap());
        }
    }
    // After a restart: the outputs are there, the state too, and nothing comes again.
    let engine = rig.open();
    let reader = engine
        .subscribe(spec(&[&output], &subscription(&output, "reader"), SubscriptionType::Failover, (0, 1)))
        .unwrap();
    let outputs: Vec<Vec<u8>> =
        fetch_exactly(reader.as_ref(), 3).into_iter().map(|message| message.body.value).collect();
    assert_eq!(outputs, [vec![0], vec![1], vec![2]]);
    let table = engine.table(&fqfn).unwrap();
    assert_eq!(table.get("word").unwrap().map(|stored| stored.value), Some(StateValue::Bytes(b"hello".to_vec())));
    assert_eq!(table.get("count").unwrap().map(|stored| stored.value), Some(StateValue::Counter(3)));
    let consumer = engine.subscribe(spec(&[&input], &name, SubscriptionType::Failover, (0, 1))).unwrap();
    fetch_nothing(consumer.as_ref());
}

fn state_reads_see_commits_and_counters_add_their_deltas(rig: &dyn Rig) {
    let engine = rig.open();
    let fqfn = Fqfn::new("public", "default", "counter").unwrap();
    let input = topic("deltas");
    engine.produce(&input, (0..2).map(|index| OutMessage::new(vec![index])).collect()).unwrap();
    // Two instances of one function, each with its own subscription's consumer, commit deltas to
    // the same counter: neither overwrites the other's.
    let consumers: Vec<Box<dyn Subscription>> = ["a", "b"]
        .iter()
        .map(|local| {
            engine.subscribe(spec(&[&input], &subscription(&input, local), SubscriptionType::Failover, (0, 1)))
        })
        .collect::<Result<_, BrokerError>>()
        .unwrap();
    for (consumer, delta) in consumers.iter().zip([2, 5]) {
        let messages = fetch_exactly(consumer.as_ref(), 2);
        let mut changes = StateChanges::default();
        changes.record("total".into(), Change::Add(delta, None));
        changes.record("gone".into(), Change::Delete);
        consumer
            .commit(Effects {
                acks: Acks::of(&messages),
                state: Some((fqfn.clone(), Arc::new(changes))),
                ..Effects::default()
            })
            .unwrap();
    }
    let table = engine.table(&fqfn).unwrap();
    assert_eq!(table.get("total").unwrap().map(|stored| stored.value), Some(StateValue::Counter(7)));
    assert_eq!(table.get("gone").unwrap(), None);
    // An operator's put is read back, and a later delta adds to it.
    engine.put(&fqfn, "total", StateValue::Counter(100)).unwrap();
    assert_eq!(
        engine.table(&fqfn).unwrap().get("total").unwrap().map(|stored| stored.value),
        Some(StateValue::Counter(100))
    );
    engine.delete_table(&fqfn).unwrap();
    assert_eq!(engine.table(&fqfn).unwrap().get("total").unwrap(), None, "a deleted table reads empty");
}

fn a_pattern_subscription_reads_topics_created_after_it(rig: &dyn Rig) {
    let engine = rig.open();
    let old = topic("pattern-old");
    engine.produce(&old, vec![OutMessage::new("old")]).unwrap();
    engine.produce(&topic("other"), vec![OutMessage::new("not matched")]).unwrap();
    let name = SubscriptionName::new("public", "default", "patterned").unwrap();
    let consumer = engine
        .subscribe(SubscriptionSpec {
            inputs: Inputs {
                topics: Vec::new(),
                pattern: Some(TopicPattern::parse("pattern-.*", "public", "default").unwrap()),
            },
            name: Some(name),
            initial_position: Position::Earliest,
            subscription_type: SubscriptionType::Shared,
            key_shares: (0, 1),
            ack_timeout: None,
        })
        .unwrap();
    let first = fetch_exactly(consumer.as_ref(), 1);
    assert_eq!(first[0].topic, old);
    acknowledge(consumer.as_ref(), &first);
    let new = topic("pattern-new");
    engine.produce(&new, vec![OutMessage::new("new")]).unwrap();
    let later = fetch_exactly(consumer.as_ref(), 1);
    assert_eq!((&later[0].topic, later[0].body.value.as_slice()), (&new, b"new".as_slice()));
    acknowledge(consumer.as_ref(), &later);
    fetch_nothing(consumer.as_ref());
}

fn metadata_records_and_packages_are_kept_across_a_restart(rig: &dyn Rig) {
    {
        let engine = rig.open();
        for (key, value) in [("functions/b", "2"), ("functions/a", "1"), ("other/c", "3")] {
            engine.put_record(key, value.as_bytes()).unwrap();
        }
        engine.put_record("functions/a", b"1 again").unwrap();
        engine.put_package("digest-1", b"component").unwrap();
        engine.put_package("digest-2", b"another").unwrap();
        engine.remove_package("digest-2").unwrap();
        // A package deleted and kept again (the same component created again after its GC) is there.
        engine.put_package("digest-3", b"again").unwrap();
        engine.remove_package("digest-3").unwrap();
        engine.put_package("digest-3", b"again").unwrap();
    }
    let engine = rig.open();
    let records = engine.records("functions/").unwrap();
    assert_eq!(records, [("functions/a".to_owned(), b"1 again".to_vec()), ("functions/b".to_owned(), b"2".to_vec())]);
    engine.remove_record("functions/a").unwrap();
    assert_eq!(engine.records("functions/").unwrap().len(), 1);
    assert_eq!(engine.package("digest-1").unwrap().as_deref(), Some(b"component".as_slice()));
    assert_eq!(engine.package("digest-2").unwrap(), None, "a deleted package reads as none");
    assert_eq!(engine.package("digest-3").unwrap().as_deref(), Some(b"again".as_slice()));
    assert_eq!(engine.package("never-kept").unwrap(), None);
}

fn subscription_names_carry_their_tenant(rig: &dyn Rig) {
    let (acme, evil) = (topic("acme/ns/t"), topic("evil/ns/t"));
    let (acme_name, evil_name) = (subscription(&acme, "s"), subscription(&evil, "s"));
    assert_ne!(acme_name, evil_name, "the same local name in two tenants is two subscriptions");
    {
        let engine = rig.open();
        for input in [&acme, &evil] {
            engine.produce(input, (0..3).map(|index| OutMessage::new(vec![index])).collect()).unwrap();
        }
        let acme_consumer = engine.subscribe(spec(&[&acme], &acme_name, SubscriptionType::Shared, (0, 1))).unwrap();
        let evil_consumer = engine.subscribe(spec(&[&evil], &evil_name, SubscriptionType::Shared, (0, 1))).unwrap();
        let acme_messages = fetch_exactly(acme_consumer.as_ref(), 3);
        assert!(acme_messages.iter().all(|message| message.topic == acme));
        let evil_messages = fetch_exactly(evil_consumer.as_ref(), 3);
        assert!(evil_messages.iter().all(|message| message.topic == evil));
        acknowledge(evil_consumer.as_ref(), &evil_messages);
        assert!(!engine.is_acknowledged(&acme_name, &acme, 0).unwrap(), "evil's acknowledgements are not acme's");
        if rig.kind() == Kind::Embedded {
            // Declared above: only the embedded engine compares a join's topics.
            let joined = engine.subscribe(spec(&[&evil], &acme_name, SubscriptionType::Shared, (0, 1)));
            assert!(matches!(joined, Err(BrokerError::Mismatch { .. })), "a join over other topics is refused");
        }
        drop((acme_consumer, evil_consumer));
        // Deleting evil's subscription leaves acme's cursors alone.
        engine.delete_subscription(&evil_name, &vec![evil.clone()].into()).unwrap();
    }
    let engine = rig.open();
    let acme_consumer = engine.subscribe(spec(&[&acme], &acme_name, SubscriptionType::Shared, (0, 1))).unwrap();
    let mut again = sequences(&fetch_exactly(acme_consumer.as_ref(), 3));
    again.sort_unstable();
    assert_eq!(again, [0, 1, 2], "acme's unacknowledged messages are still acme's");
}

fn topics_are_created_listed_examined_and_deleted(rig: &dyn Rig) {
    let engine = rig.open();
    let made = TopicName::parse("persistent://admin/ns/made").unwrap();
    engine.create_topic(&made).unwrap();
    assert!(matches!(engine.create_topic(&made), Err(BrokerError::TopicExists(_))));
    engine.produce(&made, (0..3).map(|index| OutMessage::new(format!("m{index}"))).collect()).unwrap();
    let other = TopicName::parse("persistent://admin/other/elsewhere").unwrap();
    engine.produce(&other, vec![OutMessage::new("x")]).unwrap();
    assert_eq!(engine.list_topics("admin", "ns").unwrap(), std::slice::from_ref(&made), "only the namespace's topics");

    let value = |position, offset| engine.examine(&made, position, offset).unwrap().map(|message| message.body.value);
    assert_eq!(value(Position::Earliest, 1), Some(b"m0".to_vec()));
    assert_eq!(value(Position::Earliest, 3), Some(b"m2".to_vec()));
    assert_eq!(value(Position::Latest, 1), Some(b"m2".to_vec()));
    assert_eq!(value(Position::Latest, 4), None, "there is no fourth from the end");
    let stats = engine.topic_stats(&made).unwrap();
    // Declared above: NATS counts entries.
    let appended = if rig.kind() == Kind::Embedded { 3 } else { 1 };
    assert_eq!(stats.msg_in_counter, appended);
    assert!(stats.storage_size > 0);
    assert!(engine.tenant_storage_bytes("admin").unwrap() >= stats.storage_size);
    assert_eq!(engine.tenant_storage_bytes("nobody").unwrap(), 0);

    let name = subscription(&made, "s");
    drop(engine.subscribe(spec(&[&made], &name, SubscriptionType::Shared, (0, 1))).unwrap());
    let listed: Vec<SubscriptionName> =
        engine.topic_stats(&made).unwrap().subscriptions.into_iter().map(|(name, _)| name).collect();
    assert_eq!(listed, std::slice::from_ref(&name));
    assert_eq!(engine.subscriptions(&made).unwrap(), [name], "the listing agrees with the stats");
    assert!(
        matches!(engine.delete_topic(&made, false), Err(BrokerError::TopicInUse { .. })),
        "its subscription holds it"
    );
    engine.delete_topic(&made, true).unwrap();
    assert!(matches!(engine.topic_stats(&made), Err(BrokerError::NoSuchTopic(_))));
    assert!(matches!(engine.subscriptions(&made), Err(BrokerError::NoSuchTopic(_))));
    assert!(matches!(engine.delete_topic(&made, true), Err(BrokerError::NoSuchTopic(_))));
    assert!(engine.list_topics("admin", "ns").unwrap().is_empty());
}

fn peek_shows_what_a_subscription_has_not_acknowledged_without_taking_it(rig: &dyn Rig) {
    let engine = rig.open();
    let input = topic("peeked");
    let name = subscription(&input, "s");
    engine.produce(&input, (0..5).map(|index| OutMessage::new(vec![index])).collect()).unwrap();
    let consumer = engine.subscribe(spec(&[&input], &name, SubscriptionType::Failover, (0, 1))).unwrap();
    let first = fetch_exactly(consumer.as_ref(), 2);
    acknowledge(consumer.as_ref(), &first);
    // NATS applies an acknowledgement a moment after it is sent.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let peeked = sequences(&engine.peek(&input, &name, 2).unwrap());
        if peeked == [2, 3] {
            break;
        }
        assert!(Instant::now() < deadline, "peek shows {peeked:?}, not the first two unacknowledged");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sequences(&fetch_exactly(consumer.as_ref(), 3)), [2, 3, 4], "peeking took nothing");
    let nobody = subscription(&input, "nobody");
    assert!(matches!(engine.peek(&input, &nobody, 1), Err(BrokerError::NoSuchSubscription { .. })));
}

fn namespace_policies_are_kept_and_what_an_engine_cannot_do_is_refused(rig: &dyn Rig) {
    use fnhost::engine::topics::{BacklogPolicy, BacklogQuota, CursorTarget, NamespacePolicies, Retention};
    let policies = NamespacePolicies {
        retention: Some(Retention { time: Some(Duration::from_secs(600)), size_bytes: None }),
        message_ttl: Some(Duration::from_secs(3600)),
        backlog_quota: Some(BacklogQuota { limit_bytes: 1 << 20, policy: BacklogPolicy::ProducerException }),
    };
    {
        let engine = rig.open();
        assert_eq!(engine.policies("policy", "ns").unwrap(), NamespacePolicies::default());
        engine.set_policies("policy", "ns", &policies).unwrap();
    }
    let engine = rig.open();
    assert_eq!(engine.policies("policy", "ns").unwrap(), policies, "kept across a restart");
    assert_eq!(engine.policies("policy", "other").unwrap(), NamespacePolicies::default());

    let hold = NamespacePolicies {
        backlog_quota: Some(BacklogQuota { limit_bytes: 1, policy: BacklogPolicy::ProducerRequestHold }),
        ..policies
    };
    let input = topic("moved");
    let name = subscription(&input, "s");
    engine.produce(&input, vec![OutMessage::new("a")]).unwrap();
    drop(engine.subscribe(spec(&[&input], &name, SubscriptionType::Shared, (0, 1))).unwrap());
    engine.move_cursor(&input, &name, CursorTarget::End).unwrap();
    assert!(engine.peek(&input, &name, 1).unwrap().is_empty(), "clear-backlog acknowledged everything");
    match rig.kind() {
        Kind::Embedded => {
            engine.set_policies("policy", "ns", &hold).unwrap();
            engine.move_cursor(&input, &name, CursorTarget::Skip(1)).unwrap();
        }
        Kind::Nats => {
            let refused = engine.set_policies("policy", "ns", &hold).unwrap_err();
            assert!(matches!(refused, BrokerError::Unsupported { verb: "set-backlog-quota", .. }), "{refused}");
            let refused = engine.move_cursor(&input, &name, CursorTarget::Skip(1)).unwrap_err();
            assert!(matches!(refused, BrokerError::Unsupported { verb: "skip", .. }), "{refused}");
            assert_eq!(engine.policies("policy", "ns").unwrap(), policies, "a refused change changes nothing");
        }
    }
}

fn acknowledged_messages_are_freed_unless_retention_keeps_them_for_a_replay(rig: &dyn Rig) {
    use fnhost::engine::topics::{CursorTarget, NamespacePolicies, Retention};
    let engine = rig.open();
    let started = fnhost::engine::clock::now_millis();
    // Consumes ten messages, appended in two calls, and acknowledges them all.
    let consume_all = |input: &TopicName, name: &SubscriptionName| -> Vec<Vec<u8>> {
        let consumer = engine.subscribe(spec(&[input], name, SubscriptionType::Shared, (0, 1))).unwrap();
        for values in [0..5, 5..10] {
            engine.produce(input, values.map(|index| OutMessage::new(vec![index])).collect()).unwrap();
        }
        let messages = fetch_exactly(consumer.as_ref(), 10);
        acknowledge(consumer.as_ref(), &messages);
        let deadline = Instant::now() + PATIENCE;
        while !engine.peek(input, name, 1).unwrap().is_empty() {
            assert!(Instant::now() < deadline, "the acknowledgements were not applied");
            std::thread::sleep(Duration::from_millis(50));
        }
        messages.into_iter().map(|message| message.body.value).collect()
    };
    let stored = |input: &TopicName| {
        engine.free_acknowledged().unwrap();
        engine.topic_stats(input).unwrap().storage_size
    };

    let freed = topic("persistent://free/ns/freed");
    consume_all(&freed, &subscription(&freed, "s"));
    if rig.kind() == Kind::Nats {
        // Declared by `TopicAdmin::free_acknowledged`: the embedded engine's cleaner frees whole
        // segments as acknowledgements come, and the one segment here stays open.
        assert_eq!(stored(&freed), 0, "every subscription acknowledged everything: nothing stays");
    }

    let hour = Some(Duration::from_secs(3600));
    let keep = NamespacePolicies { retention: Some(Retention { time: hour, size_bytes: None }), ..Default::default() };
    engine.set_policies("keep", "ns", &keep).unwrap();
    let kept = topic("persistent://keep/ns/kept");
    let name = subscription(&kept, "s");
    let first = consume_all(&kept, &name);
    assert!(stored(&kept) > 0, "retention keeps acknowledged messages");
    engine.move_cursor(&kept, &name, CursorTarget::Time(started.saturating_sub(1_000))).unwrap();
    let consumer = engine.subscribe(spec(&[&kept], &name, SubscriptionType::Shared, (0, 1))).unwrap();
    let again: Vec<Vec<u8>> =
        fetch_exactly(consumer.as_ref(), 10).into_iter().map(|message| message.body.value).collect();
    assert_eq!(again, first, "reset-cursor --time replays every kept message");
    let nobody = subscription(&kept, "nobody");
    let refused = engine.move_cursor(&kept, &nobody, CursorTarget::Time(started)).unwrap_err();
    assert!(matches!(refused, BrokerError::NoSuchSubscription { .. }), "{refused}");
}

/// What only the NATS engine has: state applied to its views after the commit, by any process.
mod nats_views {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// Commits that each add 1 to a counter, while a second process and the committing one
    /// bring the view up to date over and over, as a leader and an instance starting elsewhere
    /// do: every increment counts once.
    #[test]
    fn two_processes_applying_one_changelog_at_once_count_every_increment_once() {
        const COMMITS: usize = 60;
        let rig = NatsRig::new();
        let (committer, other) = (rig.open(), rig.open());
        let fqfn = Fqfn::new("public", "default", "counted").unwrap();
        let input = topic("views-counted");
        let messages: Vec<OutMessage> = (0..COMMITS).map(|index| OutMessage::new(vec![index as u8])).collect();
        committer.produce(&input, messages).unwrap();
        let consumer = committer
            .subscribe(spec(&[&input], &subscription(&input, "counter"), SubscriptionType::Shared, (0, 1)))
            .unwrap();
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for applier in [&committer, &other] {
                let (done, fqfn) = (&done, &fqfn);
                scope.spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        applier.materialise_views().unwrap();
                        applier.table(fqfn).unwrap();
                    }
                });
            }
            for _ in 0..COMMITS {
                let messages = fetch_exactly(consumer.as_ref(), 1);
                let mut changes = StateChanges::default();
                changes.record("total".into(), Change::Add(1, None));
                let effects = Effects {
                    acks: Acks::of(&messages),
                    state: Some((fqfn.clone(), Arc::new(changes))),
                    ..Effects::default()
                };
                consumer.commit(effects).unwrap();
            }
            done.store(true, Ordering::Relaxed);
        });
        for reader in [&committer, &other] {
            let total = reader.table(&fqfn).unwrap().get("total").unwrap().map(|stored| stored.value);
            assert_eq!(total, Some(StateValue::Counter(COMMITS as i64)));
        }
    }

    /// A process that applied a function's changes remembers each view entry's revision; when
    /// another process deletes the function and it is made again, the new view starts empty there
    /// too, and its first changes are applied rather than taken for ones already applied.
    #[test]
    fn a_function_deleted_elsewhere_and_made_again_starts_empty_in_every_process() {
        let rig = NatsRig::new();
        let (applier, deleter) = (rig.open(), rig.open());
        let fqfn = Fqfn::new("public", "default", "remade").unwrap();
        applier.put(&fqfn, "total", StateValue::Counter(5)).unwrap();
        applier.put(&fqfn, "only-before", StateValue::Bytes(b"old".to_vec())).unwrap();
        applier.materialise_views().unwrap();
        assert_eq!(
            applier.table(&fqfn).unwrap().get("total").unwrap().map(|stored| stored.value),
            Some(StateValue::Counter(5))
        );
        deleter.delete_table(&fqfn).unwrap();
        deleter.put(&fqfn, "total", StateValue::Counter(2)).unwrap();
        let table = applier.table(&fqfn).unwrap();
        assert_eq!(table.get("total").unwrap().map(|stored| stored.value), Some(StateValue::Counter(2)));
        assert_eq!(table.get("only-before").unwrap(), None, "the deleted function's keys are gone");
    }
}

/// What `key` held just before `message` was processed, as a counter or bytes' first byte.
fn value_before(engine: &dyn Engine, fqfn: &Fqfn, message: &Message, key: &str) -> Option<i64> {
    let point = HistoryPoint::BeforeMessage { topic: message.topic.clone(), message_id: message.sequence.to_string() };
    let past = engine.past_table(fqfn, &point).unwrap();
    assert!(past.processed, "message {} was processed", message.sequence);
    past.table.get(key).unwrap().map(|stored| match stored.value {
        StateValue::Counter(count) => count,
        StateValue::Bytes(bytes) => i64::from(bytes[0]),
    })
}

fn a_functions_history_gives_the_state_before_each_message_and_who_wrote_a_value(rig: &dyn Rig) {
    let input = topic("history-in");
    let fqfn = Fqfn::new("public", "default", "historian").unwrap();
    let name = subscription(&input, "s");
    let messages = {
        let engine = rig.open();
        engine.produce(&input, (0..9).map(|index| OutMessage::new(vec![index])).collect()).unwrap();
        let consumer = engine.subscribe(spec(&[&input], &name, SubscriptionType::Failover, (0, 1))).unwrap();
        let messages = fetch_exactly(consumer.as_ref(), 9);
        // Three commits of three messages: each counts, remembers the last value, and message 1
        // writes a key that message 4 removes.
        for batch in messages.chunks(3) {
            let mut history = BatchHistory::new(0, "digest".into());
            let mut changes = StateChanges::default();
            for message in batch {
                let own = [
                    ("count".to_owned(), Change::Add(1, None)),
                    ("last".to_owned(), Change::Put(message.body.value.clone(), None)),
                ];
                for (key, change) in &own {
                    changes.record(key.clone(), change.clone());
                }
                let mut made: Vec<MessageChange> =
                    own.into_iter().map(|(key, change)| MessageChange::Own(key, change)).collect();
                // `gone` has one writer in its batch: the history names it by its index in the changes.
                let gone = match message.body.value[0] {
                    1 => Some(Change::Put(vec![1], None)),
                    4 => Some(Change::Delete),
                    _ => None,
                };
                if let Some(change) = gone {
                    made.push(MessageChange::Sole(changes.len() as u32));
                    changes.record("gone".to_owned(), change);
                }
                history.push(input.as_str(), &message.sequence.to_string(), made);
            }
            let effects = Effects {
                acks: Acks::of(batch),
                state: Some((fqfn.clone(), Arc::new(changes))),
                history: Some(history),
                ..Effects::default()
            };
            consumer.commit(effects).unwrap();
        }
        messages
    };
    // After a restart, and again after an operator's write.
    let engine = rig.open();
    for pass in 0..2 {
        for (index, message) in (0_i64..).zip(&messages) {
            let before = |key| value_before(engine.as_ref(), &fqfn, message, key);
            assert_eq!(before("count"), (index > 0).then_some(index), "pass {pass}, count before {index}");
            assert_eq!(before("last"), (index > 0).then_some(index - 1), "pass {pass}, last before {index}");
            assert_eq!(before("gone"), (2..=4).contains(&index).then_some(1), "pass {pass}, gone before {index}");
        }
        let at_start = engine.past_table(&fqfn, &HistoryPoint::AtTime(0)).unwrap();
        assert_eq!(at_start.table.get("count").unwrap(), None, "nothing was committed at time 0");
        let now = engine.past_table(&fqfn, &HistoryPoint::AtTime(u64::MAX)).unwrap();
        assert_eq!(now.table.get("count").unwrap().map(|stored| stored.value), Some(StateValue::Counter(9)));

        let provenance = engine.last_write(&fqfn, "last").unwrap().expect("a kept write");
        let writer = provenance.writer.expect("a function's write");
        assert_eq!(
            (writer.message_id, writer.topic, writer.code_digest),
            (messages[8].sequence.to_string(), input.clone(), "digest".to_owned())
        );
        let removal = engine.last_write(&fqfn, "gone").unwrap().and_then(|provenance| provenance.writer);
        assert_eq!(removal.map(|writer| writer.message_id), Some(messages[4].sequence.to_string()));
        engine.put(&fqfn, "other", StateValue::Counter(5)).unwrap();
    }
    let operator = engine.last_write(&fqfn, "other").unwrap().expect("a kept write");
    assert_eq!(operator.writer, None, "an operator's put has no writer");

    let ids = |index: usize| messages[index].sequence.to_string();
    let range = engine.messages(&input, &ids(2), &ids(5), 10).unwrap();
    assert_eq!(range.iter().map(|message| message.body.value[0]).collect::<Vec<_>>(), [2, 3, 4, 5]);
    assert!(matches!(engine.messages(&input, &ids(0), &ids(8), 5), Err(HistoryError::BadRange(_))));
    assert!(matches!(engine.messages(&input, &ids(5), &ids(2), 10), Err(HistoryError::BadRange(_))));
    let beyond_end = (messages[8].sequence + 1_000_000).to_string();
    let unknown = HistoryPoint::BeforeMessage { topic: input.clone(), message_id: beyond_end };
    assert!(matches!(engine.past_table(&fqfn, &unknown), Err(HistoryError::UnknownMessage { .. })));
}
