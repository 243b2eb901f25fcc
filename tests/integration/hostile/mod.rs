//! A tenant who attacks: two tenants on one worker, `acme` and `evil`, and every name and shared
//! resource evil can reach. Each test runs the attack as evil and checks that acme's data,
//! outputs and cursors and the worker's health are untouched, and that a refusal is clear and says
//! nothing about acme.

mod names;
mod resources;
mod web;

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

/// The status of instance 0 of `fqfn`, as `token`'s bearer.
fn instance_running(worker: &Worker, token: &str, fqfn: &str) -> bool {
    let (_, status) = worker.http_as(Some(token), "GET", &format!("/admin/v3/functions/{fqfn}/status"), None);
    status["numRunning"].as_u64() == Some(1)
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
