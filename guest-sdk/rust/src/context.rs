//! The function's view of the host: the [`Context`] of each message, with its [`State`], the
//! [`Message`] apart from its value, logging, publishing, configuration and identity. Each call
//! goes to the host through the WIT imports, or to a test's [`MockContext`](crate::testing::MockContext).

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::__private::bindings::fnhost::function::{context as host, types as raw};
use crate::{Error, State, testing};

/// Why the host refused a context call. The function may handle it, or return it with `?`.
///
/// ```no_run
/// # fn f(ctx: &mut fnhost_guest::Context) {
/// match ctx.state().put("key", vec![0; 10 << 20]) {
///     Err(fnhost_guest::ContextError::LimitExceeded(why)) => ctx.warn(format_args!("not stored: {why}")),
///     _ => {}
/// }
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContextError {
    /// A named limit was hit; the text names it.
    LimitExceeded(String),
    /// The key holds another kind of value (bytes where a counter was expected, or the reverse).
    WrongKind(String),
    /// An argument is malformed.
    InvalidArgument(String),
    /// The function may not do this.
    NotPermitted(String),
    /// The host could not serve the call (its storage failed); the message fails and is tried
    /// again whatever the function returns, so there is nothing to handle.
    HostFailure(String),
}

impl From<raw::ContextError> for ContextError {
    fn from(error: raw::ContextError) -> Self {
        match error {
            raw::ContextError::LimitExceeded(text) => Self::LimitExceeded(text),
            raw::ContextError::WrongKind(text) => Self::WrongKind(text),
            raw::ContextError::InvalidArgument(text) => Self::InvalidArgument(text),
            raw::ContextError::NotPermitted(text) => Self::NotPermitted(text),
            raw::ContextError::HostFailure(text) => Self::HostFailure(text),
        }
    }
}

impl fmt::Display for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LimitExceeded(text) => write!(f, "limit exceeded: {text}"),
            Self::WrongKind(text) => write!(f, "wrong kind of value: {text}"),
            Self::InvalidArgument(text) => write!(f, "invalid argument: {text}"),
            Self::NotPermitted(text) => write!(f, "not permitted: {text}"),
            Self::HostFailure(text) => write!(f, "the host could not serve this call: {text}"),
        }
    }
}

impl std::error::Error for ContextError {}

/// The current message, apart from its value (which the function received as its input).
///
/// ```no_run
/// # fn f(ctx: &fnhost_guest::Context) {
/// let message = ctx.message();
/// let origin = format!("{} #{} key {:?}", message.topic(), message.id(), message.key());
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct Message {
    pub(crate) key: Option<String>,
    pub(crate) properties: Vec<(String, String)>,
    pub(crate) event_time: Option<u64>,
    pub(crate) publish_time: u64,
    pub(crate) id: String,
    pub(crate) topic: String,
    pub(crate) partition_key: Option<String>,
}

impl Message {
    pub(crate) fn split(raw: raw::Message) -> (Vec<u8>, Self) {
        let message = Self {
            key: raw.key,
            properties: raw.properties,
            event_time: raw.event_time,
            publish_time: raw.publish_time,
            id: raw.message_id,
            topic: raw.topic,
            partition_key: raw.partition_key,
        };
        (raw.value, message)
    }

    /// The message key, if any.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The producer's properties, in order.
    pub fn properties(&self) -> &[(String, String)] {
        &self.properties
    }

    /// One property by name.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// When the event happened (milliseconds since the Unix epoch), if the producer said.
    pub fn event_time(&self) -> Option<u64> {
        self.event_time
    }

    /// When the message was appended to its topic (milliseconds since the Unix epoch).
    pub fn publish_time(&self) -> u64 {
        self.publish_time
    }

    /// The message id, stable across redeliveries.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The fully qualified name of the topic the message came from.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition key, if any.
    pub fn partition_key(&self) -> Option<&str> {
        self.partition_key.as_deref()
    }
}

/// A log level, lowest first.
///
/// ```no_run
/// # fn f(ctx: &fnhost_guest::Context) {
/// ctx.log(fnhost_guest::Level::Debug, "details");
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Tracing detail.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the function handled.
    Warn,
    /// Something failed.
    Error,
}

impl From<raw::LogLevel> for Level {
    fn from(level: raw::LogLevel) -> Self {
        match level {
            raw::LogLevel::Trace => Self::Trace,
            raw::LogLevel::Debug => Self::Debug,
            raw::LogLevel::Info => Self::Info,
            raw::LogLevel::Warn => Self::Warn,
            raw::LogLevel::Error => Self::Error,
        }
    }
}

impl From<Level> for raw::LogLevel {
    fn from(level: Level) -> Self {
        match level {
            Level::Trace => Self::Trace,
            Level::Debug => Self::Debug,
            Level::Info => Self::Info,
            Level::Warn => Self::Warn,
            Level::Error => Self::Error,
        }
    }
}

/// Who the function and this instance are.
///
/// ```no_run
/// # fn f(ctx: &fnhost_guest::Context) {
/// let me = ctx.identity();
/// let fqfn = format!("{}/{}/{}", me.tenant, me.namespace, me.name);
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The tenant.
    pub tenant: String,
    /// The namespace.
    pub namespace: String,
    /// The function's name.
    pub name: String,
    /// A stable identifier of the function.
    pub function_id: String,
    /// The version of the function's code (the SHA-256 of its component).
    pub function_version: String,
    /// This instance's number, from 0.
    pub instance_id: u32,
    /// How many instances run.
    pub num_instances: u32,
}

/// A message to publish, with its key and properties.
///
/// ```no_run
/// # fn f(ctx: &mut fnhost_guest::Context) -> Result<(), fnhost_guest::Error> {
/// let alert = fnhost_guest::Outgoing::new("disk full").key("host-7").property("severity", "high");
/// ctx.publish_message("alerts", alert)?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outgoing {
    pub(crate) value: Vec<u8>,
    pub(crate) key: Option<String>,
    pub(crate) properties: Vec<(String, String)>,
}

impl Outgoing {
    /// A message with this value.
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Self { value: value.into(), ..Self::default() }
    }

    /// Sets the key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a property.
    pub fn property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((name.into(), value.into()));
        self
    }
}

/// Everything a function can reach: the current message, state, logging, publishing,
/// configuration, identity and metrics.
///
/// ```no_run
/// # fn f(ctx: &mut fnhost_guest::Context) -> Result<(), fnhost_guest::Error> {
/// let greeting: String = ctx.user_config("greeting")?.unwrap_or_else(|| "hello".into());
/// ctx.info(format_args!("{greeting} from {}", ctx.message().topic()));
/// ctx.record_metric("greetings", 1.0);
/// # Ok(()) }
/// ```
pub struct Context {
    pub(crate) message: Message,
    pub(crate) backend: Backend,
    /// The host's lowest level, asked once per message: an operator may change it while the
    /// function runs (`functions update --log-level`), and the next message sees the change.
    pub(crate) min_level: std::cell::OnceCell<Level>,
}

/// What serves a [`Context`]'s calls: the host, or a test's [`MockContext`](testing::MockContext).
#[derive(Clone, Debug)]
pub(crate) enum Backend {
    /// The fnhost host, through the WIT imports.
    Host,
    /// A test's in-memory host.
    Mock(Rc<RefCell<testing::MockHost>>),
}

impl Context {
    /// The context of a message the host delivered.
    pub(crate) fn on_host(message: Message) -> Self {
        Self { message, backend: Backend::Host, min_level: std::cell::OnceCell::new() }
    }

    /// The current message's key, properties, times, id and topic.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The function's state table.
    pub fn state(&self) -> State {
        State(self.backend.clone())
    }

    /// Stores `value` under `key` for `ttl` from the commit of this message: the same as
    /// `ctx.state().put_with_ttl(key, value, ttl)` ([`State::put_with_ttl`]).
    pub fn put_state_ttl(&self, key: &str, value: impl AsRef<[u8]>, ttl: Duration) -> Result<(), ContextError> {
        self.state().put_with_ttl(key, value, ttl)
    }

    /// Writes a line to the function's log at `level`, unless the host drops lines at that level.
    ///
    /// The line is formatted only if it is written, so pass `format_args!` rather than `format!`:
    /// a line the host drops then costs nothing.
    ///
    /// ```no_run
    /// # fn f(ctx: &fnhost_guest::Context, user: &str) {
    /// ctx.log(fnhost_guest::Level::Info, format_args!("user {user} logged in"));
    /// # }
    /// ```
    pub fn log(&self, level: Level, message: impl fmt::Display) {
        if self.log_enabled(level) {
            match &self.backend {
                Backend::Host => host::log(level.into(), &message.to_string()),
                Backend::Mock(mock) => mock.borrow_mut().logs.push((level, message.to_string())),
            }
        }
    }

    /// Whether the host writes lines at `level` (`--log-level`): check it before computing what
    /// only a line needs.
    ///
    /// ```no_run
    /// # fn f(ctx: &fnhost_guest::Context, input: &[u8]) {
    /// if ctx.log_enabled(fnhost_guest::Level::Debug) {
    ///     let words = String::from_utf8_lossy(input).split_whitespace().count();
    ///     ctx.debug(format_args!("input of {words} words"));
    /// }
    /// # }
    /// ```
    pub fn log_enabled(&self, level: Level) -> bool {
        match &self.backend {
            Backend::Host => level >= *self.min_level.get_or_init(|| Level::from(host::min_log_level())),
            Backend::Mock(mock) => level >= mock.borrow().log_level,
        }
    }

    /// Logs at debug level.
    pub fn debug(&self, message: impl fmt::Display) {
        self.log(Level::Debug, message);
    }

    /// Logs at info level.
    pub fn info(&self, message: impl fmt::Display) {
        self.log(Level::Info, message);
    }

    /// Logs at warn level.
    pub fn warn(&self, message: impl fmt::Display) {
        self.log(Level::Warn, message);
    }

    /// Logs at error level.
    pub fn error(&self, message: impl fmt::Display) {
        self.log(Level::Error, message);
    }

    /// Publishes `value` to `topic`; it is written when this message's effects commit.
    pub fn publish(&mut self, topic: &str, value: impl Into<Vec<u8>>) -> Result<(), ContextError> {
        self.publish_message(topic, Outgoing::new(value))
    }

    /// Publishes a message with a key and properties.
    pub fn publish_message(&mut self, topic: &str, message: Outgoing) -> Result<(), ContextError> {
        match &self.backend {
            Backend::Host => {
                host::publish(topic, &message.value, message.key.as_deref(), &message.properties).map_err(Into::into)
            }
            Backend::Mock(mock) => {
                mock.borrow_mut().published.push((topic.to_owned(), message));
                Ok(())
            }
        }
    }

    /// Acknowledges the current message (meaningful under the MANUAL processing guarantee).
    pub fn ack(&mut self) {
        match &self.backend {
            Backend::Host => host::ack(),
            Backend::Mock(mock) => mock.borrow_mut().acked += 1,
        }
    }

    /// Records one observation of a user metric.
    pub fn record_metric(&self, name: &str, value: f64) {
        match &self.backend {
            Backend::Host => host::record_metric(name, value),
            Backend::Mock(mock) => mock.borrow_mut().metrics.entry(name.to_owned()).or_default().push(value),
        }
    }

    /// One user config value, decoded from JSON into `T`; `None` if the key is absent.
    pub fn user_config<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        let json = match &self.backend {
            Backend::Host => host::user_config_value(key),
            Backend::Mock(mock) => mock.borrow().user_config.get(key).cloned(),
        };
        match json {
            Some(json) => serde_json::from_str(&json)
                .map(Some)
                .map_err(|error| Error::msg(format!("user config `{key}` has an unexpected type: {error}"))),
            None => Ok(None),
        }
    }

    /// The whole user config, each value as JSON.
    pub fn user_config_map(&self) -> Vec<(String, serde_json::Value)> {
        let map = match &self.backend {
            Backend::Host => host::user_config_map(),
            Backend::Mock(mock) => mock.borrow().user_config.clone().into_iter().collect(),
        };
        map.into_iter()
            .map(|(key, json)| {
                let value = serde_json::from_str(&json).unwrap_or(serde_json::Value::String(json));
                (key, value)
            })
            .collect()
    }

    /// A secret by name.
    pub fn secret(&self, name: &str) -> Option<String> {
        match &self.backend {
            Backend::Host => host::secret(name),
            Backend::Mock(mock) => mock.borrow().secrets.get(name).cloned(),
        }
    }

    /// Who the function and this instance are.
    pub fn identity(&self) -> Identity {
        let raw = match &self.backend {
            Backend::Host => host::get_identity(),
            Backend::Mock(mock) => return mock.borrow().identity.clone(),
        };
        Identity {
            tenant: raw.tenant,
            namespace: raw.namespace,
            name: raw.name,
            function_id: raw.function_id,
            function_version: raw.function_version,
            instance_id: raw.instance_id,
            num_instances: raw.num_instances,
        }
    }

    /// The fully qualified names of the input topics.
    pub fn input_topics(&self) -> Vec<String> {
        match &self.backend {
            Backend::Host => host::input_topics(),
            Backend::Mock(mock) => mock.borrow().input_topics.clone(),
        }
    }

    /// The fully qualified name of the output topic, if any.
    pub fn output_topic(&self) -> Option<String> {
        match &self.backend {
            Backend::Host => host::output_topic(),
            Backend::Mock(mock) => mock.borrow().output_topic.clone(),
        }
    }
}
