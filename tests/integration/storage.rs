//! The data directory across releases: a directory written by the sled-only layout of earlier
//! releases is converted at its first open, and nothing in it is lost or doubled.

use std::process::Command;

use crate::support::{Fnhost, workspace};

/// Made by fnhost at dd890f8 (the last release before the log), with the commands of
/// `scripts/quickstart`: the seed's four events processed by `session-duration-calculator` into
/// `sessions`, three more events produced after that and not yet processed, and a subscription
/// `reader` on `sessions` past its first message.
const SLED_LAYOUT_FIXTURE: &str = "tests/integration/fixtures/sled-layout-data-dir.tar.gz";

#[test]
fn a_data_directory_in_the_sled_layout_is_converted_at_first_open_and_loses_nothing() {
    let fnhost = Fnhost::new();
    let unpacked = Command::new("tar")
        .arg("-C")
        .arg(fnhost.data_dir())
        .args(["--strip-components=1", "-xzf"])
        .arg(workspace().join(SLED_LAYOUT_FIXTURE))
        .status()
        .unwrap();
    assert!(unpacked.success());
    let run = fnhost.localrun(
        "session-duration",
        "session-duration-calculator",
        "persistent://public/default/input-topic",
        &["--output", "sessions"],
    );
    // Only the three events after the old run are new; user123's login at 1678886500 was in the
    // function's state, so its logout 30 s later is a session.
    assert!(run.contains("processed 3 messages"), "{run}");
    assert!(fnhost.data_dir().join("db/log").is_dir());
    let reader = fnhost.ok(&["topics", "consume", "sessions", "-s", "reader", "--until-idle"]);
    assert_eq!(reader.lines().collect::<Vec<_>>(), [r#"{"user_id":"user123","duration":30}"#]);
    assert_eq!(
        fnhost.consume("sessions"),
        [r#"{"user_id":"user123","duration":20}"#, r#"{"user_id":"user123","duration":30}"#]
    );
    let inputs = fnhost.consume("input-topic");
    assert_eq!(inputs.len(), 7, "every input event is still there, once: {inputs:?}");
}
