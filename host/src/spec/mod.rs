//! A function's configuration as users write it: Pulsar's `FunctionConfig` document, field for field
//! where fnhost has the feature, in JSON (REST), YAML (`--function-config-file`) or flags.
//!
//! Every field is optional so that documents can be layered (a file under flags, an update over the
//! stored config); [`FunctionSpec::resolve`] applies the defaults and checks every value against
//! its limit, producing the [`FunctionConfig`](crate::function::FunctionConfig) the instance loop runs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::broker::Position;
use crate::function::{Code, FunctionKind, ProcessingGuarantee, Source};
use crate::limits::MAX_CONFIG_SIZE;
use crate::names::{DEFAULT_NAMESPACE, DEFAULT_TENANT, Fqfn};
use crate::runtime::LogLevel;

pub mod pulsar;
mod resolve;
mod window;

pub use pulsar::PulsarFields;
pub use resolve::parse_ram;
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
}

#[cfg(test)]
mod tests {
    use super::resolve::parse_state_ttl;
    use super::*;
    use std::time::Duration;

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
