//! `fnhost functions replay`, `redrive` and `querystate --as-of | --why`: a function's history
//! and its dead letters, through a worker.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::Args;

use super::client::{AdminOptions, Body, encode_segment};
use super::functions::{Naming, WorkerUrl, function_path};
use super::topic_admin::parse_duration;
use super::{COMPILED_DIR, DATABASE_DIR, FunctionFlags, NO_CODE, cache_dir};
use crate::embedded::EmbeddedStore;
use crate::engine::history::StateHistory;
use crate::instance::MessageContext;
use crate::limits::{MAX_PACKAGE_SIZE, MAX_REPLAY_MESSAGES};
use crate::runtime::{Runtime, RuntimeConfig};
use crate::spec::FunctionSpec;
use crate::worker::api::FunctionState;
use crate::worker::api::history::{RedriveRequest, ReplayAnswer, ReplayRequest, ReplayedMessageAnswer};

#[derive(Debug, Args)]
pub(super) struct RedriveArgs {
    #[command(flatten)]
    worker: WorkerUrl,
    #[command(flatten)]
    naming: Naming,
    /// The dead-letter topic [default: the function's].
    #[arg(long)]
    from_dlq: Option<String>,
    /// Only the dead letters whose reason (their ERROR property) matches this regular expression.
    #[arg(long)]
    where_error: Option<String>,
    /// At most this many.
    #[arg(long)]
    limit: Option<u64>,
}

#[derive(Debug, Args)]
pub(super) struct ReplayArgs {
    #[command(flatten)]
    worker: WorkerUrl,
    /// The function's name, and optionally new code to replay instead of its own (--wasm, --py
    /// with --classname, --js). With --data-dir, every flag localrun took.
    #[command(flatten)]
    function: FunctionFlags,
    /// The id of the message to replay.
    #[arg(long, required_unless_present = "range", conflicts_with = "range")]
    message: Option<String>,
    /// Replay a run of messages of one topic, FROM..TO (ids, both included), each seeing the
    /// replay's changes of the ones before.
    #[arg(long)]
    range: Option<String>,
    /// The input topic of the messages (needed when the function has several).
    #[arg(long)]
    topic: Option<String>,
    /// Print the JSON answer instead of a summary.
    #[arg(long)]
    json: bool,
    /// Replay from the data directory of a stopped localrun instead of asking a worker; give the
    /// function as localrun was given it.
    #[arg(long, conflicts_with = "url")]
    data_dir: Option<PathBuf>,
}

/// `querystate --as-of`: a message id, a time ago (10m, 3h) or an absolute time (@ and
/// milliseconds since the Unix epoch), as a query string for the state path.
pub(super) fn as_of_query(as_of: &str, topic: Option<&str>) -> anyhow::Result<String> {
    let query = if let Some(millis) = as_of.strip_prefix('@') {
        let millis: u64 = millis
            .parse()
            .with_context(|| format!("`{as_of}` is not a time: after @ give milliseconds since the Unix epoch"))?;
        format!("asOfTime={millis}")
    } else if as_of.ends_with(|c: char| c.is_ascii_alphabetic()) && as_of.starts_with(|c: char| c.is_ascii_digit()) {
        let back = parse_duration(as_of)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).context("the clock is before 1970")?;
        format!("asOfTime={}", now.saturating_sub(back).as_millis())
    } else {
        format!("asOf={}", encode_segment(as_of))
    };
    Ok(match topic {
        Some(topic) => format!("{query}&topic={}", encode_segment(topic)),
        None => query,
    })
}

/// Prints a state value or its writer, from the worker.
pub(super) fn query(url: &WorkerUrl, admin: &AdminOptions, path: &str) -> anyhow::Result<()> {
    let answer = url.client(admin)?.send("GET", path, Body::Empty)?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

pub(super) fn replay(args: ReplayArgs, admin: &AdminOptions) -> anyhow::Result<()> {
    let (message, last) = match (&args.message, &args.range) {
        (Some(message), _) => (message.clone(), None),
        (None, Some(range)) => {
            let Some((first, last)) = range.split_once("..") else {
                bail!("--range `{range}` is not FROM..TO: give two message ids, as 500..600");
            };
            (first.to_owned(), Some(last.to_owned()))
        }
        (None, None) => bail!("give --message ID or --range FROM..TO"),
    };
    let request = ReplayRequest { topic: args.topic.clone(), message, last };
    let spec = args.function.into_spec()?;
    let answer = match &args.data_dir {
        Some(data_dir) => replay_offline(&spec, &request, data_dir)?,
        None => replay_on_worker(&spec, &request, &args.worker, admin)?,
    };
    match args.json {
        true => println!("{}", serde_json::to_string_pretty(&answer)?),
        false => print!("{}", summary(&answer)),
    }
    Ok(())
}

fn replay_on_worker(
    spec: &FunctionSpec,
    request: &ReplayRequest,
    worker: &WorkerUrl,
    admin: &AdminOptions,
) -> anyhow::Result<ReplayAnswer> {
    let fqfn = spec.fqfn()?;
    let named = FunctionSpec {
        tenant: spec.tenant.clone(),
        namespace: spec.namespace.clone(),
        name: spec.name.clone(),
        ..FunctionSpec::default()
    };
    if spec.clone().without_code() != named {
        bail!(
            "a worker replays a function under its own config: give only its name and, to try new code, --wasm, --py or --js (the other flags are for --data-dir)"
        );
    }
    let mut fields = vec![("replay", serde_json::to_vec(request)?)];
    if let Some(code) = spec.code()? {
        let path = super::progress::component_file(&code, spec.world())?;
        let shown = path.display();
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read the component {shown}"))?;
        if bytes.len() > MAX_PACKAGE_SIZE {
            bail!("the component {shown} is {} bytes; the limit (MAX_PACKAGE_SIZE) is {MAX_PACKAGE_SIZE}", bytes.len());
        }
        fields.push(("data", bytes));
    }
    let path = format!("{}/replay", function_path(&fqfn));
    Ok(worker.client(admin)?.call("POST", &path, Body::Form(fields))?)
}

/// Replays from a stopped localrun's data directory, with the function as localrun ran it.
fn replay_offline(spec: &FunctionSpec, request: &ReplayRequest, data_dir: &Path) -> anyhow::Result<ReplayAnswer> {
    let Some(code) = spec.code()? else { bail!(NO_CODE) };
    let config = spec.resolve()?;
    let topic = config.input_topic(request.topic.as_deref()).map_err(anyhow::Error::msg)?;
    let wasm = super::progress::component_file(&code, spec.world())?;
    let runtime = Runtime::new(RuntimeConfig { cache_dir: Some(cache_dir().join(COMPILED_DIR)), max_instances: 1 })?;
    let code = runtime.load(&wasm)?;
    let store = EmbeddedStore::open(&data_dir.join(DATABASE_DIR))?;
    let last = request.last.as_deref().unwrap_or(&request.message);
    let messages = store.messages(&topic, &request.message, last, MAX_REPLAY_MESSAGES)?;
    let replay = crate::instance::replay(&config, code.prepare::<MessageContext>()?, code.digest(), &store, messages)?;
    Ok(ReplayAnswer::of(replay, code.digest()))
}

pub(super) fn redrive(args: &RedriveArgs, admin: &AdminOptions) -> anyhow::Result<()> {
    let request =
        RedriveRequest { from_dlq: args.from_dlq.clone(), where_error: args.where_error.clone(), limit: args.limit };
    let path = format!("{}/redrive", function_path(&args.naming.fqfn()?));
    let answer = args.worker.client(admin)?.send("POST", &path, Body::json(&request))?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

/// The replay as lines for a person.
fn summary(answer: &ReplayAnswer) -> String {
    let mut text = match answer.state_before.as_str() {
        "current" => "state before: the current state (the function has not processed the first message yet)\n".into(),
        _ => "state before: as it was just before the function processed the first message\n".to_owned(),
    };
    for message in &answer.messages {
        text += &message_summary(message);
    }
    text
}

fn message_summary(message: &ReplayedMessageAnswer) -> String {
    let mut text = format!("message {} of {}\n", message.message_id, message.topic);
    match (&message.output, &message.output_base64) {
        (Some(output), _) => text += &format!("  output: {output}\n"),
        (None, Some(output)) => text += &format!("  output (base64): {output}\n"),
        (None, None) => text += "  output: none\n",
    }
    for published in &message.published {
        let value = published.value.clone().or_else(|| published.value_base64.clone()).unwrap_or_default();
        text += &format!("  published to {}: {value}\n", published.topic);
    }
    for log in &message.logs {
        text += &format!("  log {}: {}\n", log.level, log.line);
    }
    for diff in &message.state {
        let after = if diff.after.is_none() { "(deleted)".into() } else { shown(&diff.after) };
        text += &format!("  state {}: {} → {after}\n", diff.key, shown(&diff.before));
    }
    if let Some(exception) = &message.exception {
        text += &format!("  {} exception: {}\n", exception.kind, exception.message);
    }
    if !message.may_differ.is_empty() {
        text += &format!(
            "  may differ from the first run: it read the {} (give the function --deterministic for exact replays)\n",
            message.may_differ.join(" and ")
        );
    }
    text
}

fn shown(value: &Option<FunctionState>) -> String {
    match value {
        None => "(absent)".into(),
        Some(state) => match (&state.string_value, &state.number_value, &state.byte_value) {
            (Some(text), _, _) => format!("{text:?}"),
            (None, Some(number), _) => number.to_string(),
            (None, None, Some(bytes)) => format!("base64:{bytes}"),
            (None, None, None) => "(empty)".into(),
        },
    }
}
