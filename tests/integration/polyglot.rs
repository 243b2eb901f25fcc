//! Python and JavaScript functions: `--py` and `--js` build the component, cache it and run it.

use crate::seed::SEED_EVENTS;
use crate::support::{Fnhost, Worker, fnhost_command, workspace};

const SEED_LOGS: [&str; 3] = [
    "INFO [session-duration-calculator] User user123 logged in at 1678886400",
    "INFO [session-duration-calculator] User user123 session duration: 20 seconds",
    "INFO [session-duration-calculator] User user123 logged in at 1678886500",
];

fn path(relative: &str) -> String {
    workspace().join(relative).display().to_string()
}

fn python_seed(class: &str) -> Vec<String> {
    let module = if class == "SessionDurationFunction" {
        "session_duration_function"
    } else {
        "session_duration_function_managed"
    };
    vec![
        "--py".into(),
        path(&format!("examples/python-session-duration/{module}.py")),
        "--classname".into(),
        format!("{module}.{class}"),
    ]
}

fn js_session() -> Vec<String> {
    vec!["--js".into(), path("examples/js-session-duration/session_duration.js")]
}

/// Runs the seed's events through a function given as `code` flags; returns stdout and stderr.
fn run_seed(fnhost: &Fnhost, code: &[String]) -> (String, String) {
    fnhost.produce("input-topic", &SEED_EVENTS);
    let mut args: Vec<String> = code.to_vec();
    args.splice(0..0, ["localrun".to_owned()]);
    args.extend(
        ["--name", "session-duration-calculator", "--inputs", "input-topic", "--output", "sessions"].map(String::from),
    );
    args.push("--until-idle".into());
    let run = fnhost.run(&args);
    assert!(run.success, "{}\n{}", run.stdout, run.stderr);
    (run.stdout, run.stderr)
}

fn function_logs(stdout: &str) -> Vec<&str> {
    stdout.lines().filter(|line| line.contains("[session-duration-calculator]")).collect()
}

#[test]
fn the_seeds_python_functions_give_the_seeds_output_with_only_the_import_changed() {
    for class in ["SessionDurationFunctionManagedState", "SessionDurationFunction"] {
        let fnhost = Fnhost::new();
        let (stdout, _) = run_seed(&fnhost, &python_seed(class));
        assert_eq!(function_logs(&stdout), SEED_LOGS, "{class}:\n{stdout}");
        assert!(stdout.contains("processed 4 messages: 4 succeeded"), "{class}:\n{stdout}");
        assert!(fnhost.consume("sessions").is_empty(), "the seed's functions return nothing");
    }
}

#[test]
fn the_python_managed_state_is_durable_across_runs_and_readable_by_querystate() {
    let fnhost = Fnhost::new();
    fnhost.produce("input-topic", &[SEED_EVENTS[0]]);
    let mut args = vec!["localrun".to_owned()];
    args.extend(python_seed("SessionDurationFunctionManagedState"));
    args.extend(["--name", "sd", "--inputs", "input-topic", "--until-idle"].map(String::from));
    fnhost.ok(&args);
    let state = fnhost.ok(&["functions", "querystate", "--fqfn", "public/default/sd", "--key", "user123"]);
    let json: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(json["stringValue"], "1678886400", "context.state.put stored the text: {json}");

    fnhost.produce("input-topic", &[SEED_EVENTS[2]]);
    let stdout = fnhost.ok(&args);
    assert!(stdout.contains("[sd] User user123 session duration: 20 seconds"), "{stdout}");
    let gone = fnhost.fails(&["functions", "querystate", "--fqfn", "public/default/sd", "--key", "user123"]);
    assert!(gone.contains("has no state under key"), "context.state.delete removed it: {gone}");
}

#[test]
fn the_javascript_session_function_gives_the_same_output() {
    let fnhost = Fnhost::new();
    let (stdout, _) = run_seed(&fnhost, &js_session());
    assert_eq!(function_logs(&stdout), SEED_LOGS, "{stdout}");
    assert_eq!(fnhost.consume("sessions"), [r#"{"user_id":"user123","duration":20}"#]);
}

#[test]
fn a_javascript_function_is_compiled_ahead_of_time_when_weval_is_on_path() {
    // scripts/test installs weval 0.5.0 and puts it on PATH, as a user would with `cargo install`.
    let fnhost = Fnhost::new();
    fnhost.produce("input-topic", &SEED_EVENTS);
    let mut args = vec!["localrun".to_owned()];
    args.extend(js_session());
    args.extend(
        ["--name", "session-duration-calculator", "--inputs", "input-topic", "--output", "sessions", "--until-idle"]
            .map(String::from),
    );
    let output = fnhost.command(&args).env_remove("FNHOST_WEVAL").output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("ahead of time with weval 0.5.0"),
        "weval 0.5.0 should be on PATH (scripts/test installs it):\n{stderr}"
    );
    assert_eq!(function_logs(&stdout), SEED_LOGS, "{stdout}");
    assert_eq!(fnhost.consume("sessions"), [r#"{"user_id":"user123","duration":20}"#]);
}

#[test]
fn under_a_cache_folder_with_a_space_javascript_is_built_for_the_interpreter() {
    // weval gets its paths in one space-separated string; the folder is kept so it builds once.
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fnhost cache with spaces");
    let fnhost = Fnhost::new();
    fnhost.produce("input-topic", &SEED_EVENTS);
    let mut args = vec!["localrun".to_owned()];
    args.extend(js_session());
    args.extend(["--name", "session-duration-calculator", "--inputs", "input-topic", "--until-idle"].map(String::from));
    let output = fnhost.command(&args).env_remove("FNHOST_WEVAL").env("FNHOST_CACHE_DIR", &cache).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("whose path has a space"), "{stderr}");
    assert!(stderr.contains("for StarlingMonkey's interpreter"), "{stderr}");
    assert_eq!(function_logs(&stdout), SEED_LOGS, "{stdout}");
}

#[test]
fn a_restart_uses_the_built_and_compiled_component_from_the_cache() {
    for code in [python_seed("SessionDurationFunctionManagedState"), js_session()] {
        let fnhost = Fnhost::new();
        run_seed(&fnhost, &code);
        let (_, stderr) = run_seed(&Fnhost::new(), &code);
        assert!(stderr.contains("using the component built earlier"), "{code:?}:\n{stderr}");
        assert!(stderr.contains("from the compiled-component cache"), "{code:?}:\n{stderr}");
        assert!(!stderr.contains("building "), "{code:?} was built again:\n{stderr}");
    }
}

/// A function that raises on `fail` and crashes on `crash`: both are user exceptions with the
/// guest's message, and the messages around them go through.
#[test]
fn python_and_javascript_exceptions_are_user_exceptions_with_the_guests_message() {
    let cases = [
        (
            vec![
                "--py".to_owned(),
                path("tests/guests/python/failing.py"),
                "--classname".into(),
                "failing.Failing".into(),
            ],
            "ValueError: refusing the message fail",
            "ZeroDivisionError: division by zero",
        ),
        (
            vec!["--js".to_owned(), path("tests/guests/js/failing.js")],
            "RangeError: refusing the message fail",
            "TypeError",
        ),
    ];
    for (code, raised, crashed) in cases {
        let fnhost = Fnhost::new();
        fnhost.produce("in", &["one", "fail", "two", "crash", "three"]);
        let mut args = vec!["localrun".to_owned()];
        args.extend(code.clone());
        args.extend(
            ["--name", "f", "--inputs", "in", "--output", "out", "--max-message-retries", "0", "--until-idle"]
                .map(String::from),
        );
        let run = fnhost.run(&args);
        assert!(run.success, "{code:?}:\n{}\n{}", run.stdout, run.stderr);
        assert!(
            run.stdout.contains("3 succeeded, 2 user exceptions, 0 system exceptions"),
            "{code:?}:\n{}",
            run.stdout
        );
        for message in [raised, crashed] {
            let reported = format!("user exception: {message}");
            assert!(run.stdout.contains(&reported), "{code:?} {message}:\n{}", run.stdout);
        }
        assert_eq!(fnhost.consume("out"), ["one", "two", "three"], "{code:?}");
        assert_eq!(fnhost.consume("f-DLQ"), ["fail", "crash"], "{code:?}");
    }
}

#[test]
fn a_worker_creates_a_python_function_and_reports_its_exceptions_in_stats() {
    let fnhost = Fnhost::new();
    let worker = Worker::start(fnhost.data_dir());
    let mut args = vec!["functions", "create", "--fqfn", "public/default/failing", "--inputs", "in", "--output", "out"];
    let file = path("tests/guests/python/failing.py");
    args.extend(["--py", &file, "--classname", "failing.Failing", "--max-message-retries", "0"]);
    worker.ok(&args);
    let produced = worker.cli(&["topics", "produce", "in", "-m", "one", "-m", "fail", "-m", "two"]);
    assert!(produced.success, "{}", produced.stderr);
    worker.wait_for("three messages processed", || {
        let stats = worker.ok(&["functions", "stats", "--fqfn", "public/default/failing"]);
        stats["receivedTotal"] == 3
    });
    let stats = worker.ok(&["functions", "stats", "--fqfn", "public/default/failing"]);
    assert_eq!(stats["userExceptionsTotal"], 1, "{stats}");
    assert_eq!(stats["processedSuccessfullyTotal"], 2, "{stats}");
    let status = worker.ok(&["functions", "status", "--fqfn", "public/default/failing"]);
    let latest = &status["instances"][0]["status"]["latestUserExceptions"][0]["exceptionString"];
    assert!(latest.as_str().is_some_and(|text| text.contains("ValueError: refusing the message fail")), "{status}");
    let config = worker.ok(&["functions", "get", "--fqfn", "public/default/failing"]);
    assert!(
        config.get("py").is_none() && config.get("className").is_none(),
        "the code is kept as a component: {config}"
    );
}

#[test]
fn missing_toolchains_and_incomplete_flags_say_what_to_do() {
    let fnhost = Fnhost::new();
    let file = path("tests/guests/python/failing.py");
    let js = path("tests/guests/js/failing.js");
    // A fresh cache, so that nothing built earlier hides the missing toolchain.
    let cache = tempfile::tempdir().unwrap();
    let cases: [(Vec<&str>, &str, &str, &str); 6] = [
        (
            vec!["--py", &file, "--classname", "failing.Failing"],
            "FNHOST_COMPONENTIZE_PY",
            "/nonexistent/componentize-py",
            "pip install componentize-py==0.25.1",
        ),
        (
            vec!["--js", &js],
            "FNHOST_COMPONENTIZE_JS",
            "/nonexistent/componentize-js",
            "npm install -g @bytecodealliance/componentize-js@0.23.0",
        ),
        (vec!["--js", &js], "FNHOST_WEVAL", "/nonexistent/weval", "cargo install weval --version 0.5.0 --locked"),
        (
            vec!["--py", &file, "--classname", "failing.Failing"],
            "FNHOST_COMPONENTIZE_PY",
            "/bin/true",
            "fnhost needs /bin/true 0.25.1",
        ),
        (vec!["--py", &file, "--classname", "failing.Missing"], "FNHOST_UNUSED", "", "failing has no Missing"),
        (vec!["--py", "/nonexistent/f.py", "--classname", "f.F"], "FNHOST_UNUSED", "", "cannot read /nonexistent/f.py"),
    ];
    for (code, variable, value, expected) in cases {
        let mut args = vec!["localrun", "--name", "f", "--inputs", "in", "--until-idle"];
        args.extend(code);
        let output = fnhost.command(&args).env("FNHOST_CACHE_DIR", cache.path()).env(variable, value).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} should fail");
        assert!(stderr.contains(expected), "{args:?}: expected `{expected}` in:\n{stderr}");
    }
    let both = fnhost.fails(&["localrun", "--name", "f", "--inputs", "in", "--js", &js, "--wasm", "f.wasm"]);
    assert!(both.contains("give the function's code once"), "{both}");
    let no_class = fnhost.fails(&["localrun", "--name", "f", "--inputs", "in", "--py", &file]);
    assert!(no_class.contains("--classname"), "{no_class}");
}

#[test]
fn the_python_sdk_carries_the_same_contract_as_the_host() {
    let host = std::fs::read_to_string(workspace().join("wit/function.wit")).unwrap();
    let sdk = std::fs::read_to_string(workspace().join("guest-sdk/python/src/fnhost/wit/function.wit")).unwrap();
    assert!(host == sdk, "guest-sdk/python/src/fnhost/wit/function.wit drifted: copy wit/function.wit over it");
}

/// Runs `program args` in `dir` and insists on success.
fn succeeds(dir: &std::path::Path, program: &str, args: &[&str], env: &[(&str, &std::path::Path)]) {
    let mut command = std::process::Command::new(program);
    command.current_dir(dir).args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
    assert!(
        output.status.success(),
        "{program} {args:?} in {} failed:\n{}\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn new_projects_pass_their_own_tests_and_run_as_they_say() {
    let fnhost = Fnhost::new();
    let projects = tempfile::tempdir().unwrap();
    let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("new-projects");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let events = [
        r#"{"user_id": "u1", "event_type": "login", "timestamp": 10}"#,
        r#"{"user_id": "u2", "event_type": "click", "timestamp": 20}"#,
        r#"{"user_id": "u1", "event_type": "logout", "timestamp": 30}"#,
    ];
    fnhost.produce("input-topic", &events);
    for language in ["rust", "python", "js"] {
        let name = format!("sessions-{language}");
        let dir = projects.path().join(&name);
        let created = fnhost_command().args(["new", "--lang", language, &name, "--dir"]).arg(projects.path()).output();
        assert!(created.unwrap().status.success(), "fnhost new --lang {language}");
        let module = name.replace('-', "_");
        let code: Vec<String> = match language {
            "rust" => {
                succeeds(&dir, &cargo, &["test", "--quiet"], &[("CARGO_TARGET_DIR", &target)]);
                succeeds(
                    &dir,
                    &cargo,
                    &["build", "--quiet", "--release", "--target", "wasm32-wasip2"],
                    &[("CARGO_TARGET_DIR", &target)],
                );
                let wasm = target.join(format!("wasm32-wasip2/release/{module}.wasm"));
                vec!["--wasm".into(), wasm.display().to_string()]
            }
            "python" => {
                succeeds(
                    &dir,
                    "python3",
                    &["-m", "pip", "install", "--quiet", "--root-user-action=ignore", "-r", "requirements.txt"],
                    &[],
                );
                succeeds(&dir, "python3", &["-m", "pytest", "-q", "-p", "no:cacheprovider"], &[]);
                let file = dir.join(format!("{module}.py")).display().to_string();
                vec!["--py".into(), file, "--classname".into(), format!("{module}.SessionsPython")]
            }
            _ => {
                succeeds(&dir, "npm", &["install", "--no-audit", "--no-fund", "--loglevel=error"], &[]);
                succeeds(&dir, "node", &["--test"], &[]);
                vec!["--js".into(), dir.join(format!("{module}.js")).display().to_string()]
            }
        };
        let output = format!("sessions-{language}");
        let mut args = vec!["localrun".to_owned()];
        args.extend(code);
        args.extend(
            ["--name", &name, "--inputs", "input-topic", "--output", &output, "--until-idle"].map(String::from),
        );
        let stdout = fnhost.ok(&args);
        assert!(stdout.contains(&format!("INFO [{name}] User u1 session duration: 20 seconds")), "{stdout}");
        let written: Vec<serde_json::Value> =
            fnhost.consume(&output).iter().map(|line| serde_json::from_str(line).unwrap()).collect();
        // The Python and JavaScript templates describe the duration with a third-party package.
        let expected = match language {
            "rust" => serde_json::json!({"user_id": "u1", "duration": 20}),
            _ => serde_json::json!({"user_id": "u1", "duration": 20, "took": "20 seconds"}),
        };
        assert_eq!(written, [expected], "{language}");
    }
    let again =
        fnhost_command().args(["new", "--lang", "js", "sessions-js", "--dir"]).arg(projects.path()).output().unwrap();
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[test]
fn fnhost_py_builds_a_component_that_runs_as_it_is() {
    let fnhost = Fnhost::new();
    let wasm = fnhost.data_dir().join("failing.wasm");
    let file = path("tests/guests/python/failing.py");
    let built = std::process::Command::new("fnhost-py")
        .args(["build", &file, "--classname", "failing.Failing", "-o"])
        .arg(&wasm)
        .output()
        .expect("fnhost-py is installed by `pip install './guest-sdk/python[build]'` (scripts/test does it)");
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    fnhost.produce("in", &["hello"]);
    let wasm = wasm.display().to_string();
    fnhost.ok(&["localrun", "--wasm", &wasm, "--name", "f", "--inputs", "in", "--output", "out", "--until-idle"]);
    assert_eq!(fnhost.consume("out"), ["hello"]);
}
