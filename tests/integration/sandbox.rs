//! Guests that misbehave fail only their own message, with a clear error, and the host goes on.

use crate::support::Fnhost;

#[test]
fn each_misbehaving_message_fails_alone_and_the_next_ones_are_processed() {
    let fnhost = Fnhost::new();
    let messages = ["a", "trap", "b", "loop", "c", "alloc", "d", "open", "e", "big-state", "f"];
    fnhost.produce("commands", &messages);
    let stdout = fnhost.localrun(
        "misbehave",
        "misbehave",
        "commands",
        &["--output", "results", "--timeout-ms", "300", "--ram", "32M", "--max-message-retries", "0"],
    );
    let failures: Vec<&str> = stdout.lines().filter(|line| line.starts_with("ERROR [misbehave] message")).collect();
    let expected = [
        ("trap", "system exception: the function trapped: panicked at", "boom, as requested"),
        ("loop", "system exception: processing took longer than the time limit of 300 ms (--timeout-ms)", ""),
        ("alloc", "system exception: the function needed", "its limit is 33554432 bytes (--ram)"),
        ("open", "user exception: cannot open /etc/passwd", ""),
        ("big-state", "user exception: limit exceeded: state value is 2097152 bytes", "MAX_STATE_VALUE_SIZE"),
    ];
    assert_eq!(failures.len(), expected.len(), "{stdout}");
    for ((command, reason, detail), line) in expected.iter().zip(&failures) {
        assert!(line.contains(reason) && line.contains(detail), "{command}: {line}");
    }
    assert!(
        stdout.contains(
            "processed 11 messages: 6 succeeded, 2 user exceptions, 3 system exceptions, 3 restarts, 5 dead-lettered"
        ),
        "{stdout}"
    );
    assert_eq!(fnhost.consume("results"), ["ok:a", "ok:b", "ok:c", "ok:d", "ok:e", "ok:f"]);
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
