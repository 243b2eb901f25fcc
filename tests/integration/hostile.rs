//! A tenant who attacks: two tenants on one worker, `acme` and `evil`, and every name and shared
//! resource evil can reach. Each test runs the attack as evil and checks that acme's data,
//! outputs and cursors and the worker's health are untouched, and that a refusal is clear and says
//! nothing about acme.

use crate::support::{Fnhost, Worker, guest};

const OPERATOR: &str = "operator-0123456789abcdef0123456789abcdef";
const ACME: &str = "acme-0123456789abcdef0123456789abcdef00000";
const EVIL: &str = "evil-0123456789abcdef0123456789abcdef00000";

/// A worker with an operator and tenants `acme` and `evil`, each with its token; `quotas` is
/// added to evil's entry of the access file.
fn start_worker(fnhost: &Fnhost, evil_quotas: &str) -> Worker {
    let access = fnhost.data_dir().with_extension("access.yaml");
    std::fs::write(&access, access_file(evil_quotas)).unwrap();
    Worker::start_with(fnhost.data_dir(), &["--access", access.to_str().unwrap()])
}

fn access_file(evil_quotas: &str) -> String {
    format!(
        "operatorTokens: [{OPERATOR}]\ntenants:\n  acme:\n    tokens: [{ACME}]\n  evil:\n    tokens: [{EVIL}]\n{evil_quotas}"
    )
}

/// Creates `fqfn` from the test guest `guest_name` as `token`'s bearer.
fn create(worker: &Worker, token: &str, guest_name: &str, fqfn: &str, extra: &[&str]) -> crate::support::Run {
    let wasm = guest(guest_name);
    let mut args = vec!["functions", "create", "--wasm", wasm.to_str().unwrap(), "--fqfn", fqfn];
    args.extend(extra);
    worker.cli_as(Some(token), &args)
}

fn produce(worker: &Worker, token: &str, topic: &str, messages: &[String]) {
    let mut args = vec!["topics", "produce", topic];
    for message in messages {
        args.extend(["-m", message]);
    }
    let run = worker.cli_as(Some(token), &args);
    assert!(run.success, "{}", run.stderr);
}

fn json(text: &str) -> Option<(&'static str, Vec<u8>)> {
    Some(("application/json", text.as_bytes().to_vec()))
}

/// The values of a REST receive's answer.
fn values(answer: &serde_json::Value) -> Vec<String> {
    answer["messages"].as_array().unwrap().iter().map(|message| message["value"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn a_subscription_name_never_reaches_another_tenants_subscription() {
    let fnhost = Fnhost::new();
    let worker = start_worker(&fnhost, "");
    let created = create(&worker, ACME, "exclamation", "acme/ns/f", &["-i", "acme/ns/in", "-o", "acme/ns/out"]);
    assert!(created.success, "{}", created.stderr);

    // evil cannot give acme's subscription as its function's: a subscription name is one segment
    // inside the function's own namespace.
    let refused =
        create(&worker, EVIL, "misbehave", "evil/ns/thief", &["-i", "evil/ns/in", "--subs-name", "acme/ns/f"]);
    assert!(!refused.success && refused.stderr.contains("HTTP 400"), "{}", refused.stderr);
    assert!(refused.stderr.contains("--subs-name") && refused.stderr.contains("contains `/`"), "{}", refused.stderr);
    // The same local name is evil's own subscription, beside acme's.
    let twin = create(&worker, EVIL, "misbehave", "evil/ns/f", &["-i", "evil/ns/in", "-o", "evil/ns/out"]);
    assert!(twin.success, "{}", twin.stderr);

    // Nor through the REST consumer, by any spelling of acme's name.
    let evil_topic = "/topics/persistent/evil/ns/in";
    for hostile in ["acme%2Fns%2Ff", "..%2F..%2Facme%2Fns%2Ff", "%00", "%2E%2E", "%20", &"s".repeat(10_000)] {
        let path = format!("{evil_topic}/subscription/{hostile}/receive?count=40");
        let (status, answer) = worker.http_as(Some(EVIL), "POST", &path, json("{}"));
        assert_eq!(status, 400, "{hostile}: {answer}");
        let reason = answer["reason"].as_str().unwrap();
        assert!(reason.contains("subscription name") && !reason.contains("acme/ns/f "), "{reason}");
    }

    let messages: Vec<String> = (0..20).map(|n| format!("m{n}")).collect();
    produce(&worker, ACME, "acme/ns/in", &messages);
    // acme loses nothing, and evil's function of the same local name gets nothing of acme's.
    let mut outputs = worker.read_as(Some(ACME), "acme/ns/out", 20);
    outputs.sort();
    let mut expected: Vec<String> = messages.iter().map(|message| format!("{message}!")).collect();
    expected.sort();
    assert_eq!(outputs, expected);
    let (_, stats) = worker.http_as(Some(EVIL), "GET", "/admin/v3/functions/evil/ns/f/stats", None);
    assert_eq!(stats["receivedTotal"].as_u64(), Some(0), "{stats}");

    // Deleting evil's function of the same local name leaves acme's cursors alone: a restarted
    // acme function processes nothing again.
    let (status, answer) = worker.http_as(Some(EVIL), "DELETE", "/admin/v3/functions/evil/ns/f", None);
    assert_eq!(status, 200, "{answer}");
    let restarted = worker.cli_as(Some(ACME), &["functions", "restart", "--fqfn", "acme/ns/f"]);
    assert!(restarted.success, "{}", restarted.stderr);
    produce(&worker, ACME, "acme/ns/in", &["last".to_owned()]);
    worker.wait_for("acme's last output", || {
        let (_, stats) = worker.http_as(Some(ACME), "GET", "/admin/v3/functions/acme/ns/f/stats", None);
        stats["processedSuccessfullyTotal"].as_u64() == Some(21)
    });
    let (_, answer) = worker.http_as(
        Some(ACME),
        "POST",
        "/topics/persistent/acme/ns/out/subscription/audit/receive?count=100",
        json("{}"),
    );
    assert_eq!(values(&answer).len(), 21, "each input once: {answer}");
}

#[test]
fn a_rest_consumer_joins_only_a_subscription_over_the_same_topics_and_deletes_only_its_own_cursors() {
    let fnhost = Fnhost::new();
    let worker = start_worker(&fnhost, "");
    produce(&worker, ACME, "acme/ns/a", &["a0".to_owned(), "a1".to_owned()]);
    produce(&worker, ACME, "acme/ns/b", &["b0".to_owned()]);
    // A REST consumer of acme/ns/a named `s` takes and acknowledges a0.
    let on_a = "/topics/persistent/acme/ns/a/subscription/s";
    let (status, answer) = worker.http_as(Some(ACME), "POST", &format!("{on_a}/receive?count=1"), json("{}"));
    assert_eq!((status, values(&answer)), (200, vec!["a0".to_owned()]), "{answer}");
    let id = answer["messages"][0]["messageId"].as_str().unwrap().to_owned();
    let body = format!(r#"{{"messageIds": ["{id}"]}}"#);
    let (status, answer) = worker.http_as(Some(ACME), "POST", &format!("{on_a}/acknowledge"), json(&body));
    assert_eq!(status, 200, "{answer}");

    // A function of the same tenant with subscription `s` over acme/ns/b is a consumer of other
    // topics: while it runs, a REST consumer of `s` on acme/ns/a is refused without being told
    // what `s` reads.
    let created = create(
        &worker,
        ACME,
        "exclamation",
        "acme/ns/f",
        &["-i", "acme/ns/b", "-o", "acme/ns/out", "--subs-name", "s"],
    );
    assert!(created.success, "{}", created.stderr);
    worker.wait_for("acme/ns/f's output", || {
        let (_, stats) = worker.http_as(Some(ACME), "GET", "/admin/v3/functions/acme/ns/f/stats", None);
        stats["processedSuccessfullyTotal"].as_u64() == Some(1)
    });
    let (status, answer) = worker.http_as(Some(ACME), "POST", &format!("{on_a}/receive?count=1"), json("{}"));
    assert_eq!(status, 409, "{answer}");
    let reason = answer["reason"].as_str().unwrap();
    assert!(reason.contains("is in use") && !reason.contains("acme/ns/b"), "{reason}");
    // Deleting the function removes its cursor on acme/ns/b only: a0 stays acknowledged on acme/ns/a.
    let (status, answer) = worker.http_as(Some(ACME), "DELETE", "/admin/v3/functions/acme/ns/f", None);
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = worker.http_as(Some(ACME), "POST", &format!("{on_a}/receive?count=10"), json("{}"));
    assert_eq!((status, values(&answer)), (200, vec!["a1".to_owned()]), "{answer}");
}

#[test]
fn failed_creates_leave_no_record_and_a_restarted_worker_serves_everyone_within_todays_quotas() {
    let fnhost = Fnhost::new();
    let worker = start_worker(&fnhost, "");
    let created = create(&worker, ACME, "exclamation", "acme/ns/f", &["-i", "acme/ns/in", "-o", "acme/ns/out"]);
    assert!(created.success, "{}", created.stderr);

    // Creates that fail: too many input topics, and a subscription of the same name over other
    // topics (evil's own, since a name never leaves its tenant).
    let many: Vec<String> = (0..=fnhost::limits::MAX_SUBSCRIPTION_TOPICS).map(|n| format!("evil/ns/t{n}")).collect();
    let refused = create(&worker, EVIL, "misbehave", "evil/ns/wide", &["-i", &many.join(",")]);
    assert!(!refused.success && refused.stderr.contains("MAX_SUBSCRIPTION_TOPICS"), "{}", refused.stderr);
    assert!(create(&worker, EVIL, "misbehave", "evil/ns/one", &["-i", "evil/ns/a"]).success);
    let refused = create(
        &worker,
        EVIL,
        "exclamation",
        "evil/ns/two",
        &["-i", "evil/ns/b", "--subs-name", "one", "--retain-ordering"],
    );
    assert!(!refused.success && refused.stderr.contains("HTTP 409"), "{}", refused.stderr);
    for failed in ["wide", "two"] {
        let (status, answer) =
            worker.http_as(Some(EVIL), "GET", &format!("/admin/v3/functions/evil/ns/{failed}"), None);
        assert_eq!(status, 404, "{failed}: {answer}");
    }

    // evil has three functions; then the operator lowers its quota to one and the worker
    // restarts after a SIGKILL. Every other function runs, and evil's are held to today's quota.
    assert!(create(&worker, EVIL, "misbehave", "evil/ns/three", &["-i", "evil/ns/c"]).success);
    assert!(create(&worker, EVIL, "misbehave", "evil/ns/four", &["-i", "evil/ns/d"]).success);
    worker.kill();
    let access = fnhost.data_dir().with_extension("access.yaml");
    std::fs::write(&access, access_file("    maxFunctions: 1\n")).unwrap();
    let worker = Worker::start_with(fnhost.data_dir(), &["--access", access.to_str().unwrap()]);
    produce(&worker, ACME, "acme/ns/in", &["after".to_owned()]);
    assert_eq!(worker.read_as(Some(ACME), "acme/ns/out", 1), ["after!"]);
    let (status, answer) = worker.http_as(Some(EVIL), "GET", "/admin/v3/functions/evil/ns", None);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer.as_array().map(Vec::len), Some(3), "the failed ones are listed: {answer}");
    let statuses: Vec<(u16, serde_json::Value)> = ["four", "one", "three"]
        .iter()
        .map(|name| worker.http_as(Some(EVIL), "GET", &format!("/admin/v3/functions/evil/ns/{name}/status"), None))
        .collect();
    let refused: Vec<&serde_json::Value> =
        statuses.iter().filter(|(status, _)| *status == 409).map(|(_, body)| body).collect();
    assert_eq!(refused.len(), 2, "{statuses:?}");
    for answer in refused {
        let reason = answer["reason"].as_str().unwrap();
        assert!(reason.contains("could not be resumed") && reason.contains("maxFunctions"), "{reason}");
    }
    // Deleting the one that runs leaves the package the failed ones still need: with the quota
    // back, the next start resumes them.
    let running = ["four", "one", "three"].iter().zip(&statuses).find(|(_, (status, _))| *status == 200).unwrap().0;
    let (status, answer) =
        worker.http_as(Some(EVIL), "DELETE", &format!("/admin/v3/functions/evil/ns/{running}"), None);
    assert_eq!(status, 200, "{answer}");
    worker.kill();
    std::fs::write(&access, access_file("")).unwrap();
    let worker = Worker::start_with(fnhost.data_dir(), &["--access", access.to_str().unwrap()]);
    for name in ["four", "one", "three"].iter().filter(|name| *name != running) {
        let (status, answer) =
            worker.http_as(Some(EVIL), "GET", &format!("/admin/v3/functions/evil/ns/{name}/status"), None);
        assert_eq!((status, answer["numRunning"].as_u64()), (200, Some(1)), "{name}: {answer}\n{}", worker.log());
    }
}

/// The status of instance 0 of `fqfn`, as `token`'s bearer.
fn instance_running(worker: &Worker, token: &str, fqfn: &str) -> bool {
    let (_, status) = worker.http_as(Some(token), "GET", &format!("/admin/v3/functions/{fqfn}/status"), None);
    status["numRunning"].as_u64() == Some(1)
}

#[test]
fn a_stop_interrupts_a_guest_with_an_hours_time_limit_and_its_message_is_not_lost() {
    let fnhost = Fnhost::new();
    let worker = start_worker(&fnhost, "");
    let created = create(&worker, ACME, "exclamation", "acme/ns/f", &["-i", "acme/ns/in", "-o", "acme/ns/out"]);
    assert!(created.success, "{}", created.stderr);
    let looping = create(
        &worker,
        EVIL,
        "misbehave",
        "evil/ns/loop",
        &["-i", "evil/ns/in", "-o", "evil/ns/out", "--timeout-ms", "3600000"],
    );
    assert!(looping.success, "{}", looping.stderr);
    produce(&worker, EVIL, "evil/ns/in", &["loop".to_owned()]);
    worker.wait_for("evil's guest to be in its loop", || worker.log().contains("entering an endless loop"));
    // evil's stop returns (the guest is interrupted, not waited out for an hour), the worker
    // answers acme meanwhile, and the message stays for the next run.
    let stopped = worker.cli_as(Some(EVIL), &["functions", "stop", "--fqfn", "evil/ns/loop"]);
    assert!(stopped.success, "{}", stopped.stderr);
    assert!(!instance_running(&worker, EVIL, "evil/ns/loop"));
    produce(&worker, ACME, "acme/ns/in", &["hello".to_owned()]);
    assert_eq!(worker.read_as(Some(ACME), "acme/ns/out", 1), ["hello!"]);
    let (_, stats) = worker.http_as(Some(EVIL), "GET", "/admin/v3/functions/evil/ns/loop/stats", None);
    assert_eq!(
        (stats["systemExceptionsTotal"].as_u64(), stats["deadLetteredTotal"].as_u64()),
        (Some(0), Some(0)),
        "an interruption is not the message's failure: {stats}"
    );
    let (_, answer) = worker.http_as(
        Some(EVIL),
        "POST",
        "/topics/persistent/evil/ns/in/subscription/evil-ns-loop-check/receive?count=10",
        json("{}"),
    );
    assert_eq!(values(&answer), ["loop"], "still in the topic");
    // The shutdown of a worker whose guest loops is bounded too.
    let restarted = worker.cli_as(Some(EVIL), &["functions", "start", "--fqfn", "evil/ns/loop"]);
    assert!(restarted.success, "{}", restarted.stderr);
    worker.wait_for("the loop to run again", || instance_running(&worker, EVIL, "evil/ns/loop"));
    assert!(worker.terminate(), "the worker exits cleanly on SIGTERM");
}

#[test]
fn host_owned_state_keys_are_out_of_reach_and_user_metric_names_are_bounded_for_an_instances_life() {
    let fnhost = Fnhost::new();
    let worker = start_worker(&fnhost, "");
    let created = create(&worker, EVIL, "misbehave", "evil/ns/m", &["-i", "evil/ns/in", "-o", "evil/ns/out"]);
    assert!(created.success, "{}", created.stderr);
    for key in ["%00window/0", "%00window/0/0000000000000000", "%00"] {
        let path = format!("/admin/v3/functions/evil/ns/m/state/{key}");
        let (status, answer) = worker.http_as(Some(EVIL), "GET", &path, None);
        assert_eq!(status, 400, "{key}: {answer}");
        let body = r#"{"stringValue": "forged"}"#;
        let (status, answer) = worker.http_as(Some(EVIL), "POST", &path, json(body));
        assert_eq!(status, 400, "{key}: {answer}");
        assert!(answer["reason"].as_str().unwrap().contains("the host's own"), "{answer}");
    }
    let batches: Vec<String> = (0..3).map(|batch| format!("metrics-from:{}", batch * 1_000)).collect();
    for batch in &batches {
        produce(&worker, EVIL, "evil/ns/in", std::slice::from_ref(batch));
    }
    worker.read_as(Some(EVIL), "evil/ns/out", 3);
    let (_, stats) = worker.http_as(Some(EVIL), "GET", "/admin/v3/functions/evil/ns/m/stats", None);
    let names = stats["userMetrics"].as_object().unwrap().len();
    assert_eq!(names, fnhost::limits::MAX_METRICS_PER_INSTANCE, "{stats}");
}

/// Sends `method path` with exactly `headers` (and `body`) over a plain socket, as a browser
/// could; returns the status.
fn raw_request(worker: &Worker, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> u16 {
    use std::io::{Read, Write};
    let address = worker.url.strip_prefix("http://").unwrap();
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.split(' ').nth(1).and_then(|status| status.parse().ok()).unwrap_or_else(|| panic!("no status in {answer:?}"))
}

#[test]
fn a_web_page_cannot_reach_a_worker_without_tokens_and_the_cli_still_can() {
    let fnhost = Fnhost::new();
    let worker = Worker::start(fnhost.data_dir());
    let own_host = worker.url.strip_prefix("http://").unwrap();
    let own_origin = worker.url.clone();
    let payload = r#"{"messages": [{"payload": "Zm9yZ2Vk"}]}"#;
    let produce = "/topics/persistent/public/default/in";
    // What a page of another site can send: a simple POST (text/plain, no custom header), with
    // its own Origin, or through a name that resolves to loopback (DNS rebinding).
    let attacks = [
        ("POST", produce, vec![("Host", own_host), ("Content-Type", "text/plain")]),
        ("POST", produce, vec![("Host", own_host), ("Origin", "http://evil.example"), ("x-fnhost-client", "x")]),
        ("POST", produce, vec![("Host", "evil.example"), ("x-fnhost-client", "x")]),
        ("GET", "/admin/v3/functions/public/default", vec![("Host", "evil.example:80")]),
        ("POST", "/admin/v3/functions/public/default/f/stop", vec![("Host", own_host), ("Origin", "null")]),
    ];
    for (method, path, headers) in &attacks {
        assert_eq!(raw_request(&worker, method, path, headers, payload), 403, "{method} {path} {headers:?}");
    }
    let nothing = worker.cli(&["topics", "consume", "in", "-s", "check", "--until-idle"]);
    assert!(
        nothing.success && nothing.stdout.is_empty(),
        "nothing was produced: {} {}",
        nothing.stdout,
        nothing.stderr
    );
    // The worker's own origin, a loopback name and the CLI's header pass.
    let same_site = [("Host", own_host), ("Origin", own_origin.as_str()), ("x-fnhost-client", "page")];
    assert_eq!(raw_request(&worker, "POST", produce, &same_site, payload), 200);
    let port = own_host.rsplit_once(':').unwrap().1;
    let localhost = format!("localhost:{port}");
    let by_name = [("Host", localhost.as_str()), ("x-fnhost-client", "curl")];
    assert_eq!(raw_request(&worker, "POST", produce, &by_name, payload), 200);
    assert_eq!(worker.read("in", 2), ["forged", "forged"]);
    let produced = worker.cli(&["topics", "produce", "in", "-m", "from the cli"]);
    assert!(produced.success, "{}", produced.stderr);
}

#[test]
fn a_worker_with_tokens_refuses_other_origins_but_needs_no_client_header() {
    let fnhost = Fnhost::new();
    let worker = start_worker(&fnhost, "");
    let bearer = format!("Bearer {ACME}");
    let own_host = worker.url.strip_prefix("http://").unwrap().to_owned();
    let payload = r#"{"messages": [{"payload": "aGk="}]}"#;
    let produce = "/topics/persistent/acme/ns/in";
    let foreign = [("Host", own_host.as_str()), ("Authorization", bearer.as_str()), ("Origin", "http://evil.example")];
    assert_eq!(raw_request(&worker, "POST", produce, &foreign, payload), 403);
    // A token is what a page cannot send, so Pulsar's clients need nothing more than it.
    let plain = [("Host", own_host.as_str()), ("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
    assert_eq!(raw_request(&worker, "POST", produce, &plain, payload), 200);
    assert_eq!(worker.read_as(Some(ACME), "acme/ns/in", 1), ["hi"]);
}

#[test]
fn below_the_free_space_reserve_writes_are_refused_reads_go_on_and_nothing_is_lost() {
    let fnhost = Fnhost::new();
    let worker = Worker::start(fnhost.data_dir());
    worker.ok(&[
        "functions",
        "create",
        "--wasm",
        guest("exclamation").to_str().unwrap(),
        "--name",
        "f",
        "-i",
        "in",
        "-o",
        "out",
    ]);
    let produced = worker.cli(&["topics", "produce", "in", "-m", "before"]);
    assert!(produced.success, "{}", produced.stderr);
    assert_eq!(worker.read("out", 1), ["before!"]);
    assert!(worker.terminate());
    // The same data directory, with a reserve larger than any disk: every write is below it.
    let worker = Worker::start_with(fnhost.data_dir(), &["--min-free-disk-bytes", &u64::MAX.to_string()]);
    let refused = worker.cli(&["topics", "produce", "in", "-m", "after"]);
    assert!(!refused.success);
    assert!(
        refused.stderr.contains("--min-free-disk-bytes") && refused.stderr.contains("reserve"),
        "{}",
        refused.stderr
    );
    let body = Some(("application/json", br#"{"stringValue": "x"}"#.to_vec()));
    let (status, answer) = worker.http("POST", "/admin/v3/functions/public/default/f/state/k", body);
    assert_eq!(status, 507, "{answer}");
    let wasm = guest("exclamation");
    let create = worker.cli(&["functions", "create", "--wasm", wasm.to_str().unwrap(), "--name", "g", "-i", "in"]);
    assert!(!create.success && create.stderr.contains("reserve"), "{}", create.stderr);
    // Reads and the control plane answer, and what was stored is there.
    let status = worker.ok(&["functions", "status", "--name", "f"]);
    assert_eq!(status["numRunning"], 1, "{status}");
    assert_eq!(worker.ok(&["functions", "list"]), serde_json::json!(["f"]));
    let again = worker.cli(&["topics", "consume", "out", "-s", "again", "--until-idle"]);
    assert_eq!(again.stdout.lines().collect::<Vec<_>>(), ["before!"], "{}", again.stderr);
    assert!(worker.terminate());
}

/// The names evil tries in each name field: acme's names, percent-encoded and dot-segment walks,
/// NUL, a slash, a huge name and an empty one.
fn hostile_names() -> Vec<String> {
    let huge = "x".repeat(10 * 1024);
    ["acme%2Fns%2Ff", "..%2F..%2Facme%2Fns%2Ff", "%00", "a/b", "%2F", "..", huge.as_str(), ""]
        .into_iter()
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_name_field_of_every_path_and_verb_refuses_other_tenants_and_malformed_names() {
    let fnhost = Fnhost::new();
    let worker = start_worker(&fnhost, "");
    for (token, tenant) in [(ACME, "acme"), (EVIL, "evil")] {
        let fqfn = format!("{tenant}/ns/f");
        let io = [format!("{tenant}/ns/in"), format!("{tenant}/ns/out")];
        let created = create(&worker, token, "exclamation", &fqfn, &["-i", &io[0], "-o", &io[1]]);
        assert!(created.success, "{}", created.stderr);
    }
    produce(&worker, ACME, "acme/ns/in", &["acme-private".to_owned()]);
    assert_eq!(worker.read_as(Some(ACME), "acme/ns/out", 1), ["acme-private!"]);
    let secret = json(r#"{"key": "secret", "stringValue": "acme-secret"}"#);
    let (status, answer) = worker.http_as(Some(ACME), "POST", "/admin/v3/functions/acme/ns/f/state/secret", secret);
    assert_eq!(status, 200, "{answer}");

    // Each path with its name fields, as evil would send it; `{field}` is where a name goes.
    let function = "/admin/v3/functions/{tenant}/{namespace}/{function}";
    let topic = "/topics/persistent/{tenant}/{namespace}/{topic}";
    let paths: Vec<(&str, String, Option<&str>)> = vec![
        ("GET", "/admin/v3/functions/{tenant}/{namespace}".into(), None),
        ("GET", function.into(), None),
        ("DELETE", function.into(), None),
        ("GET", format!("{function}/status"), None),
        ("GET", format!("{function}/stats"), None),
        ("GET", format!("{function}/{{instance}}/status"), None),
        ("GET", format!("{function}/{{instance}}/stats"), None),
        ("POST", format!("{function}/start"), None),
        ("POST", format!("{function}/{{instance}}/stop"), None),
        ("POST", format!("{function}/restart"), None),
        ("POST", format!("{function}/trigger"), Some("{}")),
        ("GET", format!("{function}/state/{{key}}"), None),
        ("POST", format!("{function}/state/{{key}}"), Some(r#"{"stringValue": "forged"}"#)),
        ("POST", topic.into(), Some(r#"{"messages": [{"payload": "Zm9yZ2Vk"}]}"#)),
        ("POST", format!("{topic}/subscription/{{subscription}}/receive"), Some("{}")),
        ("POST", format!("{topic}/subscription/{{subscription}}/acknowledge"), Some(r#"{"messageIds": []}"#)),
    ];
    let own = [
        ("tenant", "evil"),
        ("namespace", "ns"),
        ("function", "f"),
        ("instance", "0"),
        ("key", "k"),
        ("topic", "in"),
        ("subscription", "s"),
    ];
    let leaks = |answer: &str| answer.contains("acme-secret") || answer.contains("acme-private");
    for (method, template, body) in &paths {
        for (field, _) in own.iter().filter(|(field, _)| template.contains(&format!("{{{field}}}"))) {
            let mut names = hostile_names();
            if *field == "tenant" {
                names.push("acme".into());
            }
            for name in names {
                let path = own.iter().fold(template.clone(), |path, (other, value)| {
                    path.replace(&format!("{{{other}}}"), if other == field { &name } else { value })
                });
                let (status, answer) = worker.http_as(Some(EVIL), method, &path, body.map(json).flatten());
                let shown = format!(
                    "{method} {} ({field} = {:.40}): {status} {:.300}",
                    &path[..path.len().min(120)],
                    name,
                    answer
                );
                assert!(!leaks(&answer.to_string()), "{shown}");
                assert!(status < 500, "{shown}");
                // A state key is the function's own to name: a name with slashes is just a key.
                let keys_own_name = *field == "key" && !["%00", ""].contains(&name.as_str()) && name.len() < 1024;
                if !keys_own_name {
                    assert!((400..500).contains(&status), "{shown}");
                }
            }
        }
    }

    // The CLI verbs, with each name given where the function or topic goes.
    let mut fqfns: Vec<String> = hostile_names().into_iter().map(|name| format!("evil/ns/{name}")).collect();
    fqfns.extend(["acme/ns/f".to_owned(), String::new(), "evil//f".to_owned()]);
    let verbs: [&[&str]; 10] = [
        &["functions", "get"],
        &["functions", "status"],
        &["functions", "stats"],
        &["functions", "stop"],
        &["functions", "start"],
        &["functions", "restart"],
        &["functions", "delete"],
        &["functions", "querystate", "--key", "secret"],
        &["functions", "putstate", "--state", r#"{"key": "secret", "stringValue": "forged"}"#],
        &["functions", "trigger", "--trigger-value", "x"],
    ];
    for verb in verbs {
        for fqfn in &fqfns {
            let mut args = verb.to_vec();
            args.extend(["--fqfn", fqfn]);
            let run = worker.cli_as(Some(EVIL), &args);
            let shown = format!("{verb:?} {:.60}: {:.300}", fqfn, run.stderr);
            assert!(!run.success && !run.stderr.trim().is_empty(), "{shown}");
            assert!(!run.stderr.contains("panicked") && !leaks(&run.stdout) && !leaks(&run.stderr), "{shown}");
        }
    }
    let mut topics: Vec<String> = hostile_names().into_iter().map(|name| format!("evil/ns/{name}")).collect();
    topics.extend(["acme/ns/in".to_owned(), "acme/ns/out".to_owned(), "persistent://acme/ns/out".to_owned()]);
    for topic in &topics {
        for args in [vec!["topics", "produce", topic, "-m", "forged"], vec!["topics", "consume", topic, "--until-idle"]]
        {
            let run = worker.cli_as(Some(EVIL), &args);
            let shown = format!("{:?}: {:.300}", &args[..2], run.stderr);
            assert!(!run.success && !run.stderr.trim().is_empty(), "{topic:.60} {shown}");
            assert!(!run.stderr.contains("panicked") && !leaks(&run.stdout) && !leaks(&run.stderr), "{shown}");
        }
    }

    // acme's function, state, outputs and cursor are as they were.
    let status = worker.cli_as(Some(ACME), &["functions", "status", "--fqfn", "acme/ns/f"]);
    assert!(status.stdout.contains("\"numRunning\": 1"), "{}", status.stdout);
    let state = worker.cli_as(Some(ACME), &["functions", "querystate", "--fqfn", "acme/ns/f", "--key", "secret"]);
    assert!(state.stdout.contains("acme-secret"), "{}", state.stderr);
    let outputs = worker.cli_as(Some(ACME), &["topics", "consume", "acme/ns/out", "-s", "audit", "--until-idle"]);
    assert_eq!(outputs.stdout.lines().collect::<Vec<_>>(), ["acme-private!"], "{}", outputs.stderr);
    let inputs = worker.cli_as(Some(ACME), &["topics", "consume", "acme/ns/in", "-s", "audit", "--until-idle"]);
    assert_eq!(inputs.stdout.lines().collect::<Vec<_>>(), ["acme-private"], "{}", inputs.stderr);
    let stats = worker.cli_as(Some(ACME), &["functions", "stats", "--fqfn", "acme/ns/f"]);
    assert!(stats.stdout.contains("\"processedSuccessfullyTotal\": 1"), "processed once: {}", stats.stdout);
}

#[test]
fn evils_long_polls_are_capped_and_answers_are_bounded_while_acme_is_served() {
    use base64::Engine as _;
    let fnhost = Fnhost::new();
    let worker = std::sync::Arc::new(start_worker(&fnhost, ""));
    let created = create(&worker, ACME, "exclamation", "acme/ns/f", &["-i", "acme/ns/in", "-o", "acme/ns/out"]);
    assert!(created.success, "{}", created.stderr);
    // evil keeps long-polls open on an empty topic, more of them than it may have.
    let attacking = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pollers: Vec<_> = (0..12)
        .map(|poller| {
            let (worker, attacking, busy) = (worker.clone(), attacking.clone(), busy.clone());
            std::thread::spawn(move || {
                let path = format!("/topics/persistent/evil/ns/empty/subscription/s{poller}/receive?waitMs=10000");
                while attacking.load(std::sync::atomic::Ordering::Relaxed) {
                    let (status, answer) = worker.http_as(Some(EVIL), "POST", &path, json("{}"));
                    match status {
                        200 => {}
                        429 => {
                            let reason = answer["reason"].as_str().unwrap_or_default().to_owned();
                            assert!(reason.contains("MAX_CONCURRENT_RECEIVES_PER_TENANT"), "{answer}");
                            assert!(!reason.contains("acme"), "{answer}");
                            busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                        }
                        other => panic!("evil's receive answered {other}: {answer}"),
                    }
                }
            })
        })
        .collect();
    worker.wait_for("evil to reach its cap of long-polls", || busy.load(std::sync::atomic::Ordering::Relaxed) > 0);
    // acme is served meanwhile, and its function goes on.
    let (status, answer) = worker.http_as(Some(ACME), "GET", "/admin/v3/functions/acme/ns/f/status", None);
    assert_eq!((status, answer["numRunning"].as_u64()), (200, Some(1)), "{answer}");
    produce(&worker, ACME, "acme/ns/in", &["hello".to_owned()]);
    assert_eq!(worker.read_as(Some(ACME), "acme/ns/out", 1), ["hello!"]);
    let path = "/topics/persistent/acme/ns/out/subscription/poll/receive?waitMs=100&position=earliest";
    let (status, answer) = worker.http_as(Some(ACME), "POST", path, json("{}"));
    assert_eq!((status, values(&answer)), (200, vec!["hello!".to_owned()]), "{answer}");
    attacking.store(false, std::sync::atomic::Ordering::Relaxed);
    for poller in pollers {
        poller.join().unwrap();
    }

    // However many messages evil asks for, one answer holds at most MAX_RECEIVE_BYTES of them.
    let big = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; 3 << 20]);
    let body = format!(r#"{{"messages": [{{"payload": "{big}"}}, {{"payload": "{big}"}}, {{"payload": "{big}"}}]}}"#);
    let (status, answer) = worker.http_as(Some(EVIL), "POST", "/topics/persistent/evil/ns/big", json(&body));
    assert_eq!(status, 200, "{answer}");
    let mut received = 0;
    let path = "/topics/persistent/evil/ns/big/subscription/hoard/receive?count=40&position=earliest";
    for answers in 1..=3 {
        let (status, answer) = worker.http_as(Some(EVIL), "POST", path, json("{}"));
        assert_eq!(status, 200, "{answer}");
        let messages = answer["messages"].as_array().unwrap();
        let count = messages.len();
        assert!((1..=2).contains(&count), "8 MiB hold at most two 3 MiB messages, got {count}");
        let ids: Vec<&serde_json::Value> = messages.iter().map(|message| &message["messageId"]).collect();
        let acknowledge = serde_json::json!({ "messageIds": ids }).to_string();
        let path = "/topics/persistent/evil/ns/big/subscription/hoard/acknowledge";
        let (status, answer) = worker.http_as(Some(EVIL), "POST", path, json(&acknowledge));
        assert_eq!(status, 200, "{answer}");
        received += count;
        if received == 3 {
            assert!(answers >= 2, "three messages came in one answer");
            break;
        }
    }
    assert_eq!(received, 3, "every message comes, over several answers");
}

#[test]
fn a_guest_flooding_its_log_reaches_the_workers_log_at_a_bounded_rate() {
    let fnhost = Fnhost::new();
    let worker = start_worker(&fnhost, "");
    let args = ["-i", "evil/ns/in", "--timeout-ms", "1500", "--max-message-retries", "0"];
    let created = create(&worker, EVIL, "misbehave", "evil/ns/flood", &args);
    assert!(created.success, "{}", created.stderr);
    let started = std::time::Instant::now();
    produce(&worker, EVIL, "evil/ns/in", &["log-flood".to_owned()]);
    worker.wait_for("the flood to hit its time limit", || {
        let (_, stats) = worker.http_as(Some(EVIL), "GET", "/admin/v3/functions/evil/ns/flood/stats", None);
        stats["systemExceptionsTotal"].as_u64() == Some(1)
    });
    let seconds = started.elapsed().as_secs() + 1;
    let log = worker.log();
    let lines = log.lines().filter(|line| line.contains("flooding the log")).count() as u64;
    // The guest writes hundreds of thousands of lines a second; the worker's log takes a budget.
    assert!(lines > 0, "the first lines get through");
    assert!(lines <= 100 * (seconds + 1), "{lines} lines in about {seconds} s");
    assert!(log.contains("MAX_WORKER_LOG_LINES_PER_SECOND"), "the log says that lines were left out");
}

#[test]
fn a_tenant_without_a_quota_gets_a_quarter_of_the_worker_and_the_rest_stays_for_others() {
    let fnhost = Fnhost::new();
    let access = fnhost.data_dir().with_extension("access.yaml");
    std::fs::write(&access, access_file("")).unwrap();
    let worker = Worker::start_with(fnhost.data_dir(), &["--access", access.to_str().unwrap(), "--max-instances", "8"]);
    let refused = create(&worker, EVIL, "exclamation", "evil/ns/all", &["-i", "evil/ns/in", "--parallelism", "3"]);
    assert!(!refused.success, "a quarter of 8 instances is 2");
    assert!(refused.stderr.contains("maxInstances") && !refused.stderr.contains("acme"), "{}", refused.stderr);
    let created = create(&worker, EVIL, "exclamation", "evil/ns/two", &["-i", "evil/ns/in", "--parallelism", "2"]);
    assert!(created.success, "{}", created.stderr);
    let created = create(&worker, ACME, "exclamation", "acme/ns/f", &["-i", "acme/ns/in", "--parallelism", "2"]);
    assert!(created.success, "acme still has its share: {}", created.stderr);
}
