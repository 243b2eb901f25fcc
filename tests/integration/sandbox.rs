//! Guests that misbehave fail only their own message, with a clear error, and the host goes on.

use crate::support::Fnhost;

#[test]
fn each_misbehaving_message_fails_alone_and_the_next_ones_are_processed() {
    let fnhost = Fnhost::new();
    // Each command and the start of the line that reports its failure; "" for the detail when
    // the reason says it all.
    let expected = [
        ("trap", "system exception: the function trapped: panicked at", "boom, as requested"),
        ("loop", "system exception: processing took longer than the time limit of 300 ms (--timeout-ms)", ""),
        ("alloc", "system exception: the function needed", "its limit is 33554432 bytes (--ram)"),
        ("stack", "system exception: the function trapped", "stack overflowed"),
        ("open", "user exception: cannot open /etc/passwd", ""),
        ("socket", "user exception: cannot connect", ""),
        ("big-state", "user exception: limit exceeded: state value is 2097152 bytes", "MAX_STATE_VALUE_SIZE"),
        ("long-key", "user exception: limit exceeded", "MAX_STATE_KEY_LEN"),
        ("big-output", "system exception: the output was refused: message value is", "MAX_MESSAGE_SIZE"),
        ("put-flood", "user exception: limit exceeded", "MAX_WRITTEN_BYTES_PER_MESSAGE"),
        ("publish-flood", "user exception: limit exceeded", "MAX_PUBLISHES_PER_MESSAGE"),
        ("log-flood", "system exception: processing took longer than the time limit of 300 ms (--timeout-ms)", ""),
    ];
    let mut messages = Vec::new();
    for (index, (command, _, _)) in expected.iter().enumerate() {
        messages.extend([format!("good{index}"), (*command).to_owned()]);
    }
    messages.push("last".into());
    fnhost.produce("commands", &messages.iter().map(String::as_str).collect::<Vec<_>>());
    let stdout = fnhost.localrun(
        "misbehave",
        "misbehave",
        "commands",
        &["--output", "results", "--timeout-ms", "300", "--ram", "32M", "--max-message-retries", "0"],
    );
    // The log without the flood's lines, for failure messages.
    let shown: String =
        stdout.lines().filter(|line| !line.ends_with("flooding the log")).collect::<Vec<_>>().join("\n");
    let failures: Vec<&str> = stdout.lines().filter(|line| line.starts_with("ERROR [misbehave] message")).collect();
    assert_eq!(failures.len(), expected.len(), "{shown}");
    for ((command, reason, detail), line) in expected.iter().zip(&failures) {
        assert!(line.contains(reason) && line.contains(detail), "{command}: {line}");
    }
    let system = expected.iter().filter(|(_, reason, _)| reason.starts_with("system")).count();
    let user = expected.len() - system;
    // Each trap or timeout restarts the instance (a refused output leaves it as it is); none of
    // the failures is retried.
    let restarts = system - expected.iter().filter(|(_, reason, _)| reason.contains("output was refused")).count();
    let summary = format!(
        "processed {} messages: {} succeeded, {user} user exceptions, {system} system exceptions, {restarts} restarts, {} dead-lettered",
        messages.len(),
        messages.len() - expected.len(),
        expected.len()
    );
    assert!(stdout.contains(&summary), "{summary} in:\n{shown}");
    // The log flood was cut at its limit, and said so once.
    let flood = stdout.lines().filter(|line| line.ends_with("flooding the log")).count();
    assert_eq!(flood, fnhost::limits::MAX_LOG_LINES_PER_MESSAGE, "lines of the log flood");
    assert_eq!(shown.matches("(MAX_LOG_LINES_PER_MESSAGE)").count(), 1, "{shown}");
    let good: Vec<String> =
        (0..expected.len()).map(|index| format!("ok:good{index}")).chain(["ok:last".into()]).collect();
    assert_eq!(fnhost.consume("results"), good);
    // Nothing a failed message published or stored was kept.
    assert!(fnhost.consume("flood").is_empty());
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
