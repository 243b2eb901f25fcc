//! Bad input gets an error that says what was wrong and what to do, and a non-zero exit.

use std::io::{BufRead, BufReader};

use crate::support::{Fnhost, guest};

#[test]
fn bad_function_files_and_flags_are_refused_with_the_reason() {
    let fnhost = Fnhost::new();
    let dir = fnhost.data_dir().to_path_buf();
    let text = dir.join("notes.txt");
    std::fs::write(&text, "hello").unwrap();
    let core = dir.join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let corrupt = dir.join("corrupt.wasm");
    std::fs::write(&corrupt, b"\0asm\x0d\0\x01\0\x07\xff\xff\xff").unwrap();
    let empty_component = dir.join("empty.wasm");
    std::fs::write(&empty_component, b"\0asm\x0d\0\x01\0").unwrap();
    let exclamation = guest("exclamation");

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--wasm", "/no/such/file.wasm"], "cannot read the component /no/such/file.wasm"),
        (vec!["--wasm", text.to_str().unwrap()], "is not a WebAssembly file"),
        (vec!["--wasm", core.to_str().unwrap()], "is a core WebAssembly module, not a component"),
        (vec!["--wasm", corrupt.to_str().unwrap()], "is not a valid WebAssembly component"),
        (vec!["--wasm", empty_component.to_str().unwrap()], "does not implement the fnhost:function/function world"),
        (vec!["--wasm", exclamation.to_str().unwrap(), "--user-config", "{oops"], "--user-config is not valid JSON"),
        (vec!["--wasm", exclamation.to_str().unwrap(), "--user-config", "[1]"], "--user-config must be a JSON object"),
        (vec!["--wasm", exclamation.to_str().unwrap(), "--ram", "lots"], "--ram (--memory) `lots` is not a size"),
        (vec!["--wasm", exclamation.to_str().unwrap(), "--timeout-ms", "0"], "--timeout-ms 0 is out of range"),
        (vec!["--wasm", exclamation.to_str().unwrap(), "--output", "a/b"], "is not a topic name"),
        (vec!["--wasm", exclamation.to_str().unwrap(), "--parallelism", "0"], "--parallelism 0 is out of range"),
        (vec!["--wasm", exclamation.to_str().unwrap(), "--parallelism", "65"], "MAX_PARALLELISM"),
        (vec!["--wasm", exclamation.to_str().unwrap(), "--batch-size", "0"], "--batch-size 0 is out of range"),
        (vec!["--wasm", exclamation.to_str().unwrap(), "--max-message-retries", "101"], "MAX_MESSAGE_RETRIES"),
        (vec!["--wasm", exclamation.to_str().unwrap(), "--ack-timeout-ms", "0"], "--ack-timeout-ms 0 is out of range"),
        (vec!["--wasm", exclamation.to_str().unwrap(), "--topics-pattern", "in-("], "is not a regular expression"),
        (vec!["--wasm", exclamation.to_str().unwrap(), "--dead-letter-topic", "a/b"], "is not a topic name"),
        (
            vec!["--wasm", exclamation.to_str().unwrap(), "--processing-guarantees", "SOMETIMES"],
            "possible values: ATMOST_ONCE, ATLEAST_ONCE, EFFECTIVELY_ONCE, MANUAL",
        ),
        (
            vec!["--wasm", exclamation.to_str().unwrap(), "--retain-ordering", "--retain-key-ordering"],
            "cannot be used with",
        ),
    ];
    for (flags, reason) in cases {
        let mut args = vec!["localrun", "--name", "f", "--inputs", "in", "--until-idle"];
        args.extend(&flags);
        let stderr = fnhost.fails(&args);
        assert!(stderr.contains(reason), "{flags:?}: expected `{reason}` in:\n{stderr}");
    }
    let stderr = fnhost.fails(&["localrun", "--wasm", exclamation.to_str().unwrap(), "--name", "f"]);
    assert!(stderr.contains("--inputs"), "a function without inputs is refused:\n{stderr}");
}

#[test]
fn a_data_directory_in_use_is_reported_and_nothing_is_written() {
    let fnhost = Fnhost::new();
    let wasm = guest("exclamation");
    let mut running = fnhost.spawn(&[
        "localrun",
        "--wasm",
        wasm.to_str().unwrap(),
        "--name",
        "f",
        "--inputs",
        "in",
        "--output",
        "out",
    ]);
    let stderr = running.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let started = lines.by_ref().map_while(Result::ok).any(|line| line.contains("running public/default/f"));
    assert!(started, "localrun did not start");

    let refused = fnhost.fails(&["topics", "produce", "in", "-m", "x"]);
    assert!(refused.contains("is in use by another fnhost process"), "{refused}");
    assert!(refused.contains("--data-dir"), "{refused}");

    running.kill().unwrap();
    running.wait().unwrap();
    assert!(fnhost.consume("in").is_empty(), "the refused message was not written");
}

#[test]
fn querystate_and_produce_explain_their_mistakes() {
    let fnhost = Fnhost::new();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["functions", "querystate", "--fqfn", "a/b", "--key", "k"], "expected tenant/namespace/name"),
        (vec!["functions", "querystate", "--key", "k"], "name the function with --fqfn"),
        (vec!["functions", "querystate", "--fqfn", "a/b/c", "--key", "k"], "has no state under key `k`"),
        (vec!["topics", "produce", "t", "--file", "/no/such/messages"], "cannot read the messages file"),
        (vec!["topics", "produce", "t", "-m", "x", "-p", "novalue"], "--property `novalue` is not name=value"),
    ];
    for (args, reason) in cases {
        let stderr = fnhost.fails(&args);
        assert!(stderr.contains(reason), "{args:?}: expected `{reason}` in:\n{stderr}");
    }
}
