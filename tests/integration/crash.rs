//! SIGKILL at arbitrary points loses nothing and, because the embedded engine commits a batch's
//! outputs, state and cursor in one step, applies nothing twice either.

use std::time::Duration;

use crate::support::{Fnhost, guest, number_value};

const MESSAGES: usize = 20_000;

fn kill_repeatedly(fnhost: &Fnhost, wasm: &str, name: &str, extra: &[&str]) {
    let wasm = guest(wasm);
    for delay_ms in [150, 300, 450, 600] {
        let mut args = vec!["localrun", "--wasm", wasm.to_str().unwrap(), "--name", name, "--inputs", "in"];
        args.extend(extra);
        let mut child = fnhost.spawn(&args);
        std::thread::sleep(Duration::from_millis(delay_ms));
        // Child::kill sends SIGKILL: no handler runs, nothing is flushed.
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
    fnhost.localrun("word-count", "wc", "in", &[]);
    assert_eq!(number_value(&fnhost, "public/default/wc", "word"), MESSAGES as i64);
}
