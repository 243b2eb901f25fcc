//! The same session logic as a Rust, Python and JavaScript guest, each beside its logic run
//! natively, with first deployment, restart from the compiled cache and instance start (`languages`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fnhost::embedded::EmbeddedStore;
use fnhost::engine::state::StateStore;
use fnhost::function::{FunctionConfig, Ordering, ProcessingGuarantee};
use fnhost::function::{FunctionKind, Source};
use fnhost::guest_build::{Builder, WEVAL_OFF};
use fnhost::instance::{LogSink, MessageContext};
use fnhost::names::Fqfn;
use fnhost::runtime::{InstanceLimits, Runtime, RuntimeConfig};

use crate::common::{Code, USERS, Workload, input, pipeline, session_events};

/// Most events the language comparison pushes through each pipeline: the Python and JavaScript
/// guests take tens of microseconds per message.
pub(crate) const LANGUAGE_MESSAGES: usize = 100_000;

/// Instantiations timed per language.
pub(crate) const INSTANCE_STARTS: usize = 200;

/// One language's guest, built from its source as `fnhost localrun --py` or `--js` would.
pub(crate) struct Language {
    name: &'static str,
    source: Option<Source>,
    /// The builder for it, given its own cache directory.
    builder: fn(&Path) -> Builder,
    /// Its logic run natively, outside the sandbox.
    native: Duration,
}

pub(crate) fn languages(rust_wasm: &Path, messages: usize) -> anyhow::Result<()> {
    let events = session_events(messages);
    let scratch = tempfile::tempdir()?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ is in the workspace");
    // Python: `fnhost new`'s template, which writes an output per logout as the others do.
    let python = scratch.path().join("python/session.py");
    std::fs::create_dir_all(python.parent().expect("a folder"))?;
    let template = include_str!("../../src/cli/templates/python/function.py");
    std::fs::write(
        &python,
        template.replace("__NAME__", "session").replace("__MODULE__", "session").replace("__CLASS__", "Session"),
    )?;
    let js = Source::JavaScript { file: workspace.join("examples/js-session-duration/session_duration.js") };
    let interpreted = |dir: &Path| Builder::new(dir).interpreted_javascript();
    let node = native_script("node", &[workspace.join("host/benches/native/session.mjs").as_path()], messages, None)?;
    let mut languages = vec![
        Language {
            name: "Rust",
            source: None,
            builder: Builder::new,
            native: pipeline(
                &scratch.path().join("native"),
                &Workload::sessions(&events),
                Code::Native,
                (ProcessingGuarantee::AtLeastOnce, Ordering::Unordered, 1),
            )?,
        },
        Language {
            name: "Python",
            source: Some(Source::Python {
                file: python.clone(),
                classname: "session.Session".into(),
                requirements: None,
                wheel_dir: None,
            }),
            builder: Builder::new,
            native: native_script(
                "python3",
                &[workspace.join("host/benches/native/session.py").as_path(), &python],
                messages,
                Some(&workspace.join("guest-sdk/python/src")),
            )?,
        },
        Language { name: "JavaScript", source: Some(js.clone()), builder: interpreted, native: node },
    ];
    // scripts/bench names the weval it installed; without it there is no ahead-of-time build.
    let weval = std::env::var_os("FNHOST_WEVAL").filter(|value| value != WEVAL_OFF);
    if weval.is_some() {
        let name = "JavaScript, ahead of time (weval)";
        languages.push(Language { name, source: Some(js), builder: Builder::new, native: node });
    }
    println!();
    println!(
        "| language ({messages} session events, ATLEAST_ONCE, 1 instance) | build s | compile s | restart from cache ms | instance start p50 µs | p99 µs | guest msg/s | native msg/s | guest / native |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for language in &languages {
        let native = language.native;
        // weval takes its paths in one space-separated string, so folders are named without spaces.
        let folder: String = language.name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        // A builder of its own, so that the build is measured rather than found in the cache.
        let started = Instant::now();
        let wasm = match &language.source {
            None => rust_wasm.to_owned(),
            Some(source) => (language.builder)(&scratch.path().join(format!("build-{folder}")))
                .component(source, FunctionKind::Function)?,
        };
        let build = started.elapsed();
        let compiled = scratch.path().join(format!("compiled-{folder}"));
        let runtime = || Runtime::new(RuntimeConfig { cache_dir: Some(compiled.clone()), max_instances: 4 });
        let started = Instant::now();
        runtime()?.load(&wasm)?;
        let compile = started.elapsed();
        let (restart, starts) = starts(runtime()?, &wasm, &scratch.path().join(format!("starts-{folder}")))?;
        let elapsed = pipeline(
            &scratch.path().join(&folder),
            &Workload::sessions(&events),
            Code::Wasm(&wasm),
            (ProcessingGuarantee::AtLeastOnce, Ordering::Unordered, 1),
        )?;
        let rate = |elapsed: Duration| messages as f64 / elapsed.as_secs_f64();
        let build = if language.source.is_some() { format!("{:.1}", build.as_secs_f64()) } else { "(cargo)".into() };
        println!(
            "| {} | {build} | {:.2} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} |",
            language.name,
            compile.as_secs_f64(),
            restart.as_secs_f64() * 1e3,
            starts[starts.len() / 2].as_secs_f64() * 1e6,
            starts[starts.len() * 99 / 100].as_secs_f64() * 1e6,
            rate(elapsed),
            rate(native),
            rate(elapsed) / rate(native),
        );
    }
    Ok(())
}

/// A restart from the compiled cache (load, link, first instance), then `INSTANCE_STARTS`
/// instantiations from the linked function, sorted.
pub(crate) fn starts(runtime: Runtime, wasm: &Path, dir: &Path) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let store = EmbeddedStore::open(dir)?;
    let fqfn = Fqfn::parse("public/default/starts")?;
    let config = FunctionConfig::new(fqfn.clone(), vec![input()]);
    let limits = InstanceLimits { memory_bytes: 128 << 20, timeout: Duration::from_secs(10) };
    let context = || -> anyhow::Result<MessageContext> {
        Ok(MessageContext::new(&config, 0, store.table(&fqfn)?, LogSink::default()))
    };
    let started = Instant::now();
    let code = runtime.load(wasm)?;
    let prepared = code.prepare::<MessageContext>()?;
    let details = Arc::new(config.details(code.digest(), 0, 1));
    let first =
        prepared.instantiate(context()?, details.clone(), limits).map_err(|(_, error)| anyhow::anyhow!("{error}"))?;
    let restart = started.elapsed();
    drop(first);
    let mut times = Vec::with_capacity(INSTANCE_STARTS);
    for _ in 0..INSTANCE_STARTS {
        let host = context()?;
        let started = Instant::now();
        let instance =
            prepared.instantiate(host, details.clone(), limits).map_err(|(_, error)| anyhow::anyhow!("{error}"))?;
        times.push(started.elapsed());
        drop(instance);
    }
    times.sort();
    Ok((restart, times))
}

/// Runs a native script over the benchmark's events; it prints the seconds its loop took.
pub(crate) fn native_script(
    program: &str,
    args: &[&Path],
    messages: usize,
    python_path: Option<&Path>,
) -> anyhow::Result<Duration> {
    let mut command = std::process::Command::new(program);
    command.args(args).args([messages.to_string(), USERS.to_string()]);
    if let Some(path) = python_path {
        command.env("PYTHONPATH", path);
    }
    let output = command.output().map_err(|error| anyhow::anyhow!("cannot run {program}: {error}"))?;
    anyhow::ensure!(output.status.success(), "{program} failed: {}", String::from_utf8_lossy(&output.stderr));
    let seconds: f64 = String::from_utf8_lossy(&output.stdout).trim().parse()?;
    Ok(Duration::from_secs_f64(seconds))
}
