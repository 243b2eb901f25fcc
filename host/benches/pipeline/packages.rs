//! Third-party packages (issue 31): how long a Python or JavaScript function takes to build with
//! its packages the first time (installing them) and when everything is cached, and how large its
//! component is, beside the same language's session function without packages.

use std::path::Path;
use std::time::{Duration, Instant};

use fnhost::function::{FunctionKind, Source};
use fnhost::guest_build::Builder;

pub(crate) fn packages(rounds: usize) -> anyhow::Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ is in the workspace");
    let python = |file: &str, classname: &str| Source::Python {
        file: workspace.join(file),
        classname: classname.into(),
        requirements: None,
        wheel_dir: None,
    };
    let js = |file: &str| Source::JavaScript { file: workspace.join(file) };
    let builds = [
        (
            "Python, no packages (session)",
            python(
                "examples/python-session-duration/session_duration_function_managed.py",
                "session_duration_function_managed.SessionDurationFunctionManagedState",
            ),
        ),
        ("Python, python-dateutil", python("tests/guests/python-packages/weekday.py", "weekday.Weekday")),
        ("JavaScript, no packages (session)", js("examples/js-session-duration/session_duration.js")),
        ("JavaScript, date-fns", js("tests/guests/js-packages/weekday.js")),
    ];
    println!(
        "| build, median of {rounds} from an empty cache | first (install and build), s | cached, ms | component, KiB |"
    );
    println!("|---|---|---|---|");
    for (what, source) in &builds {
        let mut first = Vec::new();
        let mut cached = Vec::new();
        let mut size = 0;
        for _ in 0..rounds {
            let cache = tempfile::tempdir()?;
            let builder = Builder::new(cache.path());
            let started = Instant::now();
            let built = builder.component(source, FunctionKind::Function)?;
            first.push(started.elapsed());
            size = std::fs::metadata(&built)?.len();
            let started = Instant::now();
            anyhow::ensure!(builder.component(source, FunctionKind::Function)? == built, "the cache gave another file");
            cached.push(started.elapsed());
        }
        let median = |mut times: Vec<Duration>| {
            times.sort();
            times[times.len() / 2]
        };
        println!(
            "| {what} | {:.1} | {:.1} | {} |",
            median(first).as_secs_f64(),
            median(cached).as_secs_f64() * 1e3,
            size / 1024
        );
    }
    Ok(())
}
