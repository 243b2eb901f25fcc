//! Window functions through the CLI: count windows against an oracle under every guarantee,
//! event time with out-of-order and late records, the examples, and SIGKILL in the middle of a
//! window.

use serde_json::Value;

use crate::support::{Fnhost, guest};

/// Appends `count` messages `v0`, `v1`, ... to `topic` in one produce.
fn produce_numbered(fnhost: &Fnhost, topic: &str, range: std::ops::Range<usize>) {
    let file = fnhost.data_dir().join(format!("{topic}-{}.txt", range.start));
    let values: Vec<String> = range.map(|i| format!("v{i}")).collect();
    std::fs::write(&file, values.join("\n")).unwrap();
    fnhost.ok(&["topics", "produce", topic, "--file", file.to_str().unwrap()]);
}

/// The windows `window-list` wrote to `topic`, as lists of values.
fn windows(fnhost: &Fnhost, topic: &str) -> Vec<Vec<String>> {
    fnhost
        .consume(topic)
        .iter()
        .map(|line| {
            let listed: Value = serde_json::from_str(line).unwrap();
            listed["values"].as_array().unwrap().iter().map(|value| value.as_str().unwrap().to_owned()).collect()
        })
        .collect()
}

/// After every `slide` records, the last `length` of them.
fn count_oracle(length: usize, slide: usize, records: usize) -> Vec<Vec<String>> {
    (1..=records / slide)
        .map(|fire| fire * slide)
        .map(|last| (last.saturating_sub(length)..last).map(|i| format!("v{i}")).collect())
        .collect()
}

#[test]
fn count_windows_are_exact_under_every_guarantee() {
    // (length, slide, records): tumbling, sliding, hopping; batches of 7 cut across windows.
    let cases = [(10, 10, 45), (5, 2, 23), (3, 7, 30)];
    for guarantee in ["ATMOST_ONCE", "ATLEAST_ONCE", "EFFECTIVELY_ONCE"] {
        for (length, slide, records) in cases {
            let fnhost = Fnhost::new();
            produce_numbered(&fnhost, "in", 0..records);
            let (length_flag, slide_flag) = (length.to_string(), slide.to_string());
            let mut extra = vec!["--output", "out", "--window-length-count", &length_flag, "--batch-size", "7"];
            extra.extend(["--processing-guarantees", guarantee]);
            if slide != length {
                extra.extend(["--sliding-interval-count", &slide_flag]);
            }
            fnhost.localrun("window-list", "windows", "in", &extra);
            assert_eq!(
                windows(&fnhost, "out"),
                count_oracle(length, slide, records),
                "{guarantee}, length {length}, slide {slide}"
            );
        }
    }
}

#[test]
fn a_later_run_continues_the_open_windows_where_the_last_one_stopped() {
    let fnhost = Fnhost::new();
    let flags = ["--output", "out", "--window-length-count", "10"];
    produce_numbered(&fnhost, "in", 0..15);
    fnhost.localrun("window-list", "windows", "in", &flags);
    assert_eq!(windows(&fnhost, "out"), count_oracle(10, 10, 15));
    produce_numbered(&fnhost, "in", 15..30);
    fnhost.localrun("window-list", "windows", "in", &flags);
    assert_eq!(windows(&fnhost, "out"), count_oracle(10, 10, 30));
}

#[test]
fn event_time_windows_take_out_of_order_records_and_send_late_ones_to_the_late_data_topic() {
    let fnhost = Fnhost::new();
    let wasm = guest("window-list");
    let run = || {
        fnhost.ok(&[
            "localrun",
            "--wasm",
            wasm.to_str().unwrap(),
            "--name",
            "readings",
            "--inputs",
            "in",
            "--output",
            "out",
            "--window-length-duration-ms",
            "10000",
            "--sliding-interval-duration-ms",
            "5000",
            "--event-time",
            "--max-lag-ms",
            "3000",
            "--late-data-topic",
            "late",
            // Runs are further apart than this, so each run's first look moves the watermark.
            "--watermark-emit-interval-ms",
            "1",
            "--until-idle",
        ])
    };
    let produce = |records: &[(&str, u64)]| {
        for (value, event_time) in records {
            fnhost.ok(&["topics", "produce", "in", "-m", value, "--event-time", &event_time.to_string()]);
        }
    };
    // Each run reads its records in one fetch, so the watermark moves once per run: to the newest
    // event time minus the 3 s lag.
    produce(&[("a", 1_000), ("b", 3_000), ("c", 2_000), ("d", 12_000)]);
    run(); // watermark 9 000: [-5 000, 5 000) closes
    produce(&[("e", 9_500), ("f", 4_000), ("g", 16_000)]);
    run(); // e is within the lag, f behind the watermark; watermark 13 000: [0, 10 000) closes
    produce(&[("h", 30_000)]);
    run(); // watermark 27 000: [5 000, 15 000), [10 000, 20 000) and [15 000, 25 000) close
    let expected: Vec<Vec<&str>> =
        vec![vec!["a", "c", "b"], vec!["a", "c", "b", "e"], vec!["e", "d"], vec!["d", "g"], vec!["g"]];
    assert_eq!(windows(&fnhost, "out"), expected);
    let spans: Vec<(u64, u64)> = fnhost
        .consume("out")
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .map(|listed| (listed["start"].as_u64().unwrap_or(0), listed["end"].as_u64().unwrap()))
        .collect();
    assert_eq!(spans, [(0, 5_000), (0, 10_000), (5_000, 15_000), (10_000, 20_000), (15_000, 25_000)]);
    assert_eq!(fnhost.consume("late"), ["f"]);
}

#[test]
fn without_a_late_data_topic_a_late_record_is_logged_and_dropped() {
    let fnhost = Fnhost::new();
    let wasm = guest("window-list");
    let args = [
        "localrun",
        "--wasm",
        wasm.to_str().unwrap(),
        "--name",
        "w",
        "--inputs",
        "in",
        "--output",
        "out",
        "--window-length-duration-ms",
        "1000",
        "--event-time",
        "--watermark-emit-interval-ms",
        "1",
        "--until-idle",
    ];
    fnhost.ok(&["topics", "produce", "in", "-m", "on time", "--event-time", "10000"]);
    fnhost.ok(&args);
    fnhost.ok(&["topics", "produce", "in", "-m", "late", "--event-time", "500"]);
    let run = fnhost.run(&args);
    assert!(run.success, "{}", run.stderr);
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(said.contains("is behind the watermark") && said.contains("dropped"), "{said}");
    assert!(said.contains("--late-data-topic"), "the line says how to keep late records: {said}");
    assert!(windows(&fnhost, "out").iter().all(|window| !window.contains(&"late".to_owned())));
}

#[test]
fn a_window_that_fails_every_try_sends_its_records_to_the_dead_letter_topic_and_keeps_no_effects() {
    let fnhost = Fnhost::new();
    fnhost.produce("in", &["a", "b", "fail", "c", "d", "e"]);
    let stdout = fnhost.localrun(
        "window-list",
        "windows",
        "in",
        &["--output", "out", "--window-length-count", "2", "--max-message-retries", "1"],
    );
    assert!(stdout.contains("2 succeeded, 2 user exceptions"), "{stdout}");
    assert_eq!(windows(&fnhost, "out"), [vec!["a", "b"], vec!["d", "e"]]);
    let dead: Vec<Value> = fnhost.consume_json("public/default/windows-DLQ");
    let values: Vec<&str> = dead.iter().map(|message| message["value"].as_str().unwrap()).collect();
    assert_eq!(values, ["fail", "c"]);
    let state = fnhost.run(&[
        "functions",
        "querystate",
        "--fqfn",
        "public/default/windows",
        "--key",
        "failed window stored this",
    ]);
    assert!(!state.success, "the failed window's state change was kept: {}", state.stdout);
}

#[test]
fn bad_window_settings_are_refused_with_the_flag_named() {
    let fnhost = Fnhost::new();
    let window_list = guest("window-list");
    let exclamation = guest("exclamation");
    let cases: [(&std::path::Path, &[&str], &str); 6] = [
        (&window_list, &["--window-length-count", "0"], "--window-length-count 0 is out of range"),
        (&window_list, &["--window-length-count", "5", "--window-length-duration-ms", "5"], "a window has one length"),
        (&window_list, &["--window-length-count", "5", "--max-lag-ms", "10"], "applies to event time only"),
        (&window_list, &[], "the component is a window function"),
        (&exclamation, &["--window-length-count", "5"], "the component is not a window function"),
        (
            &window_list,
            &["--window-length-count", "5", "--processing-guarantees", "MANUAL"],
            "MANUAL does not apply to a window function",
        ),
    ];
    for (wasm, flags, expected) in cases {
        let mut args =
            vec!["localrun", "--wasm", wasm.to_str().unwrap(), "--name", "w", "--inputs", "in", "--until-idle"];
        args.extend(flags);
        let stderr = fnhost.fails(&args);
        assert!(stderr.contains(expected), "{flags:?}: `{stderr}` does not say `{expected}`");
    }
}

#[test]
fn the_examples_count_per_user_and_average_sliding_event_time_windows() {
    let fnhost = Fnhost::new();
    produce_example_inputs(&fnhost);
    let (counts, averages) = example_outputs(
        &fnhost,
        [&["--wasm", guest("user-counts").to_str().unwrap()], &["--wasm", guest("sliding-average").to_str().unwrap()]],
    );
    let counts: Vec<String> = counts.iter().map(Value::to_string).collect();
    assert_eq!(counts, [r#"{"u0":4,"u1":3,"u2":3}"#, r#"{"u0":3,"u1":4,"u2":3}"#]);
    // Watermark 30 000 (the last reading's time, read from its value): every window ending by
    // then that holds a reading.
    assert_eq!(spans_and_averages(&averages), [(0, 5_000, 1, 10.0), (0, 10_000, 2, 15.0), (5_000, 15_000, 1, 20.0)]);
}

/// The example window functions in `language` (`--py FILE --classname ...` or `--js FILE`):
/// per-user counts of tumbling 10-event windows, and averages of sliding event-time windows.
fn example_outputs(fnhost: &Fnhost, code: [&[&str]; 2]) -> (Vec<Value>, Vec<Value>) {
    let [counts_code, averages_code] = code;
    let mut args = vec!["localrun", "--name", "user-counts", "--inputs", "events", "--output", "counts"];
    args.extend(counts_code);
    args.extend(["--window-length-count", "10", "--until-idle"]);
    fnhost.ok(&args);
    let mut args = vec!["localrun", "--name", "averages", "--inputs", "readings", "--output", "averages"];
    args.extend(averages_code);
    args.extend(["--window-length-duration-ms", "10000", "--sliding-interval-duration-ms", "5000", "--event-time"]);
    args.push("--until-idle");
    fnhost.ok(&args);
    let parse = |topic| fnhost.consume(topic).iter().map(|line| serde_json::from_str(line).unwrap()).collect();
    (parse("counts"), parse("averages"))
}

/// The averages' fields as numbers: JavaScript writes 15 where Rust and Python write 15.0.
fn spans_and_averages(averages: &[Value]) -> Vec<(u64, u64, u64, f64)> {
    let number = |average: &Value, field: &str| average[field].as_f64().unwrap();
    averages
        .iter()
        .map(|a| (number(a, "start") as u64, number(a, "end") as u64, number(a, "count") as u64, number(a, "average")))
        .collect()
}

fn produce_example_inputs(fnhost: &Fnhost) {
    let events: Vec<String> = (0..25).map(|i| format!(r#"{{"user_id": "u{}"}}"#, i % 3)).collect();
    let events: Vec<&str> = events.iter().map(String::as_str).collect();
    fnhost.produce("events", &events);
    for (value, event_time) in [(10.0, 1_000), (20.0, 6_000)] {
        let reading = format!(r#"{{"value": {value}}}"#);
        fnhost.ok(&["topics", "produce", "readings", "-m", &reading, "--event-time", &event_time.to_string()]);
    }
    // The function reads this one's event time from the value (`event-times`); the producer's says 1 ms.
    fnhost.ok(&["topics", "produce", "readings", "-m", r#"{"value": 30.0, "time_ms": 30000}"#, "--event-time", "1"]);
}

#[test]
fn python_and_javascript_window_functions_get_the_same_windows_as_rust() {
    let path = |relative: &str| crate::support::workspace().join(relative).display().to_string();
    let rust = Fnhost::new();
    produce_example_inputs(&rust);
    let (counts, averages) = example_outputs(
        &rust,
        [&["--wasm", guest("user-counts").to_str().unwrap()], &["--wasm", guest("sliding-average").to_str().unwrap()]],
    );
    assert_eq!(counts.len(), 2);
    assert_eq!(averages.len(), 3);
    let (py_counts, py_averages) =
        (path("examples/python-windows/user_counts.py"), path("examples/python-windows/sliding_average.py"));
    let (js_counts, js_averages) =
        (path("examples/js-windows/user_counts.js"), path("examples/js-windows/sliding_average.js"));
    let languages: [(&str, [&[&str]; 2]); 2] = [
        (
            "Python",
            [
                &["--py", &py_counts, "--classname", "user_counts.UserCounts"],
                &["--py", &py_averages, "--classname", "sliding_average.SlidingAverage"],
            ],
        ),
        ("JavaScript", [&["--js", &js_counts], &["--js", &js_averages]]),
    ];
    for (language, code) in languages {
        let fnhost = Fnhost::new();
        produce_example_inputs(&fnhost);
        let (language_counts, language_averages) = example_outputs(&fnhost, code);
        assert_eq!(language_counts, counts, "{language}");
        assert_eq!(spans_and_averages(&language_averages), spans_and_averages(&averages), "{language}");
    }
}

/// Records for the crash test: several windows of `CRASH_WINDOW` records.
const CRASH_RECORDS: usize = 5_000;
const CRASH_WINDOW: usize = 1_000;

#[test]
fn a_window_cut_by_sigkill_is_completed_once_by_the_next_run() {
    let fnhost = Fnhost::new();
    produce_numbered(&fnhost, "in", 0..CRASH_RECORDS);
    let wasm = guest("window-list");
    let window = CRASH_WINDOW.to_string();
    let args = [
        "localrun",
        "--wasm",
        wasm.to_str().unwrap(),
        "--name",
        "windows",
        "--inputs",
        "in",
        "--output",
        "out",
        "--window-length-count",
        &window,
        "--batch-size",
        "64",
        "--until-idle",
    ];
    // Killed after 5, 20 and 30 commits of 64 records: after 320, 1,600 and 3,520 records, each
    // inside a window.
    for commits in [5, 20, 30] {
        fnhost.kill_after_commits(&args, commits);
    }
    let partial = windows(&fnhost, "out").len();
    assert!((1..CRASH_RECORDS / CRASH_WINDOW).contains(&partial), "the kills interrupted the work ({partial} windows)");
    fnhost.ok(&args);
    assert_eq!(windows(&fnhost, "out"), count_oracle(CRASH_WINDOW, CRASH_WINDOW, CRASH_RECORDS));
}
