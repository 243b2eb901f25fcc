//! A running instance: its store and entry points, the per-message time limit, and traps
//! turned into readable system exceptions.

use std::time::{Duration, Instant};

use wasmtime::component::Func;
use wasmtime::{Store, Trap};

use super::store::{MemoryLimitExceeded, StoreData};
use super::{EPOCH_TICK, HostContext, PROCESS_WINDOW, ProcessError, STOP_CHECK_TICKS};
use super::{GuestMessage, GuestWindow, bindings};

/// Epoch ticks that cover `time`, plus one because the first tick may come at once.
pub(super) fn ticks(time: Duration) -> u64 {
    time.as_millis().div_ceil(EPOCH_TICK.as_millis()).max(1) as u64 + 1
}

/// The ticks until the store next looks at the clock and the stop flag.
pub(super) fn next_check(time_left: Duration) -> u64 {
    ticks(time_left).min(STOP_CHECK_TICKS)
}

/// One instance of a function: its own store, memory and limits.
pub struct Instance<H: 'static> {
    pub(super) store: Store<StoreData<H>>,
    pub(super) exports: Exports,
    pub(super) timeout: Duration,
}

/// An instance's entry points, by the world its component was built for.
pub(super) enum Exports {
    Batch(bindings::Function),
    Window { process_window: Func, event_times: Option<Func> },
}

/// What `process-window` returns.
pub(super) type WindowResult = (Result<Option<Vec<u8>>, String>,);

impl<H: HostContext> Instance<H> {
    /// Runs the function on a batch of messages. It finishes them in order, each through
    /// [`HostContext::finish_message`], until they run out or the context says to stop.
    ///
    /// [`ProcessError::System`] (a trap, a time or memory limit, or a return before the function
    /// finished its messages) concerns the first message not yet finished. After it the instance
    /// must not be used again: take its context back with [`Instance::into_host`] and instantiate
    /// a new one.
    pub fn process_batch(&mut self, messages: &[GuestMessage]) -> Result<(), ProcessError> {
        let Exports::Batch(bindings) = &self.exports else {
            return Err(ProcessError::System(format!(
                "a window function exports `{PROCESS_WINDOW}`, not process-batch: give it window settings (--window-length-count or --window-length-duration-ms)"
            )));
        };
        let data = self.store.data_mut();
        data.unfinished = messages.len();
        data.batch_len = messages.len();
        data.environment.begin_batch(messages);
        data.message_deadline = Instant::now() + self.timeout;
        self.store.set_epoch_deadline(next_check(self.timeout));
        let result = match bindings.call_process_batch(&mut self.store, messages) {
            Ok(()) if self.store.data().unfinished == 0 => Ok(()),
            Ok(()) => Err(ProcessError::System(
                "the function returned from process-batch without finishing every message; call finish-message once per message".into(),
            )),
            // Described before the guest's output is forwarded, which drains the panic message.
            Err(error) => Err(ProcessError::System(describe_trap(&error, &self.store, self.timeout))),
        };
        self.store.data_mut().forward_guest_output();
        result
    }

    /// Runs a window function on the records of `window`, oldest first, and returns its result.
    /// Context calls during it are the window's effects; the time limit covers the whole call.
    ///
    /// After a [`ProcessError::System`] the instance must not be used again, as for
    /// [`Instance::process_batch`].
    pub fn process_window(
        &mut self,
        window: GuestWindow,
        records: &[GuestMessage],
    ) -> Result<Option<Vec<u8>>, ProcessError> {
        let Exports::Window { process_window, .. } = &self.exports else {
            return Err(ProcessError::System(
                "the function exports process-batch, not process-window: leave out the window settings, or build it as a window function".into(),
            ));
        };
        let data = self.store.data_mut();
        data.unfinished = 0;
        data.message_deadline = Instant::now() + self.timeout;
        self.store.set_epoch_deadline(next_check(self.timeout));
        let called = process_window
            .typed::<(GuestWindow, &[GuestMessage]), WindowResult>(&self.store)
            .and_then(|typed| typed.call(&mut self.store, (window, records)))
            .map(|(result,)| result);
        let result = match called {
            Ok(result) => result.map_err(ProcessError::User),
            Err(error) => Err(ProcessError::System(describe_trap(&error, &self.store, self.timeout))),
        };
        self.store.data_mut().forward_guest_output();
        result
    }

    /// A window function's event times for `records` (none for each record where it has none to
    /// say, or when it does not export `event-times`).
    pub fn event_times(&mut self, records: &[GuestMessage]) -> Result<Vec<Option<u64>>, ProcessError> {
        let Exports::Window { event_times: Some(event_times), .. } = &self.exports else {
            return Ok(vec![None; records.len()]);
        };
        self.store.data_mut().message_deadline = Instant::now() + self.timeout;
        self.store.set_epoch_deadline(next_check(self.timeout));
        let called = event_times
            .typed::<(&[GuestMessage],), (Vec<Option<u64>>,)>(&self.store)
            .and_then(|typed| typed.call(&mut self.store, (records,)))
            .map(|(times,)| times);
        let result = match called {
            Ok(times) if times.len() == records.len() => Ok(times),
            Ok(times) => Err(ProcessError::System(format!(
                "event-times returned {} times for {} records; return one per record",
                times.len(),
                records.len()
            ))),
            Err(error) => Err(ProcessError::System(describe_trap(&error, &self.store, self.timeout))),
        };
        self.store.data_mut().forward_guest_output();
        result
    }

    /// The context, to read or reset what the function did.
    pub fn host_mut(&mut self) -> &mut H {
        &mut self.store.data_mut().host
    }

    /// Ends the instance and returns its context.
    pub fn into_host(self) -> H {
        self.store.into_data().host
    }
}

pub(super) fn describe_trap<H: HostContext>(
    error: &wasmtime::Error,
    store: &Store<StoreData<H>>,
    timeout: Duration,
) -> String {
    if let Some(limit) = error.downcast_ref::<MemoryLimitExceeded>() {
        return limit.to_string();
    }
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) && store.data().host.stop_requested() {
        return "the instance was stopped while the function processed the message".into();
    }
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return format!("processing took longer than the time limit of {} ms (--timeout-ms)", timeout.as_millis());
    }
    // wasmtime's message carries a multi-line backtrace; the trap's own description is the useful part.
    let trap = match error.downcast_ref::<Trap>() {
        // Compilers for wasm keep a stack of their own at the bottom of linear memory: when it
        // overflows, the guest's next access falls below address 0.
        Some(Trap::MemoryOutOfBounds) => format!(
            "{} (the function read or wrote outside its memory; a function whose own stack overflowed, as in deep recursion, ends this way)",
            Trap::MemoryOutOfBounds
        ),
        Some(Trap::StackOverflow) => format!("{} (the function recursed too deeply)", Trap::StackOverflow),
        Some(trap) => trap.to_string(),
        None => format!("{error:#}").lines().map(str::trim).collect::<Vec<_>>().join(" "),
    };
    match store.data().stderr.last_panic() {
        Some(panic) => format!("the function trapped: {panic} ({trap})"),
        None => format!("the function trapped: {trap}"),
    }
}
