//! pulsar-admin's command lines, run with `pulsar-admin` replaced by `fnhost`: the seed's
//! walkthrough as written, and every flag fnhost has no feature for (noted or refused, never
//! unexpected), in data-driven tests.

use std::path::Path;
use std::process::Command;

use fnhost::spec::pulsar::{Outcome, PULSAR_FLAGS};

use crate::seed::SEED_EVENTS;
use crate::support::{Fnhost, Worker, fnhost_command, guest, workspace};

/// The seed's two deploy commands, character for character as
/// `shared/seeds/pulsar-functions-state-example.txt` prints them, comment included.
const SEED_COMMANDS: [&str; 2] = [
    r#"pulsar-admin functions create \
  --py session_duration_function.py \
  --classname session_duration_function.SessionDurationFunction \
  --inputs persistent://public/default/input-topic \
  --name session-duration-calculator \
  --tenant public \
  --namespace default \
  --parallelism 1 \
  --memory 128M"#,
    r#"pulsar-admin functions create \
  --py session_duration_function_managed.py \
  --classname session_duration_function_managed.SessionDurationFunctionManagedState \
  --inputs persistent://public/default/input-topic \
  --name session-duration-calculator-managed \
  --tenant public \
  --namespace default \
  --parallelism 1 \
  --memory 128M \
  --state-storage-config '{"type":"bookkeeper"}' # or "zookeeper""#,
];

/// The words of a shell command line: continuation lines joined, single and double quotes
/// removed, a `#` comment dropped.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.replace("\\\n", " ").chars().collect::<Vec<_>>().into_iter();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                let text: String = chars.by_ref().take_while(|&inner| inner != c).collect();
                word.get_or_insert_default().push_str(&text);
            }
            '#' if word.is_none() => break,
            c if c.is_whitespace() => words.extend(word.take()),
            c => word.get_or_insert_default().push(c),
        }
    }
    words.extend(word);
    words
}

/// Runs a pulsar-admin command line as `fnhost`, in `dir`, against `worker`.
fn run_as_fnhost(line: &str, dir: &Path, worker: &Worker) -> std::process::Output {
    let words = shell_words(line);
    assert_eq!(words[0], "pulsar-admin", "{line}");
    let mut command: Command = fnhost_command();
    command.current_dir(dir).args(&words[1..]).args(["--url", &worker.url]);
    command.output().expect("fnhost runs")
}

#[test]
fn the_seeds_walkthrough_runs_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::start(dir.path());
    let sources = workspace().join("examples/python-session-duration");
    let mut notes = Vec::new();
    for line in SEED_COMMANDS {
        let output = run_as_fnhost(line, &sources, &worker);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{line}\n{stderr}");
        notes.push(stderr);
    }
    assert!(
        notes[1].contains("note: --state-storage-config (stateStorageConfig): the state storage's type is fnhost's"),
        "the second command says where state lives:\n{}",
        notes[1]
    );
    for event in SEED_EVENTS {
        let run = worker.cli(&["topics", "produce", "input-topic", "-m", event]);
        assert!(run.success, "{}", run.stderr);
    }
    // The seed's log lines, from both functions (the seed also lists a login of user456, whose
    // event is a click: neither its code nor Pulsar's logs one).
    let lines = [
        "User user123 logged in at 1678886400",
        "User user123 session duration: 20 seconds",
        "User user123 logged in at 1678886500",
    ];
    for name in ["session-duration-calculator", "session-duration-calculator-managed"] {
        let fqfn = format!("fqfn=public/default/{name} ");
        worker.wait_for(&format!("{name}'s log lines"), || {
            let log = worker.log();
            lines.iter().all(|line| log.lines().any(|logged| logged.contains(line) && logged.contains(&fqfn)))
        });
    }
    assert!(!worker.log().contains("user456 logged in"), "{}", worker.log());
    // The managed function keeps its state where querystate sees it; the other keeps it in memory.
    let state =
        worker.ok(&["functions", "querystate", "--name", "session-duration-calculator-managed", "--key", "user123"]);
    assert_eq!(state["stringValue"], "1678886500", "{state}");
    let memory =
        worker.fails(&["functions", "querystate", "--name", "session-duration-calculator", "--key", "user123"]);
    assert!(memory.contains("no state under key `user123`"), "{memory}");
    let config = worker.ok(&["functions", "get", "--name", "session-duration-calculator-managed"]);
    assert_eq!(config["resources"]["ram"], "128M", "--memory is --ram: {config}");
    assert_eq!(config["stateStorageConfig"]["type"], "bookkeeper", "kept as given: {config}");
}

/// A value for each of pulsar-admin's flags that fnhost notes or refuses, as a script passes it.
fn sample(flag: &str) -> &'static str {
    match flag {
        "--memory" => "64M",
        "--auto-ack" | "--cleanup-subscription" | "--forward-source-message-property" | "--update-auth-data" => "true",
        "--skip-to-latest" | "--expose-pulsar-admin-client-enabled" => "true",
        "--cpu" => "0.5",
        "--disk" | "--max-pending-async-requests" => "1000",
        "--state-storage-config" => r#"{"type":"zookeeper"}"#,
        "--producer-config" => r#"{"maxPendingMessages": 100}"#,
        "--custom-serde-inputs" | "--custom-schema-inputs" | "--custom-schema-outputs" | "--input-specs" => {
            r#"{"persistent://public/default/in": "com.example.Serde"}"#
        }
        "--batch-builder" => "KEY_BASED",
        "--schema-type" => "avro",
        "--jar" => "function.jar",
        "--go" => "function-go",
        "--function-type" => "exclamation",
        _ => "com.example.Name",
    }
}

#[test]
fn every_pulsar_flag_is_taken_noted_or_refused_and_none_is_unexpected() {
    let fnhost = Fnhost::new();
    let wasm = guest("exclamation");
    for flag in PULSAR_FLAGS {
        let value = sample(flag.flag);
        let args = ["localrun", "--wasm", wasm.to_str().unwrap(), "--name", "f", "-i", "in", "--until-idle"];
        let run = fnhost.run(&[&args[..], &[flag.flag, value]].concat());
        let said = format!("{}{}", run.stdout, run.stderr);
        assert!(!said.contains("unexpected argument"), "{} {value}: {said}", flag.flag);
        let note = format!("note: {} ({})", flag.flag, flag.field);
        match flag.outcome {
            Outcome::Effect(_) => assert!(run.success && !said.contains(&note), "{} {value}: {said}", flag.flag),
            Outcome::Noted(text) => {
                assert!(run.success && said.contains(&format!("{note}: {text}")), "{} {value}: {said}", flag.flag);
            }
            Outcome::Refused(reason) => {
                let refusal = format!("{} ({}) is not supported: {reason}", flag.flag, flag.field);
                assert!(!run.success && run.stderr.contains(&refusal), "{} {value}: {said}", flag.flag);
            }
        }
    }
}

#[test]
fn memory_takes_the_sizes_ram_takes_and_json_flags_refuse_bad_json() {
    let fnhost = Fnhost::new();
    let wasm = guest("exclamation");
    let run = |extra: &[&str]| {
        let args = ["localrun", "--wasm", wasm.to_str().unwrap(), "--name", "f", "-i", "in", "--until-idle"];
        fnhost.run(&[&args[..], extra].concat())
    };
    for size in ["128M", "1Gi", "67108864"] {
        let taken = run(&["--memory", size]);
        assert!(taken.success, "--memory {size}: {}", taken.stderr);
    }
    let too_big = run(&["--memory", "5G"]);
    assert!(!too_big.success && too_big.stderr.contains("--ram (--memory) `5G` is out of range"), "{}", too_big.stderr);
    for flag in ["--state-storage-config", "--producer-config", "--custom-serde-inputs"] {
        let bad = run(&[flag, "{type: bookkeeper"]);
        assert!(!bad.success && bad.stderr.contains(&format!("{flag} is not valid JSON")), "{flag}: {}", bad.stderr);
    }
}

#[test]
fn the_config_file_takes_pulsar_fields_by_the_same_rules() {
    let fnhost = Fnhost::new();
    let wasm = guest("exclamation");
    let file = fnhost.data_dir().with_extension("yaml");
    let run = |yaml: &str| {
        std::fs::write(&file, yaml).unwrap();
        let args = ["localrun", "--wasm", wasm.to_str().unwrap(), "--function-config-file", file.to_str().unwrap()];
        fnhost.run(&[&args[..], &["--until-idle"]].concat())
    };
    let noted = run("name: f\ninputs: [in]\nresources: {ram: 67108864, cpu: 2, disk: 1000}\nbatchBuilder: DEFAULT\n");
    assert!(noted.success, "{}", noted.stderr);
    for field in ["note: --cpu (resources.cpu)", "note: --disk (resources.disk)", "note: --batch-builder"] {
        assert!(noted.stderr.contains(field), "{field}: {}", noted.stderr);
    }
    let refused = run("name: f\ninputs: [in]\njar: function.jar\n");
    assert!(!refused.success && refused.stderr.contains("--jar (jar) is not supported: Java"), "{}", refused.stderr);
    let contradiction = run("name: f\ninputs: [in]\nautoAck: false\nprocessingGuarantees: EFFECTIVELY_ONCE\n");
    assert!(
        !contradiction.success && contradiction.stderr.contains("contradicts --processing-guarantees EFFECTIVELY_ONCE"),
        "{}",
        contradiction.stderr
    );
    let misspelt = run("name: f\ninputs: [in]\nautoAk: false\n");
    assert!(!misspelt.success && misspelt.stderr.contains("autoAk"), "a misspelt field is named: {}", misspelt.stderr);
}

#[test]
fn auto_ack_false_is_manual_acknowledgement() {
    let fnhost = Fnhost::new();
    fnhost.produce("in", &["noack:x", "a"]);
    // Unacknowledged, `noack:x` comes back once the acknowledgement timeout has passed, beyond
    // the single delivery it may have, and is dead-lettered; under automatic acknowledgement it
    // would be done at once.
    let flags = ["--output", "out", "--auto-ack", "false", "--max-message-retries", "0", "--ack-timeout-ms", "2000"];
    let stdout = fnhost.localrun("misbehave", "manual", "in", &flags);
    assert!(stdout.contains("1 dead-lettered"), "{stdout}");
    let dead = fnhost.consume("manual-DLQ");
    assert_eq!(dead, ["noack:x"]);
}

/// The token of the operator in [`pulsar_admins_global_options_reach_the_worker_or_are_refused_with_the_reason`].
const OPERATOR: &str = "operator-0123456789abcdef0123456789abcdef";

#[test]
fn pulsar_admins_global_options_reach_the_worker_or_are_refused_with_the_reason() {
    let fnhost = Fnhost::new();
    let access = fnhost.data_dir().with_extension("access.yaml");
    std::fs::write(&access, format!("operatorTokens: [{OPERATOR}]\n")).unwrap();
    let worker = Worker::start_with(fnhost.data_dir(), &["--access", access.to_str().unwrap()]);
    let token_file = fnhost.data_dir().with_extension("token");
    std::fs::write(&token_file, format!("{OPERATOR}\n")).unwrap();
    let run = |args: &[&str]| {
        let output = fnhost_command().args(args).output().expect("fnhost runs");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    // Before the verb, as pulsar-admin scripts write them; the token goes as FNHOST_TOKEN's would.
    let plugin = "org.apache.pulsar.client.impl.auth.AuthenticationToken";
    let by_file = format!("file://{}", token_file.display());
    for params in [format!("token:{OPERATOR}"), by_file] {
        let args = ["--admin-url", &worker.url, "--auth-plugin", plugin, "--auth-params", &params, "functions", "list"];
        let (success, stdout, stderr) = run(&args);
        assert!(success, "{params}: {stderr}");
        assert_eq!(stdout.trim(), "[]");
    }
    let (success, _, stderr) = run(&["--admin-url", &worker.url, "functions", "list"]);
    assert!(!success && stderr.contains("HTTP 401"), "no token, no answer: {stderr}");
    let refused: [(&[&str], &str); 7] = [
        (&["--auth-plugin", "org.apache.pulsar.client.impl.auth.AuthenticationTls"], "token authentication only"),
        (&["--auth-params", "tls:cert.pem"], "--auth-params must be token:TOKEN or file:PATH"),
        (&["--auth-params", "file:/nonexistent/token"], "cannot read the token file"),
        (&["--tls-allow-insecure"], "always verifies a worker's certificate"),
        (
            &["--tls-trust-cert-path", "/nonexistent/ca.pem"],
            "--tls-trust-cert-path /nonexistent/ca.pem: cannot be read",
        ),
        (&["--request-timeout", "0"], "--request-timeout 0 is out of range"),
        (&["--admin-url", "http://127.0.0.1:1"], "name different workers"),
    ];
    for (options, reason) in refused {
        let (success, _, stderr) = run(&[options, &["functions", "list", "--url", &worker.url]].concat());
        assert!(!success && stderr.contains(reason), "{options:?}: {stderr}");
    }
    let (success, _, stderr) = run(&["--admin-url", &worker.url, "topics", "consume", "t", "--until-idle"]);
    assert!(!success && stderr.contains("apply to the admin verbs"), "{stderr}");
    // The topic and namespace verbs take them, as pulsar-admin's do.
    let token = format!("token:{OPERATOR}");
    let (success, stdout, stderr) =
        run(&["--admin-url", &worker.url, "--auth-params", &token, "topics", "list", "public/default"]);
    assert!(success, "{stderr}");
    assert!(stdout.lines().all(|line| line.starts_with("persistent://public/default/")), "{stdout}");
}
