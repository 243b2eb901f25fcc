//! The function instance loop: fetch a batch, process each message, commit the batch.
//!
//! A message's effects (state changes, published messages, its output) are gathered in a
//! [`MessageContext`]; when the message succeeds they join the batch, when it fails they are
//! dropped. The batch's effects and the acknowledgement of its messages are committed in one
//! atomic step by [`Subscription::commit`], so a crash loses no work that was acknowledged and
//! applies no effect of a message that will be delivered again.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufWriter, Stdout, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ScopedJoinHandle;
use std::time::{Duration, Instant};

use crate::broker::{
    Acks, Broker, BrokerError, Effects, Message, OutMessage, Position, Subscription, SubscriptionSpec,
};
use crate::limits::{
    DEFAULT_RAM_BYTES, DEFAULT_TIMEOUT_MS, MAX_BATCH_MESSAGES, MAX_LOG_LINE_LEN, MAX_MESSAGE_KEY_LEN, MAX_MESSAGE_SIZE,
    MAX_METRIC_NAME_LEN, MAX_METRICS_PER_INSTANCE, MAX_PROPERTIES, MAX_PROPERTY_LEN, MAX_PUBLISHES_PER_MESSAGE,
    MAX_STATE_KEY_LEN, MAX_STATE_VALUE_SIZE,
};
use crate::names::{Fqfn, TopicName};
use crate::runtime::{
    ContextError, FunctionDetails, GuestMessage, HostContext, Identity, Instance, InstanceLimits, LogLevel,
    PreparedFunction, ProcessError,
};
use crate::state::{Change, StateChanges, StateError, StateTable, StateValue};

/// How long an idle loop waits for new messages before checking whether it should stop.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// Everything that defines how a function runs, apart from its code.
#[derive(Clone, Debug)]
pub struct FunctionConfig {
    /// The function's fully qualified name.
    pub fqfn: Fqfn,
    /// Input topics.
    pub inputs: Vec<TopicName>,
    /// Where returned values go.
    pub output: Option<TopicName>,
    /// Where log lines are also published.
    pub log_topic: Option<TopicName>,
    /// The durable subscription name.
    pub subscription: String,
    /// Where the subscription starts the first time.
    pub initial_position: Position,
    /// User config: top-level key to JSON text.
    pub user_config: BTreeMap<String, String>,
    /// Secrets by name.
    pub secrets: BTreeMap<String, String>,
    /// Memory and time per instance.
    pub limits: InstanceLimits,
    /// Lines below this level are not logged.
    pub log_level: LogLevel,
}

impl FunctionConfig {
    /// A function over `inputs` with the defaults: no output or log topic, the fully qualified
    /// name as the subscription, starting at the earliest message, no user config or secrets,
    /// the default memory and time limits, and info-level logs.
    pub fn new(fqfn: Fqfn, inputs: Vec<TopicName>) -> Self {
        Self {
            subscription: fqfn.to_string(),
            fqfn,
            inputs,
            output: None,
            log_topic: None,
            initial_position: Position::Earliest,
            user_config: BTreeMap::new(),
            secrets: BTreeMap::new(),
            limits: InstanceLimits {
                memory_bytes: DEFAULT_RAM_BYTES,
                timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            },
            log_level: LogLevel::Info,
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
            input_topics: self.inputs.iter().map(ToString::to_string).collect(),
            output_topic: self.output.as_ref().map(ToString::to_string),
            user_config: self.user_config.clone(),
            secrets: self.secrets.clone(),
        }
    }
}

/// Counts of what an instance did, with Pulsar's meanings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Messages delivered to the function.
    pub received: u64,
    /// Messages processed without an exception.
    pub succeeded: u64,
    /// Messages the function failed by returning an error.
    pub user_exceptions: u64,
    /// Messages that failed through a trap, a limit or the host.
    pub system_exceptions: u64,
    /// Times the instance was replaced after a trap.
    pub restarts: u64,
    /// The most recent failure, if any.
    pub last_error: Option<String>,
    /// User metrics: name to (count, sum).
    pub metrics: BTreeMap<String, (u64, f64)>,
}

/// Where log lines go: stdout, buffered and flushed after every batch.
#[derive(Clone)]
pub struct LogSink(Arc<Mutex<BufWriter<Stdout>>>);

impl Default for LogSink {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(BufWriter::new(std::io::stdout()))))
    }
}

impl LogSink {
    fn write_line(&self, level: LogLevel, name: &str, message: &str) {
        let mut out = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // A closed stdout must not stop processing; the log topic (if any) still gets the line.
        let _ = writeln!(out, "{} [{name}] {message}", level_name(level));
    }

    /// Writes out buffered lines.
    pub fn flush(&self) {
        let mut out = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = out.flush();
    }
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "TRACE",
        LogLevel::Debug => "DEBUG",
        LogLevel::Info => "INFO",
        LogLevel::Warn => "WARN",
        LogLevel::Error => "ERROR",
    }
}

fn level_rank(level: LogLevel) -> u8 {
    level as u8
}

/// The host side of a function's context: what one instance has done in the current batch.
pub struct MessageContext {
    fqfn: Fqfn,
    state: Box<dyn StateTable>,
    batch_state: StateChanges,
    message_state: StateChanges,
    /// The values of the keys the batch being committed changed, as that batch left them: read
    /// before the store, which may not have them yet.
    in_flight: HashMap<String, Option<StateValue>>,
    batch_outputs: Vec<(TopicName, OutMessage)>,
    message_outputs: Vec<(TopicName, OutMessage)>,
    publishes: usize,
    topics: HashMap<String, TopicName>,
    log_topic: Option<TopicName>,
    log_level: LogLevel,
    logs: LogSink,
    metrics: BTreeMap<String, (u64, f64)>,
    host_failure: Option<String>,
}

impl MessageContext {
    /// A context for one instance of the function in `config`.
    pub fn new(config: &FunctionConfig, state: Box<dyn StateTable>, logs: LogSink) -> Self {
        Self {
            fqfn: config.fqfn.clone(),
            state,
            batch_state: StateChanges::default(),
            message_state: StateChanges::default(),
            in_flight: HashMap::new(),
            batch_outputs: Vec::new(),
            message_outputs: Vec::new(),
            publishes: 0,
            topics: HashMap::new(),
            log_topic: config.log_topic.clone(),
            log_level: config.log_level,
            logs,
            metrics: BTreeMap::new(),
            host_failure: None,
        }
    }

    fn begin_message(&mut self) {
        self.message_state.clear();
        self.message_outputs.clear();
        self.publishes = 0;
        self.host_failure = None;
    }

    /// Moves the current message's effects into the batch, with its output if it has one.
    fn keep_message(&mut self, output: Option<(TopicName, OutMessage)>) {
        let changes = std::mem::take(&mut self.message_state);
        self.batch_state.absorb(changes);
        self.batch_outputs.append(&mut self.message_outputs);
        self.batch_outputs.extend(output);
    }

    fn drop_message(&mut self) {
        self.message_state.clear();
        self.message_outputs.clear();
    }

    /// Hands the batch's effects over for commit, remembering the values it leaves behind so that
    /// the next batch reads them while the commit runs. The previous commit must have finished.
    fn take_batch(&mut self, acks: Acks) -> Result<Effects, StateError> {
        self.in_flight.clear();
        let changes = std::mem::take(&mut self.batch_state);
        for (key, change) in changes.iter() {
            let value = match change {
                Change::Add(_) => change.apply(self.state.get(key)?.map(|versioned| versioned.value)),
                absolute => absolute.apply(None),
            };
            self.in_flight.insert(key.clone(), value);
        }
        Ok(Effects {
            acks,
            outputs: std::mem::take(&mut self.batch_outputs),
            state: Some((self.fqfn.clone(), changes)),
        })
    }

    /// The value of `key` as this message sees it: its own changes, then the batch's, then the store.
    fn current(&mut self, key: &str) -> Result<Option<StateValue>, ContextError> {
        let message = self.message_state.get(key);
        if let Some(change) = message
            && !matches!(change, Change::Add(_))
        {
            return Ok(change.apply(None));
        }
        let base = match self.batch_state.get(key) {
            Some(change) if !matches!(change, Change::Add(_)) => change.apply(None),
            batch => {
                let committed = match self.in_flight.get(key) {
                    Some(value) => value.clone(),
                    None => match self.state.get(key) {
                        Ok(stored) => stored.map(|versioned| versioned.value),
                        Err(error) => return Err(self.fail_host(error.to_string())),
                    },
                };
                match batch {
                    Some(change) => change.apply(committed),
                    None => committed,
                }
            }
        };
        Ok(match message {
            Some(change) => change.apply(base),
            None => base,
        })
    }

    /// Records a host failure: the message fails as a system exception whatever the function does next.
    fn fail_host(&mut self, reason: String) -> ContextError {
        self.host_failure = Some(reason.clone());
        ContextError::NotPermitted(format!("the host could not serve this call: {reason}"))
    }

    fn topic(&mut self, name: &str) -> Result<TopicName, ContextError> {
        if let Some(topic) = self.topics.get(name) {
            return Ok(topic.clone());
        }
        let topic = TopicName::parse(name).map_err(|error| ContextError::InvalidArgument(error.to_string()))?;
        self.topics.insert(name.to_owned(), topic.clone());
        Ok(topic)
    }

    /// Writes a line to the log, as the function's own logging does.
    pub fn write_log(&mut self, level: LogLevel, mut message: String) {
        if level_rank(level) < level_rank(self.log_level) {
            return;
        }
        if message.len() > MAX_LOG_LINE_LEN {
            let mut cut = MAX_LOG_LINE_LEN;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" [cut at MAX_LOG_LINE_LEN]");
        }
        self.logs.write_line(level, self.fqfn.name(), &message);
        if let Some(topic) = &self.log_topic {
            let mut line = OutMessage::new(message);
            line.properties =
                vec![("loglevel".into(), level_name(level).into()), ("fqfn".into(), self.fqfn.to_string())];
            // Log lines are kept even when the message fails: they explain the failure.
            self.batch_outputs.push((topic.clone(), line));
        }
    }
}

fn check_key(key: &str) -> Result<(), ContextError> {
    if key.len() > MAX_STATE_KEY_LEN {
        return Err(ContextError::LimitExceeded(format!(
            "state key is {} bytes; the limit (MAX_STATE_KEY_LEN) is {MAX_STATE_KEY_LEN}",
            key.len()
        )));
    }
    Ok(())
}

impl HostContext for MessageContext {
    fn log(&mut self, level: LogLevel, message: String) {
        self.write_log(level, message);
    }

    fn record_metric(&mut self, name: String, value: f64) {
        if name.len() > MAX_METRIC_NAME_LEN
            || (self.metrics.len() >= MAX_METRICS_PER_INSTANCE && !self.metrics.contains_key(&name))
        {
            self.write_log(
                LogLevel::Warn,
                format!(
                    "metric `{}` dropped: names are limited to MAX_METRIC_NAME_LEN ({MAX_METRIC_NAME_LEN}) bytes and MAX_METRICS_PER_INSTANCE ({MAX_METRICS_PER_INSTANCE}) names",
                    name.chars().take(64).collect::<String>()
                ),
            );
            return;
        }
        let entry = self.metrics.entry(name).or_default();
        entry.0 += 1;
        entry.1 += value;
    }

    fn get_state(&mut self, key: String) -> Result<Option<Vec<u8>>, ContextError> {
        check_key(&key)?;
        Ok(self.current(&key)?.map(StateValue::into_bytes))
    }

    fn put_state(&mut self, key: String, value: Vec<u8>) -> Result<(), ContextError> {
        check_key(&key)?;
        if value.len() > MAX_STATE_VALUE_SIZE {
            return Err(ContextError::LimitExceeded(format!(
                "state value is {} bytes; the limit (MAX_STATE_VALUE_SIZE) is {MAX_STATE_VALUE_SIZE}",
                value.len()
            )));
        }
        self.message_state.record(key, Change::Put(value));
        Ok(())
    }

    fn delete_state(&mut self, key: String) -> Result<(), ContextError> {
        check_key(&key)?;
        self.message_state.record(key, Change::Delete);
        Ok(())
    }

    fn incr_counter(&mut self, key: String, amount: i64) -> Result<i64, ContextError> {
        check_key(&key)?;
        let current = match self.current(&key)? {
            None => 0,
            Some(StateValue::Counter(value)) => value,
            Some(StateValue::Bytes(_)) => {
                return Err(ContextError::WrongKind(format!(
                    "state key `{key}` holds bytes, not a counter; delete it before counting under it"
                )));
            }
        };
        self.message_state.record(key, Change::Add(amount));
        Ok(current.wrapping_add(amount))
    }

    fn get_counter(&mut self, key: String) -> Result<i64, ContextError> {
        check_key(&key)?;
        match self.current(&key)? {
            None => Ok(0),
            Some(StateValue::Counter(value)) => Ok(value),
            Some(StateValue::Bytes(_)) => Err(ContextError::WrongKind(format!(
                "state key `{key}` holds bytes, not a counter; read it with get-state"
            ))),
        }
    }

    fn publish(
        &mut self,
        topic: String,
        value: Vec<u8>,
        key: Option<String>,
        properties: Vec<(String, String)>,
    ) -> Result<(), ContextError> {
        if self.publishes >= MAX_PUBLISHES_PER_MESSAGE {
            return Err(ContextError::LimitExceeded(format!(
                "more than MAX_PUBLISHES_PER_MESSAGE ({MAX_PUBLISHES_PER_MESSAGE}) publishes while processing one message"
            )));
        }
        let topic = self.topic(&topic)?;
        let message = OutMessage { value, key, properties, event_time: None };
        check_message(&message).map_err(ContextError::LimitExceeded)?;
        self.publishes += 1;
        self.message_outputs.push((topic, message));
        Ok(())
    }

    fn ack(&mut self) {
        // Under ATLEAST_ONCE every message is acknowledged by the commit of its batch, so an
        // explicit ack changes nothing; the MANUAL guarantee will give it meaning.
    }
}

/// Checks a message against the size limits; the error names the limit.
pub fn check_message(message: &OutMessage) -> Result<(), String> {
    if message.value.len() > MAX_MESSAGE_SIZE {
        return Err(format!(
            "message value is {} bytes; the limit (MAX_MESSAGE_SIZE) is {MAX_MESSAGE_SIZE}",
            message.value.len()
        ));
    }
    if let Some(key) = &message.key
        && key.len() > MAX_MESSAGE_KEY_LEN
    {
        return Err(format!(
            "message key is {} bytes; the limit (MAX_MESSAGE_KEY_LEN) is {MAX_MESSAGE_KEY_LEN}",
            key.len()
        ));
    }
    if message.properties.len() > MAX_PROPERTIES {
        return Err(format!(
            "message has {} properties; the limit (MAX_PROPERTIES) is {MAX_PROPERTIES}",
            message.properties.len()
        ));
    }
    if message.properties.iter().any(|(k, v)| k.len() > MAX_PROPERTY_LEN || v.len() > MAX_PROPERTY_LEN) {
        return Err(format!("a property name or value is longer than MAX_PROPERTY_LEN ({MAX_PROPERTY_LEN}) bytes"));
    }
    Ok(())
}

/// Something that processes messages with a [`MessageContext`]: a wasm instance or a native function.
pub trait Executor {
    /// Processes one message.
    fn process(&mut self, message: &GuestMessage) -> Result<Option<Vec<u8>>, ProcessError>;
    /// The context the executor's effects are gathered in.
    fn context(&mut self) -> &mut MessageContext;
    /// How many times the executor was restarted after a system exception.
    fn restarts(&self) -> u64 {
        0
    }
}

/// Runs a wasm component, replacing its instance after every trap.
pub struct WasmExecutor {
    function: PreparedFunction<MessageContext>,
    details: Arc<FunctionDetails>,
    limits: InstanceLimits,
    instance: Option<Instance<MessageContext>>,
    /// The context while no instance holds it (after an instantiation failed).
    parked: Option<MessageContext>,
    restarts: u64,
}

impl WasmExecutor {
    /// Instantiates the function; fails if the first instance cannot start.
    pub fn start(
        function: PreparedFunction<MessageContext>,
        details: Arc<FunctionDetails>,
        limits: InstanceLimits,
        context: MessageContext,
    ) -> Result<Self, ProcessError> {
        let instance = function.instantiate(context, details.clone(), limits).map_err(|(_, error)| error)?;
        Ok(Self { function, details, limits, instance: Some(instance), parked: None, restarts: 0 })
    }

    fn replace_instance(&mut self) {
        let context = match (self.instance.take(), self.parked.take()) {
            (Some(instance), _) => instance.into_host(),
            (None, Some(context)) => context,
            (None, None) => unreachable!("the context is always held by the instance or parked"),
        };
        self.restarts += 1;
        match self.function.instantiate(context, self.details.clone(), self.limits) {
            Ok(instance) => self.instance = Some(instance),
            Err((context, error)) => {
                tracing::error!("cannot restart an instance of {}: {error}", context.fqfn);
                self.parked = Some(context);
            }
        }
    }
}

impl Executor for WasmExecutor {
    fn process(&mut self, message: &GuestMessage) -> Result<Option<Vec<u8>>, ProcessError> {
        if self.instance.is_none() {
            self.replace_instance();
        }
        let Some(instance) = self.instance.as_mut() else {
            return Err(ProcessError::System("the instance could not be restarted".into()));
        };
        let result = instance.process(message);
        if matches!(result, Err(ProcessError::System(_))) {
            self.replace_instance();
        }
        result
    }

    fn context(&mut self) -> &mut MessageContext {
        match (&mut self.instance, &mut self.parked) {
            (Some(instance), _) => instance.host_mut(),
            (None, Some(context)) => context,
            (None, None) => unreachable!("the context is always held by the instance or parked"),
        }
    }

    fn restarts(&self) -> u64 {
        self.restarts
    }
}

/// A function written in Rust inside the host: the same pipeline without the sandbox.
pub struct NativeExecutor<F> {
    function: F,
    context: MessageContext,
}

impl<F> NativeExecutor<F>
where
    F: FnMut(&GuestMessage, &mut MessageContext) -> Result<Option<Vec<u8>>, String>,
{
    /// Wraps a native function.
    pub fn new(function: F, context: MessageContext) -> Self {
        Self { function, context }
    }
}

impl<F> Executor for NativeExecutor<F>
where
    F: FnMut(&GuestMessage, &mut MessageContext) -> Result<Option<Vec<u8>>, String>,
{
    fn process(&mut self, message: &GuestMessage) -> Result<Option<Vec<u8>>, ProcessError> {
        (self.function)(message, &mut self.context).map_err(ProcessError::User)
    }

    fn context(&mut self) -> &mut MessageContext {
        &mut self.context
    }
}

/// When the loop stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunUntil {
    /// When the stop flag is set.
    Stopped,
    /// When the inputs have no more messages (or the stop flag is set).
    Idle,
}

/// Why the loop stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Topics failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// State failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// A batch being committed on the commit thread.
struct InFlight<'scope> {
    commit: ScopedJoinHandle<'scope, Result<(), BrokerError>>,
    messages: usize,
}

/// Runs `executor` over the function's inputs until told to stop, committing after every batch.
///
/// A batch's commit runs on a second thread while the next batch is processed; the next commit
/// starts only once the previous one has returned, so commits stay in order and at most one batch
/// is unacknowledged in memory besides the one being processed.
pub fn run(
    broker: &dyn Broker,
    config: &FunctionConfig,
    executor: &mut dyn Executor,
    until: RunUntil,
    stop: &AtomicBool,
) -> Result<Stats, RunError> {
    let subscription = broker.subscribe(SubscriptionSpec {
        topics: config.inputs.clone(),
        name: Some(config.subscription.clone()),
        initial_position: config.initial_position,
    })?;
    let subscription: &dyn Subscription = subscription.as_ref();
    let mut stats = Stats::default();
    std::thread::scope(|scope| -> Result<(), RunError> {
        let mut in_flight: Option<InFlight<'_>> = None;
        while !stop.load(Ordering::Relaxed) {
            // Never sleep on an empty topic while a commit is pending: its acknowledgement and log
            // lines would wait for nothing.
            let wait = if until == RunUntil::Idle || in_flight.is_some() { Duration::ZERO } else { IDLE_WAIT };
            let messages = subscription.fetch(MAX_BATCH_MESSAGES, wait)?;
            if messages.is_empty() {
                if in_flight.is_some() {
                    finish(in_flight.take(), config, executor)?;
                    continue;
                }
                if until == RunUntil::Idle {
                    break;
                }
                continue;
            }
            let acks = Acks::of(&messages);
            let count = messages.len();
            process_batch(messages, config, executor, &mut stats);
            finish(in_flight.take(), config, executor)?;
            let effects = executor.context().take_batch(acks)?;
            in_flight = Some(InFlight { commit: scope.spawn(move || subscription.commit(effects)), messages: count });
        }
        finish(in_flight.take(), config, executor)
    })?;
    stats.restarts = executor.restarts();
    stats.metrics = executor.context().metrics.clone();
    Ok(stats)
}

/// Waits for the batch in flight (if any) to commit, then writes out its log lines.
fn finish(
    in_flight: Option<InFlight<'_>>,
    config: &FunctionConfig,
    executor: &mut dyn Executor,
) -> Result<(), RunError> {
    let Some(InFlight { commit, messages }) = in_flight else { return Ok(()) };
    let result = commit.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    executor.context().logs.flush();
    result?;
    tracing::debug!(fqfn = %config.fqfn, messages, "committed a batch");
    Ok(())
}

fn process_batch(messages: Vec<Message>, config: &FunctionConfig, executor: &mut dyn Executor, stats: &mut Stats) {
    for message in messages {
        stats.received += 1;
        let guest = to_guest(message);
        executor.context().begin_message();
        let started = Instant::now();
        let result = executor.process(&guest);
        let context = executor.context();
        let result = match (result, context.host_failure.take()) {
            (_, Some(failure)) => Err(ProcessError::System(failure)),
            (Ok(Some(value)), None) => match &config.output {
                Some(output) => {
                    let message = OutMessage { value, key: guest.key.clone(), ..OutMessage::default() };
                    match check_message(&message) {
                        Ok(()) => Ok(Some((output.clone(), message))),
                        Err(limit) => Err(ProcessError::System(format!("the output was refused: {limit}"))),
                    }
                }
                None => Ok(None),
            },
            (Ok(None), None) => Ok(None),
            (Err(error), None) => Err(error),
        };
        match result {
            Ok(output) => {
                context.keep_message(output);
                stats.succeeded += 1;
            }
            Err(error) => {
                context.drop_message();
                match &error {
                    ProcessError::User(_) => stats.user_exceptions += 1,
                    ProcessError::System(_) => stats.system_exceptions += 1,
                }
                let text = format!(
                    "message {} from {} failed after {:?}: {error}",
                    guest.message_id,
                    guest.topic,
                    started.elapsed()
                );
                context.write_log(LogLevel::Error, text.clone());
                stats.last_error = Some(text);
            }
        }
    }
}

fn to_guest(message: Message) -> GuestMessage {
    let id = message.id();
    let body = message.body;
    GuestMessage {
        value: body.value,
        key: body.key,
        properties: body.properties,
        event_time: body.event_time,
        publish_time: body.publish_time,
        message_id: id,
        topic: message.topic.as_str().to_owned(),
        partition_key: body.partition_key,
    }
}
