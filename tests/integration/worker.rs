//! The function worker: its REST API and CLI, metadata that survives SIGKILL, updates under load,
//! refusals, and `/metrics`.

use std::collections::BTreeMap;

use crate::seed::SEED_EVENTS;
use crate::support::{Worker, guest};

pub const SD: &str = "public/default/sd";

pub fn create_session_duration(worker: &Worker, extra: &[&str]) -> serde_json::Value {
    let wasm = guest("session-duration");
    let mut args =
        vec!["functions", "create", "--wasm", wasm.to_str().unwrap(), "--name", "sd", "-i", "events", "-o", "sessions"];
    args.extend(extra);
    worker.ok(&args)
}

/// Creates `fqfn` from the guest `guest_name` over `input`.
pub fn create(worker: &Worker, guest_name: &str, fqfn: &str, input: &str, extra: &[&str]) -> serde_json::Value {
    let wasm = guest(guest_name);
    let mut args = vec!["functions", "create", "--wasm", wasm.to_str().unwrap(), "--fqfn", fqfn, "-i", input];
    args.extend(extra);
    worker.ok(&args)
}

/// The committed value of a counter, if the key exists yet.
pub fn counter(worker: &Worker, fqfn: &str, key: &str) -> Option<i64> {
    let run = worker.cli(&["functions", "querystate", "--fqfn", fqfn, "-k", key]);
    let state: serde_json::Value = serde_json::from_str(&run.stdout).ok()?;
    state["numberValue"].as_i64()
}

pub fn produce(worker: &Worker, topic: &str, messages: &[&str]) {
    let mut args = vec!["topics", "produce", topic];
    for message in messages {
        args.extend(["-m", message]);
    }
    let run = worker.cli(&args);
    assert!(run.success, "produce failed: {}", run.stderr);
}

fn stats(worker: &Worker, fqfn: &str) -> serde_json::Value {
    worker.ok(&["functions", "stats", "--fqfn", fqfn])
}

pub fn wait_until_processed(worker: &Worker, fqfn: &str, count: u64) {
    worker.wait_for(&format!("{fqfn} to process {count} messages"), || {
        stats(worker, fqfn)["processedSuccessfullyTotal"].as_u64() >= Some(count)
    });
}

#[test]
fn the_whole_lifecycle_over_http_and_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::start(dir.path());
    let created = create_session_duration(&worker, &["--parallelism", "2", "--retain-ordering"]);
    assert_eq!(created["name"], "sd");
    assert_eq!(worker.ok(&["functions", "list"]), serde_json::json!(["sd"]));
    assert_eq!(worker.ok(&["functions", "get", "--fqfn", SD])["parallelism"], 2);

    produce(&worker, "events", &SEED_EVENTS);
    wait_until_processed(&worker, SD, 4);
    let status = worker.ok(&["functions", "status", "--fqfn", SD]);
    assert_eq!(status["numInstances"], 2);
    assert_eq!(status["numRunning"], 2);
    let instances = status["instances"].as_array().unwrap();
    let received: u64 = instances.iter().map(|instance| instance["status"]["numReceived"].as_u64().unwrap()).sum();
    assert_eq!(received, 4);
    assert!(instances.iter().all(|instance| instance["status"]["running"] == true));
    let stats = stats(&worker, SD);
    assert_eq!(stats["receivedTotal"], 4);
    assert_eq!(stats["userExceptionsTotal"], 0);
    assert_eq!(stats["oneMin"]["receivedTotal"], 4);
    assert!(stats["lastInvocation"].as_u64().unwrap() > 0);
    assert_eq!(worker.read("sessions", 1), [r#"{"user_id":"user123","duration":20}"#]);

    // State: user123's open session, then an operator's value; counters are refused.
    let state = worker.ok(&["functions", "querystate", "--fqfn", SD, "-k", "user123"]);
    assert_eq!(state["stringValue"], "1678886500");
    let put = worker.ok(&["functions", "putstate", "--fqfn", SD, "-s", r#"{"key": "user777", "stringValue": "100"}"#]);
    assert_eq!(put["stringValue"], "100");
    let refused = worker.fails(&["functions", "putstate", "--fqfn", SD, "-s", r#"{"key": "n", "numberValue": 3}"#]);
    assert!(refused.contains("does not set counters") && refused.contains("HTTP 400"), "{refused}");
    let missing = worker.fails(&["functions", "querystate", "--fqfn", SD, "-k", "nobody"]);
    assert!(missing.contains("no state under key `nobody`") && missing.contains("HTTP 404"), "{missing}");

    // Trigger: the operator's login meets this logout.
    let output = worker.ok(&[
        "functions",
        "trigger",
        "--fqfn",
        SD,
        "--trigger-value",
        r#"{"user_id": "user777", "event_type": "logout", "timestamp": 130}"#,
    ]);
    assert_eq!(output["value"], r#"{"user_id":"user777","duration":30}"#, "{output}");
    let no_output = worker.ok(&[
        "functions",
        "trigger",
        "--fqfn",
        SD,
        "--trigger-value",
        r#"{"user_id": "u9", "event_type": "login", "timestamp": 1}"#,
    ]);
    assert_eq!(no_output["value"], serde_json::Value::Null, "a login has no output: {no_output}");

    // New code on the same subscription and state.
    let exclamation = guest("exclamation");
    worker.ok(&["functions", "update", "--fqfn", SD, "--wasm", exclamation.to_str().unwrap(), "--parallelism", "1"]);
    let output = worker.ok(&["functions", "trigger", "--fqfn", SD, "--trigger-value", "hello"]);
    assert_eq!(output["value"], "hello!");
    assert_eq!(worker.ok(&["functions", "querystate", "--fqfn", SD, "-k", "u9"])["stringValue"], "1");
    assert_eq!(worker.ok(&["functions", "status", "--fqfn", SD])["numInstances"], 1);

    // Restart, stop and start an instance.
    worker.ok(&["functions", "restart", "--fqfn", SD]);
    let instance = worker.ok(&["functions", "status", "--fqfn", SD, "--instance-id", "0"]);
    assert_eq!(instance["running"], true);
    assert_eq!(instance["numRestarts"], 1);
    worker.ok(&["functions", "stop", "--fqfn", SD, "--instance-id", "0"]);
    assert_eq!(worker.ok(&["functions", "status", "--fqfn", SD])["numRunning"], 0);
    let idle = worker.fails(&["functions", "trigger", "--fqfn", SD, "--trigger-value", "x"]);
    assert!(idle.contains("no running instance") && idle.contains("HTTP 409"), "{idle}");
    worker.ok(&["functions", "start", "--fqfn", SD, "--instance-id", "0"]);
    assert_eq!(worker.ok(&["functions", "status", "--fqfn", SD])["numRunning"], 1);
    assert_eq!(worker.ok(&["functions", "trigger", "--fqfn", SD, "--trigger-value", "again"])["value"], "again!");

    worker.ok(&["functions", "delete", "--fqfn", SD]);
    let gone = worker.fails(&["functions", "get", "--fqfn", SD]);
    assert!(gone.contains("does not exist") && gone.contains("HTTP 404"), "{gone}");
    assert_eq!(worker.ok(&["functions", "list"]), serde_json::json!([]));
    assert!(worker.terminate(), "the worker exits cleanly on SIGTERM");
}

#[test]
fn a_worker_killed_with_sigkill_comes_back_with_its_functions_and_state() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::start(dir.path());
    create(
        &worker,
        "word-count",
        "acme/web/words",
        "persistent://acme/web/sentences",
        &["--processing-guarantees", "EFFECTIVELY_ONCE"],
    );
    let sentences: Vec<String> = (0..500).map(|n| format!("tick w{}", n % 7)).collect();
    let sentences: Vec<&str> = sentences.iter().map(String::as_str).collect();
    produce(&worker, "persistent://acme/web/sentences", &sentences);
    // Stats count a batch when it is processed, before it commits; the counter shows the commit.
    worker.wait_for("500 committed ticks", || counter(&worker, "acme/web/words", "tick") == Some(500));
    worker.kill();

    let worker = Worker::start(dir.path());
    let listed = worker.ok(&["functions", "list", "--tenant", "acme", "--namespace", "web"]);
    assert_eq!(listed, serde_json::json!(["words"]));
    produce(&worker, "persistent://acme/web/sentences", &sentences);
    worker.wait_for("1000 ticks", || counter(&worker, "acme/web/words", "tick") == Some(1000));
    let ticks = worker.ok(&["functions", "querystate", "--fqfn", "acme/web/words", "-k", "tick"]);
    assert_eq!(ticks["numberValue"], 1000, "each sentence counted exactly once across the kill");
    assert_eq!(stats(&worker, "acme/web/words")["receivedTotal"], 500, "the restarted worker saw only the new ones");
}

#[test]
fn updates_under_load_lose_nothing_and_apply_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::start(dir.path());
    let wasm = guest("word-count");
    let fqfn = "public/default/counter";
    worker.ok(&[
        "functions",
        "create",
        "--wasm",
        wasm.to_str().unwrap(),
        "--name",
        "counter",
        "-i",
        "load",
        "--processing-guarantees",
        "EFFECTIVELY_ONCE",
        "--batch-size",
        "256",
    ]);
    const TOTAL: usize = 50_000;
    const CHUNK: usize = 2_500;
    let file = dir.path().join("chunk.txt");
    std::fs::write(&file, "one\n".repeat(CHUNK)).unwrap();
    let producer = {
        let url = worker.url.clone();
        let file = file.clone();
        std::thread::spawn(move || {
            for _ in 0..TOTAL / CHUNK {
                let status = std::process::Command::new(env!("CARGO_BIN_EXE_fnhost"))
                    .args(["topics", "produce", "load", "--file", file.to_str().unwrap(), "--url", &url])
                    .status()
                    .unwrap();
                assert!(status.success());
            }
        })
    };
    worker
        .wait_for("some messages processed", || stats(&worker, fqfn)["processedSuccessfullyTotal"].as_u64() > Some(0));
    worker.ok(&["functions", "update", "--fqfn", fqfn, "--batch-size", "64", "--parallelism", "2"]);
    worker.wait_for("more messages processed", || {
        stats(&worker, fqfn)["processedSuccessfullyTotal"].as_u64() > Some(CHUNK as u64)
    });
    worker.ok(&["functions", "update", "--fqfn", fqfn, "--wasm", wasm.to_str().unwrap(), "--parallelism", "1"]);
    producer.join().unwrap();
    worker.wait_for("every message counted", || counter(&worker, fqfn, "one") == Some(TOTAL as i64));
    // Effectively-once means that a message's state change is applied once, however often it is
    // delivered: the counter must be exact, not merely at least the total.
    let counted = worker.ok(&["functions", "querystate", "--fqfn", fqfn, "-k", "one"]);
    assert_eq!(counted["numberValue"], TOTAL as u64, "every message counted once");
    let status = worker.ok(&["functions", "status", "--fqfn", fqfn]);
    assert_eq!((status["numInstances"].as_u64(), status["numRunning"].as_u64()), (Some(1), Some(1)), "{status}");
}

/// A request that must be refused: method, path, body, status, and a part of the reason.
type BadRequest<'a> = (&'a str, String, Option<(&'a str, Vec<u8>)>, u16, &'a str);

#[test]
fn bad_requests_get_the_right_status_and_reason_and_the_worker_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::start(dir.path());
    create_session_duration(&worker, &[]);
    let not_wasm = dir.path().join("notes.wasm");
    std::fs::write(&not_wasm, "hello").unwrap();
    let config = |json: &str| Some(("application/json", json.as_bytes().to_vec()));
    let cases: Vec<BadRequest> = vec![
        ("GET", "/admin/v3/functions/public/default/nope".into(), None, 404, "does not exist"),
        ("GET", "/admin/v3/functions/public/default/nope/status".into(), None, 404, "does not exist"),
        ("GET", "/admin/v3/functions/public/default/sd/5/status".into(), None, 404, "no instance 5"),
        ("GET", "/admin/v3/functions/public/default/sd/state/none".into(), None, 404, "no state under key"),
        ("POST", "/admin/v3/functions/public/default/sd".into(), config(r#"{"inputs": ["x"]}"#), 409, "already exists"),
        (
            "POST",
            "/admin/v3/functions/public/default/f2".into(),
            config(r#"{"inputs": ["x"], "parallelism": 0}"#),
            400,
            "--parallelism 0 is out of range",
        ),
        (
            "POST",
            "/admin/v3/functions/public/default/f2".into(),
            config(r#"{"inputs": ["x"], "paralelism": 2}"#),
            400,
            "unknown field `paralelism`",
        ),
        (
            "POST",
            "/admin/v3/functions/public/default/f2".into(),
            config(&format!(r#"{{"inputs": ["x"], "wasm": "{}"}}"#, not_wasm.display())),
            400,
            "is not a WebAssembly file",
        ),
        ("POST", "/admin/v3/functions/public/default/f2".into(), config(r#"{"inputs": ["x"]}"#), 400, "no component"),
        (
            "PUT",
            "/admin/v3/functions/public/default/nope".into(),
            config(r#"{"parallelism": 2}"#),
            404,
            "does not exist",
        ),
        (
            "PUT",
            "/admin/v3/functions/public/default/sd".into(),
            config(r#"{"subName": "other"}"#),
            400,
            "subscription name",
        ),
        ("POST", "/admin/v3/functions/public/default/sd/trigger".into(), None, 400, "`data` or `dataStream`"),
        ("GET", "/admin/v3/nothing".into(), None, 404, "no route for GET /admin/v3/nothing"),
        ("PATCH", "/admin/v3/functions/public/default/sd".into(), None, 405, "does not take PATCH"),
        ("POST", "/topics/persistent/public/default/t".into(), config("[]"), 400, "the body is not"),
    ];
    for (method, path, body, status, reason) in cases {
        let (got, json) = worker.http(method, &path, body);
        assert_eq!(got, status, "{method} {path}: {json}");
        let text = json["reason"].as_str().unwrap_or_default();
        assert!(text.contains(reason), "{method} {path}: expected `{reason}` in {json}");
    }
    // A component that is not an fnhost function, uploaded through the CLI.
    let refused =
        worker.fails(&["functions", "create", "--wasm", not_wasm.to_str().unwrap(), "--name", "f3", "-i", "x"]);
    assert!(refused.contains("is not a WebAssembly file") && refused.contains("HTTP 400"), "{refused}");
    assert_eq!(worker.http("GET", "/health", None), (200, serde_json::json!({ "status": "ok" })));
    assert_eq!(worker.ok(&["functions", "list"]), serde_json::json!(["sd"]), "nothing was created by a refusal");
}

/// Parses the Prometheus text format strictly enough to catch malformed output: every sample line
/// is `name{labels} value` with a known family declared before it.
fn parse_prometheus(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut families = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge", "summary"].contains(&kind), "{line}");
            assert!(families.insert(name.to_owned(), kind.to_owned()).is_none(), "family {name} declared twice");
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
        let (name, labels) = series.split_once('{').expect("samples have labels");
        let labels = labels.strip_suffix('}').expect("labels end with }");
        let labels: BTreeMap<String, String> = labels
            .split(',')
            .map(|pair| {
                let (key, quoted) = pair.split_once('=').expect("label=value");
                (key.to_owned(), quoted.trim_matches('"').to_owned())
            })
            .collect();
        let family = ["_sum", "_count"].iter().find_map(|suffix| name.strip_suffix(suffix)).unwrap_or(name);
        assert!(families.contains_key(name) || families.contains_key(family), "no TYPE before {line}");
        samples.push((name.to_owned(), labels, value));
    }
    samples
}

#[test]
fn metrics_parse_as_prometheus_text_and_match_stats() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::start(dir.path());
    create(&worker, "misbehave", "t1/ns1/mis", "persistent://t1/ns1/in", &["--max-message-retries", "0"]);
    produce(&worker, "persistent://t1/ns1/in", &["fine", "fail", "fine", "trap"]);
    wait_until_processed(&worker, "t1/ns1/mis", 2);
    worker.wait_for("both failures counted", || {
        let stats = stats(&worker, "t1/ns1/mis");
        stats["userExceptionsTotal"] == 1 && stats["systemExceptionsTotal"] == 1
    });
    let stats = stats(&worker, "t1/ns1/mis");
    let (status, text) = worker.http("GET", "/metrics", None);
    assert_eq!(status, 200);
    let samples = parse_prometheus(text.as_str().expect("metrics are text"));
    let value = |name: &str| {
        samples
            .iter()
            .filter(|(sample, labels, _)| sample == name && labels["fqfn"] == "t1/ns1/mis")
            .map(|(_, labels, value)| {
                assert_eq!(
                    (labels["tenant"].as_str(), labels["namespace"].as_str(), labels["name"].as_str()),
                    ("t1", "ns1", "mis")
                );
                assert_eq!(labels["instance_id"], "0");
                *value
            })
            .sum::<f64>()
    };
    for (metric, field) in [
        ("pulsar_function_received_total", "receivedTotal"),
        ("pulsar_function_processed_successfully_total", "processedSuccessfullyTotal"),
        ("pulsar_function_user_exceptions_total", "userExceptionsTotal"),
        ("pulsar_function_system_exceptions_total", "systemExceptionsTotal"),
    ] {
        assert_eq!(value(metric), stats[field].as_f64().unwrap(), "{metric} against {field}");
    }
    assert_eq!(value("pulsar_function_received_total"), 4.0);
    assert_eq!(value("pulsar_function_process_latency_ms_count"), 4.0);
    let quantiles: Vec<&String> = samples
        .iter()
        .filter(|(name, _, _)| name == "pulsar_function_process_latency_ms")
        .map(|(_, labels, _)| &labels["quantile"])
        .collect();
    assert_eq!(quantiles, ["0.5", "0.9", "0.99", "0.999"]);
    assert_eq!(value("pulsar_function_last_invocation"), stats["lastInvocation"].as_f64().unwrap());
}

#[test]
fn every_path_in_the_openapi_document_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::start(dir.path());
    let (status, served) = worker.http("GET", "/openapi.yaml", None);
    assert_eq!(status, 200);
    assert_eq!(served.as_str().unwrap(), fnhost::worker::admin::OPENAPI);
    let document: serde_json::Value = serde_saphyr::from_str(fnhost::worker::admin::OPENAPI).unwrap();
    let paths = document["paths"].as_object().unwrap();
    assert!(paths.len() >= 20, "the document lists the API");
    for (path, operations) in paths {
        let concrete = path
            .replace("{tenant}", "t")
            .replace("{namespace}", "n")
            .replace("{name}", "f")
            .replace("{instanceId}", "0")
            .replace("{key}", "k")
            .replace("{topic}", "x")
            .replace("{subscription}", "s")
            .replace("{timestamp}", "0")
            .replace("{count}", "1")
            .replace("{position}", "1");
        for method in operations.as_object().unwrap().keys().filter(|key| *key != "parameters") {
            let (status, json) = worker.http(&method.to_uppercase(), &concrete, None);
            let reason = json["reason"].as_str().unwrap_or_default();
            assert!(
                status != 405 && !reason.starts_with("no route"),
                "{method} {path} is documented but not served: {status} {json}"
            );
        }
    }
}

#[test]
fn a_worker_sized_for_the_most_instances_starts_and_runs_a_function() {
    // Its sandbox pool reserves address space for every instance up front.
    let dir = tempfile::tempdir().unwrap();
    let most = fnhost::limits::MAX_WORKER_INSTANCES.to_string();
    let worker = Worker::start_with(dir.path(), &["--max-instances", &most]);
    create(&worker, "exclamation", "public/default/shout", "words", &["-o", "shouts"]);
    produce(&worker, "words", &["hello"]);
    assert_eq!(worker.read("shouts", 1), ["hello!"]);
}

#[test]
fn a_worker_runs_a_window_function_and_refuses_window_settings_for_a_message_function() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::start(dir.path());
    let created =
        create(&worker, "window-list", "public/default/w", "in", &["-o", "out", "--window-length-count", "3"]);
    assert_eq!(created["windowConfig"]["windowLengthCount"], 3);
    produce(&worker, "in", &["a", "b", "c", "d", "e", "f", "g"]);
    let values: Vec<serde_json::Value> = worker
        .read("out", 2)
        .iter()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["values"].clone())
        .collect();
    assert_eq!(values, [serde_json::json!(["a", "b", "c"]), serde_json::json!(["d", "e", "f"])]);

    let wasm = guest("exclamation");
    let refused = worker.cli(&[
        "functions",
        "create",
        "--wasm",
        wasm.to_str().unwrap(),
        "--name",
        "ex",
        "-i",
        "in",
        "--window-length-count",
        "3",
    ]);
    assert!(!refused.success && refused.stderr.contains("not a window function"), "{}", refused.stderr);
}
