//! SIGKILL in the middle of processing loses nothing and, because the embedded engine commits a
//! batch's outputs, state and cursor in one step, applies nothing twice either.

use std::io::{BufRead, BufReader};

use fnhost::limits::MAX_BATCH_MESSAGES;

use crate::support::{Fnhost, guest, number_value};

/// Enough for ten full batches.
const MESSAGES: usize = 10 * MAX_BATCH_MESSAGES;
/// Each run is killed after it has committed this many batches, so every kill lands while
/// messages remain (the runs together commit fewer than ten).
const COMMITS_BEFORE_KILL: [usize; 3] = [1, 2, 3];

fn kill_repeatedly(fnhost: &Fnhost, wasm: &str, name: &str, extra: &[&str]) {
    let wasm = guest(wasm);
    for commits in COMMITS_BEFORE_KILL {
        // --until-idle, so that a run that somehow finishes exits and fails the assertion below
        // instead of waiting for input forever.
        let mut args =
            vec!["localrun", "--wasm", wasm.to_str().unwrap(), "--name", name, "--inputs", "in", "--until-idle"];
        args.extend(extra);
        let mut command = fnhost.command(&args);
        command.env("FNHOST_LOG", "fnhost=debug").stdout(std::process::Stdio::null());
        let mut child = command.stderr(std::process::Stdio::piped()).spawn().unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let seen = stderr.lines().map_while(Result::ok).filter(|line| line.contains("committed a batch")).take(commits);
        assert_eq!(seen.count(), commits, "the run ended before committing {commits} batches");
        // Child::kill sends SIGKILL: no handler runs and nothing is flushed; the next batch is in flight.
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

fn produce_numbered(fnhost: &Fnhost, prefix: &str) -> Vec<String> {
    let values: Vec<String> = (0..MESSAGES).map(|i| format!("{prefix}{i}")).collect();
    let file = fnhost.data_dir().join("messages.txt");
    std::fs::write(&file, values.join("\n")).unwrap();
    fnhost.ok(&["topics", "produce", "in", "--file", file.to_str().unwrap()]);
    values
}

#[test]
fn outputs_survive_sigkill_without_loss_or_duplicates() {
    let fnhost = Fnhost::new();
    let values = produce_numbered(&fnhost, "m");
    kill_repeatedly(&fnhost, "exclamation", "ex", &["--output", "out"]);
    let partial = fnhost.consume("out").len();
    assert!(partial > 0 && partial < MESSAGES, "the kills interrupted the work ({partial} outputs)");
    fnhost.localrun("exclamation", "ex", "in", &["--output", "out"]);
    let expected: Vec<String> = values.iter().map(|v| format!("{v}!")).collect();
    let got = fnhost.consume("out");
    assert_eq!(got.len(), expected.len(), "no message lost or duplicated");
    assert_eq!(got, expected);
}

#[test]
fn state_survives_sigkill_and_counts_every_message_once() {
    let fnhost = Fnhost::new();
    produce_numbered(&fnhost, "word ");
    kill_repeatedly(&fnhost, "word-count", "wc", &[]);
    let partial = number_value(&fnhost, "public/default/wc", "word");
    assert!(partial > 0 && partial < MESSAGES as i64, "the kills interrupted the work ({partial} counted)");
    fnhost.localrun("word-count", "wc", "in", &[]);
    assert_eq!(number_value(&fnhost, "public/default/wc", "word"), MESSAGES as i64);
}
