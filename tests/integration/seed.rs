//! The seed's scenario, end to end, and the example functions.

use crate::support::{Fnhost, number_value};

pub const SEED_EVENTS: [&str; 4] = [
    r#"{"user_id": "user123", "event_type": "login", "timestamp": 1678886400}"#,
    r#"{"user_id": "user456", "event_type": "click", "timestamp": 1678886410}"#,
    r#"{"user_id": "user123", "event_type": "logout", "timestamp": 1678886420}"#,
    r#"{"user_id": "user123", "event_type": "login", "timestamp": 1678886500}"#,
];

#[test]
fn the_seed_scenario_logs_the_session_and_publishes_its_duration() {
    let fnhost = Fnhost::new();
    fnhost.produce("input-topic", &SEED_EVENTS);
    let stdout = fnhost.localrun(
        "session-duration",
        "session-duration-calculator",
        "persistent://public/default/input-topic",
        &["--output", "sessions"],
    );
    let logs: Vec<&str> = stdout.lines().filter(|line| line.contains("[session-duration-calculator]")).collect();
    assert_eq!(
        logs,
        [
            "INFO [session-duration-calculator] User user123 logged in at 1678886400",
            "INFO [session-duration-calculator] User user123 session duration: 20 seconds",
            "INFO [session-duration-calculator] User user123 logged in at 1678886500",
        ],
        "user456's click is ignored:\n{stdout}"
    );
    assert!(stdout.contains("processed 4 messages: 4 succeeded"), "{stdout}");
    assert_eq!(fnhost.consume("sessions"), [r#"{"user_id":"user123","duration":20}"#]);
}

#[test]
fn malformed_session_events_are_warned_about_and_skipped() {
    let fnhost = Fnhost::new();
    let cases = [
        ("not json", "WARN [sd] Skipping malformed record: not json"),
        (r#"{"user_id": "u1"}"#, r#"WARN [sd] Skipping malformed record: {"user_id": "u1"}"#),
        (
            r#"{"user_id": "u2", "event_type": "logout", "timestamp": 5}"#,
            "WARN [sd] User u2 logged out without a prior login.",
        ),
    ];
    fnhost.produce("events", &cases.map(|(event, _)| event));
    let stdout = fnhost.localrun("session-duration", "sd", "events", &["--output", "sessions"]);
    for (event, warning) in cases {
        assert!(stdout.lines().any(|line| line == warning), "{event}:\n{stdout}");
    }
    assert!(stdout.contains("3 succeeded, 0 user exceptions"), "{stdout}");
    assert!(fnhost.consume("sessions").is_empty());
}

#[test]
fn state_survives_a_restart_and_querystate_sees_it_in_between() {
    let fnhost = Fnhost::new();
    fnhost.produce("input-topic", &[SEED_EVENTS[0]]);
    fnhost.localrun("session-duration", "sd", "input-topic", &["--output", "sessions"]);

    let state = fnhost.ok(&["functions", "querystate", "--fqfn", "public/default/sd", "--key", "user123"]);
    let json: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(json["key"], "user123");
    assert_eq!(json["stringValue"], "1678886400");
    assert!(json["version"].is_u64(), "{json}");

    fnhost.produce("input-topic", &[SEED_EVENTS[2]]);
    let stdout = fnhost.localrun("session-duration", "sd", "input-topic", &["--output", "sessions"]);
    assert!(stdout.contains("processed 1 messages"), "only the new message is delivered:\n{stdout}");
    assert!(stdout.contains("User user123 session duration: 20 seconds"), "{stdout}");
    assert_eq!(fnhost.consume("sessions"), [r#"{"user_id":"user123","duration":20}"#]);

    let missing = fnhost.fails(&["functions", "querystate", "--fqfn", "public/default/sd", "--key", "user123"]);
    assert!(missing.contains("has no state under key `user123`"), "{missing}");
}

#[test]
fn exclamation_appends_to_every_message_in_order() {
    let fnhost = Fnhost::new();
    let words: Vec<String> = (0..2_500).map(|i| format!("word{i}")).collect();
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    fnhost.produce("words", &refs);
    fnhost.localrun("exclamation", "exclamation", "words", &["--output", "excited"]);
    let expected: Vec<String> = words.iter().map(|w| format!("{w}!")).collect();
    assert_eq!(fnhost.consume("excited"), expected);
}

#[test]
fn word_count_keeps_counters_that_querystate_reports_as_numbers() {
    let fnhost = Fnhost::new();
    fnhost.produce("sentences", &["the quick fox", "the lazy dog", "The end"]);
    let stdout = fnhost.localrun("word-count", "word-count", "sentences", &[]);
    assert!(stdout.contains("metric words: count 3, sum 8"), "{stdout}");
    for (word, count) in [("the", 2), ("fox", 1), ("The", 1)] {
        assert_eq!(number_value(&fnhost, "public/default/word-count", word), count, "{word}");
    }
}

#[test]
fn a_log_topic_receives_the_function_log_lines() {
    let fnhost = Fnhost::new();
    fnhost.produce("input-topic", &SEED_EVENTS);
    fnhost.localrun("session-duration", "sd", "input-topic", &["--log-topic", "sd-logs", "--log-level", "info"]);
    let logs = fnhost.consume("sd-logs");
    assert_eq!(logs.len(), 3, "{logs:?}");
    assert_eq!(logs[1], "User user123 session duration: 20 seconds");
}

#[test]
fn a_second_start_loads_the_compiled_component_from_the_cache() {
    let fnhost = Fnhost::new();
    let cache = tempfile::tempdir().unwrap();
    let wasm = crate::support::guest("exclamation");
    let args = ["localrun", "--wasm", wasm.to_str().unwrap(), "--name", "ex", "--inputs", "in", "--until-idle"];
    let run = || {
        let output = fnhost.command(&args).env("FNHOST_CACHE_DIR", cache.path()).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let first = run();
    assert!(first.contains(" compiled "), "{first}");
    let second = run();
    assert!(second.contains("from the compiled-component cache"), "{second}");
    let recompiled = second.lines().any(|line| line.contains(" compiled ") && line.ends_with(" ms"));
    assert!(!recompiled, "the second start compiled again:\n{second}");
    let cached: Vec<_> = std::fs::read_dir(cache.path().join("compiled")).unwrap().collect();
    assert_eq!(cached.len(), 1, "one compiled component in FNHOST_CACHE_DIR/compiled");
}
