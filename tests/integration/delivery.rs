//! Delivery semantics: subscription types under parallelism, MANUAL acknowledgement, retries and
//! the dead-letter topic, several inputs and topic patterns.

use std::collections::{BTreeMap, BTreeSet};

use crate::support::Fnhost;

/// `instance:text` outputs of the misbehave guest's `whoami:` command, split.
fn by_instance(outputs: &[String]) -> Vec<(u32, String)> {
    outputs
        .iter()
        .map(|line| {
            let (instance, text) = line.split_once(':').unwrap();
            (instance.parse().unwrap(), text.to_owned())
        })
        .collect()
}

#[test]
fn key_shared_instances_keep_each_keys_messages_in_order_on_one_instance() {
    let fnhost = Fnhost::new();
    let messages: Vec<(String, String)> =
        (0..2_000).map(|i| (format!("key{}", i % 100), format!("whoami:key{}:{i}", i % 100))).collect();
    fnhost.produce_keyed("events", &messages);
    let flags = ["--output", "out", "--parallelism", "4", "--retain-key-ordering", "--batch-size", "64"];
    let stdout = fnhost.localrun("misbehave", "keyed", "events", &flags);
    assert!(stdout.contains("processed 2000 messages: 2000 succeeded"), "{stdout}");
    let outputs = by_instance(&fnhost.consume("out"));
    assert_eq!(outputs.len(), messages.len());
    let mut owner: BTreeMap<String, u32> = BTreeMap::new();
    let mut last: BTreeMap<String, u32> = BTreeMap::new();
    for (instance, text) in &outputs {
        let (key, index) = text.split_once(':').unwrap();
        let index: u32 = index.parse().unwrap();
        assert_eq!(*owner.entry(key.into()).or_insert(*instance), *instance, "{key} moved between instances");
        if let Some(before) = last.insert(key.into(), index) {
            assert!(before < index, "{key}: {index} came after {before}");
        }
    }
    assert_eq!(owner.len(), 100);
    let instances: BTreeSet<u32> = owner.values().copied().collect();
    assert!(instances.len() > 1, "keys were spread over the instances: {instances:?}");
    for line in stdout.lines().filter(|line| line.starts_with("instance ")) {
        assert!(line.contains("0 user exceptions"), "{line}");
    }
}

#[test]
fn shared_instances_split_the_work_and_failover_keeps_one_instance_in_order() {
    let messages: Vec<String> = (0..400).map(|i| format!("whoami:{i}")).collect();
    let messages: Vec<&str> = messages.iter().map(String::as_str).collect();
    // Small batches: each instance waits for a commit every other batch, so both are at work at once.
    for (flags, one_instance) in [
        (vec!["--parallelism", "2", "--batch-size", "10"], false),
        (vec!["--parallelism", "2", "--batch-size", "50", "--retain-ordering"], true),
        (vec!["--parallelism", "2", "--batch-size", "50", "--processing-guarantees", "EFFECTIVELY_ONCE"], true),
    ] {
        let fnhost = Fnhost::new();
        fnhost.produce("in", &messages);
        let mut args = vec!["--output", "out"];
        args.extend(&flags);
        fnhost.localrun("misbehave", "f", "in", &args);
        let outputs = by_instance(&fnhost.consume("out"));
        let indexes: BTreeSet<u32> = outputs.iter().map(|(_, text)| text.parse().unwrap()).collect();
        assert_eq!((outputs.len(), indexes.len()), (400, 400), "{flags:?}: each message once");
        let instances: BTreeSet<u32> = outputs.iter().map(|(instance, _)| *instance).collect();
        if one_instance {
            assert_eq!(instances.len(), 1, "{flags:?}: one active instance");
            let order: Vec<u32> = outputs.iter().map(|(_, text)| text.parse().unwrap()).collect();
            assert!(order.windows(2).all(|pair| pair[0] < pair[1]), "{flags:?}: in input order");
        } else {
            assert_eq!(instances.len(), 2, "{flags:?}: both instances took part");
        }
    }
}

#[test]
fn manual_acknowledgement_redelivers_only_what_was_not_acknowledged() {
    let fnhost = Fnhost::new();
    fnhost.produce("in", &["a", "noack:b", "c"]);
    let flags = [
        "--output",
        "out",
        "--processing-guarantees",
        "MANUAL",
        // Long enough that a busy machine acknowledges `a` and `c` before it: only `b` comes back.
        "--ack-timeout-ms",
        "2000",
        "--max-message-retries",
        "2",
    ];
    let stdout = fnhost.localrun("misbehave", "manual", "in", &flags);
    assert!(stdout.contains("processed 6 messages: 5 succeeded"), "{stdout}");
    let mut outputs = fnhost.consume("out");
    outputs.sort();
    assert_eq!(outputs, ["ok:a", "ok:c", "ok:noack:b", "ok:noack:b", "ok:noack:b"], "b came back twice");
    let dead = fnhost.consume_json("manual-DLQ");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["value"], "noack:b");
    let error = dead[0]["properties"]["ERROR"].as_str().unwrap();
    assert!(error.contains("not acknowledged after 3 deliveries"), "{error}");
    // Acknowledged and dead-lettered messages are done: a second run receives nothing.
    let again = fnhost.localrun("misbehave", "manual", "in", &flags);
    assert!(again.contains("processed 0 messages"), "{again}");
}

#[test]
fn failing_messages_are_retried_then_dead_lettered_and_the_rest_go_through() {
    // With and without --dead-letter-topic (the default is NAME-DLQ), under each guarantee.
    for (guarantee, dead_letter_flag, dead_letter_topic) in [
        ("ATLEAST_ONCE", Some("dead"), "dead"),
        ("ATLEAST_ONCE", None, "retrying-DLQ"),
        ("EFFECTIVELY_ONCE", Some("dead"), "dead"),
        ("ATMOST_ONCE", None, "retrying-DLQ"),
        ("MANUAL", Some("dead"), "dead"),
    ] {
        let fnhost = Fnhost::new();
        // Three failures of each kind: a user exception, a trap and the memory limit. (Not the time
        // limit: a limit short enough to keep this test quick could trip on `a` on a busy machine.)
        fnhost.produce("in", &["a", "fail", "b", "trap", "c", "alloc", "d"]);
        let mut flags =
            vec!["--output", "out", "--max-message-retries", "2", "--ram", "32M", "--processing-guarantees", guarantee];
        if let Some(topic) = dead_letter_flag {
            flags.extend(["--dead-letter-topic", topic]);
        }
        let stdout = fnhost.localrun("misbehave", "retrying", "in", &flags);
        let context = format!("{guarantee} {dead_letter_flag:?}");
        assert!(
            stdout.contains(
                "processed 7 messages: 4 succeeded, 3 user exceptions, 6 system exceptions, 6 restarts, 3 dead-lettered"
            ),
            "{context}: three tries of each failing message; a trap and the memory limit replace the instance:\n{stdout}"
        );
        let tries: Vec<&str> =
            stdout.lines().filter(|line| line.contains("from persistent://public/default/in failed")).collect();
        assert_eq!(tries.iter().filter(|line| line.contains("; trying again")).count(), 6, "{context}: {tries:#?}");
        // The trap and the memory limit are the instance's system exceptions: each makes it rest.
        let rests = tries.iter().filter(|line| line.contains("the instance rests")).count();
        assert_eq!(rests, 6, "{context}: {tries:#?}");
        assert_eq!(fnhost.consume("out"), ["ok:a", "ok:b", "ok:c", "ok:d"], "{context}");
        let dead = fnhost.consume_json(dead_letter_topic);
        let values: Vec<&str> = dead.iter().map(|letter| letter["value"].as_str().unwrap()).collect();
        assert_eq!(values, ["fail", "trap", "alloc"], "{context}");
        for (letter, (sequence, reason)) in dead.iter().zip([
            ("1", "user exception: failed as requested"),
            ("3", "boom, as requested"),
            ("5", "its limit is 33554432 bytes (--ram)"),
        ]) {
            let properties = &letter["properties"];
            assert_eq!(properties["REAL_TOPIC"], "persistent://public/default/in", "{context}");
            assert_eq!(properties["ORIGIN_MESSAGE_ID"], sequence, "{context}");
            assert!(properties["ERROR"].as_str().unwrap().contains(reason), "{context}: {letter}");
        }
    }
}

#[test]
fn several_inputs_and_topic_patterns_are_read_together() {
    let fnhost = Fnhost::new();
    fnhost.produce("in-a", &["1", "2"]);
    fnhost.produce("in-b", &["3"]);
    fnhost.produce("elsewhere", &["4"]);
    fnhost.produce("acme/orders/in-c", &["5"]);
    let wasm = crate::support::guest("exclamation");
    let run = |extra: &[&str]| {
        let mut args = vec!["localrun", "--wasm", wasm.to_str().unwrap(), "--until-idle", "--output"];
        args.extend(extra);
        fnhost.ok(&args);
    };
    let sorted = |topic: &str| {
        let mut values = fnhost.consume(topic);
        values.sort();
        values
    };
    run(&["by-name", "--name", "named", "--inputs", "in-a,elsewhere"]);
    assert_eq!(sorted("by-name"), ["1!", "2!", "4!"]);
    run(&["by-pattern", "--name", "pattern", "--topics-pattern", "in-.*"]);
    assert_eq!(sorted("by-pattern"), ["1!", "2!", "3!"], "the pattern is over the function's namespace");
    run(&["full", "--name", "full", "--topics-pattern", "persistent://acme/.*/in-.*"]);
    assert_eq!(sorted("full"), ["5!"]);
    // A topic created after the subscription is found on the next run (and, while running, on the next fetch).
    fnhost.produce("in-new", &["6"]);
    run(&["by-pattern", "--name", "pattern", "--topics-pattern", "in-.*"]);
    assert_eq!(sorted("by-pattern"), ["1!", "2!", "3!", "6!"], "only the new topic's message is new");
}
