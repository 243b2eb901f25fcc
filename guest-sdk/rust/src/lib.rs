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
                "fnhost:function/types@0.3.1": super::bindings::fnhost::function::types,
                "fnhost:function/context@0.3.1": super::bindings::fnhost::function::context,
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
        let mut context = Context::on_host(newest.unwrap_or_default());
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
        let mut context = Context::on_host(message);
        function.process(input, &mut context).and_then(Output::encode).map_err(|error| error.to_string())
    }
}

mod context;
mod state;
pub mod testing;

pub use context::{Context, ContextError, Identity, Level, Message, Outgoing};
pub use state::{Keys, State};

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
