//! A function's config as flags: fnhost's own, and every pulsar-admin flag fnhost takes.

use std::path::PathBuf;

use anyhow::{anyhow, bail};
use clap::Args;

use crate::engine::broker::Position;
use crate::function::ProcessingGuarantee;
use crate::limits::MAX_CONFIG_SIZE;
use crate::names::Fqfn;
use crate::spec::{FunctionSpec, LogLevelName, PulsarFields, RamSize, Resources, WindowConfigSpec};

/// A function's config as flags; each has a field of the same name in camelCase in
/// `--function-config-file`, and a flag given overrides the file.
#[derive(Debug, Args)]
pub(crate) struct FunctionFlags {
    /// A YAML (or JSON) file with the function's config; flags override its fields.
    #[arg(long)]
    function_config_file: Option<PathBuf>,
    /// The function: a WebAssembly component implementing wit/function.wit.
    #[arg(long)]
    wasm: Option<PathBuf>,
    /// The function as a Python module, built into a component with componentize-py (cached).
    #[arg(long, requires = "classname")]
    py: Option<PathBuf>,
    /// With --py: the function's class (or function) as MODULE.CLASS.
    #[arg(long)]
    classname: Option<String>,
    /// With --py: the requirements file pip resolves for the build [default: requirements.txt beside the module].
    #[arg(long, requires = "py")]
    requirements: Option<PathBuf>,
    /// With --py: a folder of wheels to install from instead of the package index, for building offline (`pip download -r requirements.txt -d DIR` fills it).
    #[arg(long, requires = "py")]
    wheel_dir: Option<PathBuf>,
    /// The function as a JavaScript ES module, built into a component with componentize-js (cached).
    #[arg(long)]
    js: Option<PathBuf>,
    /// The function as tenant/namespace/name (instead of --tenant, --namespace and --name).
    #[arg(long, conflicts_with_all = ["tenant", "namespace", "name"])]
    fqfn: Option<String>,
    /// The function's name.
    #[arg(long)]
    name: Option<String>,
    /// The function's tenant [default: public].
    #[arg(long)]
    tenant: Option<String>,
    /// The function's namespace [default: default].
    #[arg(long)]
    namespace: Option<String>,
    /// Input topics, separated by commas.
    #[arg(short = 'i', long, value_delimiter = ',')]
    inputs: Option<Vec<String>>,
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
    /// Memory per instance: bytes, or a number with K, M or G (binary units) [default: 128M].
    #[arg(long, visible_alias = "memory")]
    ram: Option<String>,
    /// Time limit for processing one message, in milliseconds [default: 10000].
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// The subscription name [default: the fully qualified function name].
    #[arg(long)]
    subs_name: Option<String>,
    /// Where a new subscription starts. fnhost defaults to earliest (Pulsar: latest), see docs.
    #[arg(long, value_enum)]
    subs_position: Option<PositionFlag>,
    /// When messages are acknowledged: before processing, after their effects commit (with or
    /// without failover ordering), or when the function acknowledges them [default: ATLEAST_ONCE].
    #[arg(long, value_enum, ignore_case = true)]
    processing_guarantees: Option<ProcessingGuarantee>,
    /// Process messages in input order, one instance at a time (a failover subscription).
    #[arg(long, conflicts_with = "retain_key_ordering")]
    retain_ordering: bool,
    /// Process the messages of each key in input order, each key on one instance (key-shared).
    #[arg(long)]
    retain_key_ordering: bool,
    /// Give the function clocks and random numbers that depend on the message alone (the wall
    /// clock reads its publish time), so that `functions replay` is bit-exact.
    #[arg(long)]
    deterministic: bool,
    /// How many instances run, each in its own sandbox [default: 1].
    #[arg(long)]
    parallelism: Option<u32>,
    /// How many times a failed message is tried again before it goes to the dead-letter topic [default: 2].
    #[arg(long)]
    max_message_retries: Option<u32>,
    /// Where messages go that failed every try [default: NAME-DLQ in the function's namespace].
    #[arg(long)]
    dead_letter_topic: Option<String>,
    /// MANUAL only: how long after delivery an unacknowledged message is delivered again, in milliseconds [default: 30000].
    #[arg(long)]
    ack_timeout_ms: Option<u64>,
    /// Most messages processed between two commits: smaller batches commit sooner, larger ones cost less [default: 4096].
    #[arg(long)]
    batch_size: Option<usize>,
    /// The lowest level of function log lines to keep [default: info]; an update of it alone reaches running instances without a restart.
    #[arg(long, value_enum)]
    log_level: Option<LogLevelName>,
    /// How long a state value the function writes lives unless the write gives its own time to live: 90s, 30m, 1h, 7d (a bare number is seconds) [default: until deleted].
    #[arg(long)]
    state_ttl: Option<String>,
    /// Window function: records per window.
    #[arg(long, help_heading = "Window functions")]
    window_length_count: Option<u64>,
    /// Window function: milliseconds per window.
    #[arg(long, help_heading = "Window functions")]
    window_length_duration_ms: Option<u64>,
    /// Window function: records between two windows [default: the window length: tumbling windows].
    #[arg(long, help_heading = "Window functions")]
    sliding_interval_count: Option<u64>,
    /// Window function: milliseconds between two windows [default: the window length: tumbling windows].
    #[arg(long, help_heading = "Window functions")]
    sliding_interval_duration_ms: Option<u64>,
    /// Window function: place records by their event time (or publish time, if they have none) instead of their arrival.
    #[arg(long, help_heading = "Window functions")]
    event_time: bool,
    /// Window function, event time: how late a record may be and still count, in milliseconds [default: 0].
    #[arg(long, help_heading = "Window functions")]
    max_lag_ms: Option<u64>,
    /// Window function, event time: least time between two moves of the watermark, in milliseconds [default: 1000].
    #[arg(long, help_heading = "Window functions")]
    watermark_emit_interval_ms: Option<u64>,
    /// Window function, event time: where records behind the watermark go [default: logged, counted and dropped].
    #[arg(long, help_heading = "Window functions")]
    late_data_topic: Option<String>,
    /// Whether deleting the function deletes its subscription [default: true].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    cleanup_subscription: Option<bool>,
    /// Pulsar's older form of MANUAL: false means the function acknowledges each message.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", help_heading = PULSAR_HEADING)]
    auto_ack: Option<bool>,
    #[command(flatten)]
    pulsar: PulsarFlags,
}

/// Where `--help` lists the flags that fnhost takes from pulsar-admin without a feature of its own.
const PULSAR_HEADING: &str = "Pulsar flags fnhost notes or refuses (see the README)";

/// pulsar-admin's flags that fnhost has no feature for: each is noted or refused as
/// [`PULSAR_FLAGS`](crate::spec::pulsar::PULSAR_FLAGS) says, never unexpected.
#[derive(Debug, Args)]
#[command(next_help_heading = PULSAR_HEADING)]
struct PulsarFlags {
    /// Cores per instance: kept, not enforced.
    #[arg(long)]
    cpu: Option<f64>,
    /// Disk bytes per instance: kept, not enforced.
    #[arg(long)]
    disk: Option<u64>,
    /// The state store's settings (JSON): state lives in fnhost's engine, whatever type is named.
    #[arg(long, value_name = "JSON")]
    state_storage_config: Option<String>,
    /// Producer settings (JSON): fnhost has no producer to configure.
    #[arg(long, value_name = "JSON")]
    producer_config: Option<String>,
    /// Producer batching: fnhost writes outputs in their batch's commit.
    #[arg(long)]
    batch_builder: Option<String>,
    /// Copy the input's properties to the result: fnhost copies its topic and id only.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    forward_source_message_property: Option<bool>,
    /// Async requests in flight: fnhost functions return their result.
    #[arg(long)]
    max_pending_async_requests: Option<u64>,
    /// Runtime options: every instance runs in a wasmtime sandbox.
    #[arg(long)]
    custom_runtime_options: Option<String>,
    /// Process runtime flags: every instance runs in a wasmtime sandbox.
    #[arg(long)]
    runtime_flags: Option<String>,
    /// (update) New authentication data: fnhost functions carry none.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    update_auth_data: Option<bool>,
    /// Refused: Java functions cannot run as WebAssembly components.
    #[arg(long)]
    jar: Option<String>,
    /// Refused: fnhost has no Go SDK yet.
    #[arg(long)]
    go: Option<String>,
    /// Refused: fnhost has no built-in functions.
    #[arg(long)]
    function_type: Option<String>,
    /// Refused: payloads are bytes; decode them in the function.
    #[arg(long, value_name = "JSON")]
    custom_serde_inputs: Option<String>,
    /// Refused: payloads are bytes; decode them in the function.
    #[arg(long, value_name = "JSON")]
    custom_schema_inputs: Option<String>,
    /// Refused: results are bytes; encode them in the function.
    #[arg(long, value_name = "JSON")]
    custom_schema_outputs: Option<String>,
    /// Refused: results are bytes; encode them in the function.
    #[arg(long)]
    output_serde_classname: Option<String>,
    /// Refused: results are bytes; encode them in the function.
    #[arg(long)]
    schema_type: Option<String>,
    /// Refused: payloads are bytes; decode them in the function.
    #[arg(long)]
    input_type_class_name: Option<String>,
    /// Refused: results are bytes; encode them in the function.
    #[arg(long)]
    output_type_class_name: Option<String>,
    /// Refused: give the inputs with --inputs or --topics-pattern.
    #[arg(long, value_name = "JSON")]
    input_specs: Option<String>,
    /// Refused: fnhost never skips unprocessed messages.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    skip_to_latest: Option<bool>,
    /// Refused: a function reaches only its context.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    expose_pulsar_admin_client_enabled: Option<bool>,
}

impl PulsarFlags {
    /// The flags as config fields.
    fn into_fields(self) -> anyhow::Result<PulsarFields> {
        Ok(PulsarFields {
            state_storage_config: parse_json("--state-storage-config", self.state_storage_config.as_deref())?,
            producer_config: parse_json("--producer-config", self.producer_config.as_deref())?,
            batch_builder: self.batch_builder,
            forward_source_message_property: self.forward_source_message_property,
            max_pending_async_requests: self.max_pending_async_requests,
            custom_runtime_options: self.custom_runtime_options,
            runtime_flags: self.runtime_flags,
            update_auth_data: self.update_auth_data,
            jar: self.jar,
            go: self.go,
            function_type: self.function_type,
            custom_serde_inputs: parse_json("--custom-serde-inputs", self.custom_serde_inputs.as_deref())?,
            custom_schema_inputs: parse_json("--custom-schema-inputs", self.custom_schema_inputs.as_deref())?,
            custom_schema_outputs: parse_json("--custom-schema-outputs", self.custom_schema_outputs.as_deref())?,
            output_serde_class_name: self.output_serde_classname,
            output_schema_type: self.schema_type,
            input_type_class_name: self.input_type_class_name,
            output_type_class_name: self.output_type_class_name,
            input_specs: parse_json("--input-specs", self.input_specs.as_deref())?,
            skip_to_latest: self.skip_to_latest,
            expose_pulsar_admin_client_enabled: self.expose_pulsar_admin_client_enabled,
        })
    }
}

impl FunctionFlags {
    /// The window flags as a `windowConfig`, if any was given.
    fn window_config(&self) -> Option<WindowConfigSpec> {
        let window = WindowConfigSpec {
            window_length_count: self.window_length_count,
            window_length_duration_ms: self.window_length_duration_ms,
            sliding_interval_count: self.sliding_interval_count,
            sliding_interval_duration_ms: self.sliding_interval_duration_ms,
            event_time: self.event_time.then_some(true),
            max_lag_ms: self.max_lag_ms,
            watermark_emit_interval_ms: self.watermark_emit_interval_ms,
            late_data_topic: self.late_data_topic.clone(),
        };
        (window != WindowConfigSpec::default()).then_some(window)
    }

    /// The config file (if any) with the flags laid over it.
    pub(crate) fn into_spec(self) -> anyhow::Result<FunctionSpec> {
        let window_config = self.window_config();
        let file = match &self.function_config_file {
            Some(path) => FunctionSpec::from_file(path)?,
            None => FunctionSpec::default(),
        };
        let (tenant, namespace, name) = match &self.fqfn {
            Some(text) => {
                let fqfn = Fqfn::parse(text)?;
                (Some(fqfn.tenant().to_owned()), Some(fqfn.namespace().to_owned()), Some(fqfn.name().to_owned()))
            }
            None => (self.tenant, self.namespace, self.name),
        };
        let flags = FunctionSpec {
            tenant,
            namespace,
            name,
            wasm: self.wasm.map(|path| path.display().to_string()),
            py: self.py.map(|path| path.display().to_string()),
            class_name: self.classname,
            js: self.js.map(|path| path.display().to_string()),
            py_requirements: self.requirements.map(|path| path.display().to_string()),
            py_wheel_dir: self.wheel_dir.map(|path| path.display().to_string()),
            inputs: self.inputs,
            topics_pattern: self.topics_pattern,
            output: self.output,
            log_topic: self.log_topic,
            dead_letter_topic: self.dead_letter_topic,
            max_message_retries: self.max_message_retries,
            sub_name: self.subs_name,
            subscription_position: self.subs_position.map(Position::from),
            processing_guarantees: self.processing_guarantees,
            retain_ordering: self.retain_ordering.then_some(true),
            retain_key_ordering: self.retain_key_ordering.then_some(true),
            deterministic: self.deterministic.then_some(true),
            timeout_ms: self.timeout_ms,
            parallelism: self.parallelism,
            resources: resources(self.ram, self.pulsar.cpu, self.pulsar.disk),
            user_config: parse_json_object("--user-config", self.user_config.as_deref())?,
            secrets: parse_json_object("--secrets", self.secrets.as_deref())?,
            ack_timeout_ms: self.ack_timeout_ms,
            batch_size: self.batch_size,
            log_level: self.log_level,
            state_ttl: self.state_ttl,
            cleanup_subscription: self.cleanup_subscription,
            window_config,
            auto_ack: self.auto_ack,
            pulsar: self.pulsar.into_fields()?,
        };
        let spec = file.overlay(flags);
        // What a Pulsar flag changes nothing for is said once, here; refusals come from `resolve`.
        for note in crate::spec::pulsar::notes(&spec).unwrap_or_default() {
            eprintln!("note: {note}");
        }
        Ok(spec)
    }
}

/// Parses a JSON object given on the command line.
fn parse_json_object(
    flag: &str,
    text: Option<&str>,
) -> anyhow::Result<Option<serde_json::Map<String, serde_json::Value>>> {
    match parse_json(flag, text)? {
        None => Ok(None),
        Some(serde_json::Value::Object(map)) => Ok(Some(map)),
        Some(value) => bail!("{flag} must be a JSON object such as '{{\"key\": \"value\"}}', not {value}"),
    }
}

/// Parses a JSON value given on the command line (Pulsar's JSON flags take objects or strings).
fn parse_json(flag: &str, text: Option<&str>) -> anyhow::Result<Option<serde_json::Value>> {
    let Some(text) = text else { return Ok(None) };
    if text.len() > MAX_CONFIG_SIZE {
        bail!("{flag} is {} bytes; the limit (MAX_CONFIG_SIZE) is {MAX_CONFIG_SIZE}", text.len());
    }
    let value = serde_json::from_str(text).map_err(|error| {
        anyhow!("{flag} is not valid JSON ({error}); give an object such as '{{\"key\": \"value\"}}'")
    })?;
    Ok(Some(value))
}

/// The resource flags as `resources`, if any was given.
fn resources(ram: Option<String>, cpu: Option<f64>, disk: Option<u64>) -> Option<Resources> {
    let resources = Resources { ram: ram.map(RamSize::Text), cpu, disk };
    (resources != Resources::default()).then_some(resources)
}

/// Where a subscription starts, as `--subs-position` and `consume --position` take it: the
/// engine's [`Position`], which carries no CLI derive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PositionFlag {
    /// From the first message still in the topic.
    Earliest,
    /// From the next message appended after the subscription is created.
    Latest,
}

impl From<PositionFlag> for Position {
    fn from(flag: PositionFlag) -> Self {
        match flag {
            PositionFlag::Earliest => Self::Earliest,
            PositionFlag::Latest => Self::Latest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_config_must_be_a_json_object() {
        let parsed = parse_json_object("--user-config", Some(r#"{"a": 1, "b": "x"}"#)).unwrap().unwrap();
        assert_eq!(parsed["a"], 1);
        assert_eq!(parsed["b"], "x");
        for bad in ["{", "[1]", "3"] {
            let error = parse_json_object("--user-config", Some(bad)).unwrap_err().to_string();
            assert!(error.contains("--user-config"), "{bad}: {error}");
        }
    }
}
