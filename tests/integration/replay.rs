//! A function's history (issue 30): replay of a message or a range on the state it saw, with the
//! function's code or new code; state read as of a message; and who wrote a value.

use serde_json::json;

use crate::seed::SEED_EVENTS;
use fnhost_test_support::Nats;

use crate::support::{Fnhost, Worker, guest, workspace};
use crate::worker::{SD, counter, create, create_session_duration, produce, wait_until_processed};

/// The state values of `querystate`, without their version, which replays do not have.
fn without_version(mut state: serde_json::Value) -> serde_json::Value {
    state.as_object_mut().unwrap().remove("version");
    state
}

#[test]
fn replaying_the_seeds_logout_shows_its_output_log_and_state_change_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::start(dir.path());
    create_session_duration(&worker, &[]);
    produce(&worker, "events", &SEED_EVENTS);
    wait_until_processed(&worker, SD, 4);
    let state_now = worker.ok(&["functions", "querystate", "--fqfn", SD, "-k", "user123"]);
    assert_eq!(state_now["stringValue"], "1678886500", "the second login");

    let replayed = worker.ok(&["functions", "replay", "--fqfn", SD, "--message", "2", "--json"]);
    assert_eq!(replayed["stateBefore"], "history", "{replayed}");
    let logout = &replayed["messages"][0];
    assert_eq!(logout["messageId"], "2");
    assert_eq!(logout["output"], r#"{"user_id":"user123","duration":20}"#, "{replayed}");
    assert_eq!(logout["logs"], json!([{"level": "INFO", "line": "User user123 session duration: 20 seconds"}]));
    assert_eq!(
        logout["state"],
        json!([{"key": "user123", "before": {"key": "user123", "stringValue": "1678886400"}, "after": null}])
    );
    assert!(logout.get("exception").is_none(), "{logout}");
    let summary = worker.cli(&["functions", "replay", "--fqfn", SD, "--message", "2"]);
    assert!(summary.success, "{}", summary.stderr);
    for line in [
        r#"  output: {"user_id":"user123","duration":20}"#,
        "  log INFO: User user123 session duration: 20 seconds",
        r#"  state user123: "1678886400" → (deleted)"#,
    ] {
        assert!(summary.stdout.lines().any(|printed| printed == line), "{line}:\n{}", summary.stdout);
    }

    // Nothing was committed: the state and the output topic are as they were.
    assert_eq!(worker.ok(&["functions", "querystate", "--fqfn", SD, "-k", "user123"]), state_now);
    let sessions = worker.ok(&["topics", "stats", "sessions"]);
    assert_eq!(sessions["msgInCounter"], 1, "{sessions}");

    // The value just before each message, and who wrote the current one.
    let as_of =
        |message: &str| worker.cli(&["functions", "querystate", "--fqfn", SD, "-k", "user123", "--as-of", message]);
    for (message, value) in [("1", Some("1678886400")), ("2", Some("1678886400")), ("3", None), ("0", None)] {
        let run = as_of(message);
        match value {
            Some(value) => {
                let state: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
                assert_eq!(state["stringValue"], value, "as of {message}: {state}");
            }
            None => {
                assert!(run.stderr.contains("had no state under key `user123` then"), "as of {message}: {}", run.stderr)
            }
        }
    }
    let why = worker.ok(&["functions", "querystate", "--fqfn", SD, "-k", "user123", "--why"]);
    assert_eq!(why["writtenBy"], "function", "{why}");
    assert_eq!(why["messageId"], "3", "{why}");
    assert_eq!(why["topic"], "persistent://public/default/events", "{why}");
    assert_eq!(why["instanceId"], 0, "{why}");
    assert!(why["codeDigest"].as_str().is_some_and(|digest| digest.len() == 64), "{why}");

    // As of a time: the commit that last wrote the key counts from its own time on.
    let committed = why["time"].as_u64().unwrap();
    let at = |time: u64| format!("@{time}");
    let then = worker.ok(&["functions", "querystate", "--fqfn", SD, "-k", "user123", "--as-of", &at(committed)]);
    assert_eq!(then["stringValue"], "1678886500", "{then}");
    let run = as_of(&at(committed - 1));
    let before: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_default();
    assert_ne!(
        before["stringValue"], "1678886500",
        "the second login was not committed yet: {}{}",
        run.stdout, run.stderr
    );
}

/// Deterministic positions spread over 1..=999: the test is the same on every run.
fn positions(count: usize) -> Vec<u64> {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    (0..count)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            1 + seed % 999
        })
        .collect()
}

/// The id of message `n` (from 0) of a topic: its position, as the embedded engine numbers them.
fn embedded_id(n: u64) -> String {
    n.to_string()
}

/// The id of the `n`th message (from 0) that `topic` still keeps, as the worker's engine numbers them.
fn message_id(worker: &Worker, topic: &str, n: u64) -> String {
    let position = (n + 1).to_string();
    let message = worker.ok(&["topics", "examine-message", topic, "--initialPosition", "earliest", "-m", &position]);
    message["messageId"].as_str().expect("a message id").to_owned()
}

/// The counter `tick` just before message `position` of `fqfn`'s ticks, read with `--as-of`.
fn ticks_before(worker: &Worker, fqfn: &str, id: &str) -> serde_json::Value {
    worker.ok(&["functions", "querystate", "--fqfn", fqfn, "-k", "tick", "--as-of", id])
}

/// Replays and reads as of messages of the 1,000 ticks of `fqfn` that came after `first` others;
/// `id` names tick `n` (from 0).
fn assert_counter_history(worker: &Worker, fqfn: &str, first: u64, id: &dyn Fn(u64) -> String) {
    let replayed = worker.ok(&["functions", "replay", "--fqfn", fqfn, "--message", &id(first + 500), "--json"]);
    let tick = |count: u64| json!({"key": "tick", "numberValue": count});
    let (at, next) = (tick(first + 500), tick(first + 501));
    assert_eq!(replayed["messages"][0]["state"], json!([{"key": "tick", "before": at, "after": next}]));
    for position in positions(20) {
        let message = id(first + position);
        let state = ticks_before(worker, fqfn, &message);
        assert_eq!(state["numberValue"], first + position, "just before message {position}");
        let replayed = worker.ok(&["functions", "replay", "--fqfn", fqfn, "--message", &message, "--json"]);
        let before = without_version(state);
        assert_eq!(replayed["messages"][0]["state"][0]["before"], before, "replay and --as-of agree at {position}");
    }
    if first == 0 {
        let first = worker.fails(&["functions", "querystate", "--fqfn", fqfn, "-k", "tick", "--as-of", &id(0)]);
        assert!(first.contains("had no state under key `tick` then"), "{first}");
    }
    // A range sees its own changes: three ticks from 500 end at 503.
    let range = format!("{}..{}", id(first + 500), id(first + 502));
    let range = worker.ok(&["functions", "replay", "--fqfn", fqfn, "--range", &range, "--json"]);
    let afters: Vec<&serde_json::Value> =
        range["messages"].as_array().unwrap().iter().map(|message| &message["state"][0]["after"]).collect();
    assert_eq!(afters, [&tick(first + 501), &tick(first + 502), &tick(first + 503)], "{range}");
}

#[test]
fn a_counter_replayed_or_read_as_of_any_message_sees_exactly_the_ones_before_it_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fqfn = "public/default/ticks";
    let worker = Worker::start(dir.path());
    // Batches of 64 put most positions in the middle of a batch.
    create(&worker, "word-count", fqfn, "ticks", &["--batch-size", "64"]);
    let file = dir.path().with_extension("ticks.txt");
    std::fs::write(&file, "tick\n".repeat(1000)).unwrap();
    assert!(worker.cli(&["topics", "produce", "ticks", "--file", file.to_str().unwrap()]).success);
    worker.wait_for("1000 ticks", || counter(&worker, fqfn, "tick") == Some(1000));
    assert_counter_history(&worker, fqfn, 0, &embedded_id);
    assert!(worker.terminate(), "the worker stops on SIGTERM");
    let worker = Worker::start(dir.path());
    assert_counter_history(&worker, fqfn, 0, &embedded_id);
    assert_eq!(counter(&worker, fqfn, "tick"), Some(1000), "replays changed nothing");
}

#[test]
fn replay_with_new_code_shows_what_the_new_code_would_do() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::start(dir.path());
    let fqfn = "public/default/exclamation";
    create(&worker, "exclamation", fqfn, "words", &["-o", "excited"]);
    produce(&worker, "words", &["hello"]);
    wait_until_processed(&worker, fqfn, 1);
    let own = worker.ok(&["functions", "replay", "--fqfn", fqfn, "--message", "0", "--json"]);
    assert_eq!(own["messages"][0]["output"], "hello!", "{own}");
    let question = workspace().join("tests/guests/js/question.js");
    let new = worker.ok(&[
        "functions",
        "replay",
        "--fqfn",
        fqfn,
        "--message",
        "0",
        "--js",
        question.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(new["messages"][0]["output"], "hello?", "{new}");
    assert_ne!(new["codeDigest"], own["codeDigest"]);
    assert_eq!(worker.read("excited", 1), ["hello!"], "the replay published nothing");
}

#[test]
fn replay_refuses_unknown_messages_and_bad_ranges_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::start(dir.path());
    create_session_duration(&worker, &[]);
    produce(&worker, "events", &SEED_EVENTS);
    wait_until_processed(&worker, SD, 4);
    let cases: [(&[&str], &str); 6] = [
        (&["--message", "99"], "has no message with id `99`"),
        (&["--message", "not-an-id"], "has no message with id `not-an-id`"),
        (&["--range", "3..1"], "comes before"),
        (&["--range", "0..20000"], "at most 10000 are replayed at once"),
        (&["--message", "0", "--topic", "other"], "is not an input of"),
        (&["--message", "0", "--inputs", "other"], "the other flags are for --data-dir"),
    ];
    for (extra, reason) in cases {
        let mut args = vec!["functions", "replay", "--fqfn", SD];
        args.extend(extra);
        let refused = worker.fails(&args);
        assert!(refused.contains(reason), "{extra:?}: {refused}");
    }
    let unknown = worker.fails(&["functions", "replay", "--fqfn", "public/default/nothing", "--message", "0"]);
    assert!(unknown.contains("does not exist"), "{unknown}");
}

#[test]
fn a_deterministic_function_replays_bit_exact_and_any_other_says_what_may_differ() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::start(dir.path());
    create(&worker, "misbehave", "public/default/det", "det-in", &["-o", "det-out", "--deterministic"]);
    create(&worker, "misbehave", "public/default/free", "free-in", &["-o", "free-out"]);
    produce(&worker, "det-in", &["clock-and-random", "clock-and-random"]);
    produce(&worker, "free-in", &["clock-and-random"]);
    let live = worker.read("det-out", 2);
    let published = worker.ok(&["topics", "examine-message", "det-in", "--initial-position", "earliest"]);
    let expected_time = format!("time {} ", published["publishTime"]);
    assert!(live[0].starts_with(&expected_time), "the wall clock reads the publish time: {live:?} {published}");
    assert_ne!(live[0], live[1], "each message has its own random number");
    for (message, first_run) in live.iter().enumerate() {
        for _ in 0..2 {
            let replayed = worker.ok(&[
                "functions",
                "replay",
                "--fqfn",
                "public/default/det",
                "--message",
                &message.to_string(),
                "--json",
            ]);
            assert_eq!(replayed["deterministic"], true);
            let message = &replayed["messages"][0];
            assert_eq!(message["output"], first_run.as_str(), "{replayed}");
            assert_eq!(message["logs"][0]["line"], first_run.as_str(), "{replayed}");
            assert_eq!(message["mayDiffer"], json!([]), "{replayed}");
        }
    }

    worker.read("free-out", 1);
    let replayed = worker.ok(&["functions", "replay", "--fqfn", "public/default/free", "--message", "0", "--json"]);
    assert_eq!(replayed["deterministic"], false);
    assert_eq!(replayed["messages"][0]["mayDiffer"], json!(["clock", "random"]), "{replayed}");
    let summary = worker.cli(&["functions", "replay", "--fqfn", "public/default/free", "--message", "0"]);
    assert!(
        summary.stdout.contains("may differ from the first run: it read the clock and random"),
        "{}",
        summary.stdout
    );
}

/// `count` messages that fail the first time an instance of misbehave sees them.
fn fail_once(count: usize) -> Vec<String> {
    (0..count).map(|n| format!("fail-once:{n}")).collect()
}

/// Messages appended to `topic` (0 until it exists).
fn topic_count(worker: &Worker, topic: &str) -> u64 {
    let run = worker.cli(&["topics", "stats", topic]);
    let stats: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_default();
    stats["msgInCounter"].as_u64().unwrap_or(0)
}

#[test]
fn redrive_sends_dead_letters_back_in_order_once_with_filters_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    assert_redrive(&Worker::start(dir.path()));
}

/// Dead letters of a function that fails on a marker, re-driven before and after a fix. The
/// dead-letter topic must keep acknowledged letters for a while: the embedded engine frees them a
/// segment at a time, and NATS as the namespace's retention says.
fn assert_redrive(worker: &Worker) {
    let fqfn = "public/default/fixme";
    create(worker, "misbehave", fqfn, "orders", &["-o", "done", "--max-message-retries", "0"]);
    let letters = fail_once(6);
    produce(worker, "orders", &letters.iter().map(String::as_str).collect::<Vec<_>>());
    // Counted by message, which both engines number (NATS's topic stats count entries).
    let letters_kept = |count: usize| {
        let at = count.to_string();
        worker.cli(&["topics", "examine-message", "fixme-DLQ", "--initialPosition", "earliest", "-m", &at]).success
    };
    worker.wait_for("six dead letters", || letters_kept(6));
    assert!(!letters_kept(7));

    // Without a fix every one fails again and goes back to the end of the dead-letter topic.
    let again = worker.ok(&["functions", "redrive", "--fqfn", fqfn]);
    assert_eq!((again["processed"].as_u64(), again["deadLetteredAgain"].as_u64()), (Some(6), Some(6)), "{again}");
    assert!(letters_kept(12), "the six went back to the dead-letter topic");
    let none = worker.ok(&["functions", "redrive", "--fqfn", fqfn, "--where-error", "^no such reason$"]);
    assert_eq!((none["processed"].as_u64(), none["left"].as_u64()), (Some(0), Some(6)), "{none}");

    // Fixed: the exclamation function takes every message.
    let fixed = guest("exclamation");
    worker.ok(&["functions", "update", "--fqfn", fqfn, "--wasm", fixed.to_str().unwrap()]);
    let two = worker.ok(&["functions", "redrive", "--fqfn", fqfn, "--where-error", "failed once", "--limit", "2"]);
    assert_eq!(
        (two["processed"].as_u64(), two["succeeded"].as_u64(), two["left"].as_u64()),
        (Some(2), Some(2), Some(4))
    );
    let rest = worker.ok(&["functions", "redrive", "--fqfn", fqfn]);
    assert_eq!(
        (rest["processed"].as_u64(), rest["succeeded"].as_u64(), rest["left"].as_u64()),
        (Some(4), Some(4), Some(0))
    );
    let expected: Vec<String> = letters.iter().map(|letter| format!("{letter}!")).collect();
    assert_eq!(worker.read("done", 6), expected, "every dead letter once, in order");
    let empty = worker.ok(&["functions", "redrive", "--fqfn", fqfn]);
    assert_eq!(empty["processed"], 0, "the dead-letter topic is empty: {empty}");

    let refusals: [(&[&str], &str); 3] = [
        (&["--where-error", "("], "not a regular expression"),
        (&["--from-dlq", "persistent://other/ns/letters"], "belongs to tenant `other`"),
        (&["--where-error", &"a".repeat(2000)], "MAX_REDRIVE_PATTERN_LEN"),
    ];
    for (extra, reason) in refusals {
        let mut args = vec!["functions", "redrive", "--fqfn", fqfn];
        args.extend(extra);
        let refused = worker.fails(&args);
        assert!(refused.contains(reason), "{extra:?}: {refused}");
    }
}

/// Produces 1,000 ticks to `ticks` and waits until the counter `fqfn` reaches `total`.
fn produce_ticks(worker: &Worker, dir: &std::path::Path, fqfn: &str, total: i64) {
    let file = dir.join("ticks.txt");
    std::fs::write(&file, "tick\n".repeat(1000)).unwrap();
    assert!(worker.cli(&["topics", "produce", "ticks", "--file", file.to_str().unwrap()]).success);
    worker.wait_for("1000 ticks", || counter(worker, fqfn, "tick") == Some(total));
}

#[test]
fn in_cluster_mode_replay_as_of_why_and_redrive_read_jetstreams_history() {
    let nats = Nats::start(1);
    let dir = tempfile::tempdir().unwrap();
    let cluster = ["--cluster", &nats.urls(), "--worker-id", "w0"];
    let worker = Worker::start_with(dir.path(), &cluster);
    let fqfn = "public/default/ticks";
    create(&worker, "word-count", fqfn, "ticks", &["--batch-size", "64"]);
    produce_ticks(&worker, dir.path(), fqfn, 1000);
    let first_ids: Vec<String> = [0, 500, 999].into_iter().map(|n| message_id(&worker, "ticks", n)).collect();
    let why = worker.ok(&["functions", "querystate", "--fqfn", fqfn, "-k", "tick", "--why"]);
    assert_eq!(why["messageId"], first_ids[2], "the last tick wrote it: {why}");
    assert_eq!(why["topic"], "persistent://public/default/ticks", "{why}");
    // Without retention the leader frees the acknowledged input: the state as of a message is
    // still known from the function's history, but a replay needs the message.
    worker.wait_for("the acknowledged ticks freed", || {
        !worker.cli(&["topics", "examine-message", "ticks", "--initialPosition", "earliest"]).success
    });
    assert_eq!(ticks_before(&worker, fqfn, &first_ids[1])["numberValue"], 500);
    assert_eq!(ticks_before(&worker, fqfn, &first_ids[2])["numberValue"], 999);
    let freed = worker.fails(&["functions", "replay", "--fqfn", fqfn, "--message", &first_ids[1]]);
    assert!(freed.contains("is no longer kept") && freed.contains("set-retention"), "{freed}");

    // With retention the input stays, and replays work on the next thousand.
    let retention = ["namespaces", "set-retention", "public/default", "--time", "-1", "--size", "-1"];
    assert!(worker.cli(&retention).success);
    produce_ticks(&worker, dir.path(), fqfn, 2000);
    let ids: std::collections::HashMap<u64, String> =
        [500, 501, 502].into_iter().chain(positions(20)).map(|n| (1000 + n, message_id(&worker, "ticks", n))).collect();
    let id = |n: u64| ids[&n].clone();
    assert_counter_history(&worker, fqfn, 1000, &id);

    // Another worker process reads the same history.
    assert!(worker.terminate(), "the worker stops on SIGTERM");
    let worker = Worker::start_with(dir.path(), &cluster);
    assert_counter_history(&worker, fqfn, 1000, &id);
    assert_eq!(ticks_before(&worker, fqfn, &first_ids[1])["numberValue"], 500);
    assert_eq!(counter(&worker, fqfn, "tick"), Some(2000), "replays changed nothing");
    assert_redrive(&worker);
}

#[test]
fn a_redrive_killed_with_sigkill_and_run_again_gives_every_output_exactly_once() {
    const LETTERS: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::start(dir.path());
    let fqfn = "public/default/eo";
    let flags = ["-o", "out", "--max-message-retries", "0", "--processing-guarantees", "EFFECTIVELY_ONCE"];
    create(&worker, "misbehave", fqfn, "in", &[&flags[..], &["--batch-size", "16"]].concat());
    let file = dir.path().with_extension("letters.txt");
    std::fs::write(&file, fail_once(LETTERS).join("\n") + "\n").unwrap();
    assert!(worker.cli(&["topics", "produce", "in", "--file", file.to_str().unwrap()]).success);
    worker.wait_for("every message dead-lettered", || topic_count(&worker, "eo-DLQ") == LETTERS as u64);
    let fixed = guest("exclamation");
    worker.ok(&["functions", "update", "--fqfn", fqfn, "--wasm", fixed.to_str().unwrap()]);

    let redrive = std::process::Command::new(env!("CARGO_BIN_EXE_fnhost"))
        .args(["functions", "redrive", "--fqfn", fqfn, "--url", &worker.url])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    worker.wait_for("the re-drive under way", || topic_count(&worker, "out") > 0);
    worker.kill();
    let mut redrive = redrive;
    redrive.wait().unwrap();

    let worker = Worker::start(dir.path());
    let rest = worker.ok(&["functions", "redrive", "--fqfn", fqfn]);
    assert_eq!(rest["deadLetteredAgain"], 0, "{rest}");
    let out = worker.read("out", LETTERS);
    let expected: Vec<String> = fail_once(LETTERS).into_iter().map(|letter| letter + "!").collect();
    assert_eq!(out.len(), LETTERS, "no output lost or doubled across the kill");
    assert_eq!(out, expected, "in order");
    assert_eq!(worker.ok(&["functions", "redrive", "--fqfn", fqfn])["processed"], 0);
}

#[test]
fn a_stopped_localruns_data_directory_replays_offline() {
    let fnhost = Fnhost::new();
    fnhost.produce("input-topic", &SEED_EVENTS);
    fnhost.localrun("session-duration", "sd", "input-topic", &["--output", "sessions"]);
    let wasm = guest("session-duration");
    let function =
        ["--wasm", wasm.to_str().unwrap(), "--name", "sd", "--inputs", "input-topic", "--output", "sessions"];
    let mut args = vec!["functions", "replay", "--message", "2", "--json"];
    args.extend(function);
    let replayed: serde_json::Value = serde_json::from_str(&fnhost.ok(&args)).unwrap();
    assert_eq!(replayed["stateBefore"], "history", "{replayed}");
    assert_eq!(replayed["messages"][0]["output"], r#"{"user_id":"user123","duration":20}"#, "{replayed}");
    assert_eq!(replayed["messages"][0]["state"][0]["after"], serde_json::Value::Null, "{replayed}");
    assert_eq!(fnhost.consume("sessions"), [r#"{"user_id":"user123","duration":20}"#], "nothing was published");
}
