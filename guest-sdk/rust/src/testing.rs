//! Unit-test functions natively, with `cargo test`: a [`MockContext`] is a host in memory that
//! runs a [`Function`] on one message at a time and keeps what it did to inspect.
//!
//! ```
//! use fnhost_guest::testing::MockContext;
//! use fnhost_guest::{Context, Error, Function};
//!
//! #[derive(Default)]
//! struct Counter;
//!
//! impl Function for Counter {
//!     type Input = String;
//!     type Output = String;
//!
//!     fn process(&mut self, word: String, ctx: &mut Context) -> Result<String, Error> {
//!         Ok(ctx.state().incr_counter(&word, 1)?.to_string())
//!     }
//! }
//!
//! let mut context = MockContext::new();
//! let mut counter = Counter;
//! let counts: Vec<_> = ["a", "b", "a"].into_iter().map(|word| context.process(&mut counter, word).unwrap()).collect();
//! assert_eq!(counts, [Some(b"1".to_vec()), Some(b"1".to_vec()), Some(b"2".to_vec())]);
//! assert_eq!(context.counter("a"), Some(2));
//! ```
//!
//! As on the host, a message whose `process` fails leaves no state change, publish or
//! acknowledgement behind (its log lines and metrics stay), and the error reaches the test.
//! The mock does not apply the host's limits (key and value sizes, publishes per message).
//!
//! State with a time to live expires by the mock's clock, which only the test moves:
//!
//! ```
//! use std::time::Duration;
//! use fnhost_guest::testing::MockContext;
//! use fnhost_guest::{Context, Error, Function};
//!
//! #[derive(Default)]
//! struct Remember;
//!
//! impl Function for Remember {
//!     type Input = String;
//!     type Output = ();
//!
//!     fn process(&mut self, user: String, ctx: &mut Context) -> Result<(), Error> {
//!         Ok(ctx.put_state_ttl(&user, "seen", Duration::from_secs(3600))?)
//!     }
//! }
//!
//! let mut context = MockContext::new();
//! context.process(&mut Remember, "ann").unwrap();
//! context.advance_clock(Duration::from_secs(3599));
//! assert!(context.state("ann").is_some());
//! context.advance_clock(Duration::from_secs(1));
//! assert!(context.state("ann").is_none(), "expired after its hour");
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use serde::Serialize;

use crate::context::Backend;
use crate::{Context, ContextError, Error, Function, Identity, Input, Level, Message, Outgoing, Output};

/// A value in the mock's state table.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Stored {
    Bytes(Vec<u8>),
    Counter(i64),
}

/// The host a [`MockContext`] stands for: what the [`Context`] of a function under test reads
/// and changes.
#[derive(Debug)]
pub(crate) struct MockHost {
    /// Each key's value, and when it expires (milliseconds on `now_ms`'s clock).
    state: BTreeMap<String, (Stored, Option<u64>)>,
    /// The mock's clock, in milliseconds: starts at 0, and only the test moves it.
    now_ms: u64,
    /// The time to live of a write that gives none (`--state-ttl`).
    state_ttl: Option<Duration>,
    pub(crate) published: Vec<(String, Outgoing)>,
    pub(crate) logs: Vec<(Level, String)>,
    pub(crate) metrics: BTreeMap<String, Vec<f64>>,
    pub(crate) acked: usize,
    pub(crate) log_level: Level,
    pub(crate) user_config: BTreeMap<String, String>,
    pub(crate) secrets: BTreeMap<String, String>,
    pub(crate) identity: Identity,
    pub(crate) input_topics: Vec<String>,
    pub(crate) output_topic: Option<String>,
}

impl MockHost {
    /// The value under `key`, unless it has expired.
    fn live(&self, key: &str) -> Option<&Stored> {
        match self.state.get(key) {
            Some((_, Some(expires_at))) if *expires_at <= self.now_ms => None,
            Some((stored, _)) => Some(stored),
            None => None,
        }
    }

    fn expiry(&self, ttl: Option<Duration>) -> Option<u64> {
        ttl.or(self.state_ttl).map(|ttl| self.now_ms.saturating_add(ttl.as_millis() as u64))
    }

    pub(crate) fn get_state(&self, key: &str) -> Result<Option<Vec<u8>>, ContextError> {
        Ok(match self.live(key) {
            Some(Stored::Bytes(bytes)) => Some(bytes.clone()),
            Some(Stored::Counter(value)) => Some(value.to_be_bytes().to_vec()),
            None => None,
        })
    }

    pub(crate) fn put_state(&mut self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), ContextError> {
        if let Some(Stored::Counter(_)) = self.live(key) {
            return Err(ContextError::WrongKind(format!("the state under `{key}` is a counter; use incr_counter")));
        }
        if ttl.is_some_and(|ttl| ttl.is_zero()) {
            return Err(ContextError::InvalidArgument("a time to live of 0 ms is out of range".into()));
        }
        let expires_at = self.expiry(ttl);
        self.state.insert(key.to_owned(), (Stored::Bytes(value.to_vec()), expires_at));
        Ok(())
    }

    pub(crate) fn delete_state(&mut self, key: &str) {
        self.state.remove(key);
    }

    pub(crate) fn incr_counter(&mut self, key: &str, amount: i64) -> Result<i64, ContextError> {
        let value = self.get_counter(key)?.wrapping_add(amount);
        let expires_at = self.expiry(None);
        self.state.insert(key.to_owned(), (Stored::Counter(value), expires_at));
        Ok(value)
    }

    pub(crate) fn list_keys(&self, prefix: &str, after: Option<&str>, limit: u32) -> Result<Vec<String>, ContextError> {
        if !(1..=1_000).contains(&limit) {
            return Err(ContextError::LimitExceeded(format!(
                "a page of {limit} keys was asked for; give from 1 to 1000 (MAX_STATE_KEYS_LISTED)"
            )));
        }
        Ok(self
            .state
            .range(after.unwrap_or(prefix).to_owned()..)
            .map(|(key, _)| key)
            .skip_while(|key| after.is_some_and(|after| key.as_str() == after))
            .take_while(|key| key.starts_with(prefix))
            .filter(|key| self.live(key).is_some())
            .take(limit as usize)
            .cloned()
            .collect())
    }

    pub(crate) fn get_counter(&self, key: &str) -> Result<i64, ContextError> {
        match self.live(key) {
            Some(Stored::Counter(value)) => Ok(*value),
            Some(Stored::Bytes(_)) => {
                Err(ContextError::WrongKind(format!("the state under `{key}` holds bytes, not a counter")))
            }
            None => Ok(0),
        }
    }
}

/// A message a function published, as a [`MockContext`] kept it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// The topic, as the function named it.
    pub topic: String,
    /// The value.
    pub value: Vec<u8>,
    /// The key, if any.
    pub key: Option<String>,
    /// The properties, in order.
    pub properties: Vec<(String, String)>,
}

/// A host in memory for unit tests: runs a function on one message at a time, as the host
/// would, and keeps its state, publishes, log lines, metrics and acknowledgements.
#[derive(Debug)]
pub struct MockContext {
    host: Rc<RefCell<MockHost>>,
    /// Numbers the messages it runs, as their ids.
    next_id: u64,
}

impl Default for MockContext {
    fn default() -> Self {
        Self::new()
    }
}

impl MockContext {
    /// A mock of function `public/default/function`, instance 0 of 1, reading
    /// `persistent://public/default/input`, with no output topic, user config or secrets, and
    /// every log level recorded.
    pub fn new() -> Self {
        let identity = Identity {
            tenant: "public".into(),
            namespace: "default".into(),
            name: "function".into(),
            function_id: "public/default/function".into(),
            function_version: "0".repeat(64),
            instance_id: 0,
            num_instances: 1,
        };
        let host = MockHost {
            state: BTreeMap::new(),
            now_ms: 0,
            state_ttl: None,
            published: Vec::new(),
            logs: Vec::new(),
            metrics: BTreeMap::new(),
            acked: 0,
            log_level: Level::Trace,
            user_config: BTreeMap::new(),
            secrets: BTreeMap::new(),
            identity,
            input_topics: vec!["persistent://public/default/input".into()],
            output_topic: None,
        };
        Self { host: Rc::new(RefCell::new(host)), next_id: 0 }
    }

    /// Sets a user config value (`--user-config`), as the function reads it with
    /// [`Context::user_config`].
    pub fn with_user_config(self, key: &str, value: impl Serialize) -> Self {
        let json = serde_json::to_string(&value).expect("a user config value encodes as JSON");
        self.host.borrow_mut().user_config.insert(key.to_owned(), json);
        self
    }

    /// Sets a secret.
    pub fn with_secret(self, name: &str, value: &str) -> Self {
        self.host.borrow_mut().secrets.insert(name.to_owned(), value.to_owned());
        self
    }

    /// Records log lines at `level` and above only, as `--log-level` does on the host.
    pub fn with_log_level(self, level: Level) -> Self {
        self.host.borrow_mut().log_level = level;
        self
    }

    /// Sets who the function and the instance are.
    pub fn with_identity(self, identity: Identity) -> Self {
        self.host.borrow_mut().identity = identity;
        self
    }

    /// Sets the output topic the function reports.
    pub fn with_output_topic(self, topic: &str) -> Self {
        self.host.borrow_mut().output_topic = Some(topic.to_owned());
        self
    }

    /// Stores `value` under `key` before the function runs.
    pub fn with_state(self, key: &str, value: impl Into<Vec<u8>>) -> Self {
        self.host.borrow_mut().state.insert(key.to_owned(), (Stored::Bytes(value.into()), None));
        self
    }

    /// Gives every write that names no time to live this one, as `--state-ttl` does on the host.
    pub fn with_state_ttl(self, ttl: Duration) -> Self {
        self.host.borrow_mut().state_ttl = Some(ttl);
        self
    }

    /// Moves the mock's clock forward: state whose time to live has passed reads as absent.
    /// (The clock starts at 0 and moves only when the test moves it; on the host a time to
    /// live counts from the commit of the write.)
    pub fn advance_clock(&mut self, by: Duration) {
        let mut host = self.host.borrow_mut();
        host.now_ms = host.now_ms.saturating_add(by.as_millis() as u64);
    }

    /// Runs `function` on a message with this value, and returns what it writes to the output
    /// topic (`None` for nothing), or its error.
    pub fn process<F: Function>(
        &mut self,
        function: &mut F,
        value: impl Into<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, Error> {
        self.process_message(function, Outgoing::new(value))
    }

    /// Runs `function` on a message with a key and properties.
    pub fn process_message<F: Function>(
        &mut self,
        function: &mut F,
        incoming: Outgoing,
    ) -> Result<Option<Vec<u8>>, Error> {
        let topic = self.host.borrow().input_topics[0].clone();
        let message = Message {
            partition_key: incoming.key.clone(),
            key: incoming.key,
            properties: incoming.properties,
            event_time: None,
            publish_time: 0,
            id: format!("0:{}", self.next_id),
            topic,
        };
        self.next_id += 1;
        let before = {
            let host = self.host.borrow();
            (host.state.clone(), host.published.len(), host.acked)
        };
        let mut context =
            Context { message, backend: Backend::Mock(self.host.clone()), min_level: std::cell::OnceCell::new() };
        let result = F::Input::decode(incoming.value)
            .and_then(|input| function.process(input, &mut context))
            .and_then(Output::encode);
        if result.is_err() {
            let mut host = self.host.borrow_mut();
            let (state, published, acked) = before;
            host.state = state;
            host.published.truncate(published);
            host.acked = acked;
        }
        result
    }

    /// The bytes under `key` (a counter as 8 big-endian bytes, as the host gives it).
    pub fn state(&self, key: &str) -> Option<Vec<u8>> {
        self.host.borrow().get_state(key).ok().flatten()
    }

    /// The counter under `key`, if it is one.
    pub fn counter(&self, key: &str) -> Option<i64> {
        match self.host.borrow().live(key) {
            Some(Stored::Counter(value)) => Some(*value),
            _ => None,
        }
    }

    /// Every message published, in order.
    pub fn published(&self) -> Vec<Published> {
        let host = self.host.borrow();
        host.published
            .iter()
            .map(|(topic, message)| Published {
                topic: topic.clone(),
                value: message.value.clone(),
                key: message.key.clone(),
                properties: message.properties.clone(),
            })
            .collect()
    }

    /// Every log line recorded, in order.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.host.borrow().logs.clone()
    }

    /// Every observation of the metric `name`, in order.
    pub fn metric(&self, name: &str) -> Vec<f64> {
        self.host.borrow().metrics.get(name).cloned().unwrap_or_default()
    }

    /// How many times the function acknowledged a message.
    pub fn acked(&self) -> usize {
        self.host.borrow().acked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Json;

    /// Stores its input, publishes it, then fails on `fail`.
    #[derive(Default)]
    struct Keeper;

    impl Function for Keeper {
        type Input = String;
        type Output = Option<Json<usize>>;

        fn process(&mut self, input: String, ctx: &mut Context) -> Result<Self::Output, Error> {
            ctx.ack();
            ctx.state().put(&input, "seen")?;
            ctx.publish("copies", input.clone())?;
            ctx.info(format_args!("kept {input}"));
            ctx.record_metric("length", input.len() as f64);
            if input == "fail" {
                return Err(Error::msg("asked to fail"));
            }
            Ok(Some(Json(input.len())))
        }
    }

    #[test]
    fn a_failed_message_leaves_no_state_publish_or_acknowledgement_behind() {
        let mut context = MockContext::new();
        let mut keeper = Keeper;
        assert_eq!(context.process(&mut keeper, "abc").unwrap(), Some(b"3".to_vec()));
        let error = context.process(&mut keeper, "fail").unwrap_err();
        assert_eq!(error.to_string(), "asked to fail");
        assert_eq!(context.state("abc"), Some(b"seen".to_vec()));
        assert_eq!(context.state("fail"), None);
        let published = context.published();
        assert_eq!(published.len(), 1);
        assert_eq!((published[0].topic.as_str(), published[0].value.as_slice()), ("copies", b"abc".as_slice()));
        assert_eq!(context.acked(), 1);
        // Log lines and metrics stay, as on the host.
        assert_eq!(context.logs().len(), 2);
        assert_eq!(context.metric("length"), [3.0, 4.0]);
    }

    #[test]
    fn counters_and_bytes_are_different_kinds_as_on_the_host() {
        let context = MockContext::new().with_state("bytes", "x");
        let mut host = context.host.borrow_mut();
        assert!(matches!(host.incr_counter("bytes", 1), Err(ContextError::WrongKind(_))));
        assert_eq!(host.incr_counter("n", 5).unwrap(), 5);
        assert!(matches!(host.put_state("n", b"y", None), Err(ContextError::WrongKind(_))));
        assert_eq!(host.get_state("n").unwrap(), Some(5i64.to_be_bytes().to_vec()));
    }

    #[test]
    fn the_log_level_and_user_config_are_the_mocks() {
        #[derive(Default)]
        struct Greeter;
        impl Function for Greeter {
            type Input = String;
            type Output = String;
            fn process(&mut self, name: String, ctx: &mut Context) -> Result<String, Error> {
                ctx.debug("dropped below info");
                let greeting: String = ctx.user_config("greeting")?.unwrap_or_default();
                Ok(format!("{greeting}, {name}"))
            }
        }
        let mut context = MockContext::new().with_log_level(Level::Info).with_user_config("greeting", "hello");
        assert_eq!(context.process(&mut Greeter, "ada").unwrap(), Some(b"hello, ada".to_vec()));
        assert!(context.logs().is_empty());
    }
}
