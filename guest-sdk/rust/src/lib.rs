//! Write [fnhost](https://example.invalid/fnhost) functions in Rust.
//!
//! A function is a type that implements [`Function`], exported with [`export!`], and compiled
//! with `cargo build --target wasm32-wasip2`. It receives one message at a time, decoded into its
//! [`Function::Input`] type, and reaches the outside world only through the [`Context`]: state,
//! logging, publishing, configuration, identity and metrics.
//!
//! ```no_run
//! use fnhost_guest::{Context, Error, Function};
//!
//! /// Appends an exclamation mark to every message.
//! #[derive(Default)]
//! struct Exclamation;
//!
//! impl Function for Exclamation {
//!     type Input = String;
//!     type Output = String;
//!
//!     fn process(&mut self, input: String, _ctx: &mut Context) -> Result<String, Error> {
//!         Ok(format!("{input}!"))
//!     }
//! }
//!
//! fnhost_guest::export!(Exclamation);
//! ```
//!
//! Inputs and outputs are typed as in Pulsar's typed functions: `String` and `Vec<u8>` are taken
//! as they are, any serde type through [`Json`], and `Option<T>` or `()` as an output writes
//! nothing to the output topic when there is nothing to say.
#![deny(missing_docs)]

extern crate self as fnhost_guest;

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    #[allow(missing_docs, unused_qualifications, unsafe_code, clippy::all)]
    pub mod bindings {
        wit_bindgen::generate!({
            path: "wit",
            world: "function",
            pub_export_macro: true,
            export_macro_name: "__fnhost_export_world",
            default_bindings_module: "::fnhost_guest::__private::bindings",
            runtime_path: "::fnhost_guest::__private::wit_bindgen::rt",
        });
    }

    /// The `window-function` world's export; its imports and types are the ones above.
    #[allow(missing_docs, unused_qualifications, unsafe_code, clippy::all)]
    pub mod window_bindings {
        wit_bindgen::generate!({
            path: "wit",
            world: "window-function",
            pub_export_macro: true,
            export_macro_name: "__fnhost_export_window_world",
            default_bindings_module: "::fnhost_guest::__private::window_bindings",
            runtime_path: "::fnhost_guest::__private::wit_bindgen::rt",
            with: {
                "fnhost:function/types@0.3.0": super::bindings::fnhost::function::types,
                "fnhost:function/context@0.3.0": super::bindings::fnhost::function::context,
            },
        });
    }

    pub use bindings::Guest;
    pub use bindings::fnhost::function::types::{Message as RawMessage, Window as RawWindow};
    pub use window_bindings::Guest as WindowGuest;

    use crate::{Context, Function, Input, Message, Output, Record, Window, WindowFunction};

    /// Asks the function for each record's event time, creating the function on first use.
    pub fn event_times<F: WindowFunction>(slot: &mut Option<F>, records: Vec<RawMessage>) -> Vec<Option<u64>> {
        let function = slot.get_or_insert_with(F::default);
        records
            .into_iter()
            .map(|raw| {
                let (value, message) = Message::split(raw);
                function.event_time(&value, &message)
            })
            .collect()
    }

    /// Runs a window through the function, creating the function on first use.
    pub fn process_window<F: WindowFunction>(
        slot: &mut Option<F>,
        window: RawWindow,
        records: Vec<RawMessage>,
    ) -> Result<Option<Vec<u8>>, String> {
        let function = slot.get_or_insert_with(F::default);
        let mut newest = None;
        let records = records
            .into_iter()
            .map(|raw| {
                let (value, message) = Message::split(raw);
                newest = Some(message.clone());
                Ok(Record { value: F::Input::decode(value)?, message })
            })
            .collect::<Result<Vec<_>, crate::Error>>()
            .map_err(|error| error.to_string())?;
        let mut context = Context { message: newest.unwrap_or_default() };
        let window = Window { start: window.start, end: window.end, records };
        function.process(window, &mut context).and_then(Output::encode).map_err(|error| error.to_string())
    }

    /// Runs a batch through the function, creating the function on first use, and finishes each
    /// message with the host until the batch ends or the host says to stop.
    pub fn process_batch<F: Function>(slot: &mut Option<F>, messages: Vec<RawMessage>) {
        let function = slot.get_or_insert_with(F::default);
        for raw in messages {
            let outcome = process(function, raw);
            let outcome = match &outcome {
                Ok(output) => Ok(output.as_deref()),
                Err(error) => Err(error.as_str()),
            };
            if !bindings::fnhost::function::context::finish_message(outcome) {
                break;
            }
        }
    }

    fn process<F: Function>(function: &mut F, raw: RawMessage) -> Result<Option<Vec<u8>>, String> {
        let (value, message) = Message::split(raw);
        let input = F::Input::decode(value).map_err(|error| error.to_string())?;
        let mut context = Context { message };
        function.process(input, &mut context).and_then(Output::encode).map_err(|error| error.to_string())
    }
}

use __private::bindings::fnhost::function::{context as host, types as raw};

/// The instance's function object, created on first use: `FUNCTION`, for the export macros.
#[doc(hidden)]
#[macro_export]
macro_rules! __fnhost_function_slot {
    ($function:ty) => {
        ::std::thread_local! {
            static FUNCTION: ::std::cell::RefCell<::core::option::Option<$function>> =
                const { ::std::cell::RefCell::new(::core::option::Option::None) };
        }
    };
}

/// Exports a [`Function`] as the component's entry point. Use it once per crate.
///
/// ```no_run
/// #[derive(Default)]
/// struct Echo;
///
/// impl fnhost_guest::Function for Echo {
///     type Input = Vec<u8>;
///     type Output = Vec<u8>;
///
///     fn process(&mut self, input: Vec<u8>, _ctx: &mut fnhost_guest::Context) -> Result<Vec<u8>, fnhost_guest::Error> {
///         Ok(input)
///     }
/// }
///
/// fnhost_guest::export!(Echo);
/// ```
#[macro_export]
macro_rules! export {
    ($function:ty) => {
        const _: () = {
            struct FnhostExport;

            $crate::__fnhost_function_slot!($function);

            impl $crate::__private::Guest for FnhostExport {
                fn process_batch(messages: ::std::vec::Vec<$crate::__private::RawMessage>) {
                    FUNCTION
                        .with(|slot| $crate::__private::process_batch::<$function>(&mut slot.borrow_mut(), messages))
                }
            }

    $crate::__private::bindings::__fnhost_export_world!(FnhostExport with_types_in $crate::__private::bindings);
        };
    };
}

/// Exports a [`WindowFunction`] as the component's entry point, instead of [`export!`]. Use it
/// once per crate.
///
/// ```no_run
/// #[derive(Default)]
/// struct Count;
///
/// impl fnhost_guest::WindowFunction for Count {
///     type Input = Vec<u8>;
///     type Output = String;
///
///     fn process(
///         &mut self,
///         window: fnhost_guest::Window<Vec<u8>>,
///         _ctx: &mut fnhost_guest::Context,
///     ) -> Result<String, fnhost_guest::Error> {
///         Ok(window.records().len().to_string())
///     }
/// }
///
/// fnhost_guest::export_window!(Count);
/// ```
#[macro_export]
macro_rules! export_window {
    ($function:ty) => {
        const _: () = {
            struct FnhostExport;

            $crate::__fnhost_function_slot!($function);

            impl $crate::__private::WindowGuest for FnhostExport {
                fn process_window(
                    window: $crate::__private::RawWindow,
                    records: ::std::vec::Vec<$crate::__private::RawMessage>,
                ) -> ::core::result::Result<::core::option::Option<::std::vec::Vec<u8>>, ::std::string::String> {
                    FUNCTION.with(|slot| {
                        $crate::__private::process_window::<$function>(&mut slot.borrow_mut(), window, records)
                    })
                }

                fn event_times(
                    records: ::std::vec::Vec<$crate::__private::RawMessage>,
                ) -> ::std::vec::Vec<::core::option::Option<u64>> {
                    FUNCTION.with(|slot| $crate::__private::event_times::<$function>(&mut slot.borrow_mut(), records))
                }
            }

    $crate::__private::window_bindings::__fnhost_export_window_world!(FnhostExport with_types_in $crate::__private::window_bindings);
        };
    };
}

/// A window function (Pulsar's `WindowFunction`): gets the records of one window at a time.
///
/// The host cuts the windows from the function's window settings (`--window-length-count` or
/// `--window-length-duration-ms`, and optionally a sliding interval) and keeps the records of open
/// windows durably, so that a restart neither loses nor repeats a window.
///
/// ```no_run
/// use fnhost_guest::{Context, Error, Json, Window, WindowFunction};
///
/// #[derive(serde::Deserialize)]
/// struct Reading { celsius: f64 }
///
/// #[derive(Default)]
/// struct Average;
///
/// impl WindowFunction for Average {
///     type Input = Json<Reading>;
///     type Output = String;
///
///     fn process(&mut self, window: Window<Json<Reading>>, _ctx: &mut Context) -> Result<String, Error> {
///         let sum: f64 = window.values().map(|Json(reading)| reading.celsius).sum();
///         Ok(format!("{:.1}", sum / window.records().len() as f64))
///     }
/// }
/// ```
pub trait WindowFunction: Default + 'static {
    /// What each record's value is decoded into.
    type Input: Input;
    /// What is written to the output topic for the window.
    type Output: Output;

    /// Processes one window. An error is a user exception for the whole window: none of its
    /// state changes or publishes take effect. In a window function, [`Context::message`] is the
    /// window's newest record.
    fn process(&mut self, window: Window<Self::Input>, ctx: &mut Context) -> Result<Self::Output, Error>;

    /// Under `--event-time`, the record's event time in milliseconds since the Unix epoch, read
    /// from its raw value (Pulsar's timestamp extractor); `None`, the default, takes the event time
    /// the producer gave (or the publish time).
    ///
    /// ```
    /// # use fnhost_guest::{Message, WindowFunction};
    /// # #[derive(Default)] struct Readings;
    /// # impl WindowFunction for Readings {
    /// #     type Input = Vec<u8>;
    /// #     type Output = ();
    /// #     fn process(&mut self, _: fnhost_guest::Window<Vec<u8>>, _: &mut fnhost_guest::Context) -> Result<(), fnhost_guest::Error> { Ok(()) }
    /// // Values look like `1700000000000,21.5`: the time, then the reading.
    /// fn event_time(&mut self, value: &[u8], _message: &Message) -> Option<u64> {
    ///     std::str::from_utf8(value).ok()?.split(',').next()?.parse().ok()
    /// }
    /// # }
    /// assert_eq!(Readings.event_time(b"1700000000000,21.5", &Message::default()), Some(1_700_000_000_000));
    /// ```
    fn event_time(&mut self, value: &[u8], message: &Message) -> Option<u64> {
        let _ = (value, message);
        None
    }
}

/// The records of a window that fired, oldest first, and its span.
///
/// ```
/// let window = fnhost_guest::Window::new(0, 10_000, vec![3, 4]);
/// assert_eq!(window.values().sum::<i32>(), 7);
/// assert_eq!((window.start(), window.end()), (0, 10_000));
/// ```
pub struct Window<T> {
    start: u64,
    end: u64,
    records: Vec<Record<T>>,
}

impl<T> Window<T> {
    /// A window of `values` (records with no message details), for tests of a window function.
    pub fn new(start: u64, end: u64, values: Vec<T>) -> Self {
        let records = values.into_iter().map(|value| Record { value, message: Message::default() }).collect();
        Self { start, end, records }
    }

    /// The first millisecond the window covers (since the Unix epoch). A count window starts at
    /// its first record's time.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The first millisecond after the window. A count window ends just after its last record's time.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The records, oldest first.
    pub fn records(&self) -> &[Record<T>] {
        &self.records
    }

    /// The records' decoded values, oldest first.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.records.iter().map(|record| &record.value)
    }

    /// The records, oldest first, by value.
    pub fn into_records(self) -> Vec<Record<T>> {
        self.records
    }
}

/// One record of a window: its decoded value and the message it came in.
///
/// ```
/// let window = fnhost_guest::Window::new(0, 1, vec!["a".to_string()]);
/// let record = &window.records()[0];
/// assert_eq!((record.value.as_str(), record.message.key()), ("a", None));
/// ```
pub struct Record<T> {
    /// The decoded value.
    pub value: T,
    /// The message's key, properties, times, id and topic.
    pub message: Message,
}

/// A function: one instance is created with `Default` and then processes messages one at a time.
///
/// Fields of the type live as long as the instance, which the host may replace at any time (after
/// a trap, a restart or a rebalance): keep anything that must last in [`Context::state`].
///
/// ```no_run
/// use fnhost_guest::{Context, Error, Function, Json};
///
/// #[derive(serde::Deserialize)]
/// struct Order { amount: i64 }
///
/// #[derive(Default)]
/// struct Total;
///
/// impl Function for Total {
///     type Input = Json<Order>;
///     type Output = ();
///
///     fn process(&mut self, Json(order): Json<Order>, ctx: &mut Context) -> Result<(), Error> {
///         ctx.state().incr_counter("total", order.amount)?;
///         Ok(())
///     }
/// }
/// ```
pub trait Function: Default + 'static {
    /// What the message value is decoded into.
    type Input: Input;
    /// What is written to the output topic.
    type Output: Output;

    /// Processes one message. An error is a user exception: the message fails and none of its
    /// state changes or publishes take effect.
    fn process(&mut self, input: Self::Input, ctx: &mut Context) -> Result<Self::Output, Error>;
}

/// A type a message value can be decoded into.
///
/// ```
/// use fnhost_guest::Input;
/// assert_eq!(String::decode(b"hi".to_vec()).unwrap(), "hi");
/// assert!(String::decode(vec![0xff]).is_err());
/// ```
pub trait Input: Sized {
    /// Decodes the value.
    fn decode(value: Vec<u8>) -> Result<Self, Error>;
}

/// A type that can be written to the output topic.
///
/// ```
/// use fnhost_guest::{Json, Output};
/// assert_eq!("hi".to_string().encode().unwrap(), Some(b"hi".to_vec()));
/// assert_eq!(().encode().unwrap(), None);
/// assert_eq!(Json(vec![1, 2]).encode().unwrap(), Some(b"[1,2]".to_vec()));
/// ```
pub trait Output {
    /// Encodes the value; `None` writes nothing.
    fn encode(self) -> Result<Option<Vec<u8>>, Error>;
}

impl Input for Vec<u8> {
    fn decode(value: Vec<u8>) -> Result<Self, Error> {
        Ok(value)
    }
}

impl Input for String {
    fn decode(value: Vec<u8>) -> Result<Self, Error> {
        String::from_utf8(value).map_err(|error| Error::msg(format!("the message is not UTF-8 text: {error}")))
    }
}

impl<T: DeserializeOwned> Input for Json<T> {
    fn decode(value: Vec<u8>) -> Result<Self, Error> {
        serde_json::from_slice(&value)
            .map(Json)
            .map_err(|error| Error::msg(format!("the message is not the expected JSON: {error}")))
    }
}

impl Output for Vec<u8> {
    fn encode(self) -> Result<Option<Vec<u8>>, Error> {
        Ok(Some(self))
    }
}

impl Output for String {
    fn encode(self) -> Result<Option<Vec<u8>>, Error> {
        Ok(Some(self.into_bytes()))
    }
}

impl Output for () {
    fn encode(self) -> Result<Option<Vec<u8>>, Error> {
        Ok(None)
    }
}

impl<T: Output> Output for Option<T> {
    fn encode(self) -> Result<Option<Vec<u8>>, Error> {
        self.map_or(Ok(None), Output::encode)
    }
}

impl<T: Serialize> Output for Json<T> {
    fn encode(self) -> Result<Option<Vec<u8>>, Error> {
        self.to_vec().map(Some)
    }
}

/// A value carried as JSON, in either direction.
///
/// ```
/// let bytes = fnhost_guest::Json(serde_json::json!({"a": 1})).to_vec().unwrap();
/// assert_eq!(bytes, br#"{"a":1}"#);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Json<T>(pub T);

impl<T: Serialize> Json<T> {
    /// The JSON encoding of the value.
    pub fn to_vec(&self) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(&self.0).map_err(|error| Error::msg(format!("cannot encode JSON: {error}")))
    }
}

/// A user exception: the message fails with this text.
///
/// Any error type converts into it with `?`.
///
/// ```
/// let error = fnhost_guest::Error::msg("no such user");
/// assert_eq!(error.to_string(), "no such user");
/// let parsed: Result<i64, fnhost_guest::Error> = "x".parse::<i64>().map_err(Into::into);
/// assert!(parsed.is_err());
/// ```
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self(message.to_string())
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(error: E) -> Self {
        Self(error.to_string())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({:?})", self.0)
    }
}

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
    key: Option<String>,
    properties: Vec<(String, String)>,
    event_time: Option<u64>,
    publish_time: u64,
    id: String,
    topic: String,
    partition_key: Option<String>,
}

impl Message {
    fn split(raw: raw::Message) -> (Vec<u8>, Self) {
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
    value: Vec<u8>,
    key: Option<String>,
    properties: Vec<(String, String)>,
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

/// The function's state table: durable, shared by all instances of the function, and changed
/// together with the message that changed it.
///
/// ```no_run
/// # fn f(ctx: &mut fnhost_guest::Context) -> Result<(), fnhost_guest::Error> {
/// let state = ctx.state();
/// state.put("last-user", "user123")?;
/// assert_eq!(state.get_string("last-user")?.as_deref(), Some("user123"));
/// let seen = state.incr_counter("seen", 1)?;
/// state.delete("last-user")?;
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct State(());

impl State {
    /// The bytes stored under `key` (a counter reads as 8 big-endian bytes).
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ContextError> {
        host::get_state(key).map_err(Into::into)
    }

    /// The value under `key` as text.
    pub fn get_string(&self, key: &str) -> Result<Option<String>, Error> {
        match self.get(key)? {
            Some(bytes) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| Error::msg(format!("state key `{key}` does not hold UTF-8 text"))),
            None => Ok(None),
        }
    }

    /// Stores `value` under `key`.
    pub fn put(&self, key: &str, value: impl AsRef<[u8]>) -> Result<(), ContextError> {
        host::put_state(key, value.as_ref()).map_err(Into::into)
    }

    /// Removes `key`; an absent key is not an error.
    pub fn delete(&self, key: &str) -> Result<(), ContextError> {
        host::delete_state(key).map_err(Into::into)
    }

    /// Adds `amount` to the counter `key` (created at zero) and returns the new value.
    pub fn incr_counter(&self, key: &str, amount: i64) -> Result<i64, ContextError> {
        host::incr_counter(key, amount).map_err(Into::into)
    }

    /// The counter `key`; an absent counter is zero.
    pub fn get_counter(&self, key: &str) -> Result<i64, ContextError> {
        host::get_counter(key).map_err(Into::into)
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
    message: Message,
}

impl Context {
    /// The current message's key, properties, times, id and topic.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The function's state table.
    pub fn state(&self) -> State {
        State(())
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
            host::log(level.into(), &message.to_string());
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
        static MIN_LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
        level >= *MIN_LEVEL.get_or_init(|| Level::from(host::min_log_level()))
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
        host::publish(topic, &message.value, message.key.as_deref(), &message.properties).map_err(Into::into)
    }

    /// Acknowledges the current message (meaningful under the MANUAL processing guarantee).
    pub fn ack(&mut self) {
        host::ack();
    }

    /// Records one observation of a user metric.
    pub fn record_metric(&self, name: &str, value: f64) {
        host::record_metric(name, value);
    }

    /// One user config value, decoded from JSON into `T`; `None` if the key is absent.
    pub fn user_config<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        match host::user_config_value(key) {
            Some(json) => serde_json::from_str(&json)
                .map(Some)
                .map_err(|error| Error::msg(format!("user config `{key}` has an unexpected type: {error}"))),
            None => Ok(None),
        }
    }

    /// The whole user config, each value as JSON.
    pub fn user_config_map(&self) -> Vec<(String, serde_json::Value)> {
        host::user_config_map()
            .into_iter()
            .map(|(key, json)| {
                let value = serde_json::from_str(&json).unwrap_or(serde_json::Value::String(json));
                (key, value)
            })
            .collect()
    }

    /// A secret by name.
    pub fn secret(&self, name: &str) -> Option<String> {
        host::secret(name)
    }

    /// Who the function and this instance are.
    pub fn identity(&self) -> Identity {
        let raw = host::get_identity();
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
        host::input_topics()
    }

    /// The fully qualified name of the output topic, if any.
    pub fn output_topic(&self) -> Option<String> {
        host::output_topic()
    }
}
