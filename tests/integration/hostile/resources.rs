//! Shared resources evil tries to take: a guest that never returns, host-owned keys, metric
//! names, long-polls and big answers, the worker's log, instance slots, the control plane's CPU
//! and the disk.

use super::*;
use crate::support::{Fnhost, Worker, guest};

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

#[test]
fn a_tenant_changing_functions_past_its_rate_is_refused_and_others_change_theirs() {
    let fnhost = Fnhost::new();
    // One change at once, then one each 30 s: evil's second change comes too soon on any machine.
    let worker = start_worker(&fnhost, "    maxFunctionChangesPerMinute: 2\n");
    let created = create(&worker, EVIL, "exclamation", "evil/ns/f", &["-i", "evil/ns/in", "-o", "evil/ns/out"]);
    assert!(created.success, "{}", created.stderr);
    let refused = worker.cli_as(Some(EVIL), &["functions", "update", "--fqfn", "evil/ns/f", "--parallelism", "2"]);
    assert!(!refused.success && refused.stderr.contains("HTTP 429"), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("maxFunctionChangesPerMinute") && refused.stderr.contains("try again in"),
        "{}",
        refused.stderr
    );
    let deleted = worker.cli_as(Some(EVIL), &["functions", "delete", "--fqfn", "evil/ns/f"]);
    assert!(!deleted.success && deleted.stderr.contains("HTTP 429"), "{}", deleted.stderr);
    // The refused changes changed nothing: evil's function runs as created, with one instance.
    assert!(instance_running(&worker, EVIL, "evil/ns/f"));
    let (_, status) = worker.http_as(Some(EVIL), "GET", "/admin/v3/functions/evil/ns/f/status", None);
    assert_eq!(status["numInstances"], 1, "{status}");
    produce(&worker, EVIL, "evil/ns/in", &["hi".into()]);
    assert_eq!(worker.read_as(Some(EVIL), "evil/ns/out", 1), ["hi!"]);

    // acme's changes are its own, at the default rate.
    let created = create(&worker, ACME, "exclamation", "acme/ns/f", &["-i", "acme/ns/in"]);
    assert!(created.success, "{}", created.stderr);
    let updated = worker.cli_as(Some(ACME), &["functions", "update", "--fqfn", "acme/ns/f", "--parallelism", "2"]);
    assert!(updated.success, "{}", updated.stderr);
    let deleted = worker.cli_as(Some(ACME), &["functions", "delete", "--fqfn", "acme/ns/f"]);
    assert!(deleted.success, "{}", deleted.stderr);
}

#[test]
fn a_tenant_receiving_past_its_byte_rate_is_refused_and_others_receive() {
    use base64::Engine as _;
    let fnhost = Fnhost::new();
    // A byte a second: after its first answers evil is in debt for longer than any test runs.
    let worker = start_worker(&fnhost, "    maxReceiveBytesPerSecond: 1\n");
    let big = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; 3 << 20]);
    let body = format!(r#"{{"messages": [{{"payload": "{big}"}}, {{"payload": "{big}"}}, {{"payload": "{big}"}}]}}"#);
    for token_and_topic in [(EVIL, "evil/ns/big"), (ACME, "acme/ns/big")] {
        let path = format!("/topics/persistent/{}", token_and_topic.1);
        let (status, answer) = worker.http_as(Some(token_and_topic.0), "POST", &path, json(&body));
        assert_eq!(status, 200, "{answer}");
    }
    // Never acknowledged, the same messages come again: each answer costs the worker anew.
    let receive = "/topics/persistent/evil/ns/big/subscription/hoard/receive?count=40&position=earliest";
    // The first answers are let through (the bucket holds one largest answer, MAX_RECEIVE_BYTES);
    // the tenant is then in debt, and refused.
    let mut statuses = Vec::new();
    let answer = loop {
        let (status, answer) = worker.http_as(Some(EVIL), "POST", receive, json("{}"));
        statuses.push(status);
        if status != 200 || statuses.len() > 3 {
            break answer;
        }
        assert_eq!(answer["messages"].as_array().map(Vec::len), Some(2), "8 MiB hold two 3 MiB messages");
    };
    assert_eq!(statuses, [200, 200, 429], "{answer}");
    let reason = answer["reason"].as_str().unwrap();
    assert!(reason.contains("maxReceiveBytesPerSecond") && reason.contains("try again in"), "{answer}");
    assert!(!reason.contains("acme"), "{answer}");
    // acme receives at its own rate: three answers of 6 MiB, past what evil may have.
    let path = "/topics/persistent/acme/ns/big/subscription/reader/receive?count=40&position=earliest";
    for _ in 0..3 {
        let (status, answer) = worker.http_as(Some(ACME), "POST", path, json("{}"));
        let reason = &answer["reason"];
        assert_eq!((status, answer["messages"].as_array().map(Vec::len)), (200, Some(2)), "{reason}");
    }
}

#[test]
fn a_receive_just_past_the_byte_rate_is_held_until_the_rate_lets_it_through() {
    use base64::Engine as _;
    let fnhost = Fnhost::new();
    // Answers of 6 MiB: about two and a half at once, then one each 0.4 s. From the third on,
    // each receive finds the tenant in debt for up to 0.4 s, less than a refusal is held.
    let worker = start_worker(&fnhost, "    maxReceiveBytesPerSecond: 16777216\n");
    let big = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; 3 << 20]);
    let body = format!(r#"{{"messages": [{{"payload": "{big}"}}, {{"payload": "{big}"}}]}}"#);
    let (status, answer) = worker.http_as(Some(EVIL), "POST", "/topics/persistent/evil/ns/big", json(&body));
    assert_eq!(status, 200, "{answer}");
    let receive = "/topics/persistent/evil/ns/big/subscription/hoard/receive?count=40&position=earliest";
    for round in 0..6 {
        let (status, answer) = worker.http_as(Some(EVIL), "POST", receive, json("{}"));
        let reason = &answer["reason"];
        assert_eq!((status, answer["messages"].as_array().map(Vec::len)), (200, Some(2)), "round {round}: {reason}");
    }
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
