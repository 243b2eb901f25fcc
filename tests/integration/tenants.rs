//! Tenants that do not trust each other on one worker: bearer tokens, the tenant boundary around
//! functions, topics and state, topic grants, quotas, and a worker without tokens.

use crate::support::{ACME, Fnhost, GLOBEX, OPERATOR, Worker, fnhost_command, guest};

/// A worker with an operator, tenant `acme` (granted the `shared` tenant's topics, two functions,
/// three instances and 1 GiB at most) and tenant `globex` (the default quotas).
fn start_worker(fnhost: &Fnhost) -> Worker {
    let access = fnhost.data_dir().with_extension("access.yaml");
    let text = format!(
        "operatorTokens: [{OPERATOR}]\ntenants:\n  acme:\n    tokens: [{ACME}]\n    grantedTopics: [shared]\n    maxFunctions: 2\n    maxInstances: 3\n    maxMemoryBytes: 1073741824\n  globex:\n    tokens: [{GLOBEX}]\n"
    );
    std::fs::write(&access, text).unwrap();
    Worker::start_with(fnhost.data_dir(), &["--access", access.to_str().unwrap()])
}

/// Creates `fqfn` from the test guest `guest_name`, as `token`'s bearer; returns the CLI's run.
fn create(worker: &Worker, token: &str, guest_name: &str, fqfn: &str, extra: &[&str]) -> crate::support::Run {
    let wasm = guest(guest_name);
    let mut args = vec!["functions", "create", "--wasm", wasm.to_str().unwrap(), "--fqfn", fqfn];
    args.extend(extra);
    worker.cli_as(Some(token), &args)
}

fn counter(worker: &Worker, key: &str) -> Option<i64> {
    let path = format!("/admin/v3/functions/globex/ns/word-count/state/{key}");
    let (status, state) = worker.http_as(Some(OPERATOR), "GET", &path, None);
    (status == 200).then(|| state["numberValue"].as_i64()).flatten()
}

fn produce(worker: &Worker, token: &str, topic: &str, message: &str) -> crate::support::Run {
    worker.cli_as(Some(token), &["topics", "produce", topic, "-m", message])
}

#[test]
fn a_tenant_token_reaches_only_its_own_tenant_and_nothing_changes_across_the_boundary() {
    let fnhost = Fnhost::new();
    let worker = start_worker(&fnhost);
    let created = create(&worker, GLOBEX, "word-count", "globex/ns/word-count", &["-i", "globex/ns/words"]);
    assert!(created.success, "{}", created.stderr);
    assert!(produce(&worker, GLOBEX, "globex/ns/words", "the quick the").success);
    worker.wait_for("globex's count", || counter(&worker, "the") == Some(2));

    // Without a token, or with one the worker does not know, only /health and /openapi.yaml answer.
    let functions = "/admin/v3/functions/globex/ns";
    for token in [None, Some("not-a-token-of-this-worker-0123456789abcdef")] {
        let (status, body) = worker.http_as(token, "GET", functions, None);
        assert_eq!(status, 401, "{body}");
    }
    assert_eq!(worker.http("GET", "/health", None).0, 200);
    assert_eq!(worker.http("GET", "/openapi.yaml", None).0, 200);

    // Every way from acme into globex is refused with 403 and the reason.
    let state = "/admin/v3/functions/globex/ns/word-count/state/the";
    let topic = "/topics/persistent/globex/ns/words";
    let json = |text: &str| Some(("application/json", text.as_bytes().to_vec()));
    let attempts = [
        ("GET", functions.to_owned(), None),
        ("GET", "/admin/v3/functions/globex/ns/word-count".to_owned(), None),
        ("GET", "/admin/v3/functions/globex/ns/word-count/status".to_owned(), None),
        ("GET", state.to_owned(), None),
        ("GET", format!("{state}?asOf=0"), None),
        ("GET", format!("{state}?why=true"), None),
        ("GET", "/admin/v3/functions/globex/ns/word-count/state?prefix=t".to_owned(), None),
        ("PUT", "/admin/v3/functions/globex/ns/word-count/log-level".to_owned(), json(r#"{"logLevel": "debug"}"#)),
        ("POST", "/admin/v3/functions/globex/ns/word-count/replay".to_owned(), json(r#"{"message": "0"}"#)),
        ("POST", state.to_owned(), json(r#"{"key": "the", "numberValue": 100}"#)),
        ("POST", "/admin/v3/functions/globex/ns/word-count/stop".to_owned(), None),
        ("DELETE", "/admin/v3/functions/globex/ns/word-count".to_owned(), None),
        ("POST", topic.to_owned(), json(r#"{"messages": [{"value": "the"}]}"#)),
        ("POST", format!("{topic}/subscription/spy/receive"), json("{}")),
        ("GET", "/metrics".to_owned(), None),
        ("GET", "/admin/v2/worker/cluster".to_owned(), None),
    ];
    for (method, path, body) in attempts {
        let (status, answer) = worker.http_as(Some(ACME), method, &path, body);
        assert_eq!(status, 403, "{method} {path}: {answer}");
        assert!(answer["reason"].as_str().is_some_and(|reason| reason.contains("tenant `acme`")), "{answer}");
    }
    // Globex lists its own keys.
    let (status, listed) =
        worker.http_as(Some(GLOBEX), "GET", "/admin/v3/functions/globex/ns/word-count/state?prefix=", None);
    assert_eq!((status, listed), (200, serde_json::json!({"keys": ["quick", "the"]})));
    // The CLI says the same.
    let refused = produce(&worker, ACME, "globex/ns/words", "the");
    assert!(!refused.success && refused.stderr.contains("HTTP 403"), "{}", refused.stderr);

    // A tenant cannot have the worker read its own files, as a component or as source; the
    // operator can.
    let on_the_worker = guest("word_count");
    for field in ["wasm", "py", "js"] {
        let config = format!(r#"{{"inputs": ["acme/ns/in"], "{field}": "{}"}}"#, on_the_worker.display());
        let form = multipart_config(&config);
        let (status, answer) = worker.http_as(Some(ACME), "POST", "/admin/v3/functions/acme/ns/local", Some(form));
        assert_eq!(status, 403, "{field}: {answer}");
        assert!(answer["reason"].as_str().is_some_and(|reason| reason.contains("upload the component")), "{answer}");
    }
    let (status, _) = worker.http_as(Some(ACME), "GET", "/admin/v3/functions/acme/ns/local", None);
    assert_eq!(status, 404, "nothing was created");
    let config = format!(r#"{{"inputs": ["acme/ns/in"], "wasm": "{}"}}"#, on_the_worker.display());
    let (status, answer) =
        worker.http_as(Some(OPERATOR), "POST", "/admin/v3/functions/acme/ns/local", Some(multipart_config(&config)));
    assert_eq!(status, 200, "{answer}");
    // Within acme's quota of two functions.
    let (status, answer) = worker.http_as(Some(OPERATOR), "DELETE", "/admin/v3/functions/acme/ns/local", None);
    assert_eq!(status, 200, "{answer}");

    // An acme function may neither read nor publish to globex's topics, named in its config...
    for (extra, role) in [
        (&["-i", "globex/ns/words"][..], "input topic"),
        (&["-i", "acme/ns/in", "-o", "globex/ns/words"][..], "output topic"),
        (&["-i", "acme/ns/in", "--dead-letter-topic", "globex/ns/words"][..], "dead-letter topic"),
    ] {
        let run = create(&worker, ACME, "misbehave", "acme/ns/spy", extra);
        assert!(!run.success, "{extra:?}");
        assert!(
            run.stderr.contains(&format!("{role} persistent://globex/ns/words belongs to tenant `globex`")),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains("HTTP 403"), "{}", run.stderr);
    }
    // ...nor at run time; a granted tenant's topics it may.
    let created =
        create(&worker, ACME, "misbehave", "acme/ns/publisher", &["-i", "acme/ns/commands", "-o", "acme/ns/results"]);
    assert!(created.success, "{}", created.stderr);
    for command in ["publish-to:persistent://globex/ns/words", "publish-to:persistent://shared/ns/news"] {
        assert!(produce(&worker, ACME, "acme/ns/commands", command).success);
    }
    worker.wait_for("the publisher's two messages", || {
        let (_, stats) = worker.http_as(Some(ACME), "GET", "/admin/v3/functions/acme/ns/publisher/stats", None);
        stats["receivedTotal"].as_u64() == Some(2)
    });
    let (_, stats) = worker.http_as(Some(ACME), "GET", "/admin/v3/functions/acme/ns/publisher/stats", None);
    // The refused publish fails its message, which is tried again and then dead-lettered.
    let tries = fnhost::limits::DEFAULT_MAX_MESSAGE_RETRIES + 1;
    assert_eq!(
        (stats["userExceptionsTotal"].as_u64(), stats["deadLetteredTotal"].as_u64()),
        (Some(tries.into()), Some(1)),
        "{stats}"
    );
    let (_, status) = worker.http_as(Some(ACME), "GET", "/admin/v3/functions/acme/ns/publisher/status", None);
    let exceptions = status["instances"][0]["status"]["latestUserExceptions"].to_string();
    assert!(exceptions.contains("belongs to tenant `globex`"), "{status}");
    assert_eq!(worker.read_as(Some(OPERATOR), "persistent://shared/ns/news", 1), ["published"]);

    // Nothing crossed: a marker produced last is counted, and nothing before it was.
    assert!(produce(&worker, GLOBEX, "globex/ns/words", "marker").success);
    worker.wait_for("the marker", || counter(&worker, "marker") == Some(1));
    assert_eq!(counter(&worker, "the"), Some(2));
    assert_eq!(counter(&worker, "published"), None);
    let (status, _) = worker.http_as(Some(GLOBEX), "GET", "/admin/v3/functions/globex/ns/word-count", None);
    assert_eq!(status, 200, "globex's function is still there");
    let (status, listed) = worker.http_as(Some(OPERATOR), "GET", "/admin/v3/functions/acme/ns", None);
    assert_eq!(
        (status, listed),
        (200, serde_json::json!(["publisher"])),
        "no acme function was created but the publisher"
    );

    // Tokens never reach the log.
    let log = worker.log();
    for token in [OPERATOR, ACME, GLOBEX] {
        assert!(!log.contains(token), "the worker logged a token");
    }
}

#[test]
fn quotas_refuse_what_would_take_a_tenant_past_them_and_name_the_quota() {
    let fnhost = Fnhost::new();
    let worker = start_worker(&fnhost);
    let ok = create(&worker, ACME, "exclamation", "acme/ns/one", &["-i", "acme/ns/in"]);
    assert!(ok.success, "{}", ok.stderr);
    // acme: 2 functions, 3 instances, 1 GiB; `one` holds 1 instance of 128 MiB.
    let cases = [
        (&["--parallelism", "3"][..], "4 instances, past its quota of 3", "maxInstances"),
        (&["--ram", "1G"][..], "past its quota of 1073741824", "maxMemoryBytes"),
    ];
    for (extra, what, field) in cases {
        let mut args = vec!["-i", "acme/ns/in"];
        args.extend(extra);
        let run = create(&worker, ACME, "exclamation", "acme/ns/two", &args);
        assert!(!run.success, "{extra:?}");
        assert!(run.stderr.contains(what) && run.stderr.contains(field), "{extra:?}: {}", run.stderr);
        assert!(run.stderr.contains("HTTP 403"), "{}", run.stderr);
    }
    let ok = create(&worker, ACME, "exclamation", "acme/ns/two", &["-i", "acme/ns/in", "--parallelism", "2"]);
    assert!(ok.success, "{}", ok.stderr);
    let run = create(&worker, ACME, "exclamation", "acme/ns/three", &["-i", "acme/ns/in"]);
    assert!(
        run.stderr.contains("3 functions, past its quota of 2") && run.stderr.contains("maxFunctions"),
        "{}",
        run.stderr
    );
    // An update is held to the quota too, and the function keeps its config.
    let run = worker.cli_as(Some(ACME), &["functions", "update", "--fqfn", "acme/ns/two", "--parallelism", "3"]);
    assert!(run.stderr.contains("maxInstances"), "{}", run.stderr);
    let (_, two) = worker.http_as(Some(ACME), "GET", "/admin/v3/functions/acme/ns/two", None);
    assert_eq!(two["parallelism"], 2, "{two}");
    // Another tenant's quota is its own.
    let ok = create(&worker, GLOBEX, "exclamation", "globex/ns/one", &["-i", "globex/ns/in", "--parallelism", "4"]);
    assert!(ok.success, "{}", ok.stderr);
}

#[test]
fn a_worker_without_tokens_listens_only_on_loopback_and_says_so() {
    let fnhost = Fnhost::new();
    // Refused before it binds anything.
    let output = fnhost_command()
        .args(["worker", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(fnhost.data_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("is not a loopback address, and no tokens are configured"), "{stderr}");
    let worker = Worker::start(fnhost.data_dir());
    assert!(worker.log().contains("listens only on loopback"), "{}", worker.log());
    assert_eq!(worker.http("GET", "/admin/v3/functions/public/default", None).0, 200);
}

/// A multipart form with only the `functionConfig` field, as the CLI sends it.
fn multipart_config(config: &str) -> (&'static str, Vec<u8>) {
    let body = format!(
        "--boundary\r\nContent-Disposition: form-data; name=\"functionConfig\"\r\nContent-Type: application/json\r\n\r\n{config}\r\n--boundary--\r\n"
    );
    ("multipart/form-data; boundary=boundary", body.into_bytes())
}
