//! The state port's time to live and key listing, on both engines.

use std::sync::Arc;
use std::time::Duration;

use fnhost::engine::Engine;
use fnhost::engine::broker::{Acks, Effects, OutMessage, Subscription, SubscriptionType};
use fnhost::engine::state::{Change, KeyPage, StateChanges, StateValue};
use fnhost::names::Fqfn;

use super::{Rig, fetch_exactly, spec, subscription, topic};

const HOUR: Duration = Duration::from_secs(3600);
const HOUR_MS: u64 = 3_600_000;

/// Commits `changes` of `fqfn` with the next message of the consumer's input.
fn commit(consumer: &dyn Subscription, fqfn: &Fqfn, changes: &[(&str, Change)]) {
    let messages = fetch_exactly(consumer, 1);
    let mut state = StateChanges::default();
    for (key, change) in changes {
        state.record((*key).to_owned(), change.clone());
    }
    consumer
        .commit(Effects {
            acks: Acks::of(&messages),
            state: Some((fqfn.clone(), Arc::new(state))),
            ..Effects::default()
        })
        .unwrap();
}

fn read(engine: &dyn Engine, fqfn: &Fqfn, key: &str) -> Option<StateValue> {
    engine.table(fqfn).unwrap().get(key).unwrap().map(|stored| stored.value)
}

/// A consumer of a fresh input with `messages` on it, for a function's commits.
fn consumer(engine: &dyn Engine, name: &str, messages: u8) -> Box<dyn Subscription> {
    let input = topic(name);
    engine.produce(&input, (0..messages).map(|index| OutMessage::new(vec![index])).collect()).unwrap();
    engine.subscribe(spec(&[&input], &subscription(&input, "f"), SubscriptionType::Failover, (0, 1))).unwrap()
}

pub(super) fn state_expires_after_its_time_to_live_unless_written_again(rig: &dyn Rig) {
    let fqfn = Fqfn::new("public", "default", "sessions").unwrap();
    {
        let engine = rig.open();
        let consumer = consumer(&*engine, "logins", 2);
        let bytes = |text: &str| text.as_bytes().to_vec();
        commit(
            &*consumer,
            &fqfn,
            &[
                ("forgotten", Change::Put(bytes("login"), Some(HOUR_MS))),
                ("rewritten", Change::Put(bytes("login"), Some(HOUR_MS))),
                ("counted", Change::Add(5, Some(HOUR_MS))),
                ("lasting", Change::Put(bytes("kept"), None)),
            ],
        );
        let expires_at = engine.table(&fqfn).unwrap().get("forgotten").unwrap().unwrap().expires_at.unwrap();
        let now = engine.clock().now_millis();
        assert!(expires_at > now && expires_at <= now + HOUR_MS, "an hour from the commit: {expires_at} at {now}");
        // Half an hour on, one key is written again: it lives an hour from then.
        engine.clock().advance(HOUR / 2);
        commit(&*consumer, &fqfn, &[("rewritten", Change::Put(bytes("again"), Some(HOUR_MS)))]);
        engine.clock().advance(HOUR / 2 + Duration::from_secs(60));
        assert_eq!(read(&*engine, &fqfn, "forgotten"), None, "a login without a logout is gone after its hour");
        assert_eq!(read(&*engine, &fqfn, "counted"), None);
        assert_eq!(read(&*engine, &fqfn, "rewritten"), Some(StateValue::Bytes(bytes("again"))));
        assert_eq!(read(&*engine, &fqfn, "lasting"), Some(StateValue::Bytes(bytes("kept"))));
    }
    // After a restart the expiries are the same: the times to live were stored with the values.
    let engine = rig.open();
    engine.clock().advance(HOUR + Duration::from_secs(60));
    assert_eq!(read(&*engine, &fqfn, "forgotten"), None);
    assert_eq!(read(&*engine, &fqfn, "rewritten"), Some(StateValue::Bytes(b"again".to_vec())));
    assert_eq!(read(&*engine, &fqfn, "lasting"), Some(StateValue::Bytes(b"kept".to_vec())));
    // An increment of a counter that expired starts it afresh.
    let consumer = consumer(&*engine, "more-logins", 1);
    commit(&*consumer, &fqfn, &[("counted", Change::Add(2, Some(HOUR_MS)))]);
    assert_eq!(read(&*engine, &fqfn, "counted"), Some(StateValue::Counter(2)));
    engine.clock().advance(HOUR);
    assert_eq!(read(&*engine, &fqfn, "rewritten"), None, "its second hour is over too");
}

pub(super) fn state_keys_are_listed_in_pages_by_prefix_without_expired_or_host_keys(rig: &dyn Rig) {
    let engine = rig.open();
    let fqfn = Fqfn::new("acme", "web", "carts").unwrap();
    let consumer = consumer(&*engine, "carts", 2);
    let put = |ttl| Change::Put(b"v".to_vec(), ttl);
    let mut changes: Vec<(String, Change)> = (1..=5).map(|index| (format!("cart/{index}"), put(None))).collect();
    changes.extend([
        ("cart/9-expiring".to_owned(), put(Some(1_000))),
        ("user/1".to_owned(), put(None)),
        ("\0window records".to_owned(), put(None)),
        ("cart/3-deleted".to_owned(), put(None)),
    ]);
    let changes: Vec<(&str, Change)> = changes.iter().map(|(key, change)| (key.as_str(), change.clone())).collect();
    commit(&*consumer, &fqfn, &changes);
    commit(&*consumer, &fqfn, &[("cart/3-deleted", Change::Delete)]);
    engine.clock().advance(Duration::from_secs(2));
    let table = engine.table(&fqfn).unwrap();
    let page = |prefix: &str, after: Option<&str>, limit| {
        table.list(&KeyPage::new(prefix.into(), after.map(Into::into), limit).unwrap()).unwrap()
    };
    assert_eq!(page("cart/", None, 2), ["cart/1", "cart/2"]);
    assert_eq!(page("cart/", Some("cart/2"), 2), ["cart/3", "cart/4"]);
    assert_eq!(
        page("cart/", Some("cart/4"), 2),
        ["cart/5"],
        "the last page is short; expired and deleted keys are not listed"
    );
    assert_eq!(page("", None, 100), ["cart/1", "cart/2", "cart/3", "cart/4", "cart/5", "user/1"], "no host key");
    assert_eq!(page("user/", Some("user/1"), 10), Vec::<String>::new());
    assert_eq!(page("nothing", None, 10), Vec::<String>::new());
    assert!(KeyPage::new("\0".into(), None, 10).is_err(), "the host's keys cannot be listed");
    assert!(KeyPage::new(String::new(), None, 1_001).is_err(), "MAX_STATE_KEYS_LISTED");
    assert!(KeyPage::new("k".repeat(1_025), None, 10).is_err(), "MAX_STATE_KEY_LEN");
    // Another function's table lists nothing of this one's.
    let other = Fqfn::new("other", "web", "carts").unwrap();
    assert_eq!(
        engine.table(&other).unwrap().list(&KeyPage::new(String::new(), None, 10).unwrap()).unwrap(),
        Vec::<String>::new()
    );
}
