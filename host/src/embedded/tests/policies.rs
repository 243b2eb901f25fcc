//! The topic and namespace verbs on the embedded log: retention, message TTL, backlog quotas,
//! moving cursors, and topics created and deleted across restarts.

use super::*;
use crate::engine::clock::now_millis;
use crate::engine::topics::{BacklogPolicy, BacklogQuota, CursorTarget, NamespacePolicies, Retention, TopicAdmin};
use crate::limits::MAX_TOPICS_PER_NAMESPACE;

fn set(store: &EmbeddedStore, policies: NamespacePolicies) {
    store.set_policies("public", "default", &policies).unwrap();
}

fn subscription(name: &str) -> SubscriptionName {
    SubscriptionName::new("public", "default", name).unwrap()
}

fn backlog(store: &EmbeddedStore, name: &str, sub: &str) -> u64 {
    let stats = store.topic_stats(&topic(name)).unwrap();
    stats
        .subscriptions
        .iter()
        .find(|(found, _)| *found == subscription(sub))
        .map(|(_, stats)| stats.msg_backlog)
        .unwrap()
}

/// Produces `rounds` messages of 300 bytes to `name`, one append each.
fn fill(store: &EmbeddedStore, name: &str, rounds: usize) {
    for round in 0..rounds {
        produce(store, name, &[&format!("{round:0>300}")]);
    }
}

#[test]
fn retention_keeps_acknowledged_segments_and_reset_cursor_by_time_replays_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_small(dir.path());
    set(
        &store,
        NamespacePolicies {
            retention: Some(Retention { time: Some(Duration::from_secs(600)), size_bytes: Some(1 << 30) }),
            ..NamespacePolicies::default()
        },
    );
    let reader = store.subscribe(spec(&["kept"], Some("s"), Position::Earliest)).unwrap();
    let start = now_millis();
    fill(&store, "kept", 60);
    assert_eq!(ack_everything(reader.as_ref()), 60);
    let before = store.inner.log.segment_ids().len();
    store.clean().unwrap();
    store.clean().unwrap();
    assert_eq!(store.inner.log.segment_ids().len(), before, "retention keeps every acknowledged segment");
    assert_eq!(backlog(&store, "kept", "s"), 0);

    store.move_cursor(&topic("kept"), &subscription("s"), CursorTarget::Time(start)).unwrap();
    assert_eq!(backlog(&store, "kept", "s"), 60, "everything published since is unacknowledged again");
    assert_eq!(ack_everything(reader.as_ref()), 60, "and delivered again");

    // Without retention the same data goes, down to the open segment.
    set(&store, NamespacePolicies::default());
    store.clean().unwrap();
    store.clean().unwrap();
    assert_eq!(store.inner.log.segment_ids().len(), 1, "only the active segment is left");
}

#[test]
fn a_size_retention_keeps_only_that_much_behind_the_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_small(dir.path());
    set(
        &store,
        NamespacePolicies {
            retention: Some(Retention { time: None, size_bytes: Some(4096) }),
            ..NamespacePolicies::default()
        },
    );
    let reader = store.subscribe(spec(&["sized"], Some("s"), Position::Earliest)).unwrap();
    fill(&store, "sized", 80);
    ack_everything(reader.as_ref());
    let full = store.inner.log.segment_ids().len();
    store.clean().unwrap();
    store.clean().unwrap();
    let kept = store.inner.log.segment_ids().len();
    assert!(kept < full && kept >= 2, "{full} segments, then {kept}: about 4 KiB behind the cursor stays");
}

#[test]
fn message_ttl_acknowledges_what_a_slow_subscription_left_too_long() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_small(dir.path());
    let _slow = store.subscribe(spec(&["ttl"], Some("slow"), Position::Earliest)).unwrap();
    fill(&store, "ttl", 10);
    assert_eq!(backlog(&store, "ttl", "slow"), 10);
    store.clean().unwrap();
    assert_eq!(backlog(&store, "ttl", "slow"), 10, "no TTL, nothing expires");
    set(&store, NamespacePolicies { message_ttl: Some(Duration::from_millis(1)), ..NamespacePolicies::default() });
    std::thread::sleep(Duration::from_millis(5));
    store.clean().unwrap();
    assert_eq!(backlog(&store, "ttl", "slow"), 0, "messages older than the TTL are acknowledged");
    produce(&store, "ttl", &["fresh"]);
    set(&store, NamespacePolicies { message_ttl: Some(Duration::from_secs(3600)), ..NamespacePolicies::default() });
    store.clean().unwrap();
    assert_eq!(backlog(&store, "ttl", "slow"), 1, "a message younger than the TTL stays");
}

/// Produces to `name` until its backlog passes the quota's 2000 bytes; returns how many it took.
fn fill_past_quota(store: &EmbeddedStore, name: &str) -> usize {
    let mut produced = 0;
    while store.topic_stats(&topic(name)).map_or(0, |stats| stats.backlog_size) <= 2000 {
        produce(store, name, &[&format!("{produced:0>300}")]);
        produced += 1;
    }
    produced
}

fn quota(policy: BacklogPolicy) -> NamespacePolicies {
    NamespacePolicies {
        backlog_quota: Some(BacklogQuota { limit_bytes: 2000, policy }),
        ..NamespacePolicies::default()
    }
}

#[test]
fn producer_exception_refuses_a_producer_past_the_backlog_and_lets_it_on_once_consumed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_small(dir.path());
    set(&store, quota(BacklogPolicy::ProducerException));
    let reader = store.subscribe(spec(&["q"], Some("s"), Position::Earliest)).unwrap();
    let produced = fill_past_quota(&store, "q");
    let refused = store.produce(&topic("q"), vec![OutMessage::new("over")]).unwrap_err();
    assert!(
        matches!(refused, BrokerError::BacklogQuotaExceeded { limit: 2000, policy: "producer_exception", .. }),
        "{refused}"
    );
    assert_eq!(ack_everything(reader.as_ref()), produced, "nothing stored was lost");
    produce(&store, "q", &["after"]);
    // A topic of another namespace has no quota.
    store.produce(&TopicName::parse("persistent://public/other/q").unwrap(), vec![OutMessage::new("x"); 20]).unwrap();
}

#[test]
fn producer_request_hold_waits_until_the_backlog_is_consumed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open_small(dir.path()));
    set(&store, quota(BacklogPolicy::ProducerRequestHold));
    let reader = store.subscribe(spec(&["q"], Some("s"), Position::Earliest)).unwrap();
    let produced = fill_past_quota(&store, "q");
    let producer = {
        let store = store.clone();
        std::thread::spawn(move || store.produce(&topic("q"), vec![OutMessage::new("held")]))
    };
    // The held message cannot be appended before this commit, so the fetch holds only the backlog.
    let backlog = reader.fetch(produced, Duration::ZERO).unwrap();
    assert_eq!(backlog.len(), produced);
    reader.commit(Effects { acks: Acks::of(&backlog), ..Effects::default() }).unwrap();
    assert_eq!(
        producer.join().unwrap().unwrap(),
        vec![produced as u64],
        "the held producer went on once the backlog fell"
    );
    assert_eq!(values(&reader.fetch(10, Duration::ZERO).unwrap()), ["held"]);
}

#[test]
fn consumer_backlog_eviction_acknowledges_the_oldest_for_a_subscription_past_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_small(dir.path());
    set(&store, quota(BacklogPolicy::ConsumerBacklogEviction));
    let _slow = store.subscribe(spec(&["q"], Some("slow"), Position::Earliest)).unwrap();
    let fast = store.subscribe(spec(&["q"], Some("fast"), Position::Earliest)).unwrap();
    fill(&store, "q", 20);
    ack_everything(fast.as_ref());
    produce(&store, "q", &["goes on"]);
    let left = backlog(&store, "q", "slow");
    assert!((2..21).contains(&left), "the slow subscription lost its oldest messages, not all: {left} left");
    let stats = store.topic_stats(&topic("q")).unwrap();
    assert!(stats.backlog_size <= 2000 + 400, "the backlog is back near the quota: {}", stats.backlog_size);
    assert_eq!(backlog(&store, "q", "fast"), 1, "a subscription within the quota keeps its backlog");
}

#[test]
fn topics_created_and_deleted_stay_so_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_small(dir.path());
        store.create_topic(&topic("empty")).unwrap();
        assert!(matches!(store.create_topic(&topic("empty")), Err(BrokerError::TopicExists(_))));
        produce(&store, "gone", &["a", "b"]);
        let reader = store.subscribe(spec(&["gone"], Some("s"), Position::Earliest)).unwrap();
        let refused = store.delete_topic(&topic("gone"), true).unwrap_err();
        assert!(matches!(refused, BrokerError::TopicInUse { .. }), "attached consumers hold it even forced: {refused}");
        drop(reader);
        let refused = store.delete_topic(&topic("gone"), false).unwrap_err();
        assert!(matches!(refused, BrokerError::TopicInUse { .. }), "its subscription holds it: {refused}");
        store.delete_topic(&topic("gone"), true).unwrap();
        assert!(matches!(store.topic_stats(&topic("gone")), Err(BrokerError::NoSuchTopic(_))));
        assert!(matches!(store.delete_topic(&topic("gone"), true), Err(BrokerError::NoSuchTopic(_))));
    }
    let store = open_small(dir.path());
    let listed: Vec<String> =
        store.list_topics("public", "default").unwrap().iter().map(|topic| topic.as_str().to_owned()).collect();
    assert_eq!(listed, ["persistent://public/default/empty"], "the empty topic stays, the deleted one does not");
    assert!(matches!(store.topic_stats(&topic("gone")), Err(BrokerError::NoSuchTopic(_))));
    // A topic made again under the name starts without the old messages or cursors.
    produce(&store, "gone", &["new"]);
    let reader = store.subscribe(spec(&["gone"], Some("s"), Position::Earliest)).unwrap();
    assert_eq!(values(&reader.fetch(10, Duration::ZERO).unwrap()), ["new"]);
}

#[test]
fn skip_peek_and_reset_by_message_move_only_the_named_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_small(dir.path());
    let _one = store.subscribe(spec(&["m"], Some("one"), Position::Earliest)).unwrap();
    let _two = store.subscribe(spec(&["m"], Some("two"), Position::Earliest)).unwrap();
    produce(&store, "m", &["a", "b", "c", "d"]);
    store.move_cursor(&topic("m"), &subscription("one"), CursorTarget::Skip(3)).unwrap();
    assert_eq!(values(&store.peek(&topic("m"), &subscription("one"), 10).unwrap()), ["d"]);
    assert_eq!(values(&store.peek(&topic("m"), &subscription("two"), 2).unwrap()), ["a", "b"]);
    store.move_cursor(&topic("m"), &subscription("one"), CursorTarget::Sequence(1)).unwrap();
    assert_eq!(values(&store.peek(&topic("m"), &subscription("one"), 10).unwrap()), ["b", "c", "d"]);
    store.move_cursor(&topic("m"), &subscription("two"), CursorTarget::End).unwrap();
    assert_eq!(backlog(&store, "m", "two"), 0);
    assert_eq!(backlog(&store, "m", "one"), 3);
    let missing = store.move_cursor(&topic("m"), &subscription("nobody"), CursorTarget::End).unwrap_err();
    assert!(matches!(missing, BrokerError::NoSuchSubscription { .. }), "{missing}");
    let first = store.examine(&topic("m"), Position::Earliest, 1).unwrap().unwrap();
    let last = store.examine(&topic("m"), Position::Latest, 1).unwrap().unwrap();
    assert_eq!((first.sequence, last.sequence), (0, 3));
    assert!(store.examine(&topic("m"), Position::Latest, 5).unwrap().is_none());
}

#[test]
fn a_namespace_at_its_topic_limit_refuses_new_topics_until_one_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let crowded = |index: usize| TopicName::parse(&format!("persistent://crowded/ns/t{index}")).unwrap();
    // Made in memory, as an append's first step makes them; only the last ones are appended to.
    for index in 0..MAX_TOPICS_PER_NAMESPACE - 1 {
        store.check_new_topic(&crowded(index)).unwrap();
    }
    store.produce(&crowded(MAX_TOPICS_PER_NAMESPACE - 1), vec![OutMessage::new("last")]).unwrap();
    let refused = store.produce(&crowded(MAX_TOPICS_PER_NAMESPACE), vec![OutMessage::new("one too many")]);
    assert!(matches!(refused, Err(BrokerError::NamespaceFull { limit: MAX_TOPICS_PER_NAMESPACE, .. })), "{refused:?}");
    assert!(
        matches!(store.create_topic(&crowded(MAX_TOPICS_PER_NAMESPACE)), Err(BrokerError::NamespaceFull { .. })),
        "creating is refused as appending is"
    );
    let elsewhere = TopicName::parse("persistent://crowded/other/t0").unwrap();
    store.produce(&elsewhere, vec![OutMessage::new("another namespace")]).unwrap();
    assert_eq!(store.list_topics("crowded", "ns").unwrap().len(), MAX_TOPICS_PER_NAMESPACE);

    store.delete_topic(&crowded(MAX_TOPICS_PER_NAMESPACE - 1), true).unwrap();
    store.produce(&crowded(MAX_TOPICS_PER_NAMESPACE), vec![OutMessage::new("room again")]).unwrap();
}
