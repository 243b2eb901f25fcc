//! What function authors reach beyond messages: state that expires, state keys listed in pages,
//! and the log level changed while a function runs.

use crate::support::Worker;
use crate::worker::{create, create_session_duration, produce};

const LEVELS: &str = "public/default/levels";

#[test]
fn a_running_function_takes_a_new_log_level_at_its_next_message_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::start(dir.path());
    let extra = ["-o", "results", "--log-topic", "levels-log", "--log-level", "info"];
    create(&worker, "misbehave", LEVELS, "commands", &extra);
    produce(&worker, "commands", &["log-levels"]);
    assert_eq!(worker.read("results", 1), ["debug:false warn:true"]);

    worker.ok(&["functions", "update", "--fqfn", LEVELS, "--log-level", "debug"]);
    produce(&worker, "commands", &["log-levels"]);
    assert_eq!(worker.read("results", 1), ["debug:true warn:true"]);
    assert_eq!(worker.ok(&["functions", "get", "--fqfn", LEVELS])["logLevel"], "debug");

    // And back, through the REST path; a body that is not a level is refused and changes nothing.
    let path = format!("/admin/v3/functions/{LEVELS}/log-level");
    let (status, answer) = worker.http("PUT", &path, Some(("application/json", br#"{"logLevel":"loud"}"#.to_vec())));
    assert_eq!(status, 400, "{answer}");
    assert!(answer["reason"].as_str().unwrap().contains("trace, debug, info, warn or error"), "{answer}");
    let (status, answer) = worker.http("PUT", &path, Some(("application/json", br#"{"logLevel":"warn"}"#.to_vec())));
    assert_eq!(status, 200, "{answer}");
    produce(&worker, "commands", &["log-levels"]);
    assert_eq!(worker.read("results", 1), ["debug:false warn:true"]);

    // Only the message processed at debug level wrote its debug line to the log topic.
    produce(&worker, "commands", &["ok"]);
    assert_eq!(worker.read("results", 1), ["ok:ok"]);
    assert_eq!(worker.read("levels-log", 1), ["a line at debug level"]);
    let run = worker.cli(&["topics", "consume", "levels-log", "-s", "reader", "--until-idle"]);
    assert_eq!(run.stdout, "", "no other line reached the log topic");

    // The same instance processed all four: it was neither restarted nor replaced.
    let status = worker.ok(&["functions", "status", "--fqfn", LEVELS]);
    let instance = &status["instances"][0]["status"];
    assert_eq!((instance["numReceived"].as_u64(), instance["numRestarts"].as_u64()), (Some(4), Some(0)), "{status}");
}

const KEYS: &str = "public/default/keys";

#[test]
fn a_function_and_a_client_list_state_keys_in_pages_by_prefix_within_the_limits() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::start(dir.path());
    create(&worker, "misbehave", KEYS, "commands", &["-o", "results"]);
    // One batch: the listings see the puts made before them in it, not yet committed.
    let commands = [
        "put:cart/1",
        "put:cart/3",
        "put:cart/2",
        "put:user/1",
        "list:cart/",
        "list-page:2:cart/",
        "list-page:5000:",
        "put-ttl:0:cart/9",
        "put-ttl:3600000:cart/4",
        "list:",
    ];
    produce(&worker, "commands", &commands);
    let results = worker.read("results", commands.len());
    assert_eq!(results[4], "cart/1,cart/2,cart/3");
    assert_eq!(results[5], "cart/1,cart/2");
    assert!(
        results[6].starts_with("refused: limit exceeded") && results[6].contains("MAX_STATE_KEYS_LISTED"),
        "{}",
        results[6]
    );
    assert!(
        results[7].starts_with("refused: invalid argument") && results[7].contains("MAX_STATE_TTL_MS"),
        "{}",
        results[7]
    );
    assert_eq!(results[9], "cart/1,cart/2,cart/3,cart/4,user/1");

    let path = format!("/admin/v3/functions/{KEYS}/state");
    let (status, page) = worker.http("GET", &format!("{path}?prefix=cart/&limit=2"), None);
    assert_eq!((status, page.clone()), (200, serde_json::json!({"keys": ["cart/1", "cart/2"], "nextAfter": "cart/2"})));
    let (_, page) = worker.http("GET", &format!("{path}?prefix=cart/&limit=2&after=cart/2"), None);
    assert_eq!(page["keys"], serde_json::json!(["cart/3", "cart/4"]));
    let (_, page) = worker.http("GET", &format!("{path}?prefix=cart/&after=cart/4"), None);
    assert_eq!(page, serde_json::json!({"keys": []}), "past the last key: an empty page without nextAfter");
    for (query, reason) in [
        ("limit=1001", "MAX_STATE_KEYS_LISTED"),
        ("prefix=%00", "NUL"),
        ("limit=0", "from 1 to"),
        ("colour=red", "unknown field"),
    ] {
        let (status, answer) = worker.http("GET", &format!("{path}?{query}"), None);
        assert_eq!(status, 400, "{query}: {answer}");
        assert!(answer.to_string().contains(reason), "{query}: {answer}");
    }
    let (status, _) = worker.http("GET", "/admin/v3/functions/public/default/nobody/state", None);
    assert_eq!(status, 404);

    let listed = worker.ok(&["functions", "querystate", "--fqfn", KEYS, "--list", "--prefix", "cart/"]);
    assert_eq!(listed, serde_json::json!(["cart/1", "cart/2", "cart/3", "cart/4"]));
    let listed = worker.ok(&["functions", "querystate", "--fqfn", KEYS, "--list", "--limit", "3"]);
    assert_eq!(listed, serde_json::json!(["cart/1", "cart/2", "cart/3"]));
    let expiring = worker.ok(&["functions", "querystate", "--fqfn", KEYS, "-k", "cart/4"]);
    assert!(expiring["expiresAt"].as_u64().is_some(), "a value with a time to live says when it expires: {expiring}");
    let refused = worker.fails(&["functions", "querystate", "--fqfn", KEYS, "--prefix", "cart/"]);
    assert!(refused.contains("--list"), "{refused}");
}

/// The seed's events: each user logs in; `user2` also logs in again later.
fn login(user: &str, at: u64) -> String {
    format!(r#"{{"user_id": "{user}", "event_type": "login", "timestamp": {at}}}"#)
}

/// Starts a worker on `dir` (in cluster mode when `cluster` names NATS servers) whose clock
/// runs `skew_ms` ahead.
fn worker_at(dir: &std::path::Path, cluster: Option<&str>, skew_ms: u64) -> Worker {
    let flags = match cluster {
        Some(urls) => vec!["--cluster", urls, "--worker-id", "w0"],
        None => Vec::new(),
    };
    Worker::start_with_env(dir, &flags, &[("FNHOST_CLOCK_SKEW_MS", &skew_ms.to_string())])
}

fn has_state(worker: &Worker, key: &str) -> bool {
    let (status, answer) = worker.http("GET", &format!("/admin/v3/functions/{}/state/{key}", crate::worker::SD), None);
    assert!(status == 200 || status == 404, "{answer}");
    status == 200
}

#[test]
fn a_login_without_a_logout_is_forgotten_after_the_state_ttl_across_sigkill_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    forgotten_after_the_state_ttl(dir.path(), None);
}

#[test]
fn a_login_without_a_logout_is_forgotten_after_the_state_ttl_on_nats() {
    let nats = fnhost_test_support::Nats::start(1);
    let dir = tempfile::tempdir().unwrap();
    forgotten_after_the_state_ttl(dir.path(), Some(&nats.urls()));
}

/// The seed's session function under `--state-ttl 1h`, its worker killed and started again with
/// its clock moved on, on the embedded engine or on NATS.
fn forgotten_after_the_state_ttl(dir: &std::path::Path, cluster: Option<&str>) {
    const MINUTE: u64 = 60_000;
    let worker = worker_at(dir, cluster, 0);
    create_session_duration(&worker, &["--state-ttl", "1h"]);
    produce(&worker, "events", &[&login("user1", 100), &login("user2", 100)]);
    worker.wait_for("both logins committed", || has_state(&worker, "user1") && has_state(&worker, "user2"));
    worker.kill();

    // Half an hour later (by the clock the test moves), user2 logs in again.
    let worker = worker_at(dir, cluster, 30 * MINUTE);
    assert!(has_state(&worker, "user1") && has_state(&worker, "user2"));
    let expiry = |worker: &Worker| {
        worker.ok(&["functions", "querystate", "--fqfn", crate::worker::SD, "-k", "user2"])["expiresAt"]
            .as_u64()
            .unwrap()
    };
    let first_expiry = expiry(&worker);
    produce(&worker, "events", &[&login("user2", 1900)]);
    // Committed, not only processed: the expiry moved half an hour on.
    worker.wait_for("user2's new expiry", || expiry(&worker) >= first_expiry + 30 * MINUTE);
    worker.kill();

    // An hour and a minute after the first logins: user1's expired, user2's lives on.
    let worker = worker_at(dir, cluster, 61 * MINUTE);
    assert!(!has_state(&worker, "user1"), "a login without a logout is gone after the state TTL");
    assert!(has_state(&worker, "user2"), "a key written again before its expiry lives on");
    let listed = worker.ok(&["functions", "querystate", "--fqfn", crate::worker::SD, "--list"]);
    assert_eq!(listed, serde_json::json!(["user2"]));
    assert!(worker.terminate());

    // And an hour after user2's second login, it is gone too.
    let worker = worker_at(dir, cluster, 91 * MINUTE);
    assert!(!has_state(&worker, "user2"));
    let listed = worker.ok(&["functions", "querystate", "--fqfn", crate::worker::SD, "--list"]);
    assert_eq!(listed, serde_json::json!([]));
}

#[test]
fn a_component_built_against_the_previous_contract_version_still_links_and_runs() {
    // Built by the SDK of WIT 0.3.0, before put-state-ttl and list-state-keys were added (0.3.1).
    let wasm = crate::support::workspace().join("tests/integration/fixtures/word-count-wit-0.3.0.wasm");
    let bytes = std::fs::read(&wasm).unwrap();
    let imports = |version: &str| bytes.windows(version.len()).any(|window| window == version.as_bytes());
    assert!(imports("fnhost:function/context@0.3.0") && !imports("@0.3.1"), "the fixture is a 0.3.0 component");
    let fnhost = crate::support::Fnhost::new();
    fnhost.produce("words", &["one two one"]);
    fnhost.ok(&["localrun", "--wasm", wasm.to_str().unwrap(), "--name", "wc", "--inputs", "words", "--until-idle"]);
    assert_eq!(crate::support::number_value(&fnhost, "public/default/wc", "one"), 2);
    assert_eq!(crate::support::number_value(&fnhost, "public/default/wc", "two"), 1);
}
