//! What runs a function over a batch: a wasm instance or a native function, and the rest an
//! instance takes after a system exception.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::context::{MessageContext, Outcome};
use crate::limits::{COOL_DOWN_MEMORY_MS, MAX_COOL_DOWN_FACTOR, MAX_COOL_DOWN_MS};
use crate::runtime::{
    FunctionDetails, GuestMessage, GuestReads, GuestWindow, Instance, InstanceLimits, PreparedFunction, ProcessError,
};

/// Something that processes messages with a [`MessageContext`]: a wasm instance or a native function.
pub trait Executor: Send {
    /// Processes the messages of `batch` in `call`, in order, stopping after the first that
    /// fails; returns how each message it reached went (at least one).
    fn process_batch(&mut self, batch: &Arc<[GuestMessage]>, call: Range<usize>) -> Vec<Outcome>;
    /// The context the executor's effects are gathered in.
    fn context(&mut self) -> &mut MessageContext;
    /// How many times the executor was restarted after a system exception.
    fn restarts(&self) -> u64 {
        0
    }
    /// The rest the latest system exception cost the instance, once, for its log line; the rest
    /// itself is [`Executor::resting_until`].
    fn take_rest(&mut self) -> Option<Rest> {
        None
    }
    /// Until when the instance rests, so that a function that keeps trapping or running out of
    /// time cannot keep a core from its neighbours: its next call waits for it.
    fn resting_until(&self) -> Option<Instant> {
        None
    }
    /// Runs a window function on the records of `window`; its context calls go to [`Executor::context`].
    fn process_window(
        &mut self,
        _window: GuestWindow,
        _records: &[GuestMessage],
    ) -> Result<Option<Vec<u8>>, ProcessError> {
        Err(ProcessError::System("this executor runs message functions, not window functions".into()))
    }
    /// A window function's own event time for each of `records`, where it reads one from them.
    fn event_times(&mut self, records: &[GuestMessage]) -> Result<Vec<Option<u64>>, ProcessError> {
        Ok(vec![None; records.len()])
    }
}

/// The rests an instance owes after system exceptions.
///
/// After a system exception that is the n-th within [`COOL_DOWN_MEMORY_MS`], the instance rests
/// 2^(n-1) times as long as the failed message ran, at most [`MAX_COOL_DOWN_FACTOR`] times and
/// [`MAX_COOL_DOWN_MS`]: a function that keeps failing that way gets an ever smaller share of a
/// core, even when it succeeds in between, and one that fails now and then hardly notices.
#[derive(Debug, Default)]
pub(super) struct CoolDown {
    /// When the latest system exceptions within [`COOL_DOWN_MEMORY_MS`] happened, oldest first.
    recent: VecDeque<Instant>,
    /// The latest rest, until it is reported.
    owed: Option<Rest>,
    /// When the latest rest ends.
    until: Option<Instant>,
}

impl CoolDown {
    /// Notes a system exception at `now` from a message that ran for `ran`, and owes its rest.
    fn failed(&mut self, ran: Duration, now: Instant) {
        let memory = Duration::from_millis(COOL_DOWN_MEMORY_MS);
        // Only as many failures as it takes to reach the largest factor are worth keeping.
        let kept = MAX_COOL_DOWN_FACTOR.ilog2() as usize + 1;
        while self.recent.front().is_some_and(|&failed| now.saturating_duration_since(failed) > memory)
            || self.recent.len() >= kept
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        let factor = (1u32 << (self.recent.len() - 1)).min(MAX_COOL_DOWN_FACTOR);
        let duration = ran.saturating_mul(factor).min(Duration::from_millis(MAX_COOL_DOWN_MS));
        self.owed = Some(Rest { duration, factor });
        self.until = Some(now + duration);
    }
}

/// A rest an instance takes before its next call, after a system exception.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rest {
    /// How long.
    pub duration: Duration,
    /// How many times as long as the failed message ran.
    pub factor: u32,
}

impl std::fmt::Display for Rest {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "the instance rests {:?} ({}x the failed message's time; see MAX_COOL_DOWN_FACTOR)",
            self.duration, self.factor
        )
    }
}

/// Runs a wasm component, replacing its instance after every trap, and resting after each
/// system exception (see [`MAX_COOL_DOWN_FACTOR`]).
pub struct WasmExecutor {
    function: PreparedFunction<MessageContext>,
    details: Arc<FunctionDetails>,
    limits: InstanceLimits,
    instance: Option<Instance<MessageContext>>,
    /// The context while no instance holds it (after an instantiation failed).
    parked: Option<MessageContext>,
    restarts: u64,
    cool_down: CoolDown,
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
        Ok(Self {
            function,
            details,
            limits,
            instance: Some(instance),
            parked: None,
            restarts: 0,
            cool_down: CoolDown::default(),
        })
    }

    /// Makes one call into the instance, starting one first if the last was lost, and replacing
    /// it after a system exception.
    fn call<T>(
        &mut self,
        call: impl FnOnce(&mut Instance<MessageContext>) -> Result<T, ProcessError>,
    ) -> Result<T, ProcessError> {
        if self.instance.is_none() {
            self.replace_instance();
        }
        let started = Instant::now();
        let result = match self.instance.as_mut() {
            Some(instance) => call(instance),
            None => Err(ProcessError::System("the instance could not be restarted".into())),
        };
        if matches!(result, Err(ProcessError::System(_))) {
            self.cool_down.failed(started.elapsed(), Instant::now());
            if self.instance.is_some() {
                self.replace_instance();
            }
        }
        result
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
                tracing::error!("cannot restart an instance of {}: {error}", context.fqfn());
                self.parked = Some(context);
            }
        }
    }
}

impl Executor for WasmExecutor {
    fn process_batch(&mut self, batch: &Arc<[GuestMessage]>, call: Range<usize>) -> Vec<Outcome> {
        if self.instance.is_none() {
            self.replace_instance();
        }
        self.context().begin_call(batch, call.clone());
        let failure = match self.instance.as_mut() {
            Some(instance) => instance.process_batch(&batch[call]).err(),
            None => Some(ProcessError::System("the instance could not be restarted".into())),
        };
        if let Some(error) = failure {
            // The failure belongs to the first message the function did not finish.
            let context = self.context();
            context.end_message(Err(error), Instant::now(), GuestReads::default());
            let ran = context.last_outcome().map_or(Duration::ZERO, |outcome| outcome.elapsed);
            self.cool_down.failed(ran, Instant::now());
            if self.instance.is_some() {
                self.replace_instance();
            }
        }
        self.context().take_outcomes()
    }

    fn take_rest(&mut self) -> Option<Rest> {
        self.cool_down.owed.take()
    }

    fn resting_until(&self) -> Option<Instant> {
        self.cool_down.until
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

    fn process_window(
        &mut self,
        window: GuestWindow,
        records: &[GuestMessage],
    ) -> Result<Option<Vec<u8>>, ProcessError> {
        self.call(|instance| instance.process_window(window, records))
    }

    fn event_times(&mut self, records: &[GuestMessage]) -> Result<Vec<Option<u64>>, ProcessError> {
        self.call(|instance| instance.event_times(records))
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
    F: FnMut(&GuestMessage, &mut MessageContext) -> Result<Option<Vec<u8>>, String> + Send,
{
    fn process_batch(&mut self, batch: &Arc<[GuestMessage]>, call: Range<usize>) -> Vec<Outcome> {
        self.context.begin_call(batch, call.clone());
        for message in &batch[call] {
            let result = (self.function)(message, &mut self.context).map_err(ProcessError::User);
            if !self.context.end_message(result, Instant::now(), GuestReads::default()) {
                break;
            }
        }
        self.context.take_outcomes()
    }

    fn context(&mut self) -> &mut MessageContext {
        &mut self.context
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_system_exception_within_the_memory_doubles_the_rest_up_to_its_limits() {
        let mut cool_down = CoolDown::default();
        let start = Instant::now();
        let ran = Duration::from_millis(10);
        let mut factors = Vec::new();
        for failure in 0..9u64 {
            cool_down.failed(ran, start + Duration::from_secs(failure));
            let rest = cool_down.owed.take().unwrap();
            assert_eq!(rest.duration, ran * rest.factor);
            factors.push(rest.factor);
        }
        assert_eq!(factors, [1, 2, 4, 8, 16, 32, 64, 64, 64]);
        assert!(cool_down.owed.is_none(), "a rest is owed once");

        // Failures older than the memory no longer count.
        cool_down.failed(ran, start + Duration::from_secs(9) + Duration::from_millis(COOL_DOWN_MEMORY_MS));
        assert_eq!(cool_down.owed.map(|rest| rest.factor), Some(1));

        // However long the failed message ran, the rest has a ceiling.
        cool_down.failed(Duration::from_secs(3_600), start + Duration::from_secs(200));
        assert_eq!(cool_down.owed.map(|rest| rest.duration), Some(Duration::from_millis(MAX_COOL_DOWN_MS)));
    }
}
