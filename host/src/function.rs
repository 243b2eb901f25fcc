//! What a function is, before any engine or instance: its resolved configuration, its kind (the
//! WIT world its component is built for) and where its code comes from.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering as AtomicOrdering};
use std::time::Duration;

use crate::engine::broker::{Inputs, Position, SubscriptionSpec, SubscriptionType};
use crate::limits::{
    DEFAULT_ACK_TIMEOUT_MS, DEFAULT_MAX_MESSAGE_RETRIES, DEFAULT_RAM_BYTES, DEFAULT_TIMEOUT_MS, MAX_BATCH_MESSAGES,
};
use crate::names::{Fqfn, NameError, SubscriptionName, TopicAccess, TopicName};
pub use crate::runtime::FunctionKind;
use crate::runtime::{FunctionDetails, Identity, InstanceLimits, LogLevel};
use crate::window::WindowConfig;

/// A function's lowest log level, read at every log line and set while its instances run.
#[derive(Clone, Debug)]
pub struct SharedLogLevel(Arc<AtomicU8>);

impl SharedLogLevel {
    /// A level of its own, not shared with any other function.
    pub fn new(level: LogLevel) -> Self {
        Self(Arc::new(AtomicU8::new(level as u8)))
    }

    /// The level now.
    pub fn get(&self) -> LogLevel {
        match self.0.load(AtomicOrdering::Relaxed) {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            _ => LogLevel::Error,
        }
    }

    /// Changes the level for every holder; their next line or `min-log-level` call sees it.
    pub fn set(&self, level: LogLevel) {
        self.0.store(level as u8, AtomicOrdering::Relaxed);
    }
}

/// Where a function's code comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Code {
    /// A component file.
    Wasm(PathBuf),
    /// A source file fnhost builds a component from.
    Source(Source),
}

/// A function given as source code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A Python module and the class (or function) in it, as `MODULE.CLASS`.
    Python {
        /// The module's file.
        file: PathBuf,
        /// `MODULE.CLASS`, as pulsar-admin's `--classname`.
        classname: String,
        /// Its third-party packages, as pip reads them (`--requirements`); `None`: the
        /// `requirements.txt` beside the module, if there is one.
        requirements: Option<PathBuf>,
        /// Where pip finds wheels instead of the package index (`--wheel-dir`, for offline builds).
        wheel_dir: Option<PathBuf>,
    },
    /// A JavaScript ES module.
    JavaScript {
        /// The module's file.
        file: PathBuf,
    },
}

impl Source {
    /// The source file given.
    pub fn file(&self) -> &std::path::Path {
        match self {
            Self::Python { file, .. } | Self::JavaScript { file } => file,
        }
    }
}

/// When a message is acknowledged, with Pulsar's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum ProcessingGuarantee {
    /// Before processing: a crash loses the messages being processed and never repeats one.
    #[value(name = "ATMOST_ONCE")]
    #[serde(rename = "ATMOST_ONCE")]
    AtMostOnce,
    /// Once the message's effects are committed.
    #[value(name = "ATLEAST_ONCE")]
    #[serde(rename = "ATLEAST_ONCE")]
    AtLeastOnce,
    /// Once the message's effects are committed, in the same atomic step, on a failover subscription.
    #[value(name = "EFFECTIVELY_ONCE")]
    #[serde(rename = "EFFECTIVELY_ONCE")]
    EffectivelyOnce,
    /// When the function acknowledges it; otherwise it is delivered again after the ack timeout.
    #[value(name = "MANUAL")]
    #[serde(rename = "MANUAL")]
    Manual,
}

/// What order messages must be processed in, which decides the subscription type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ordering {
    /// Any order: instances share the messages.
    Unordered,
    /// Input order (`--retain-ordering`): one instance at a time.
    Retain,
    /// Input order per key (`--retain-key-ordering`): each key to one instance.
    RetainKey,
}

/// Everything that defines how a function runs, apart from its code.
#[derive(Clone, Debug)]
pub struct FunctionConfig {
    /// The function's fully qualified name.
    pub fqfn: Fqfn,
    /// Input topics, named or by pattern.
    pub inputs: Inputs,
    /// Where returned values go.
    pub output: Option<TopicName>,
    /// Where log lines are also published.
    pub log_topic: Option<TopicName>,
    /// The durable subscription name.
    pub subscription: SubscriptionName,
    /// Where the subscription starts the first time.
    pub initial_position: Position,
    /// User config: top-level key to JSON text.
    pub user_config: BTreeMap<String, String>,
    /// Secrets by name.
    pub secrets: BTreeMap<String, String>,
    /// Memory and time per instance.
    pub limits: InstanceLimits,
    /// Lines below this level are not logged. Its instances share it, and an update that changes
    /// only the level sets it here while they run, so that no batch is drained for it.
    pub log_level: SharedLogLevel,
    /// How long a state value the function writes lives, unless the write says (`--state-ttl`);
    /// `None`: until it is deleted.
    pub state_ttl: Option<Duration>,
    /// When messages are acknowledged.
    pub guarantee: ProcessingGuarantee,
    /// The order messages must be processed in.
    pub ordering: Ordering,
    /// How many instances the caller starts; [`run`](crate::instance::run) runs one per executor it is given.
    pub parallelism: u32,
    /// How many times a failed message is tried again before it goes to the dead-letter topic.
    pub max_message_retries: u32,
    /// Where messages go that failed every try (or, under MANUAL, were never acknowledged).
    pub dead_letter_topic: TopicName,
    /// Under MANUAL, how long after delivery an unacknowledged message is delivered again.
    pub ack_timeout: Duration,
    /// Most messages processed between two commits.
    pub batch_size: usize,
    /// Set for a window function: how its records are cut into windows.
    pub window: Option<WindowConfig>,
    /// The topics the function may read and publish to.
    pub topic_access: TopicAccess,
    /// Whether its clocks and random numbers depend on the message alone, so that a replay
    /// reads what the first run read (`--deterministic`).
    pub deterministic: bool,
}

impl FunctionConfig {
    /// The kind of function this config runs: a window function exactly when it has window settings.
    pub fn kind(&self) -> FunctionKind {
        if self.window.is_some() { FunctionKind::WindowFunction } else { FunctionKind::Function }
    }

    /// Checks that a component of kind `component` is what this config runs.
    pub fn check_kind(&self, component: FunctionKind) -> Result<(), String> {
        match (component, self.kind()) {
            (FunctionKind::WindowFunction, FunctionKind::Function) => Err("the component is a window function (it exports process-window): give its window settings, --window-length-count or --window-length-duration-ms".into()),
            (FunctionKind::Function, FunctionKind::WindowFunction) => Err("window settings were given, but the component is not a window function (it exports process-batch): export it with the SDK's window API, or leave out the window settings".into()),
            _ => Ok(()),
        }
    }

    /// The same function, limited to the topics `access` allows: every topic it names must be
    /// one of them, and a topics pattern matches no others.
    pub fn within(mut self, access: TopicAccess) -> Result<Self, NameError> {
        let named = self.inputs.topics.iter().map(|topic| (topic, "input topic"));
        let named = named
            .chain(self.output.iter().map(|topic| (topic, "output topic")))
            .chain(self.log_topic.iter().map(|topic| (topic, "log topic")))
            .chain([(&self.dead_letter_topic, "dead-letter topic")])
            .chain(
                self.window.iter().flat_map(|window| &window.late_data_topic).map(|topic| (topic, "late-data topic")),
            );
        for (topic, role) in named {
            access.check(topic, role)?;
        }
        self.inputs.pattern = self.inputs.pattern.map(|pattern| pattern.within(access.clone()));
        self.topic_access = access;
        Ok(self)
    }

    /// A function over `inputs` with the defaults: no output or log topic, the fully qualified
    /// name as the subscription, starting at the earliest message, no user config or secrets,
    /// the default memory and time limits, info-level logs, state that does not expire, one instance, ATLEAST_ONCE without
    /// ordering, the default retries, `<name>-DLQ` as the dead-letter topic and full batches.
    pub fn new(fqfn: Fqfn, inputs: Vec<TopicName>) -> Self {
        Self {
            subscription: SubscriptionName::of_function(&fqfn),
            dead_letter_topic: fqfn.default_dead_letter_topic(),
            fqfn,
            inputs: inputs.into(),
            output: None,
            log_topic: None,
            initial_position: Position::Earliest,
            user_config: BTreeMap::new(),
            secrets: BTreeMap::new(),
            limits: InstanceLimits {
                memory_bytes: DEFAULT_RAM_BYTES,
                timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            },
            log_level: SharedLogLevel::new(LogLevel::Info),
            state_ttl: None,
            guarantee: ProcessingGuarantee::AtLeastOnce,
            ordering: Ordering::Unordered,
            parallelism: 1,
            max_message_retries: DEFAULT_MAX_MESSAGE_RETRIES,
            ack_timeout: Duration::from_millis(DEFAULT_ACK_TIMEOUT_MS),
            batch_size: MAX_BATCH_MESSAGES,
            window: None,
            topic_access: TopicAccess::Any,
            deterministic: false,
        }
    }

    /// The input topic `named` (refused unless the function reads it), or with no name the
    /// function's only input: where trigger produces and replay reads.
    pub fn input_topic(&self, named: Option<&str>) -> Result<TopicName, String> {
        let fqfn = &self.fqfn;
        match named {
            Some(name) => {
                let topic = TopicName::parse(name).map_err(|error| error.to_string())?;
                let reads = self.inputs.topics.contains(&topic)
                    || self.inputs.pattern.as_ref().is_some_and(|pattern| pattern.matches(&topic));
                match reads {
                    true => Ok(topic),
                    false => Err(format!("{topic} is not an input of {fqfn}")),
                }
            }
            None => match self.inputs.topics.as_slice() {
                [only] if self.inputs.pattern.is_none() => Ok(only.clone()),
                _ => Err(format!("{fqfn} has several inputs; name one with --topic")),
            },
        }
    }

    /// The subscription type, derived as Pulsar derives it: effectively-once or retained ordering
    /// needs failover, retained key ordering key-shared, anything else is shared.
    pub fn subscription_type(&self) -> SubscriptionType {
        match (self.guarantee, self.ordering) {
            (ProcessingGuarantee::EffectivelyOnce, _) | (_, Ordering::Retain) => SubscriptionType::Failover,
            (_, Ordering::RetainKey) => SubscriptionType::KeyShared,
            (_, Ordering::Unordered) => SubscriptionType::Shared,
        }
    }

    /// The consumer that instance `instance_id` of `num_instances` is.
    pub fn subscription_spec(&self, instance_id: u32, num_instances: u32) -> SubscriptionSpec {
        SubscriptionSpec {
            inputs: self.inputs.clone(),
            name: Some(self.subscription.clone()),
            initial_position: self.initial_position,
            subscription_type: self.subscription_type(),
            key_shares: (instance_id, num_instances),
            ack_timeout: (self.guarantee == ProcessingGuarantee::Manual).then_some(self.ack_timeout),
        }
    }

    /// What instance `instance_id` of `num_instances` may ask about itself; `version` is the code's digest.
    pub fn details(&self, version: &str, instance_id: u32, num_instances: u32) -> FunctionDetails {
        FunctionDetails {
            identity: Identity {
                tenant: self.fqfn.tenant().into(),
                namespace: self.fqfn.namespace().into(),
                name: self.fqfn.name().into(),
                function_id: self.fqfn.to_string(),
                function_version: version.into(),
                instance_id,
                num_instances,
            },
            input_topics: self
                .inputs
                .topics
                .iter()
                .map(ToString::to_string)
                .chain(self.inputs.pattern.iter().map(ToString::to_string))
                .collect(),
            output_topic: self.output.as_ref().map(ToString::to_string),
            user_config: self.user_config.clone(),
            secrets: self.secrets.clone(),
            deterministic: self.deterministic,
        }
    }
}
