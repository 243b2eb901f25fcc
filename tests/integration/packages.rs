//! Functions with third-party packages: Python's requirements installed by pip, JavaScript's
//! package.json by npm and bundled by esbuild; cached, and refused when they cannot run in the
//! sandbox (a native extension, a Node.js built-in).

use std::path::Path;

use crate::support::{Fnhost, Run, Worker, workspace};

/// Runs `fnhost ARGS --data-dir …` with a component cache of the test's own, so that the first
/// run installs and builds and the second finds it all cached.
fn run_with_cache(fnhost: &Fnhost, cache: &Path, args: &[&str]) -> Run {
    let output = fnhost.command(args).env("FNHOST_CACHE_DIR", cache).output().unwrap();
    Run {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        success: output.status.success(),
    }
}

fn guest_source(path: &str) -> String {
    workspace().join("tests/guests").join(path).display().to_string()
}

/// Builds and runs the function over `input` twice from a fresh cache, checking the output each
/// time; returns the two runs' logs.
fn run_twice(code: &[&str], input: &str) -> (String, String) {
    let fnhost = Fnhost::new();
    let cache = tempfile::tempdir().unwrap();
    let mut logs = Vec::new();
    for round in 0..2 {
        fnhost.produce("dates", &[input]);
        let mut args =
            vec!["localrun", "--name", "weekday", "--inputs", "dates", "--output", "weekdays", "--until-idle"];
        args.extend(code);
        let run = run_with_cache(&fnhost, cache.path(), &args);
        assert!(run.success, "round {round}:\n{}", run.stderr);
        logs.push(run.stderr);
    }
    let second = logs.pop().unwrap();
    (logs.pop().unwrap(), second)
}

#[test]
fn a_python_function_with_a_pure_package_runs_and_its_second_start_installs_and_builds_nothing() {
    let file = guest_source("python-packages/weekday.py");
    let (first, second) = run_twice(&["--py", &file, "--classname", "weekday.Weekday"], "6 December 2026");
    assert!(first.contains("installing the packages") && first.contains("built "), "{first}");
    assert!(second.contains("using the packages resolved earlier"), "{second}");
    assert!(second.contains("using the component built earlier") && !second.contains("installing"), "{second}");
}

#[test]
fn a_javascript_function_with_an_npm_package_runs_and_its_second_start_installs_and_builds_nothing() {
    let file = guest_source("js-packages/weekday.js");
    let (first, second) = run_twice(&["--js", &file], "2026-12-06 2026-12-01");
    assert!(first.contains("npm ci") && first.contains("built "), "{first}");
    assert!(second.contains("using the packages installed earlier"), "{second}");
    assert!(second.contains("using the component built earlier") && !second.contains("installing"), "{second}");
}

#[test]
fn functions_with_packages_give_the_right_output_from_localrun_and_from_a_worker() {
    let cases = [
        (
            vec!["--py", "python-packages/weekday.py", "--classname", "weekday.Weekday"],
            "6 December 2026",
            "2026-12-06 is a Sunday",
        ),
        (
            vec!["--js", "js-packages/weekday.js"],
            "2026-12-06 2026-12-01",
            "2026-12-06 is a Sunday, 5 days after 2026-12-01",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::start(dir.path());
    for (index, (code, input, expected)) in cases.into_iter().enumerate() {
        let file = guest_source(code[1]);
        let mut code: Vec<&str> = code.clone();
        code[1] = &file;
        let fnhost = Fnhost::new();
        fnhost.produce("dates", &[input]);
        let mut args =
            vec!["localrun", "--name", "weekday", "--inputs", "dates", "--output", "weekdays", "--until-idle"];
        args.extend(&code);
        fnhost.ok(&args);
        assert_eq!(fnhost.consume("weekdays"), [expected], "localrun of {file}");

        let (name, output) = (format!("weekday-{index}"), format!("weekdays-{index}"));
        let mut args = vec!["functions", "create", "--name", &name, "-i", "dates", "-o", &output];
        args.extend(&code);
        worker.ok(&args);
        let triggered = worker.ok(&["functions", "trigger", "--name", &name, "--trigger-value", input]);
        assert_eq!(triggered["value"], expected, "a worker's {file}: {triggered}");
    }
}

#[test]
fn a_python_package_with_a_native_extension_is_refused_naming_it() {
    let fnhost = Fnhost::new();
    let file = guest_source("python-native/native.py");
    let refused = fnhost.fails(&[
        "localrun",
        "--py",
        &file,
        "--classname",
        "native.Escape",
        "--name",
        "n",
        "--inputs",
        "in",
        "--until-idle",
    ]);
    assert!(
        refused.contains("MarkupSafe 2.1.5 is not pure Python")
            || refused.contains("markupsafe 2.1.5 is not pure Python"),
        "{refused}"
    );
    assert!(refused.contains("cannot load an extension module"), "{refused}");
}

#[test]
fn a_javascript_import_of_a_node_builtin_is_refused_naming_it() {
    let fnhost = Fnhost::new();
    let file = guest_source("js-builtin/reads-files.js");
    let refused = fnhost.fails(&["localrun", "--js", &file, "--name", "r", "--inputs", "in", "--until-idle"]);
    assert!(refused.contains("reads-files.js imports `node:fs`, a Node.js built-in"), "{refused}");
}

#[test]
fn a_requirements_file_without_python_and_a_missing_one_get_a_clear_error() {
    let fnhost = Fnhost::new();
    let js = guest_source("js-packages/weekday.js");
    let refused =
        fnhost.fails(&["localrun", "--js", &js, "--requirements", "requirements.txt", "--name", "r", "--inputs", "in"]);
    assert!(refused.contains("--py"), "{refused}");
    let py = guest_source("python-packages/weekday.py");
    let refused = fnhost.fails(&[
        "localrun",
        "--py",
        &py,
        "--classname",
        "weekday.Weekday",
        "--requirements",
        "/nonexistent/requirements.txt",
        "--name",
        "r",
        "--inputs",
        "in",
        "--until-idle",
    ]);
    assert!(refused.contains("cannot read the requirements file /nonexistent/requirements.txt"), "{refused}");
}
