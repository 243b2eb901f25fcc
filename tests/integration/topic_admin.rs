//! pulsar-admin's topic and namespace verbs through the CLI against a worker: each verb, its
//! refusals (401, 403, 404, 409, 400), the tenant boundary, and each tenant's storage quota.

use crate::support::{Fnhost, Run, Worker};

const OPERATOR: &str = "operator-0123456789abcdef0123456789abcdef";
const ACME: &str = "acme-0123456789abcdef0123456789abcdef00000";
const GLOBEX: &str = "globex-0123456789abcdef0123456789abcdef000";

/// A worker with an operator and tenants `acme` (at most `acme_storage` bytes of messages) and `globex`.
fn start_worker(fnhost: &Fnhost, acme_storage: u64) -> Worker {
    let access = fnhost.data_dir().with_extension("access.yaml");
    let text = format!(
        "operatorTokens: [{OPERATOR}]\ntenants:\n  acme:\n    tokens: [{ACME}]\n    maxStorageBytes: {acme_storage}\n  globex:\n    tokens: [{GLOBEX}]\n"
    );
    std::fs::write(&access, text).unwrap();
    Worker::start_with(fnhost.data_dir(), &["--access", access.to_str().unwrap()])
}

fn ok(worker: &Worker, args: &[&str]) -> String {
    let run = worker.cli_as(Some(ACME), args);
    assert!(run.success, "fnhost {args:?} failed:\n{}\nworker log:\n{}", run.stderr, worker.log());
    run.stdout
}

fn json(worker: &Worker, args: &[&str]) -> serde_json::Value {
    let stdout = ok(worker, args);
    serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("{args:?} printed no JSON ({error}): {stdout}"))
}

/// Runs a verb that must be refused with `status`; returns the reason.
fn refused(run: Run, status: u16) -> String {
    assert!(!run.success, "should have failed: {}", run.stdout);
    assert!(run.stderr.contains(&format!("HTTP {status}")), "expected HTTP {status}: {}", run.stderr);
    run.stderr
}

fn backlog(worker: &Worker, topic: &str, subscription: &str) -> u64 {
    let stats = json(worker, &["topics", "stats", topic]);
    stats["subscriptions"][subscription]["msgBacklog"].as_u64().unwrap_or_else(|| panic!("{stats}"))
}

#[test]
fn every_topic_verb_works_through_the_cli_and_answers_with_pulsars_statuses() {
    let fnhost = Fnhost::new();
    let worker = start_worker(&fnhost, 1 << 30);
    let topic = "persistent://acme/ns/events";

    assert!(ok(&worker, &["topics", "create", topic]).contains("created"));
    assert!(refused(worker.cli_as(Some(ACME), &["topics", "create", topic]), 409).contains("already exists"));
    assert_eq!(ok(&worker, &["topics", "list", "acme/ns"]).trim(), topic);
    assert_eq!(ok(&worker, &["topics", "list", "acme/empty"]).trim(), "", "a namespace without topics lists none");

    let values: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    let mut produce = vec!["topics", "produce", topic];
    for value in &values {
        produce.extend(["-m", value]);
    }
    ok(&worker, &produce);
    // Consuming three messages through the worker makes the subscription and acknowledges them.
    let consumed = ok(&worker, &["topics", "consume", topic, "-s", "audit", "-n", "3"]);
    assert_eq!(consumed.lines().collect::<Vec<_>>(), ["m0", "m1", "m2"]);
    assert_eq!(ok(&worker, &["topics", "subscriptions", topic]).trim(), "audit");

    let stats = json(&worker, &["topics", "stats", topic]);
    assert_eq!(stats["msgInCounter"], 10, "{stats}");
    assert!(stats["storageSize"].as_u64().unwrap() > 0 && stats["backlogSize"].as_u64().unwrap() > 0, "{stats}");
    let audit = &stats["subscriptions"]["audit"];
    assert_eq!((audit["msgBacklog"].as_u64(), audit["unackedMessages"].as_u64()), (Some(7), Some(0)), "{stats}");
    for field in ["msgRateIn", "msgThroughputIn", "msgRateOut", "msgThroughputOut"] {
        assert!(stats[field].is_number(), "{field} in {stats}");
    }

    // Peeking consumes nothing.
    let peeked: Vec<serde_json::Value> = ok(&worker, &["topics", "peek-messages", topic, "-s", "audit", "-n", "2"])
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(peeked.iter().map(|message| message["value"].as_str().unwrap()).collect::<Vec<_>>(), ["m3", "m4"]);
    assert_eq!(backlog(&worker, topic, "audit"), 7);
    let many = ok(&worker, &["topics", "peek-messages", topic, "-s", "audit", "-n", "50"]);
    assert_eq!(many.lines().count(), 7, "a peek past the backlog prints what there is");

    ok(&worker, &["topics", "skip", topic, "-s", "audit", "-n", "2"]);
    assert_eq!(backlog(&worker, topic, "audit"), 5);

    let earliest = json(&worker, &["topics", "examine-message", topic, "--initialPosition", "earliest", "-m", "2"]);
    assert_eq!(earliest["value"], "m1");
    let latest = json(&worker, &["topics", "examine-message", topic, "--initialPosition", "latest"]);
    assert_eq!(latest["value"], "m9");
    let beyond = worker.cli_as(Some(ACME), &["topics", "examine-message", topic, "-m", "11"]);
    assert!(refused(beyond, 404).contains("no message at position 11"));

    let id = earliest["messageId"].as_str().unwrap();
    ok(&worker, &["topics", "reset-cursor", topic, "-s", "audit", "--message-id", id]);
    assert_eq!(backlog(&worker, topic, "audit"), 9, "everything from m1 on is delivered again");
    ok(&worker, &["topics", "reset-cursor", topic, "-s", "audit", "--time", "10m"]);
    assert_eq!(backlog(&worker, topic, "audit"), 10, "everything of the last ten minutes is delivered again");
    let replayed = ok(&worker, &["topics", "consume", topic, "-s", "audit", "-n", "10"]);
    assert_eq!(replayed.lines().collect::<Vec<_>>(), values);
    ok(&worker, &["topics", "reset-cursor", topic, "-s", "audit", "--time", "10m"]);
    ok(&worker, &["topics", "clear-backlog", topic, "-s", "audit"]);
    assert_eq!(backlog(&worker, topic, "audit"), 0);

    // What is not there is 404; bad input is 400 or the CLI's own refusal, and changes nothing.
    let missing = worker.cli_as(Some(ACME), &["topics", "skip", topic, "-s", "nobody", "-n", "1"]);
    assert!(refused(missing, 404).contains("subscription `acme/ns/nobody` does not exist"));
    let missing = worker.cli_as(Some(ACME), &["topics", "stats", "persistent://acme/ns/nothing"]);
    assert!(refused(missing, 404).contains("does not exist"));
    let run = worker.cli_as(Some(ACME), &["topics", "reset-cursor", topic, "-s", "audit", "--message-id", "m1"]);
    assert!(refused(run, 400).contains("not one of fnhost's"));
    let run = worker.cli_as(Some(ACME), &["topics", "reset-cursor", topic, "-s", "audit", "--time", "ten"]);
    assert!(!run.success && run.stderr.contains("is not a duration"), "{}", run.stderr);
    let run = worker.cli_as(Some(ACME), &["topics", "peek-messages", topic, "-s", "audit", "-n", "5000"]);
    assert!(!run.success && run.stderr.contains("MAX_PEEK_MESSAGES"), "{}", run.stderr);
    let far = "/admin/v2/persistent/acme/ns/events/subscription/audit/position/5000";
    let (status, answer) = worker.http_as(Some(ACME), "GET", far, None);
    assert_eq!(status, 400, "{answer}");
    assert!(answer["reason"].as_str().unwrap().contains("MAX_PEEK_MESSAGES"), "{answer}");
    let (status, answer) =
        worker.http_as(Some(ACME), "GET", "/admin/v2/persistent/acme/ns/events/subscription/a%2Fb/position/1", None);
    assert_eq!(status, 400, "a subscription name is one segment: {answer}");
    let long = format!("persistent://acme/ns/{}", "t".repeat(200));
    let run = worker.cli_as(Some(ACME), &["topics", "create", &long]);
    assert!(!run.success && run.stderr.contains("MAX_NAME_LEN"), "{}", run.stderr);
    let (status, answer) =
        worker.http_as(Some(ACME), "PUT", &format!("/admin/v2/persistent/acme/ns/{}", "t".repeat(200)), None);
    assert_eq!(status, 400, "{answer}");

    // A topic with a subscription is deleted only with --force; then it is gone.
    let run = worker.cli_as(Some(ACME), &["topics", "delete", topic]);
    assert!(refused(run, 409).contains("--force"));
    let run = worker.cli_as(Some(ACME), &["topics", "unsubscribe", topic, "-s", "nobody"]);
    refused(run, 404);
    ok(&worker, &["topics", "unsubscribe", topic, "-s", "audit"]);
    assert_eq!(ok(&worker, &["topics", "subscriptions", topic]).trim(), "");
    ok(&worker, &["topics", "consume", topic, "-s", "again", "-n", "1"]);
    ok(&worker, &["topics", "delete", topic, "--force"]);
    refused(worker.cli_as(Some(ACME), &["topics", "stats", topic]), 404);
    refused(worker.cli_as(Some(ACME), &["topics", "delete", topic]), 404);
    assert_eq!(ok(&worker, &["topics", "list", "acme/ns"]).trim(), "");
}

#[test]
fn namespace_policies_are_set_read_and_refused_with_the_reason() {
    let fnhost = Fnhost::new();
    let worker = start_worker(&fnhost, 1 << 30);
    let defaults = json(&worker, &["namespaces", "policies", "acme/ns"]);
    assert_eq!(defaults["retention_policies"]["retentionTimeInMinutes"], 0, "{defaults}");
    assert!(defaults.get("message_ttl_in_seconds").is_none(), "{defaults}");

    ok(&worker, &["namespaces", "set-retention", "acme/ns", "--time", "10m", "--size", "1G"]);
    let retention = json(&worker, &["namespaces", "get-retention", "acme/ns"]);
    assert_eq!(retention, serde_json::json!({"retentionTimeInMinutes": 10, "retentionSizeInMB": 1024}));
    ok(&worker, &["namespaces", "set-message-ttl", "acme/ns", "--messageTTL", "3600"]);
    ok(&worker, &["namespaces", "set-backlog-quota", "acme/ns", "-l", "10M", "-p", "producer_exception"]);
    let policies = json(&worker, &["namespaces", "policies", "acme/ns"]);
    assert_eq!(policies["retention_policies"]["retentionSizeInMB"], 1024, "{policies}");
    assert_eq!(policies["message_ttl_in_seconds"], 3600, "{policies}");
    let quota = &policies["backlog_quota_map"]["destination_storage"];
    assert_eq!((quota["limitSize"].as_u64(), quota["policy"].as_str()), (Some(10 << 20), Some("producer_exception")));
    // Each change keeps the others.
    ok(&worker, &["namespaces", "remove-message-ttl", "acme/ns"]);
    let policies = json(&worker, &["namespaces", "policies", "acme/ns"]);
    assert!(policies.get("message_ttl_in_seconds").is_none(), "{policies}");
    assert_eq!(policies["retention_policies"]["retentionTimeInMinutes"], 10, "{policies}");
    assert_eq!(policies["backlog_quota_map"]["destination_storage"]["policy"], "producer_exception");
    ok(&worker, &["namespaces", "remove-backlog-quota", "acme/ns"]);
    ok(&worker, &["namespaces", "set-retention", "acme/ns", "--time", "-1", "--size", "-1"]);
    let retention = json(&worker, &["namespaces", "get-retention", "acme/ns"]);
    assert_eq!(retention, serde_json::json!({"retentionTimeInMinutes": -1, "retentionSizeInMB": -1}));

    // Bad values are refused with what was wrong, and change nothing.
    let run = worker.cli_as(Some(ACME), &["namespaces", "set-backlog-quota", "acme/ns", "-l", "1M", "-p", "drop_all"]);
    assert!(!run.success && run.stderr.contains("`drop_all` is not one of"), "{}", run.stderr);
    let body = |text: &str| Some(("application/json", text.as_bytes().to_vec()));
    let bad = [
        ("retention", r#"{"retentionTimeInMinutes": -7, "retentionSizeInMB": 0}"#, "retentionTimeInMinutes -7"),
        ("retention", r#"{"retentionTime": 5}"#, "retentionTimeInMinutes"),
        ("messageTTL", "99999999999", "MAX_MESSAGE_TTL_SECONDS"),
        ("messageTTL", r#""an hour""#, "number of seconds"),
        ("backlogQuota", r#"{"limitSize": -1, "policy": "producer_exception"}"#, "limitSize -1"),
        ("backlogQuota", r#"{"limitSize": 5, "limitTime": 60, "policy": "producer_exception"}"#, "limitTime"),
    ];
    for (verb, text, reason) in bad {
        let (status, answer) =
            worker.http_as(Some(ACME), "POST", &format!("/admin/v2/namespaces/acme/ns/{verb}"), body(text));
        assert_eq!(status, 400, "{verb} {text}: {answer}");
        assert!(answer["reason"].as_str().unwrap().contains(reason), "{verb} {text}: {answer}");
    }
    let retention = json(&worker, &["namespaces", "get-retention", "acme/ns"]);
    assert_eq!(retention["retentionTimeInMinutes"], -1, "nothing changed");
    let run = worker.cli_as(Some(ACME), &["namespaces", "policies", "acme"]);
    assert!(!run.success && run.stderr.contains("give TENANT/NAMESPACE"), "{}", run.stderr);
}

#[test]
fn the_verbs_keep_to_the_tenant_boundary_and_need_a_token() {
    let fnhost = Fnhost::new();
    let worker = start_worker(&fnhost, 1 << 30);
    let theirs = "persistent://globex/ns/private";
    assert!(worker.cli_as(Some(GLOBEX), &["topics", "produce", theirs, "-m", "secret"]).success);
    let consumed = worker.cli_as(Some(GLOBEX), &["topics", "consume", theirs, "-s", "mine", "-n", "1"]);
    assert!(consumed.success, "{}", consumed.stderr);
    let attempts: [&[&str]; 14] = [
        &["topics", "list", "globex/ns"],
        &["topics", "create", "persistent://globex/ns/planted"],
        &["topics", "delete", theirs, "--force"],
        &["topics", "stats", theirs],
        &["topics", "subscriptions", theirs],
        &["topics", "unsubscribe", theirs, "-s", "mine"],
        &["topics", "reset-cursor", theirs, "-s", "mine", "--time", "10m"],
        &["topics", "skip", theirs, "-s", "mine", "-n", "1"],
        &["topics", "clear-backlog", theirs, "-s", "mine"],
        &["topics", "peek-messages", theirs, "-s", "mine", "-n", "1"],
        &["topics", "examine-message", theirs],
        &["namespaces", "policies", "globex/ns"],
        &["namespaces", "set-retention", "globex/ns", "--time", "-1", "--size", "-1"],
        &["namespaces", "set-backlog-quota", "globex/ns", "-l", "1", "-p", "producer_exception"],
    ];
    for args in attempts {
        let reason = refused(worker.cli_as(Some(ACME), args), 403);
        assert!(reason.contains("tenant `acme`"), "{args:?}: {reason}");
        refused(worker.cli_as(None, args), 401);
    }
    // Nothing changed for globex: its topic, subscription and message are as they were.
    let run = worker.cli_as(Some(GLOBEX), &["topics", "list", "globex/ns"]);
    assert_eq!(run.stdout.trim(), theirs, "{}", run.stderr);
    let stats = worker.cli_as(Some(GLOBEX), &["topics", "stats", theirs]);
    let stats: serde_json::Value = serde_json::from_str(&stats.stdout).unwrap();
    assert_eq!(stats["subscriptions"]["mine"]["msgBacklog"], 0, "{stats}");
    let policies = worker.cli_as(Some(OPERATOR), &["namespaces", "get-retention", "globex/ns"]);
    assert!(policies.stdout.contains("\"retentionTimeInMinutes\": 0"), "{}", policies.stdout);
    // The operator reaches every tenant's topics.
    let run = worker.cli_as(Some(OPERATOR), &["topics", "examine-message", theirs]);
    assert!(run.success && run.stdout.contains("secret"), "{}", run.stderr);
}

#[test]
fn a_tenant_at_its_storage_quota_is_refused_and_keeps_what_it_stored_while_others_go_on() {
    let fnhost = Fnhost::new();
    let worker = start_worker(&fnhost, 4096);
    let topic = "persistent://acme/ns/big";
    let value = "v".repeat(500);
    let mut accepted = 0;
    let refusal = loop {
        let run = worker.cli_as(Some(ACME), &["topics", "produce", topic, "-m", &value]);
        if !run.success {
            break run;
        }
        accepted += 1;
        assert!(accepted < 100, "4 KiB of quota took {accepted} messages of 500 bytes");
    };
    assert!(accepted >= 1, "the first messages fit");
    let reason = refused(refusal, 403);
    assert!(reason.contains("maxStorageBytes (4096)") && reason.contains("tenant `acme`"), "{reason}");
    // What it stored is all there; another tenant goes on.
    let read = worker.cli_as(Some(ACME), &["topics", "consume", topic, "-s", "check", "--until-idle"]);
    assert_eq!(read.stdout.lines().count(), accepted, "{}", read.stderr);
    for _ in 0..20 {
        let run = worker.cli_as(Some(GLOBEX), &["topics", "produce", "persistent://globex/ns/big", "-m", &value]);
        assert!(run.success, "{}", run.stderr);
    }
}
