//! Guests that misbehave fail only their own message, with a clear error, and the host goes on.

use crate::support::Fnhost;

/// A misbehaving command and the start of the line that reports its failure, with a detail that
/// line must hold ("" when the reason says it all).
type Misbehaviour = (&'static str, &'static str, &'static str);

/// A run's output without the log flood's lines, for failure messages.
fn without_flood(stdout: &str) -> String {
    stdout.lines().filter(|line| !line.ends_with("flooding the log")).collect::<Vec<_>>().join("\n")
}

/// Runs function `name` over `commands`, each between two good messages, with a time limit of
/// `timeout_ms`; checks that each command failed alone with its reason, that the instance rested
/// after each trap or timeout, twice as long as after the one before, and that every good message
/// went through. Returns the run's output.
fn run_misbehaviours(fnhost: &Fnhost, name: &str, timeout_ms: &str, commands: &[Misbehaviour]) -> String {
    let (input, output) = (format!("{name}-commands"), format!("{name}-results"));
    let mut messages = Vec::new();
    for (index, (command, _, _)) in commands.iter().enumerate() {
        messages.extend([format!("good{index}"), (*command).to_owned()]);
    }
    messages.push("last".into());
    fnhost.produce(&input, &messages.iter().map(String::as_str).collect::<Vec<_>>());
    let stdout = fnhost.localrun(
        "misbehave",
        name,
        &input,
        &["--output", &output, "--timeout-ms", timeout_ms, "--ram", "32M", "--max-message-retries", "0"],
    );
    let shown = without_flood(&stdout);
    let failures: Vec<&str> =
        stdout.lines().filter(|line| line.starts_with(&format!("ERROR [{name}] message"))).collect();
    assert_eq!(failures.len(), commands.len(), "{shown}");
    for ((command, reason, detail), line) in commands.iter().zip(&failures) {
        assert!(line.contains(reason) && line.contains(detail), "{command}: {line}");
    }
    // Each trap or timeout makes the instance rest, twice as long as the one before (they are all
    // within COOL_DOWN_MEMORY_MS); a refused output is not the instance's failure.
    let rests: Vec<&str> = failures
        .iter()
        .filter_map(|line| line.split("the instance rests ").nth(1))
        .map(|rest| rest.split(" the failed message's time").next().unwrap_or(rest))
        .collect();
    let factors: Vec<String> = rests.iter().map(|rest| rest.rsplit('(').next().unwrap_or(rest).to_owned()).collect();
    let system = commands.iter().filter(|(_, reason, _)| reason.starts_with("system")).count();
    // Each trap or timeout restarts the instance (a refused output leaves it as it is); none of
    // the failures is retried.
    let restarts = system - commands.iter().filter(|(_, reason, _)| reason.contains("output was refused")).count();
    let expected_factors: Vec<String> = (0..restarts).map(|n| format!("{}x", 1 << n)).collect();
    assert_eq!(factors, expected_factors, "{shown}");
    let user = commands.len() - system;
    let summary = format!(
        "processed {} messages: {} succeeded, {user} user exceptions, {system} system exceptions, {restarts} restarts, {} dead-lettered",
        messages.len(),
        messages.len() - commands.len(),
        commands.len()
    );
    assert!(stdout.contains(&summary), "{summary} in:\n{shown}");
    let good: Vec<String> =
        (0..commands.len()).map(|index| format!("ok:good{index}")).chain(["ok:last".into()]).collect();
    assert_eq!(fnhost.consume(&output), good);
    stdout
}

#[test]
fn each_misbehaving_message_fails_alone_and_the_next_ones_are_processed() {
    let fnhost = Fnhost::new();
    // Each of these ends on its own, at a limit that is not time: the time limit is far away, so
    // that a busy machine cannot make it trip first.
    let ending = [
        ("trap", "system exception: the function trapped: panicked at", "boom, as requested"),
        ("alloc", "system exception: the function needed", "its limit is 33554432 bytes (--ram)"),
        ("stack", "system exception: the function trapped", "stack overflowed"),
        ("open", "user exception: cannot open /etc/passwd", ""),
        ("socket", "user exception: cannot connect", ""),
        ("big-state", "user exception: limit exceeded: state value is 2097152 bytes", "MAX_STATE_VALUE_SIZE"),
        ("long-key", "user exception: limit exceeded", "MAX_STATE_KEY_LEN"),
        ("big-output", "system exception: the output was refused: message value is", "MAX_MESSAGE_SIZE"),
        ("put-flood", "user exception: limit exceeded", "MAX_WRITTEN_BYTES_PER_MESSAGE"),
        ("publish-flood", "user exception: limit exceeded", "MAX_PUBLISHES_PER_MESSAGE"),
    ];
    run_misbehaviours(&fnhost, "misbehave", "120000", &ending);
    // Nothing a failed message published or stored was kept.
    assert!(fnhost.consume("flood").is_empty());

    // These never end: only the time limit stops them. The log flood reaches its line limit in
    // well under the time limit, whatever the machine's load.
    let endless = [
        ("loop", "system exception: processing took longer than the time limit of 1000 ms (--timeout-ms)", ""),
        ("log-flood", "system exception: processing took longer than the time limit of 1000 ms (--timeout-ms)", ""),
    ];
    let stdout = run_misbehaviours(&fnhost, "endless", "1000", &endless);
    // The log flood was cut at its limit, and said so once.
    let flood = stdout.lines().filter(|line| line.ends_with("flooding the log")).count();
    assert_eq!(flood, fnhost::limits::MAX_LOG_LINES_PER_MESSAGE, "lines of the log flood");
    let marks = stdout.matches("(MAX_LOG_LINES_PER_MESSAGE)").count();
    assert_eq!(marks, 1, "{}", without_flood(&stdout));
}

#[test]
fn the_guest_sees_no_environment_and_its_stdout_goes_to_the_log() {
    let fnhost = Fnhost::new();
    fnhost.produce("commands", &["env", "print"]);
    let stdout = fnhost.localrun("misbehave", "misbehave", "commands", &["--output", "results"]);
    assert!(stdout.lines().any(|line| line == "INFO [misbehave] printed to stdout"), "{stdout}");
    assert_eq!(fnhost.consume("results"), ["0 environment variables", "ok:print"]);
}

#[test]
fn with_fnhost_perfmap_set_the_guests_functions_are_named_for_perf() {
    let fnhost = Fnhost::new();
    fnhost.produce("commands", &["print"]);
    let guest = crate::support::guest("misbehave");
    let args =
        ["localrun", "--wasm", guest.to_str().unwrap(), "--name", "misbehave", "--inputs", "commands", "--until-idle"];
    let child = fnhost.command(&args).env(fnhost::runtime::PERF_MAP_VARIABLE, "1").spawn().unwrap();
    let map = std::path::PathBuf::from(format!("/tmp/perf-{}.map", child.id()));
    let output = child.wait_with_output().unwrap();
    let text = std::fs::read_to_string(&map).unwrap_or_default();
    let _ = std::fs::remove_file(&map);
    assert!(output.status.success());
    // Each line is `ADDRESS SIZE NAME`; the guest's own code is `wasm[N]::function[M]` (or its name).
    let guest_functions = text.lines().filter(|line| line.contains("wasm[0]::function[")).count();
    assert!(guest_functions > 10, "{map:?} holds {} lines:\n{text:.2000}", text.lines().count());
}

/// Components a worker must refuse when they are loaded, each with what the refusal names.
#[test]
fn hostile_components_are_refused_or_contained_and_a_neighbour_keeps_working() {
    let fnhost = Fnhost::new();
    let dir = fnhost.data_dir().with_extension("components");
    std::fs::create_dir_all(&dir).unwrap();
    let misbehave = std::fs::read(crate::support::guest("misbehave")).unwrap();
    let truncated = dir.join("truncated.wasm");
    std::fs::write(&truncated, &misbehave[..misbehave.len() / 2]).unwrap();
    let flipped = dir.join("flipped.wasm");
    let mut bytes = misbehave.clone();
    for byte in bytes.iter_mut().skip(64).step_by(97) {
        *byte ^= 0x5a;
    }
    std::fs::write(&flipped, bytes).unwrap();
    let core = dir.join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let foreign = crate::support::guest("foreign-import");
    let window = crate::support::guest("window-list");
    let worker = crate::support::Worker::start(fnhost.data_dir());
    let cases = [
        (foreign.as_path(), "imports instance `evil:backdoor/door`"),
        (truncated.as_path(), "is not a valid WebAssembly component"),
        (flipped.as_path(), "is not a valid WebAssembly component"),
        (core.as_path(), "is a core WebAssembly module, not a component"),
        (window.as_path(), "window"),
    ];
    for (path, reason) in cases {
        let args = ["functions", "create", "--wasm", path.to_str().unwrap(), "--name", "hostile", "-i", "in"];
        let stderr = worker.fails(&args);
        assert!(stderr.contains(reason) && stderr.contains("HTTP 400"), "{path:?}: expected `{reason}` in:\n{stderr}");
    }
    let (_, listed) = worker.http("GET", "/admin/v3/functions/public/default", None);
    assert_eq!(listed, serde_json::json!([]), "nothing refused was kept");

    // A component that traps before its first message fails each message as a system exception,
    // which is tried again and dead-lettered, while its neighbour goes on.
    let trap = crate::support::guest("trap-at-start");
    let exclamation = crate::support::guest("exclamation");
    worker.ok(&["functions", "create", "--wasm", trap.to_str().unwrap(), "--name", "trap", "-i", "trap-in"]);
    let args = ["functions", "create", "--wasm", exclamation.to_str().unwrap(), "--name", "neighbour", "-i", "in"];
    worker.ok(&[&args[..], &["-o", "out"]].concat());
    for produce in
        [&["topics", "produce", "trap-in", "-m", "one", "-m", "two"][..], &["topics", "produce", "in", "-m", "hello"]]
    {
        let run = worker.cli(produce);
        assert!(run.success, "{}", run.stderr);
    }
    let tries = u64::from(fnhost::limits::DEFAULT_MAX_MESSAGE_RETRIES) + 1;
    worker.wait_for("both messages dead-lettered", || {
        let (_, stats) = worker.http("GET", "/admin/v3/functions/public/default/trap/stats", None);
        stats["deadLetteredTotal"] == 2
    });
    let (_, stats) = worker.http("GET", "/admin/v3/functions/public/default/trap/stats", None);
    assert_eq!(stats["systemExceptionsTotal"].as_u64(), Some(2 * tries), "{stats}");
    let (_, status) = worker.http("GET", "/admin/v3/functions/public/default/trap/status", None);
    assert!(status.to_string().contains("unreachable"), "the status names the trap: {status}");
    assert_eq!(worker.read("out", 1), ["hello!"]);
}
