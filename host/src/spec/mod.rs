//! A function's configuration as users write it: Pulsar's `FunctionConfig` document, field for field
//! where fnhost has the feature, in JSON (REST), YAML (`--function-config-file`) or flags.
//!
//! Every field is optional so that documents can be layered (a file under flags, an update over the
//! stored config); [`FunctionSpec::resolve`] applies the defaults and checks every value against
//! its limit, producing the [`FunctionConfig`] the instance loop runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::broker::{Inputs, Position};
use crate::function::{Code, FunctionConfig, FunctionKind, Ordering, ProcessingGuarantee, SharedLogLevel, Source};
use crate::limits::{
    DEFAULT_ACK_TIMEOUT_MS, DEFAULT_MAX_MESSAGE_RETRIES, DEFAULT_RAM_BYTES, DEFAULT_TIMEOUT_MS, MAX_ACK_TIMEOUT_MS,
    MAX_BATCH_MESSAGES, MAX_CONFIG_SIZE, MAX_MESSAGE_RETRIES, MAX_PARALLELISM, MAX_RAM_BYTES, MAX_STATE_TTL_MS,
    MAX_SUBSCRIPTION_TOPICS, MAX_TIMEOUT_MS,
};
use crate::names::{DEFAULT_NAMESPACE, DEFAULT_TENANT, Fqfn, SubscriptionName, TopicAccess, TopicName, TopicPattern};
use crate::runtime::{InstanceLimits, LogLevel};

pub mod pulsar;
mod window;

pub use pulsar::PulsarFields;
pub use window::WindowConfigSpec;

/// The smallest `--ram` that can run a function at all.
const MIN_RAM_BYTES: u64 = 1024 * 1024;

/// A function configuration that cannot run, and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}

impl From<crate::names::NameError> for ConfigError {
    fn from(error: crate::names::NameError) -> Self {
        Self(error.to_string())
    }
}

/// Pulsar's `FunctionConfig`, with fnhost's additions (`wasm`, `ackTimeoutMs`, `batchSize`,
/// `logLevel`). Absent fields take their defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FunctionSpec {
    /// Tenant (default `public`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Namespace (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Function name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The component file (`--wasm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm: Option<String>,
    /// A Python module to build the component from (`--py`), with `className`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub py: Option<String>,
    /// The Python class (or function) as `MODULE.CLASS` (`--classname`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// A JavaScript ES module to build the component from (`--js`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub js: Option<String>,
    /// The Python function's requirements file (`--requirements`), which pip resolves for the
    /// build [default: `requirements.txt` beside the module]. fnhost's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub py_requirements: Option<String>,
    /// A folder of wheels pip installs from instead of the package index (`--wheel-dir`). fnhost's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub py_wheel_dir: Option<String>,
    /// Input topics (`--inputs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<String>>,
    /// A regular expression over topic names (`--topics-pattern`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics_pattern: Option<String>,
    /// Output topic (`--output`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Log topic (`--log-topic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_topic: Option<String>,
    /// Dead-letter topic (`--dead-letter-topic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// Retries of a failed message (`--max-message-retries`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_retries: Option<u32>,
    /// Subscription name (`--subs-name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_name: Option<String>,
    /// Where a new subscription starts (`--subs-position`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_position: Option<Position>,
    /// When messages are acknowledged (`--processing-guarantees`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_guarantees: Option<ProcessingGuarantee>,
    /// Input order, one instance at a time (`--retain-ordering`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_ordering: Option<bool>,
    /// Input order per key (`--retain-key-ordering`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_key_ordering: Option<bool>,
    /// Clocks and random numbers that depend on the message alone, so that a replay is
    /// bit-exact (`--deterministic`; fnhost's, not Pulsar's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deterministic: Option<bool>,
    /// Time limit per message, milliseconds (`--timeout-ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Instances (`--parallelism`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    /// Resources per instance (`--ram`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// User config (`--user-config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_config: Option<serde_json::Map<String, serde_json::Value>>,
    /// Secrets, names to strings (`--secrets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<serde_json::Map<String, serde_json::Value>>,
    /// MANUAL redelivery timeout, milliseconds (`--ack-timeout-ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_timeout_ms: Option<u64>,
    /// Most messages between two commits (`--batch-size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// The lowest level of function log lines kept (`--log-level`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<LogLevelName>,
    /// How long a state value the function writes lives, unless the write gives its own time to
    /// live (`--state-ttl`: `90s`, `30m`, `1h`, `7d`; a bare number is seconds). fnhost's; Pulsar
    /// has no state expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_ttl: Option<String>,
    /// Whether deleting the function deletes its subscription (default true, as in Pulsar).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup_subscription: Option<bool>,
    /// Window settings: present for a window function (Pulsar's `windowConfig`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_config: Option<WindowConfigSpec>,
    /// `false`: MANUAL acknowledgement (`--auto-ack`, Pulsar's older name for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_ack: Option<bool>,
    /// Pulsar fields whose meaning differs in fnhost: each is noted or refused as
    /// [`pulsar::PULSAR_FLAGS`] says, and otherwise kept as given.
    #[serde(flatten)]
    pub pulsar: PulsarFields,
}

/// Resources per instance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    /// Memory: bytes, or a number with K, M or G.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram: Option<RamSize>,
    /// Cores (`--cpu`): kept, not enforced ([`pulsar::PULSAR_FLAGS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// Disk bytes (`--disk`): kept, not enforced ([`pulsar::PULSAR_FLAGS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<u64>,
}

/// A memory size as bytes (Pulsar's form) or text such as `128M`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RamSize {
    /// Bytes.
    Bytes(u64),
    /// A number with an optional K, M or G.
    Text(String),
}

/// A log level's name, for flags and config files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogLevelName {
    /// Everything.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected.
    Warn,
    /// Failures.
    Error,
}

impl From<LogLevelName> for LogLevel {
    fn from(level: LogLevelName) -> Self {
        match level {
            LogLevelName::Trace => LogLevel::Trace,
            LogLevelName::Debug => LogLevel::Debug,
            LogLevelName::Info => LogLevel::Info,
            LogLevelName::Warn => LogLevel::Warn,
            LogLevelName::Error => LogLevel::Error,
        }
    }
}

impl FunctionSpec {
    /// Reads a YAML (or JSON) config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::new(format!("cannot read the function config file {shown}: {error}")))?;
        if text.len() > MAX_CONFIG_SIZE {
            return Err(ConfigError::new(format!(
                "the function config file {shown} is {} bytes; the limit (MAX_CONFIG_SIZE) is {MAX_CONFIG_SIZE}",
                text.len()
            )));
        }
        Self::from_yaml(&text, &format!("the function config file {shown}"))
    }

    /// Parses a YAML (or JSON) config; `shown` names it in errors.
    pub fn from_yaml(text: &str, shown: &str) -> Result<Self, ConfigError> {
        serde_saphyr::from_str(text).map_err(|error| {
            ConfigError::new(format!(
                "{shown} is not a valid function config: {error}; its fields are those of `fnhost functions create --help`, in camelCase"
            ))
        })
    }

    /// Parses a config given as JSON (the REST API's form).
    pub fn from_json(text: &[u8]) -> Result<Self, ConfigError> {
        if text.len() > MAX_CONFIG_SIZE {
            return Err(ConfigError::new(format!(
                "the function config is {} bytes; the limit (MAX_CONFIG_SIZE) is {MAX_CONFIG_SIZE}",
                text.len()
            )));
        }
        serde_json::from_slice(text)
            .map_err(|error| ConfigError::new(format!("the function config is not valid: {error}")))
    }

    /// This document with every field `over` sets replaced by `over`'s value.
    /// Code given in `over` (a component or a source file) replaces the base's code entirely.
    pub fn overlay(self, over: FunctionSpec) -> FunctionSpec {
        let replaces_code = over.wasm.is_some() || over.py.is_some() || over.js.is_some();
        let base = if replaces_code { self.without_code() } else { self };
        let (serde_json::Value::Object(mut base), serde_json::Value::Object(over)) =
            (serde_json::json!(base), serde_json::json!(over))
        else {
            unreachable!("a FunctionSpec serializes to an object")
        };
        // Window settings layer field by field, like the document's own fields.
        let window_config = match (base.get("windowConfig"), over.get("windowConfig")) {
            (Some(serde_json::Value::Object(base)), Some(serde_json::Value::Object(over))) => {
                let mut merged = base.clone();
                merged.extend(over.clone());
                Some(serde_json::Value::Object(merged))
            }
            _ => None,
        };
        base.extend(over);
        if let Some(window_config) = window_config {
            base.insert("windowConfig".into(), window_config);
        }
        serde_json::from_value(serde_json::Value::Object(base)).expect("merging two valid documents stays valid")
    }

    /// The function's code: a component, or a source file to build one from; `None` if not given.
    pub fn code(&self) -> Result<Option<Code>, ConfigError> {
        if self.py.is_none() && (self.py_requirements.is_some() || self.py_wheel_dir.is_some()) {
            return Err(ConfigError::new(
                "--requirements (pyRequirements) and --wheel-dir (pyWheelDir) go with --py: a JavaScript function's packages come from the package.json beside it",
            ));
        }
        match (&self.wasm, &self.py, &self.js, &self.class_name) {
            (None, None, None, None) => Ok(None),
            (Some(wasm), None, None, None) => Ok(Some(Code::Wasm(PathBuf::from(wasm)))),
            (None, Some(py), None, Some(classname)) => Ok(Some(Code::Source(Source::Python {
                file: PathBuf::from(py),
                classname: classname.clone(),
                requirements: self.py_requirements.as_ref().map(PathBuf::from),
                wheel_dir: self.py_wheel_dir.as_ref().map(PathBuf::from),
            }))),
            (None, Some(py), None, None) => Err(ConfigError::new(format!(
                "--py {py} needs --classname MODULE.CLASS (className), the function's class, for example --classname session.SessionDuration"
            ))),
            (None, None, Some(js), None) => Ok(Some(Code::Source(Source::JavaScript { file: PathBuf::from(js) }))),
            (_, None, _, Some(_)) => {
                Err(ConfigError::new("--classname (className) goes with --py; JavaScript and wasm functions have none"))
            }
            _ => Err(ConfigError::new(
                "give the function's code once: --wasm FILE.wasm, --py FILE.py --classname MODULE.CLASS, or --js FILE.js",
            )),
        }
    }

    /// The WIT world the function's source is built for: a window function when it has window settings.
    pub fn world(&self) -> FunctionKind {
        if self.window_config.is_some() { FunctionKind::WindowFunction } else { FunctionKind::Function }
    }

    /// The spec without its code, as the worker keeps it beside the stored component.
    pub fn without_code(self) -> FunctionSpec {
        FunctionSpec {
            wasm: None,
            py: None,
            class_name: None,
            js: None,
            py_requirements: None,
            py_wheel_dir: None,
            ..self
        }
    }

    /// The lowest level of log lines kept: the given one, or info.
    pub fn log_level(&self) -> LogLevel {
        self.log_level.unwrap_or(LogLevelName::Info).into()
    }

    /// Whether `other` is this spec with at most another log level: a change its running
    /// instances take as they are ([`crate::function::SharedLogLevel`]).
    pub fn same_apart_from_log_level(&self, other: &FunctionSpec) -> bool {
        let without_level = |spec: &FunctionSpec| FunctionSpec { log_level: None, ..spec.clone() };
        without_level(self) == without_level(other)
    }

    /// The fully qualified name: the given tenant and namespace, or the defaults.
    pub fn fqfn(&self) -> Result<Fqfn, ConfigError> {
        let Some(name) = &self.name else {
            return Err(ConfigError::new("the function has no name: give --name (name), or --fqfn"));
        };
        Ok(Fqfn::new(
            self.tenant.as_deref().unwrap_or(DEFAULT_TENANT),
            self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE),
            name,
        )?)
    }

    /// Applies the defaults and checks every value; the error names the flag and what to give.
    pub fn resolve(&self) -> Result<FunctionConfig, ConfigError> {
        let fqfn = self.fqfn()?;
        let pattern = self
            .topics_pattern
            .as_deref()
            .map(|text| TopicPattern::parse(text, fqfn.tenant(), fqfn.namespace()))
            .transpose()?;
        let topics =
            self.inputs.iter().flatten().map(|name| TopicName::parse(name.trim())).collect::<Result<Vec<_>, _>>()?;
        if topics.len() > MAX_SUBSCRIPTION_TOPICS {
            return Err(ConfigError::new(format!(
                "--inputs names {} topics; the limit (MAX_SUBSCRIPTION_TOPICS) is {MAX_SUBSCRIPTION_TOPICS}",
                topics.len()
            )));
        }
        if topics.is_empty() && pattern.is_none() {
            return Err(ConfigError::new(
                "the function has no inputs: give --inputs (inputs) or --topics-pattern (topicsPattern)",
            ));
        }
        let topic = |name: &Option<String>| name.as_deref().map(TopicName::parse).transpose();
        let memory_bytes = match self.resources.as_ref().and_then(|resources| resources.ram.as_ref()) {
            None => DEFAULT_RAM_BYTES,
            Some(RamSize::Bytes(bytes)) => check_ram(*bytes, &bytes.to_string())?,
            Some(RamSize::Text(text)) => parse_ram(text)?,
        };
        let timeout_ms = self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        in_range("--timeout-ms", timeout_ms, 1, MAX_TIMEOUT_MS, "milliseconds")?;
        let parallelism = self.parallelism.unwrap_or(1);
        in_range("--parallelism", parallelism.into(), 1, MAX_PARALLELISM.into(), "(MAX_PARALLELISM)")?;
        let max_message_retries = self.max_message_retries.unwrap_or(DEFAULT_MAX_MESSAGE_RETRIES);
        in_range(
            "--max-message-retries",
            max_message_retries.into(),
            0,
            MAX_MESSAGE_RETRIES.into(),
            "(MAX_MESSAGE_RETRIES)",
        )?;
        let ack_timeout_ms = self.ack_timeout_ms.unwrap_or(DEFAULT_ACK_TIMEOUT_MS);
        in_range("--ack-timeout-ms", ack_timeout_ms, 1, MAX_ACK_TIMEOUT_MS, "milliseconds")?;
        let state_ttl = self.state_ttl.as_deref().map(parse_state_ttl).transpose()?;
        let batch_size = self.batch_size.unwrap_or(MAX_BATCH_MESSAGES);
        in_range("--batch-size", batch_size as u64, 1, MAX_BATCH_MESSAGES as u64, "(MAX_BATCH_MESSAGES)")?;
        let ordering = match (self.retain_ordering.unwrap_or(false), self.retain_key_ordering.unwrap_or(false)) {
            (true, true) => {
                return Err(ConfigError::new(
                    "--retain-ordering (retainOrdering) cannot be used with --retain-key-ordering (retainKeyOrdering): choose one",
                ));
            }
            (true, false) => Ordering::Retain,
            (false, true) => Ordering::RetainKey,
            (false, false) => Ordering::Unordered,
        };
        let user_config = match &self.user_config {
            Some(map) => {
                let size = serde_json::to_string(map).map_or(0, |text| text.len());
                if size > MAX_CONFIG_SIZE {
                    return Err(ConfigError::new(format!(
                        "--user-config is {size} bytes; the limit (MAX_CONFIG_SIZE) is {MAX_CONFIG_SIZE}"
                    )));
                }
                map.iter().map(|(key, value)| (key.clone(), value.to_string())).collect()
            }
            None => BTreeMap::new(),
        };
        let secrets = self
            .secrets
            .iter()
            .flatten()
            .map(|(key, value)| match value {
                serde_json::Value::String(text) => Ok((key.clone(), text.clone())),
                other => {
                    Err(ConfigError::new(format!("--secrets: the value of `{key}` must be a string, not {other}")))
                }
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        pulsar::notes(self)?;
        let guarantee = match (self.processing_guarantees, self.auto_ack) {
            (None | Some(ProcessingGuarantee::Manual), Some(false)) => ProcessingGuarantee::Manual,
            (Some(other), Some(false)) => {
                return Err(ConfigError::new(format!(
                    "--auto-ack false (autoAck) means MANUAL acknowledgement, which contradicts --processing-guarantees {}: give one of them",
                    serde_json::json!(other).as_str().unwrap_or_default()
                )));
            }
            (guarantee, _) => guarantee.unwrap_or(ProcessingGuarantee::AtLeastOnce),
        };
        Ok(FunctionConfig {
            subscription: match &self.sub_name {
                Some(local) => SubscriptionName::new(fqfn.tenant(), fqfn.namespace(), local).map_err(|error| {
                    ConfigError::new(format!(
                        "--subs-name (subName): {error}; it names a subscription inside the function's own namespace"
                    ))
                })?,
                None => SubscriptionName::of_function(&fqfn),
            },
            dead_letter_topic: match topic(&self.dead_letter_topic)? {
                Some(topic) => topic,
                None => fqfn.default_dead_letter_topic(),
            },
            inputs: Inputs { topics, pattern },
            output: topic(&self.output)?,
            log_topic: topic(&self.log_topic)?,
            initial_position: self.subscription_position.unwrap_or_default(),
            user_config,
            secrets,
            limits: InstanceLimits { memory_bytes, timeout: Duration::from_millis(timeout_ms) },
            log_level: SharedLogLevel::new(self.log_level()),
            state_ttl,
            ordering,
            parallelism,
            max_message_retries,
            ack_timeout: Duration::from_millis(ack_timeout_ms),
            batch_size,
            window: self.window_config.as_ref().map(|window| window.resolve(guarantee)).transpose()?,
            guarantee,
            fqfn,
            topic_access: TopicAccess::Any,
            deterministic: self.deterministic.unwrap_or(false),
        })
    }
}

fn in_range(flag: &str, value: u64, low: u64, high: u64, unit: &str) -> Result<(), ConfigError> {
    if (low..=high).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(format!("{flag} {value} is out of range: give {low} to {high} {unit}")))
    }
}

/// Parses `--ram`: bytes, or a number with K, M or G (binary units, an optional trailing `i` or `B`).
pub fn parse_ram(text: &str) -> Result<u64, ConfigError> {
    let not_a_size = || {
        ConfigError::new(format!(
            "--ram (--memory) `{text}` is not a size: give bytes or a number with K, M or G, such as 128M"
        ))
    };
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
        _ => return Err(not_a_size()),
    };
    let bytes = digits.parse::<u64>().ok().and_then(|n| n.checked_mul(multiplier)).ok_or_else(not_a_size)?;
    check_ram(bytes, text)
}

fn check_ram(bytes: u64, text: &str) -> Result<u64, ConfigError> {
    if (MIN_RAM_BYTES..=MAX_RAM_BYTES).contains(&bytes) {
        Ok(bytes)
    } else {
        Err(ConfigError::new(format!(
            "--ram (--memory) `{text}` is out of range: give 1M to 4G (the default is {}M)",
            DEFAULT_RAM_BYTES >> 20
        )))
    }
}

/// A time to live as `--state-ttl` takes it: a number of seconds, or a number with ms, s, m, h
/// or d; from 1 ms to [`MAX_STATE_TTL_MS`].
fn parse_state_ttl(given: &str) -> Result<Duration, ConfigError> {
    let bad = || {
        ConfigError::new(format!(
            "--state-ttl (stateTtl) `{given}` is not a time to live: give seconds, or a number with ms, s, m, h or d (90s, 30m, 1h, 7d), up to ten years (MAX_STATE_TTL_MS)"
        ))
    };
    let given = given.trim();
    let at = given.find(|c: char| !c.is_ascii_digit()).unwrap_or(given.len());
    let number: u64 = given[..at].parse().map_err(|_| bad())?;
    let unit_ms = match &given[at..] {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    match number.checked_mul(unit_ms) {
        Some(ms @ 1..=MAX_STATE_TTL_MS) => Ok(Duration::from_millis(ms)),
        _ => Err(bad()),
    }
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
    fn state_ttls_parse_with_their_units_and_refuse_nonsense() {
        for (text, ms) in [
            ("90", 90_000),
            ("90s", 90_000),
            ("1500ms", 1_500),
            ("30m", 1_800_000),
            ("1h", 3_600_000),
            ("7d", 604_800_000),
        ] {
            assert_eq!(parse_state_ttl(text).unwrap(), Duration::from_millis(ms), "{text}");
        }
        for bad in ["", "0", "0s", "1y", "-1h", "h", "3651d", "99999999999999999999", "1.5h"] {
            let error = parse_state_ttl(bad).unwrap_err().to_string();
            assert!(error.contains("is not a time to live") && error.contains("MAX_STATE_TTL_MS"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_yaml_file_with_pulsar_field_names_resolves() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("function.yaml");
        std::fs::write(
            &file,
            "tenant: acme\nnamespace: web\nname: sessions\ninputs: [clicks, views]\noutput: durations\n\
             processingGuarantees: EFFECTIVELY_ONCE\nparallelism: 3\nresources:\n  ram: 67108864\n\
             userConfig:\n  threshold: 5\nsubscriptionPosition: Latest\n",
        )
        .unwrap();
        let config = FunctionSpec::from_file(&file).unwrap().resolve().unwrap();
        assert_eq!(config.fqfn.to_string(), "acme/web/sessions");
        assert_eq!(config.inputs.topics.len(), 2);
        assert_eq!(config.guarantee, ProcessingGuarantee::EffectivelyOnce);
        assert_eq!(config.parallelism, 3);
        assert_eq!(config.limits.memory_bytes, 64 << 20);
        assert_eq!(config.user_config["threshold"], "5");
        assert_eq!(config.initial_position, Position::Latest);

        std::fs::write(&file, "name: f\ninputs: [a]\nparalelism: 2\n").unwrap();
        let error = FunctionSpec::from_file(&file).unwrap_err().to_string();
        assert!(error.contains("paralelism"), "a misspelt field is named: {error}");
    }

    #[test]
    fn an_overlay_replaces_only_the_fields_it_sets() {
        let base = FunctionSpec {
            name: Some("f".into()),
            inputs: Some(vec!["a".into()]),
            parallelism: Some(2),
            ..FunctionSpec::default()
        };
        let over = FunctionSpec { parallelism: Some(4), output: Some("out".into()), ..FunctionSpec::default() };
        let merged = base.overlay(over);
        assert_eq!(merged.parallelism, Some(4));
        assert_eq!(merged.output.as_deref(), Some("out"));
        assert_eq!(merged.inputs, Some(vec!["a".to_owned()]));
        assert_eq!(merged.name.as_deref(), Some("f"));
    }
}
