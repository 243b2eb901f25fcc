//! The function's state table, as [`Context::state`](crate::Context::state) gives it.

use std::time::Duration;

use crate::__private::bindings::fnhost::function::context as host;
use crate::context::Backend;
use crate::{ContextError, Error};

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
#[derive(Clone, Debug)]
pub struct State(pub(crate) Backend);

impl State {
    /// The bytes stored under `key` (a counter reads as 8 big-endian bytes).
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ContextError> {
        match &self.0 {
            Backend::Host => host::get_state(key).map_err(Into::into),
            Backend::Mock(mock) => mock.borrow().get_state(key),
        }
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

    /// Stores `value` under `key` (to expire after the function's `--state-ttl`, if it has one).
    pub fn put(&self, key: &str, value: impl AsRef<[u8]>) -> Result<(), ContextError> {
        match &self.0 {
            Backend::Host => host::put_state(key, value.as_ref()).map_err(Into::into),
            Backend::Mock(mock) => mock.borrow_mut().put_state(key, value.as_ref(), None),
        }
    }

    /// Stores `value` under `key` for `ttl` from the commit of this message (whole milliseconds,
    /// at least one, at most ten years): then the key reads as absent, and the host deletes it.
    /// Writing the key again before then gives it a new life.
    ///
    /// ```no_run
    /// # fn f(ctx: &mut fnhost_guest::Context) -> Result<(), fnhost_guest::Error> {
    /// // A login that no logout follows is forgotten after an hour.
    /// ctx.state().put_with_ttl("user123", "1700000000000", std::time::Duration::from_secs(3600))?;
    /// # Ok(()) }
    /// ```
    pub fn put_with_ttl(&self, key: &str, value: impl AsRef<[u8]>, ttl: Duration) -> Result<(), ContextError> {
        match &self.0 {
            Backend::Host => {
                let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                host::put_state_ttl(key, value.as_ref(), ttl_ms).map_err(Into::into)
            }
            Backend::Mock(mock) => mock.borrow_mut().put_state(key, value.as_ref(), Some(ttl)),
        }
    }

    /// One page of the keys that start with `prefix`, in byte order: those after `after` (none:
    /// from the first), at most `limit` (1 to 1,000). Expired keys are not listed. [`State::keys`]
    /// pages through them all.
    pub fn list_keys(&self, prefix: &str, after: Option<&str>, limit: u32) -> Result<Vec<String>, ContextError> {
        match &self.0 {
            Backend::Host => host::list_state_keys(prefix, after, limit).map_err(Into::into),
            Backend::Mock(mock) => mock.borrow().list_keys(prefix, after, limit),
        }
    }

    /// Every key that starts with `prefix`, in byte order, fetched a page at a time.
    ///
    /// ```no_run
    /// # fn f(ctx: &mut fnhost_guest::Context) -> Result<(), fnhost_guest::Error> {
    /// for key in ctx.state().keys("session/") {
    ///     ctx.info(format_args!("open session {}", key?));
    /// }
    /// # Ok(()) }
    /// ```
    pub fn keys(&self, prefix: &str) -> Keys {
        Keys { state: self.clone(), prefix: prefix.to_owned(), page: Vec::new().into_iter(), after: None, done: false }
    }

    /// Removes `key`; an absent key is not an error.
    pub fn delete(&self, key: &str) -> Result<(), ContextError> {
        match &self.0 {
            Backend::Host => host::delete_state(key).map_err(Into::into),
            Backend::Mock(mock) => {
                mock.borrow_mut().delete_state(key);
                Ok(())
            }
        }
    }

    /// Adds `amount` to the counter `key` (created at zero) and returns the new value.
    pub fn incr_counter(&self, key: &str, amount: i64) -> Result<i64, ContextError> {
        match &self.0 {
            Backend::Host => host::incr_counter(key, amount).map_err(Into::into),
            Backend::Mock(mock) => mock.borrow_mut().incr_counter(key, amount),
        }
    }

    /// The counter `key`; an absent counter is zero.
    pub fn get_counter(&self, key: &str) -> Result<i64, ContextError> {
        match &self.0 {
            Backend::Host => host::get_counter(key).map_err(Into::into),
            Backend::Mock(mock) => mock.borrow().get_counter(key),
        }
    }
}

/// The keys of [`State::keys`], a page at a time.
#[derive(Debug)]
pub struct Keys {
    state: State,
    prefix: String,
    page: std::vec::IntoIter<String>,
    after: Option<String>,
    done: bool,
}

/// Keys a page of [`State::keys`] asks for.
const KEYS_PER_PAGE: u32 = 1_000;

impl Iterator for Keys {
    type Item = Result<String, ContextError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(key) = self.page.next() {
            self.after = Some(key.clone());
            return Some(Ok(key));
        }
        if self.done {
            return None;
        }
        match self.state.list_keys(&self.prefix, self.after.as_deref(), KEYS_PER_PAGE) {
            Ok(page) => {
                self.done = page.len() < KEYS_PER_PAGE as usize;
                self.page = page.into_iter();
                let key = self.page.next()?;
                self.after = Some(key.clone());
                Some(Ok(key))
            }
            Err(error) => {
                self.done = true;
                Some(Err(error))
            }
        }
    }
}
