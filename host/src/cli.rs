//! The `fnhost` command line: pulsar-admin's verbs and flags where they exist.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use clap::{Args, Parser, Subcommand};

use crate::broker::Inputs;
use crate::broker::{Acks, Broker, Effects, Message, OutMessage, Position, SubscriptionSpec};
use crate::embedded::EmbeddedStore;
use crate::instance::{
    self, Executor, FunctionConfig, LogSink, MessageContext, Ordering as MessageOrdering, ProcessingGuarantee,
    RunUntil, Stats, WasmExecutor,
};
use crate::limits::{
    DEFAULT_ACK_TIMEOUT_MS, DEFAULT_MAX_MESSAGE_RETRIES, DEFAULT_RAM_BYTES, DEFAULT_TIMEOUT_MS, MAX_ACK_TIMEOUT_MS,
    MAX_BATCH_MESSAGES, MAX_CONFIG_SIZE, MAX_MESSAGE_RETRIES, MAX_PARALLELISM, MAX_RAM_BYTES, MAX_TIMEOUT_MS,
};
use crate::names::{DEFAULT_NAMESPACE, DEFAULT_TENANT, Fqfn, TopicName, TopicPattern};
use crate::runtime::{InstanceLimits, LogLevel, Runtime, RuntimeConfig};
use crate::state::{StateStore, StateValue};

/// The data directory used when `--data-dir` is not given.
pub const DEFAULT_DATA_DIR: &str = "./fnhost-data";
/// The sled database's folder inside the data directory.
const DATABASE_DIR: &str = "db";
/// Compiled components, inside the data directory.
const COMPILED_DIR: &str = "compiled";
/// The smallest `--ram` that can run a function at all.
const MIN_RAM_BYTES: u64 = 1024 * 1024;

/// fnhost: run WebAssembly functions over topics, with durable state.
#[derive(Debug, Parser)]
#[command(name = "fnhost", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one function in the foreground, over the embedded topics in the data directory.
    Localrun(Box<LocalrunArgs>),
    /// Produce to and consume from topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Inspect functions.
    #[command(subcommand)]
    Functions(FunctionsCommand),
}

#[derive(Debug, Args)]
struct DataDir {
    /// The data directory holding topics, subscriptions, state and compiled components.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
}

#[derive(Debug, Args)]
struct LocalrunArgs {
    /// The function: a WebAssembly component implementing wit/function.wit.
    #[arg(long)]
    wasm: PathBuf,
    /// The function's name.
    #[arg(long)]
    name: String,
    /// The function's tenant.
    #[arg(long, default_value = DEFAULT_TENANT)]
    tenant: String,
    /// The function's namespace.
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    namespace: String,
    /// Input topics, separated by commas.
    #[arg(short = 'i', long, value_delimiter = ',', required_unless_present = "topics_pattern")]
    inputs: Vec<String>,
    /// A regular expression: every topic whose name it matches is an input, including topics
    /// created later. Without persistent:// it applies to topic names in the function's namespace.
    #[arg(long)]
    topics_pattern: Option<String>,
    /// The topic returned values are written to.
    #[arg(short = 'o', long)]
    output: Option<String>,
    /// A topic that also receives the function's log lines.
    #[arg(long)]
    log_topic: Option<String>,
    /// User config, a JSON object the function reads with user-config-value.
    #[arg(long)]
    user_config: Option<String>,
    /// Secrets, a JSON object of strings the function reads with secret.
    #[arg(long)]
    secrets: Option<String>,
    /// Memory per instance: bytes, or a number with K, M or G (binary units).
    #[arg(long, default_value = "128M")]
    ram: String,
    /// Time limit for processing one message, in milliseconds.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_MS)]
    timeout_ms: u64,
    /// The subscription name (default: the fully qualified function name).
    #[arg(long)]
    subs_name: Option<String>,
    /// Where a new subscription starts. fnhost defaults to earliest (Pulsar: latest), see docs.
    #[arg(long, value_enum, default_value_t = Position::Earliest)]
    subs_position: Position,
    /// When messages are acknowledged: before processing, after their effects commit (with or
    /// without failover ordering), or when the function acknowledges them.
    #[arg(long, value_enum, ignore_case = true, default_value = "ATLEAST_ONCE")]
    processing_guarantees: ProcessingGuarantee,
    /// Process messages in input order, one instance at a time (a failover subscription).
    #[arg(long, conflicts_with = "retain_key_ordering")]
    retain_ordering: bool,
    /// Process the messages of each key in input order, each key on one instance (key-shared).
    #[arg(long)]
    retain_key_ordering: bool,
    /// How many instances run, each in its own sandbox.
    #[arg(long, default_value_t = 1)]
    parallelism: u32,
    /// How many times a failed message is tried again before it goes to the dead-letter topic.
    #[arg(long, default_value_t = DEFAULT_MAX_MESSAGE_RETRIES)]
    max_message_retries: u32,
    /// Where messages go that failed every try (default: NAME-DLQ in the function's namespace).
    #[arg(long)]
    dead_letter_topic: Option<String>,
    /// MANUAL only: how long after delivery an unacknowledged message is delivered again, in milliseconds.
    #[arg(long, default_value_t = DEFAULT_ACK_TIMEOUT_MS)]
    ack_timeout_ms: u64,
    /// Most messages processed between two commits: smaller batches commit sooner, larger ones cost less.
    #[arg(long, default_value_t = MAX_BATCH_MESSAGES)]
    batch_size: usize,
    /// The lowest level of function log lines to show.
    #[arg(long, value_enum, default_value_t = LevelArg::Info)]
    log_level: LevelArg,
    /// Exit once the inputs are drained, printing what was processed.
    #[arg(long)]
    until_idle: bool,
    #[command(flatten)]
    data: DataDir,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LevelArg {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl From<LevelArg> for LogLevel {
    fn from(level: LevelArg) -> Self {
        match level {
            LevelArg::Trace => LogLevel::Trace,
            LevelArg::Debug => LogLevel::Debug,
            LevelArg::Info => LogLevel::Info,
            LevelArg::Warn => LogLevel::Warn,
            LevelArg::Error => LogLevel::Error,
        }
    }
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Append messages to a topic.
    Produce(ProduceArgs),
    /// Print a topic's messages, one per line.
    Consume(ConsumeArgs),
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
    #[arg(long, value_enum, default_value_t = Position::Earliest)]
    position: Position,
    /// Exit at the end of the topic instead of waiting for more.
    #[arg(long)]
    until_idle: bool,
    /// Print each message as one JSON object with its key, properties, times and id.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    data: DataDir,
}

#[derive(Debug, Subcommand)]
enum FunctionsCommand {
    /// Print a function's state value for a key, as Pulsar's FunctionState JSON.
    Querystate(QuerystateArgs),
}

#[derive(Debug, Args)]
struct QuerystateArgs {
    /// The function as tenant/namespace/name.
    #[arg(long, conflicts_with_all = ["tenant", "namespace", "name"])]
    fqfn: Option<String>,
    /// The tenant (with --namespace and --name, instead of --fqfn).
    #[arg(long)]
    tenant: Option<String>,
    /// The namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// The function name.
    #[arg(long)]
    name: Option<String>,
    /// The state key.
    #[arg(short = 'k', long)]
    key: String,
    #[command(flatten)]
    data: DataDir,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Localrun(args) => localrun(*args),
        Command::Topics(TopicsCommand::Produce(args)) => produce(args),
        Command::Topics(TopicsCommand::Consume(args)) => consume(args),
        Command::Functions(FunctionsCommand::Querystate(args)) => querystate(args),
    }
}

fn open_store(data: &DataDir) -> anyhow::Result<EmbeddedStore> {
    std::fs::create_dir_all(&data.data_dir)
        .with_context(|| format!("cannot create the data directory {}", data.data_dir.display()))?;
    Ok(EmbeddedStore::open(&data.data_dir.join(DATABASE_DIR))?)
}

fn topics(names: &[String]) -> anyhow::Result<Vec<TopicName>> {
    names.iter().map(|name| TopicName::parse(name.trim()).map_err(anyhow::Error::from)).collect()
}

fn localrun(args: LocalrunArgs) -> anyhow::Result<()> {
    let fqfn = Fqfn::new(&args.tenant, &args.namespace, &args.name)?;
    let pattern = args
        .topics_pattern
        .as_deref()
        .map(|text| TopicPattern::parse(text, &args.tenant, &args.namespace))
        .transpose()?;
    let inputs = Inputs { topics: topics(&args.inputs)?, pattern };
    let output = args.output.as_deref().map(TopicName::parse).transpose()?;
    let log_topic = args.log_topic.as_deref().map(TopicName::parse).transpose()?;
    let dead_letter_topic = match args.dead_letter_topic.as_deref() {
        Some(topic) => TopicName::parse(topic)?,
        None => fqfn.default_dead_letter_topic(),
    };
    let user_config = parse_json_object("--user-config", args.user_config.as_deref(), false)?;
    let secrets = parse_json_object("--secrets", args.secrets.as_deref(), true)?;
    let memory_bytes = parse_ram(&args.ram)?;
    if args.timeout_ms == 0 || args.timeout_ms > MAX_TIMEOUT_MS {
        bail!("--timeout-ms {} is out of range: give 1 to {MAX_TIMEOUT_MS} milliseconds", args.timeout_ms);
    }
    if args.parallelism == 0 || args.parallelism > MAX_PARALLELISM {
        bail!("--parallelism {} is out of range: give 1 to {MAX_PARALLELISM} (MAX_PARALLELISM)", args.parallelism);
    }
    if args.max_message_retries > MAX_MESSAGE_RETRIES {
        bail!(
            "--max-message-retries {} is out of range: give 0 to {MAX_MESSAGE_RETRIES} (MAX_MESSAGE_RETRIES)",
            args.max_message_retries
        );
    }
    if args.ack_timeout_ms == 0 || args.ack_timeout_ms > MAX_ACK_TIMEOUT_MS {
        bail!("--ack-timeout-ms {} is out of range: give 1 to {MAX_ACK_TIMEOUT_MS} milliseconds", args.ack_timeout_ms);
    }
    if args.batch_size == 0 || args.batch_size > MAX_BATCH_MESSAGES {
        bail!("--batch-size {} is out of range: give 1 to {MAX_BATCH_MESSAGES} (MAX_BATCH_MESSAGES)", args.batch_size);
    }
    let limits = InstanceLimits { memory_bytes, timeout: Duration::from_millis(args.timeout_ms) };
    let ordering = match (args.retain_ordering, args.retain_key_ordering) {
        (true, _) => MessageOrdering::Retain,
        (_, true) => MessageOrdering::RetainKey,
        _ => MessageOrdering::Unordered,
    };
    let config = FunctionConfig {
        subscription: args.subs_name.clone().unwrap_or_else(|| fqfn.to_string()),
        fqfn: fqfn.clone(),
        inputs,
        output,
        log_topic,
        initial_position: args.subs_position,
        user_config,
        secrets,
        limits,
        log_level: args.log_level.into(),
        guarantee: args.processing_guarantees,
        ordering,
        parallelism: args.parallelism,
        max_message_retries: args.max_message_retries,
        dead_letter_topic,
        ack_timeout: Duration::from_millis(args.ack_timeout_ms),
        batch_size: args.batch_size,
    };

    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(args.data.data_dir.join(COMPILED_DIR)),
        max_instances: config.parallelism + 1,
    })?;
    let code = runtime.load(&args.wasm)?;
    let function = code.prepare::<MessageContext>()?;
    let store = open_store(&args.data)?;
    let logs = LogSink::default();
    let mut executors: Vec<Box<dyn Executor>> = Vec::new();
    for instance_id in 0..config.parallelism {
        let details = Arc::new(config.details(code.digest(), instance_id, config.parallelism));
        let context = MessageContext::new(&config, store.table(&fqfn)?, logs.clone());
        let executor = WasmExecutor::start(function.clone(), details, limits, context)
            .map_err(|error| anyhow!("the function {fqfn} could not start: {error}"))?;
        executors.push(Box::new(executor));
    }

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
    let total = stats.iter().fold(Stats::default(), |mut total, instance| {
        total.received += instance.received;
        total.succeeded += instance.succeeded;
        total.user_exceptions += instance.user_exceptions;
        total.system_exceptions += instance.system_exceptions;
        total.restarts += instance.restarts;
        total.dead_lettered += instance.dead_lettered;
        for (name, (count, sum)) in &instance.metrics {
            let entry = total.metrics.entry(name.clone()).or_default();
            entry.0 += count;
            entry.1 += sum;
        }
        total
    });
    println!("localrun {fqfn}: {}", summary(&total));
    for (name, (count, sum)) in &total.metrics {
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

/// Parses a JSON object given on the command line into top-level key to JSON text.
fn parse_json_object(flag: &str, text: Option<&str>, strings_only: bool) -> anyhow::Result<BTreeMap<String, String>> {
    let Some(text) = text else { return Ok(BTreeMap::new()) };
    if text.len() > MAX_CONFIG_SIZE {
        bail!("{flag} is {} bytes; the limit (MAX_CONFIG_SIZE) is {MAX_CONFIG_SIZE}", text.len());
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(|error| {
        anyhow!("{flag} is not valid JSON ({error}); give an object such as '{{\"key\": \"value\"}}'")
    })?;
    let serde_json::Value::Object(map) = value else {
        bail!("{flag} must be a JSON object such as '{{\"key\": \"value\"}}', not {value}");
    };
    map.into_iter()
        .map(|(key, value)| match (strings_only, value) {
            (true, serde_json::Value::String(text)) => Ok((key, text)),
            (true, other) => bail!("{flag}: the value of `{key}` must be a string, not {other}"),
            (false, value) => Ok((key, value.to_string())),
        })
        .collect()
}

/// Parses `--ram`: bytes, or a number with K, M or G (binary units, an optional trailing `i` or `B`).
fn parse_ram(text: &str) -> anyhow::Result<u64> {
    let trimmed = text.trim().trim_end_matches(['B', 'b']).trim_end_matches('i');
    let (digits, unit) = match trimmed.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => trimmed.split_at(at),
        None => (trimmed, ""),
    };
    let multiplier: u64 = match unit.to_ascii_uppercase().as_str() {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => bail!("--ram `{text}` is not a size: give bytes or a number with K, M or G, such as 128M"),
    };
    let bytes =
        digits.parse::<u64>().ok().and_then(|n| n.checked_mul(multiplier)).ok_or_else(|| {
            anyhow!("--ram `{text}` is not a size: give bytes or a number with K, M or G, such as 128M")
        })?;
    if !(MIN_RAM_BYTES..=MAX_RAM_BYTES).contains(&bytes) {
        bail!("--ram `{text}` is out of range: give 1M to 4G (the default is {}M)", DEFAULT_RAM_BYTES >> 20);
    }
    Ok(bytes)
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
    let messages: Vec<OutMessage> = values
        .into_iter()
        .map(|value| OutMessage {
            value: value.into_bytes(),
            key: args.key.clone(),
            properties: properties.clone(),
            event_time: args.event_time,
        })
        .collect();
    for (index, message) in messages.iter().enumerate() {
        instance::check_message(message).map_err(|limit| anyhow!("message {} was not produced: {limit}", index + 1))?;
    }
    let store = open_store(&args.data)?;
    let count = messages.len();
    for chunk in messages.chunks(MAX_BATCH_MESSAGES) {
        store.produce(&topic, chunk.to_vec())?;
    }
    println!("produced {count} messages to {topic}");
    Ok(())
}

fn read_lines(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the messages file {} (one message per line)", path.display()))?;
    Ok(text.lines().filter(|line| !line.is_empty()).map(str::to_owned).collect())
}

fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    let topic = TopicName::parse(&args.topic)?;
    let store = open_store(&args.data)?;
    let subscription =
        store.subscribe(SubscriptionSpec::single(vec![topic], args.subscription.clone(), args.position))?;
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
                writeln!(out, "{}", message_json(message))?;
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

fn message_json(message: &Message) -> serde_json::Value {
    let body = &message.body;
    let mut json = serde_json::json!({
        "messageId": message.id(),
        "topic": message.topic.as_str(),
        "key": body.key,
        "properties": body.properties.iter().cloned().collect::<BTreeMap<_, _>>(),
        "eventTime": body.event_time,
        "publishTime": body.publish_time,
    });
    match std::str::from_utf8(&body.value) {
        Ok(text) => json["value"] = text.into(),
        Err(_) => json["valueBase64"] = base64::engine::general_purpose::STANDARD.encode(&body.value).into(),
    }
    json
}

fn querystate(args: QuerystateArgs) -> anyhow::Result<()> {
    let fqfn = match (&args.fqfn, &args.tenant, &args.namespace, &args.name) {
        (Some(fqfn), ..) => Fqfn::parse(fqfn)?,
        (None, Some(tenant), Some(namespace), Some(name)) => Fqfn::new(tenant, namespace, name)?,
        _ => bail!("name the function with --fqfn tenant/namespace/name, or with --tenant, --namespace and --name"),
    };
    let store = open_store(&args.data)?;
    let Some(stored) = store.table(&fqfn)?.get(&args.key)? else {
        bail!("function {fqfn} has no state under key `{}`", args.key);
    };
    let mut json = serde_json::json!({ "key": args.key, "version": stored.version });
    match stored.value {
        StateValue::Counter(value) => json["numberValue"] = value.into(),
        StateValue::Bytes(bytes) => match String::from_utf8(bytes) {
            Ok(text) => json["stringValue"] = text.into(),
            Err(error) => {
                json["byteValue"] = base64::engine::general_purpose::STANDARD.encode(error.as_bytes()).into();
            }
        },
    }
    println!("{json}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_sizes_parse_in_binary_units_and_refuse_nonsense() {
        for (text, bytes) in
            [("128M", 128 << 20), ("1G", 1 << 30), ("2097152", 2 << 20), ("64Mi", 64 << 20), ("4G", 4 << 30)]
        {
            assert_eq!(parse_ram(text).unwrap(), bytes, "{text}");
        }
        for (bad, reason) in [
            ("lots", "is not a size"),
            ("12X", "is not a size"),
            ("-1", "is not a size"),
            ("512K", "out of range"),
            ("5G", "out of range"),
        ] {
            let error = parse_ram(bad).unwrap_err().to_string();
            assert!(error.contains(reason), "{bad}: {error}");
        }
    }

    #[test]
    fn user_config_must_be_a_json_object() {
        let parsed = parse_json_object("--user-config", Some(r#"{"a": 1, "b": "x"}"#), false).unwrap();
        assert_eq!(parsed["a"], "1");
        assert_eq!(parsed["b"], "\"x\"");
        for bad in ["{", "[1]", "3"] {
            let error = parse_json_object("--user-config", Some(bad), false).unwrap_err().to_string();
            assert!(error.contains("--user-config"), "{bad}: {error}");
        }
        assert!(parse_json_object("--secrets", Some(r#"{"a": 1}"#), true).is_err());
    }
}
