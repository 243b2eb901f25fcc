//! What operators see: OpenTelemetry traces across a producer and a chain of functions, received
//! by a collector in the test, and live logs followed from the CLI.

use std::io::{BufRead as _, BufReader};
use std::sync::{Arc, Mutex};

use fnhost_test_support::HttpSink;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

use crate::support::{ACME, GLOBEX, Worker, fnhost_command, guest};
use crate::worker::create;

/// An OTLP/HTTP collector on loopback that keeps every span it is sent, and counts requests.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
    requests: Arc<Mutex<usize>>,
}

impl Collector {
    fn start() -> Self {
        let (spans, requests) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(0)));
        let (kept, counted) = (spans.clone(), requests.clone());
        let sink = HttpSink::start(move |(request_line, body)| {
            assert!(request_line.starts_with("POST /v1/traces "), "{request_line}");
            let request = ExportTraceServiceRequest::decode(&body[..]).expect("an OTLP protobuf export");
            let spans = request.resource_spans.into_iter().flat_map(|resource| resource.scope_spans);
            kept.lock().unwrap().extend(spans.flat_map(|scope| scope.spans));
            *counted.lock().unwrap() += 1;
        })
        .unwrap();
        Self { url: sink.url, spans, requests }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

fn attribute(span: &Span, name: &str) -> Option<String> {
    let value = span.attributes.iter().find(|attribute| attribute.key == name)?.value.as_ref()?.value.as_ref()?;
    Some(match value {
        Value::StringValue(text) => text.clone(),
        Value::IntValue(number) => number.to_string(),
        other => format!("{other:?}"),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Produces `message` to `topic` through `worker` with the CLI, with `env` set.
fn produce_with(worker: &Worker, env: &[(&str, &str)], topic: &str, message: &str) {
    let output = fnhost_command()
        .envs(env.iter().copied())
        .args(["topics", "produce", topic, "-m", message, "--url", &worker.url])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// `topic`'s messages as JSON, through subscription `reader`, once there are `count`.
fn read_json(worker: &Worker, topic: &str, count: usize) -> Vec<serde_json::Value> {
    let mut read = Vec::new();
    worker.wait_for(&format!("{count} messages on {topic}"), || {
        let run = worker.cli(&["topics", "consume", topic, "-s", "reader", "--until-idle", "--json"]);
        assert!(run.success, "{}", run.stderr);
        read.extend(run.stdout.lines().map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()));
        read.len() >= count
    });
    read
}

#[test]
fn one_trace_follows_a_message_from_its_producer_through_two_functions() {
    let collector = Collector::start();
    let dir = tempfile::tempdir().unwrap();
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "50")];
    let worker = Worker::start_with_env(dir.path(), &[], &env);
    create(&worker, "exclamation", "public/default/first", "chain-in", &["-o", "chain-middle"]);
    create(&worker, "exclamation", "public/default/second", "chain-middle", &["-o", "chain-out"]);
    produce_with(&worker, &env, "chain-in", "hello");
    let out = read_json(&worker, "chain-out", 1);
    assert_eq!(out[0]["value"], "hello!!", "{out:?}");

    // The producer's span, each function's span and their guest call and commit children.
    let named = |spans: &[Span], name: &str, function: Option<&str>| {
        spans
            .iter()
            .find(|span| {
                span.name == name && function.is_none_or(|f| attribute(span, "fnhost.function").as_deref() == Some(f))
            })
            .cloned()
    };
    let mut spans = Vec::new();
    worker.wait_for("the producer's and both functions' spans", || {
        spans = collector.spans();
        named(&spans, "send", None).is_some()
            && named(&spans, "process", Some("public/default/second")).is_some()
            && spans.iter().filter(|span| span.name == "commit").count() >= 2
    });
    let send = named(&spans, "send", None).unwrap();
    let first = named(&spans, "process", Some("public/default/first")).unwrap();
    let second = named(&spans, "process", Some("public/default/second")).unwrap();
    assert!(spans.iter().all(|span| span.trace_id == send.trace_id), "one trace: {spans:#?}");
    assert!(send.parent_span_id.is_empty(), "the producer's span starts the trace");
    assert_eq!(first.parent_span_id, send.span_id, "A's span is the producer's child");
    assert_eq!(second.parent_span_id, first.span_id, "B's span is the child of A's, through A's output");
    for (span, topic) in
        [(&first, "persistent://public/default/chain-in"), (&second, "persistent://public/default/chain-middle")]
    {
        assert_eq!(attribute(span, "messaging.destination.name").as_deref(), Some(topic));
        assert_eq!(attribute(span, "fnhost.instance").as_deref(), Some("0"));
        assert_eq!(attribute(span, "fnhost.outcome").as_deref(), Some("succeeded"));
        assert_eq!(attribute(span, "fnhost.retries").as_deref(), Some("0"));
        assert!(attribute(span, "messaging.message.id").is_some_and(|id| !id.is_empty()));
        for child in ["guest call", "commit"] {
            let children = spans.iter().filter(|c| c.name == child && c.parent_span_id == span.span_id).count();
            assert_eq!(children, 1, "{child} under {:?}", attribute(span, "fnhost.function"));
        }
    }
    assert_eq!(attribute(&send, "messaging.destination.name").as_deref(), Some("persistent://public/default/chain-in"));

    // The final output carries B's span as its parent, for whatever reads it next.
    let traceparent = out[0]["properties"]["traceparent"].as_str().expect("the output carries a traceparent");
    assert_eq!(traceparent, format!("00-{}-{}-01", hex(&send.trace_id), hex(&second.span_id)));
}

#[test]
fn with_tracing_off_nothing_is_sent_and_a_traceparent_passes_through_unchanged() {
    let collector = Collector::start();
    let dir = tempfile::tempdir().unwrap();
    // No endpoint: the collector's address is given only in a variable the SDK would not read
    // on its own, and the schedule is short, so any export would have come by the end.
    let worker = Worker::start_with_env(dir.path(), &[], &[("OTEL_BSP_SCHEDULE_DELAY", "10")]);
    create(&worker, "exclamation", "public/default/untraced", "plain-in", &["-o", "plain-out"]);
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let run = worker.cli(&["topics", "produce", "plain-in", "-m", "hi", "-p", &format!("traceparent={traceparent}")]);
    assert!(run.success, "{}", run.stderr);
    let out = read_json(&worker, "plain-out", 1);
    assert_eq!(out[0]["properties"]["traceparent"], traceparent, "{out:?}");
    // A second message after the first's output, so the worker's exporter (had it one) would
    // have had many schedules' time to send the first.
    worker.cli(&["topics", "produce", "plain-in", "-m", "again"]);
    read_json(&worker, "plain-out", 1);
    assert!(worker.terminate(), "the worker stops cleanly");
    assert_eq!(*collector.requests.lock().unwrap(), 0, "nothing was exported: {:?}", collector.spans());
}

#[test]
fn functions_logs_follow_prints_a_line_written_after_it_started_and_another_tenant_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::start_with_tenants(dir.path());
    let wasm = guest("session-duration");
    let fqfn = "acme/ns/sessions";
    let created = worker.cli_as(
        Some(ACME),
        &["functions", "create", "--wasm", wasm.to_str().unwrap(), "--fqfn", fqfn, "-i", "acme/ns/events"],
    );
    assert!(created.success, "{}", created.stderr);
    let login = |user: &str| format!(r#"{{"user_id": "{user}", "event_type": "login", "timestamp": 1700000000}}"#);
    assert!(worker.cli_as(Some(ACME), &["topics", "produce", "acme/ns/events", "-m", &login("early")]).success);
    worker.wait_for("the first line", || {
        let run = worker.cli_as(Some(ACME), &["functions", "logs", "--fqfn", fqfn]);
        run.success && run.stdout.contains("User early logged in")
    });

    // Follow, then write a line: the follower prints it.
    let mut follower = fnhost_command()
        .env("FNHOST_TOKEN", ACME)
        .args(["functions", "logs", "--fqfn", fqfn, "-f", "--tail", "0", "--url", &worker.url])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    let (sender, printed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    // Until the follower is connected, a line may come before it: produce until one reaches it.
    let mut seen = None;
    worker.wait_for("the follower to print a later line", || {
        assert!(worker.cli_as(Some(ACME), &["topics", "produce", "acme/ns/events", "-m", &login("later")]).success);
        seen = printed.recv_timeout(std::time::Duration::from_secs(2)).ok();
        seen.is_some()
    });
    let seen = seen.unwrap();
    assert!(seen.contains("INFO [instance 0] User later logged in at 1700000000"), "{seen}");
    assert!(!seen.contains("early"), "--tail 0 printed no earlier line: {seen}");
    follower.kill().unwrap();
    follower.wait().unwrap();

    // Another tenant, by CLI and by HTTP, following or not, gets 403 and no line.
    let refused = worker.cli_as(Some(GLOBEX), &["functions", "logs", "--fqfn", fqfn, "-f"]);
    assert!(!refused.success && refused.stderr.contains("403"), "{}", refused.stderr);
    assert!(!refused.stdout.contains("logged in"));
    for path in ["/admin/v3/functions/acme/ns/sessions/logs", "/admin/v3/functions/acme/ns/sessions/logs?follow=true"] {
        let (status, answer) = worker.http_as(Some(GLOBEX), "GET", path, None);
        assert_eq!(status, 403, "{answer}");
    }
    // A request past the limit, or with a malformed query, says what was wrong.
    let (status, answer) =
        worker.http_as(Some(ACME), "GET", "/admin/v3/functions/acme/ns/sessions/logs?tail=1000000", None);
    assert_eq!(status, 400, "{answer}");
    assert!(answer["reason"].as_str().unwrap().contains("MAX_LOG_LINES_PER_REQUEST"), "{answer}");
    let (status, _) = worker.http_as(Some(ACME), "GET", "/admin/v3/functions/acme/ns/sessions/logs?instanceId=x", None);
    assert_eq!(status, 400);
    let (status, _) = worker.http_as(Some(ACME), "GET", "/admin/v3/functions/acme/ns/nothing/logs", None);
    assert_eq!(status, 404);
}

#[test]
fn produce_shows_progress_on_a_terminal_and_nothing_but_its_result_in_a_pipe() {
    let fnhost = crate::support::Fnhost::new();
    let file = fnhost.data_dir().with_extension("lines");
    std::fs::write(&file, (0..20_000).map(|i| format!("message {i}\n")).collect::<String>()).unwrap();
    let args = [
        "topics",
        "produce",
        "lines",
        "--file",
        file.to_str().unwrap(),
        "--data-dir",
        fnhost.data_dir().to_str().unwrap(),
    ];

    let piped = fnhost_command().args(args).output().unwrap();
    assert!(piped.status.success(), "{}", String::from_utf8_lossy(&piped.stderr));
    assert_eq!(
        String::from_utf8_lossy(&piped.stdout),
        "produced 20000 messages to persistent://public/default/lines\n"
    );
    assert_eq!(String::from_utf8_lossy(&piped.stderr), "", "no progress drawn into a pipe");

    // `script` runs the command on a pseudo-terminal, as a user's shell would.
    let command = std::iter::once(env!("CARGO_BIN_EXE_fnhost")).chain(args).collect::<Vec<_>>().join(" ");
    let on_terminal = std::process::Command::new("script").args(["-qec", &command, "/dev/null"]).output().unwrap();
    let shown = String::from_utf8_lossy(&on_terminal.stdout);
    assert!(on_terminal.status.success(), "{shown}");
    assert!(shown.contains("/20000 messages"), "a bar counting the messages: {shown:?}");
    assert!(shown.contains("produced 20000 messages"), "{shown:?}");
    assert_eq!(fnhost.consume("lines").len(), 40_000, "both runs produced everything");
}
