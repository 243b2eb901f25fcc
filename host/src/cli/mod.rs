//! The `fnhost` command line: pulsar-admin's verbs and flags where they exist.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use clap::{Args, Parser, Subcommand};

pub mod client;
mod function_flags;
mod functions;
mod history;
mod nats_flags;
mod new;
mod progress;
mod topic_admin;
mod worker;

use crate::embedded::EmbeddedStore;
use crate::engine::broker::{Acks, Broker, Effects, Inputs, OutMessage, SubscriptionSpec};
use crate::instance::{self, FunctionLauncher, LogSink, MessageContext, RunUntil};
use crate::limits::MAX_BATCH_MESSAGES;
use crate::metrics::Stats;
use crate::names::{SubscriptionName, TopicName};
use crate::runtime::{Runtime, RuntimeConfig};
use crate::worker::api::{
    AcknowledgeAnswer, AcknowledgeRequest, ProduceAnswer, ProduceRequest, ProducedMessage, ReceiveAnswer,
    ReceivedMessage,
};
use client::Body;
pub(crate) use function_flags::FunctionFlags;
use function_flags::PositionFlag;
use worker::{WorkerArgs, worker};

/// The data directory used when `--data-dir` is not given.
pub const DEFAULT_DATA_DIR: &str = "./fnhost-data";
/// The sled database's folder inside the data directory.
pub(crate) const DATABASE_DIR: &str = "db";
/// Compiled components, inside the cache directory.
pub(crate) const COMPILED_DIR: &str = "compiled";

/// Where built and compiled components are cached: `FNHOST_CACHE_DIR`, else the user's cache
/// directory. Every entry is named by a hash of what made it, so one cache serves every data
/// directory and every version of fnhost.
pub(crate) fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FNHOST_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("fnhost")
}

/// The message for a function given no code.
pub(crate) const NO_CODE: &str = "no function code: give --wasm FILE.wasm, --py FILE.py --classname MODULE.CLASS, or --js FILE.js (or wasm, py and className, or js in --function-config-file)";

/// fnhost: run WebAssembly functions over topics, with durable state.
#[derive(Debug, Parser)]
#[command(name = "fnhost", version, about)]
pub struct Cli {
    #[command(flatten)]
    admin: client::AdminOptions,
    /// Export OpenTelemetry traces over OTLP/HTTP to the collector at this base URL (else to the
    /// one OTEL_EXPORTER_OTLP_ENDPOINT names; with neither, nothing is exported): the worker's
    /// and localrun's spans of each processed message, `topics produce`'s of each message sent.
    #[arg(long, global = true, value_name = "URL")]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one function in the foreground, over the embedded topics in the data directory.
    Localrun(Box<LocalrunArgs>),
    /// Run a function worker: many functions, managed over HTTP (the REST API) or `fnhost functions`.
    Worker(Box<WorkerArgs>),
    /// Produce to and consume from topics, in a data directory or through a worker (--url).
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Manage the functions of a worker.
    #[command(subcommand)]
    Functions(Box<functions::FunctionsCommand>),
    /// Set a namespace's retention, message TTL and backlog quota, on a worker.
    #[command(subcommand)]
    Namespaces(topic_admin::NamespacesCommand),
    /// Create a function project (Rust, Python or JavaScript) with its unit test, ready to build.
    New(new::NewArgs),
}

#[derive(Debug, Args)]
struct DataDir {
    /// The data directory holding topics, subscriptions, state and compiled components.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
}

#[derive(Debug, Args)]
struct LocalrunArgs {
    #[command(flatten)]
    function: FunctionFlags,
    /// Exit once the inputs are drained, printing what was processed.
    #[arg(long)]
    until_idle: bool,
    #[command(flatten)]
    data: DataDir,
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Append messages to a topic.
    Produce(ProduceArgs),
    /// Print a topic's messages, one per line.
    Consume(ConsumeArgs),
    #[command(flatten)]
    Admin(topic_admin::TopicAdminCommand),
}

#[derive(Debug, Args)]
struct ProduceArgs {
    /// The topic (a short name means persistent://public/default/NAME).
    topic: String,
    /// A message; repeat for several.
    #[arg(short = 'm', long = "messages", required_unless_present = "file", conflicts_with = "file")]
    messages: Vec<String>,
    /// A file holding one message per line.
    #[arg(long)]
    file: Option<PathBuf>,
    /// The key of every message.
    #[arg(short = 'k', long)]
    key: Option<String>,
    /// A property `name=value` of every message; repeat for several.
    #[arg(short = 'p', long = "property")]
    properties: Vec<String>,
    /// The event time of every message, in milliseconds since the Unix epoch.
    #[arg(long)]
    event_time: Option<u64>,
    /// Produce through the worker at this URL instead of writing the data directory.
    #[arg(long, conflicts_with = "data_dir")]
    url: Option<String>,
    #[command(flatten)]
    data: DataDir,
}

#[derive(Debug, Args)]
struct ConsumeArgs {
    /// The topic.
    topic: String,
    /// Stop after this many messages (0: no limit).
    #[arg(short = 'n', long = "num-messages", default_value_t = 0)]
    num_messages: u64,
    /// A durable subscription: its position is kept, so the next consume continues after this one.
    #[arg(short = 's', long)]
    subscription: Option<String>,
    /// Where to start when the subscription is new (or always, without --subscription).
    #[arg(long, value_enum, default_value_t = PositionFlag::Earliest)]
    position: PositionFlag,
    /// Exit at the end of the topic instead of waiting for more.
    #[arg(long)]
    until_idle: bool,
    /// Print each message as one JSON object with its key, properties, times and id.
    #[arg(long)]
    json: bool,
    /// Consume through the worker at this URL (with a --subscription) instead of reading the data directory.
    #[arg(long, conflicts_with = "data_dir", requires = "subscription")]
    url: Option<String>,
    #[command(flatten)]
    data: DataDir,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let admin_verb = matches!(
        cli.command,
        Command::Functions(_) | Command::Namespaces(_) | Command::Topics(TopicsCommand::Admin(_))
    );
    if cli.admin.given() && !admin_verb {
        bail!(
            "--admin-url, --auth-plugin, --auth-params, --request-timeout and the --tls-* options are pulsar-admin's and apply to the admin verbs (`fnhost functions`, `fnhost namespaces`, `fnhost topics list|stats|…`); give `fnhost topics produce|consume` --url, and the token in FNHOST_TOKEN"
        );
    }
    let traced =
        matches!(cli.command, Command::Localrun(_) | Command::Worker(_) | Command::Topics(TopicsCommand::Produce(_)));
    // Dropped last: what is left is exported after the command ends.
    let _telemetry = match traced {
        true => crate::telemetry::Telemetry::start(cli.otlp_endpoint.as_deref(), "fnhost")?,
        false => None,
    };
    match cli.command {
        Command::Localrun(args) => localrun(*args),
        Command::Worker(args) => worker(*args),
        Command::Topics(TopicsCommand::Produce(args)) => produce(args),
        Command::Topics(TopicsCommand::Consume(args)) => consume(args),
        Command::Topics(TopicsCommand::Admin(command)) => topic_admin::run_topics(command, &cli.admin),
        Command::Functions(command) => functions::run(*command, &cli.admin),
        Command::Namespaces(command) => topic_admin::run_namespaces(command, &cli.admin),
        Command::New(args) => new::run(args),
    }
}

fn open_store(data: &DataDir) -> anyhow::Result<EmbeddedStore> {
    std::fs::create_dir_all(&data.data_dir)
        .with_context(|| format!("cannot create the data directory {}", data.data_dir.display()))?;
    Ok(EmbeddedStore::open(&data.data_dir.join(DATABASE_DIR))?)
}

fn localrun(args: LocalrunArgs) -> anyhow::Result<()> {
    let spec = args.function.into_spec()?;
    let Some(code) = spec.code()? else { bail!(NO_CODE) };
    let config = spec.resolve()?;
    let fqfn = config.fqfn.clone();
    let wasm = progress::component_file(&code, spec.world())?;
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache_dir().join(COMPILED_DIR)),
        max_instances: config.parallelism + 1,
    })?;
    let code = runtime.load(&wasm)?;
    let store = open_store(&args.data)?;
    let launcher =
        FunctionLauncher::new(&config, code.prepare::<MessageContext>()?, code.digest(), &store, LogSink::default())?;
    let executors = launcher.executors()?;

    let stop = Arc::new(AtomicBool::new(false));
    let handler_stop = stop.clone();
    ctrlc::set_handler(move || handler_stop.store(true, Ordering::Relaxed))
        .context("cannot install the Ctrl-C handler")?;
    let until = if args.until_idle { RunUntil::Idle } else { RunUntil::Stopped };
    tracing::info!(
        "running {fqfn} over {}: {} instance(s), {:?}, {:?} subscription `{}`",
        describe_inputs(&config.inputs),
        config.parallelism,
        config.guarantee,
        config.subscription_type(),
        config.subscription
    );
    let stats = instance::run(&store, &config, executors, until, &stop)?;
    if stats.len() > 1 {
        for (instance_id, instance) in stats.iter().enumerate() {
            println!("instance {instance_id}: {}", summary(instance));
        }
    }
    let total = Stats::total(&stats);
    println!("localrun {fqfn}: {}", summary(&total));
    for (name, (count, sum)) in &total.user_metrics {
        println!("metric {name}: count {count}, sum {sum}");
    }
    Ok(())
}

fn describe_inputs(inputs: &Inputs) -> String {
    let mut parts: Vec<String> = inputs.topics.iter().map(ToString::to_string).collect();
    parts.extend(inputs.pattern.iter().map(|pattern| format!("topics matching {pattern}")));
    parts.join(",")
}

fn summary(stats: &Stats) -> String {
    format!(
        "processed {} messages: {} succeeded, {} user exceptions, {} system exceptions, {} restarts, {} dead-lettered",
        stats.received,
        stats.succeeded,
        stats.user_exceptions,
        stats.system_exceptions,
        stats.restarts,
        stats.dead_lettered
    )
}

fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    let topic = TopicName::parse(&args.topic)?;
    let values: Vec<String> = match &args.file {
        Some(path) => read_lines(path)?,
        None => args.messages.clone(),
    };
    let properties = args
        .properties
        .iter()
        .map(|property| match property.split_once('=') {
            Some((name, value)) => Ok((name.to_owned(), value.to_owned())),
            None => bail!("--property `{property}` is not name=value"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut spans = Vec::new();
    let messages: Vec<OutMessage> = values
        .into_iter()
        .map(|value| {
            let mut properties = properties.clone();
            spans.extend(crate::telemetry::start_send(topic.as_str(), &mut properties));
            OutMessage { value: value.into_bytes(), key: args.key.clone(), properties, event_time: args.event_time }
        })
        .collect();
    for (index, message) in messages.iter().enumerate() {
        instance::check_message(message).map_err(|limit| anyhow!("message {} was not produced: {limit}", index + 1))?;
    }
    let count = messages.len();
    let progress = progress::counter(count as u64, "messages");
    if let Some(url) = &args.url {
        let client = client::client_at(url)?;
        let path = topic_path(&topic);
        for chunk in messages.chunks(MAX_BATCH_MESSAGES) {
            let messages = chunk
                .iter()
                .map(|message| ProducedMessage {
                    payload: base64::engine::general_purpose::STANDARD.encode(&message.value),
                    key: message.key.clone(),
                    properties: message.properties.iter().cloned().collect(),
                    event_time: message.event_time,
                })
                .collect();
            client.call::<ProduceAnswer>("POST", &path, Body::json(&ProduceRequest { messages }))?;
            progress.inc(chunk.len() as u64);
        }
    } else {
        let store = open_store(&args.data)?;
        for chunk in messages.chunks(MAX_BATCH_MESSAGES) {
            store.produce(&topic, chunk.to_vec())?;
            progress.inc(chunk.len() as u64);
        }
    }
    progress.finish_and_clear();
    // Each message's span ends once the message is stored.
    drop(spans);
    println!("produced {count} messages to {topic}");
    Ok(())
}

fn read_lines(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the messages file {} (one message per line)", path.display()))?;
    Ok(text.lines().filter(|line| !line.is_empty()).map(str::to_owned).collect())
}

/// The REST path of a topic.
fn topic_path(topic: &TopicName) -> String {
    format!("/topics/persistent/{}", client::topic_segments(topic))
}

fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    let topic = TopicName::parse(&args.topic)?;
    if let Some(url) = &args.url {
        return consume_from_worker(&args, &topic, url);
    }
    let store = open_store(&args.data)?;
    let name = args.subscription.as_deref().map(|local| SubscriptionName::on_topic(&topic, local)).transpose()?;
    let subscription = store.subscribe(SubscriptionSpec::single(vec![topic], name, args.position.into()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let handler_stop = stop.clone();
    ctrlc::set_handler(move || handler_stop.store(true, Ordering::Relaxed))
        .context("cannot install the Ctrl-C handler")?;
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    while !stop.load(Ordering::Relaxed) && (args.num_messages == 0 || printed < args.num_messages) {
        let want = if args.num_messages == 0 { MAX_BATCH_MESSAGES as u64 } else { args.num_messages - printed };
        let wait = if args.until_idle { Duration::ZERO } else { Duration::from_millis(100) };
        let messages = subscription.fetch(want.min(MAX_BATCH_MESSAGES as u64) as usize, wait)?;
        if messages.is_empty() && args.until_idle {
            break;
        }
        let mut out = stdout.lock();
        for message in &messages {
            if args.json {
                writeln!(out, "{}", serde_json::to_string(&ReceivedMessage::of(message))?)?;
            } else {
                writeln!(out, "{}", String::from_utf8_lossy(&message.body.value))?;
            }
        }
        out.flush()?;
        printed += messages.len() as u64;
        // Acknowledge only what has been printed.
        subscription.commit(Effects { acks: Acks::of(&messages), ..Effects::default() })?;
    }
    Ok(())
}

/// Receives, prints, then acknowledges, so that a message is acknowledged only once printed.
fn consume_from_worker(args: &ConsumeArgs, topic: &TopicName, url: &str) -> anyhow::Result<()> {
    let client = client::client_at(url)?;
    let subscription = args.subscription.as_deref().expect("clap requires --subscription with --url");
    let path = format!("{}/subscription/{}", topic_path(topic), client::encode_segment(subscription));
    let position = match args.position {
        PositionFlag::Earliest => "Earliest",
        PositionFlag::Latest => "Latest",
    };
    let wait_ms = if args.until_idle { 0 } else { 1000 };
    let mut printed = 0u64;
    while args.num_messages == 0 || printed < args.num_messages {
        let want = if args.num_messages == 0 { MAX_BATCH_MESSAGES as u64 } else { args.num_messages - printed };
        let count = want.min(MAX_BATCH_MESSAGES as u64);
        let ReceiveAnswer { messages } = client.call(
            "POST",
            &format!("{path}/receive?count={count}&waitMs={wait_ms}&position={position}"),
            Body::Empty,
        )?;
        if messages.is_empty() && args.until_idle {
            break;
        }
        let mut out = std::io::stdout().lock();
        for message in &messages {
            if args.json {
                writeln!(out, "{}", serde_json::to_string(message)?)?;
            } else if let Some(value) = &message.value {
                writeln!(out, "{value}")?;
            } else {
                writeln!(out, "{}", message.value_base64.as_deref().unwrap_or_default())?;
            }
        }
        out.flush()?;
        printed += messages.len() as u64;
        let message_ids: Vec<String> = messages.into_iter().map(|message| message.message_id).collect();
        if !message_ids.is_empty() {
            let request = AcknowledgeRequest { message_ids };
            client.call::<AcknowledgeAnswer>("POST", &format!("{path}/acknowledge"), Body::json(&request))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.yaml");
        std::fs::write(&file, "name: from-file\ninputs: [a]\nparallelism: 2\ntimeoutMs: 500\n").unwrap();
        let cli = Cli::parse_from([
            "fnhost",
            "localrun",
            "--function-config-file",
            file.to_str().unwrap(),
            "--parallelism",
            "3",
            "--wasm",
            "f.wasm",
        ]);
        let Command::Localrun(args) = cli.command else { panic!("parsed as localrun") };
        let spec = args.function.into_spec().unwrap();
        assert_eq!(spec.name.as_deref(), Some("from-file"));
        assert_eq!(spec.parallelism, Some(3), "the flag wins");
        assert_eq!(spec.timeout_ms, Some(500), "the file fills what no flag gives");
        assert_eq!(spec.wasm.as_deref(), Some("f.wasm"));
    }
}
