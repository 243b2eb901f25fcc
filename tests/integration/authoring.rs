//! What function authors reach beyond messages: the log level changed while a function runs.

use crate::support::Worker;
use crate::worker::{create, produce};

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
