//! The instance loop: fetch a batch, process it, commit it, until told to stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use super::executor::Executor;
use super::pending::PendingBatch;
use super::retry::process_batch;
use super::trace;
use super::window_loop;
use crate::engine::broker::{Acks, Broker, BrokerError, FetchWaker, Message, MessageBody, Subscription, message_id};
use crate::engine::state::StateError;
use crate::function::{FunctionConfig, ProcessingGuarantee};
use crate::metrics::{InstanceMetrics, Stats};
use crate::names::TopicName;
use crate::runtime::GuestMessage;

/// How long an idle loop waits for new messages before looking at its stop flag again. A stop
/// through [`RunningInstance`] wakes the fetch at once; a long wait keeps thousands of idle
/// instances from costing CPU.
const IDLE_WAIT: Duration = Duration::from_secs(1);

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

/// The stop flag, and whether another instance of the function failed.
pub(super) struct Halt<'a> {
    pub(super) stop: &'a AtomicBool,
    pub(super) failed: &'a AtomicBool,
}

impl Halt<'_> {
    pub(super) fn halted(&self) -> bool {
        self.stop.load(AtomicOrdering::Relaxed) || self.failed.load(AtomicOrdering::Relaxed)
    }

    /// Waits until the executor's rest is over, or until the instance is halted.
    pub(super) fn rest(&self, executor: &dyn Executor) {
        let Some(until) = executor.resting_until() else { return };
        while !self.halted() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(HALT_CHECK_INTERVAL));
        }
    }
}

/// How often a resting instance checks whether it was told to stop.
const HALT_CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// Runs one loop per executor, each an instance of the function with its own consumer of the
/// function's subscription, until told to stop; returns each instance's stats, in instance order.
///
/// If one instance fails, the others stop and the first error is returned.
pub fn run(
    broker: &dyn Broker,
    config: &FunctionConfig,
    executors: Vec<Box<dyn Executor>>,
    until: RunUntil,
    stop: &AtomicBool,
) -> Result<Vec<Stats>, RunError> {
    let count = executors.len() as u32;
    // Every consumer joins before any fetches, so that the first cannot take what the others would get.
    let consumers = (0..count)
        .map(|instance_id| broker.subscribe(config.subscription_spec(instance_id, count)))
        .collect::<Result<Vec<_>, _>>()?;
    let failed = AtomicBool::new(false);
    let halt = Halt { stop, failed: &failed };
    let halt = &halt;
    std::thread::scope(|scope| {
        let instances: Vec<_> = executors
            .into_iter()
            .zip(consumers)
            .enumerate()
            .map(|(instance_id, (mut executor, consumer))| {
                std::thread::Builder::new()
                    .name(format!("{}#{instance_id}", config.fqfn.name()))
                    .spawn_scoped(scope, move || {
                        let metrics = InstanceMetrics::default();
                        let result = run_instance(consumer.as_ref(), config, executor.as_mut(), &metrics, until, halt);
                        if result.is_err() {
                            halt.failed.store(true, AtomicOrdering::Relaxed);
                        }
                        // The consumer leaves here, so that what it did not acknowledge goes to the others.
                        drop(consumer);
                        result.map(|()| metrics.snapshot())
                    })
                    .expect("the system can start a thread")
            })
            .collect();
        instances
            .into_iter()
            .map(|instance| instance.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    })
}

/// An instance started by [`spawn`]: its thread, and the flag that asks it to stop.
pub struct RunningInstance {
    stop: Arc<AtomicBool>,
    wake: FetchWaker,
    thread: std::thread::JoinHandle<Result<(), RunError>>,
}

impl RunningInstance {
    /// Asks the instance to stop after the batch it is processing; [`RunningInstance::join`] waits for it.
    pub fn request_stop(&self) {
        self.stop.store(true, AtomicOrdering::Relaxed);
        (self.wake)();
    }

    /// True once the instance's loop has ended (stopped or failed).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Stops the instance: it finishes and commits the batch it is processing, then its consumer
    /// leaves the subscription. Returns how its loop ended.
    pub fn stop(self) -> Result<(), RunError> {
        self.request_stop();
        self.join()
    }

    /// Waits for the loop to end and returns how it ended.
    pub fn join(self) -> Result<(), RunError> {
        self.thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

/// Starts one instance on a thread of its own, consuming through `consumer` (which the caller
/// created, so that all of a function's consumers can join before any fetches), until stopped.
pub fn spawn(
    config: Arc<FunctionConfig>,
    instance_id: u32,
    consumer: Box<dyn Subscription>,
    mut executor: Box<dyn Executor>,
    metrics: Arc<InstanceMetrics>,
) -> RunningInstance {
    // The context's flag: a stop both ends the loop and interrupts the guest it is running.
    let stop = executor.context().stop_flag();
    let flag = stop.clone();
    let wake = consumer.waker();
    let thread = std::thread::Builder::new()
        .name(format!("{}#{instance_id}", config.fqfn.name()))
        .spawn(move || {
            let failed = AtomicBool::new(false);
            let halt = Halt { stop: &flag, failed: &failed };
            let span = tracing::info_span!("instance", fqfn = %config.fqfn, instance_id);
            let _entered = span.enter();
            let result =
                run_instance(consumer.as_ref(), &config, executor.as_mut(), &metrics, RunUntil::Stopped, &halt);
            if let Err(error) = &result {
                tracing::error!("instance stopped: {error}");
            }
            result
        })
        .expect("the system can start a thread");
    RunningInstance { stop, wake, thread }
}

/// One instance's loop: fetch, process, commit.
///
/// Under every guarantee but ATMOST_ONCE, a full batch (a backlog) is processed while a second
/// thread commits the previous batch and then fetches the next one, so that neither the commit
/// nor the fetch waits on the processing thread, which bounds the pipeline. Commits stay in fetch
/// order, one at a time; besides the batch being processed, at most one batch is fetched ahead
/// and one is unacknowledged in memory. A loop that stops with a batch fetched ahead gives it back
/// ([`Subscription::release`]).
/// A short batch (the instance keeps up) is committed as soon as it is processed, on this thread:
/// overlapping would make each of its messages wait for the previous batch's commit as well.
/// Under ATMOST_ONCE, the commit that acknowledges a batch also carries the previous batch's
/// effects, and processing waits for it.
pub(super) fn run_instance(
    subscription: &dyn Subscription,
    config: &FunctionConfig,
    executor: &mut dyn Executor,
    metrics: &InstanceMetrics,
    until: RunUntil,
    halt: &Halt<'_>,
) -> Result<(), RunError> {
    if let Some(window) = &config.window {
        return window_loop::run_window_instance(subscription, config, window, executor, metrics, until, halt);
    }
    let at_most_once = config.guarantee == ProcessingGuarantee::AtMostOnce;
    std::thread::scope(|scope| -> Result<(), RunError> {
        let mut ahead: Vec<Message> = Vec::new();
        // The last processed batch's effects and its message count, until a commit takes them.
        let mut uncommitted: Option<(PendingBatch, usize)> = None;
        let mut wait_for_more = until == RunUntil::Stopped;
        while !halt.halted() {
            let messages = if ahead.is_empty() {
                // Never sleep on an empty topic while effects wait to be committed: their
                // acknowledgements and log lines would wait for nothing.
                if let Some((effects, messages)) = uncommitted.take() {
                    let committed = commit(subscription, effects);
                    after_commit(committed, messages, config, executor)?;
                }
                let pending = at_most_once && executor.context().has_batch();
                let wait = if pending || !wait_for_more { Duration::ZERO } else { IDLE_WAIT };
                if !wait.is_zero() {
                    // No commit comes to free them while the instance idles.
                    executor.context().free_retired();
                }
                let messages = subscription.fetch(config.batch_size, wait)?;
                if messages.is_empty() {
                    if pending {
                        commit_now(subscription, Acks::default(), 0, config, executor)?;
                    } else if until == RunUntil::Idle {
                        if subscription.drained() {
                            break;
                        }
                        // Redeliveries or messages held for this instance are still to come.
                        wait_for_more = true;
                    }
                    continue;
                }
                messages
            } else {
                std::mem::take(&mut ahead)
            };
            wait_for_more = until == RunUntil::Stopped;
            if at_most_once {
                commit_now(subscription, Acks::of(&messages), messages.len(), config, executor)?;
                process_batch(messages, config, executor, metrics, halt)?;
                continue;
            }
            let count = messages.len();
            if count < config.batch_size {
                // A short batch means the instance keeps up with its input, so latency matters more
                // than overlap: committing this batch behind the next one's processing (below) would
                // add a commit to the path of every message.
                if let Some((effects, messages)) = uncommitted.take() {
                    let committed = commit(subscription, effects);
                    after_commit(committed, messages, config, executor)?;
                }
                let acks = process_batch(messages, config, executor, metrics, halt)?;
                commit_now(subscription, acks, count, config, executor)?;
                continue;
            }
            let (previous, previous_count) = uncommitted.take().unzip();
            let batch_size = config.batch_size;
            let commit_and_fetch = scope.spawn(move || {
                let committed = previous.map(|effects| commit(subscription, effects));
                let fetched = match committed {
                    Some(Err(_)) => Ok(Vec::new()),
                    _ => subscription.fetch(batch_size, Duration::ZERO),
                };
                (committed, fetched)
            });
            let acks = process_batch(messages, config, executor, metrics, halt);
            let (committed, fetched) = commit_and_fetch.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            if let (Some(committed), Some(messages)) = (committed, previous_count) {
                after_commit(committed, messages, config, executor)?;
            }
            // After the previous batch's commit is settled: a host failure leaves this batch
            // uncommitted, and what was fetched ahead comes again to the instance started next.
            let acks = acks?;
            ahead = fetched?;
            uncommitted = Some((executor.context().take_batch(acks)?, count));
        }
        if let Some((effects, messages)) = uncommitted.take() {
            let committed = commit(subscription, effects);
            after_commit(committed, messages, config, executor)?;
        }
        if executor.context().has_batch() {
            commit_now(subscription, Acks::default(), 0, config, executor)?;
        }
        if !ahead.is_empty() {
            subscription.release(ahead);
        }
        Ok(())
    })
}

/// Commits a batch's effects, then ends its messages' spans (when tracing is on).
fn commit(subscription: &dyn Subscription, mut batch: PendingBatch) -> Result<(), BrokerError> {
    let spans = std::mem::take(&mut batch.spans);
    if spans.is_empty() {
        return subscription.commit(batch.into_effects());
    }
    let started = std::time::SystemTime::now();
    let result = subscription.commit(batch.into_effects());
    trace::committed(spans, started, &result);
    result
}

/// Commits the batch's effects with `acks` (of `messages` messages) on this thread.
pub(super) fn commit_now(
    subscription: &dyn Subscription,
    acks: Acks,
    messages: usize,
    config: &FunctionConfig,
    executor: &mut dyn Executor,
) -> Result<(), RunError> {
    let effects = executor.context().take_batch(acks)?;
    let committed = commit(subscription, effects);
    after_commit(committed, messages, config, executor)
}

/// Writes out the log lines of a batch (of `messages` messages) once its commit has returned `result`.
fn after_commit(
    result: Result<(), BrokerError>,
    messages: usize,
    config: &FunctionConfig,
    executor: &mut dyn Executor,
) -> Result<(), RunError> {
    executor.context().flush_logs();
    result?;
    tracing::debug!(fqfn = %config.fqfn, messages, "committed a batch");
    Ok(())
}

pub(super) fn to_guest(topic: &TopicName, sequence: u64, body: MessageBody) -> GuestMessage {
    GuestMessage {
        value: body.value,
        key: body.key,
        properties: body.properties,
        event_time: body.event_time,
        publish_time: body.publish_time,
        message_id: message_id(sequence),
        topic: topic.as_str().to_owned(),
        partition_key: body.partition_key,
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Range;
    use std::sync::Mutex;

    use super::*;
    use crate::embedded::EmbeddedStore;
    use crate::engine::broker::{Broker, Effects, FetchWaker, OutMessage, Position, SubscriptionSpec};
    use crate::engine::state::StateStore;
    use crate::instance::{LogSink, MessageContext, NativeExecutor, Outcome};
    use crate::names::Fqfn;
    use crate::names::SubscriptionName;

    /// What the loop asked of its subscription, in order.
    #[derive(Debug, PartialEq)]
    enum Call {
        /// A fetch, with the sequences it returned.
        Fetch(Vec<u64>),
        /// A commit, with what it acknowledged.
        Commit(Acks),
    }

    /// A subscription that notes each fetch and commit before passing it on.
    struct Recording {
        inner: Box<dyn Subscription>,
        calls: Mutex<Vec<Call>>,
    }

    impl Recording {
        /// Records a new subscription `s` of `store` to `input`, from its start.
        fn of(store: &EmbeddedStore, input: &TopicName) -> Self {
            let spec = SubscriptionSpec::single(
                vec![input.clone()],
                Some(SubscriptionName::on_topic(input, "s").unwrap()),
                Position::Earliest,
            );
            Self { inner: store.subscribe(spec).unwrap(), calls: Mutex::new(Vec::new()) }
        }
    }

    impl Subscription for Recording {
        fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Message>, BrokerError> {
            let messages = self.inner.fetch(max, wait)?;
            let sequences = messages.iter().map(|message| message.sequence).collect();
            self.calls.lock().unwrap().push(Call::Fetch(sequences));
            Ok(messages)
        }

        fn commit(&self, effects: Effects) -> Result<(), BrokerError> {
            self.calls.lock().unwrap().push(Call::Commit(effects.acks.clone()));
            self.inner.commit(effects)
        }

        fn drained(&self) -> bool {
            self.inner.drained()
        }

        fn release(&self, messages: Vec<Message>) {
            self.inner.release(messages);
        }

        fn waker(&self) -> FetchWaker {
            self.inner.waker()
        }
    }

    fn acks(topic: &TopicName, sequences: Range<u64>) -> Acks {
        let mut acks = Acks::default();
        for sequence in sequences {
            acks.add(topic, sequence);
        }
        acks
    }

    /// Full batches are processed while the previous one commits and the next one is fetched; a
    /// short batch is committed before anything else is fetched, so its messages wait for one
    /// commit only.
    #[test]
    fn full_batches_overlap_their_commits_and_a_short_batch_commits_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let input = TopicName::parse("in").unwrap();
        store.produce(&input, (0..5).map(|n| OutMessage::new(n.to_string().into_bytes())).collect()).unwrap();
        let config =
            FunctionConfig { batch_size: 2, ..FunctionConfig::new(Fqfn::parse("a/b/c").unwrap(), vec![input.clone()]) };
        let context = MessageContext::new(&config, 0, store.table(&config.fqfn).unwrap(), LogSink::default());
        let mut executor = NativeExecutor::new(|_: &GuestMessage, _: &mut MessageContext| Ok(None), context);
        let subscription = Recording::of(&store, &input);
        let stop = AtomicBool::new(false);
        let failed = AtomicBool::new(false);
        let halt = Halt { stop: &stop, failed: &failed };
        run_instance(&subscription, &config, &mut executor, &InstanceMetrics::default(), RunUntil::Idle, &halt)
            .unwrap();

        let expected = vec![
            Call::Fetch(vec![0, 1]),
            // Fetched ahead while [0, 1] is processed.
            Call::Fetch(vec![2, 3]),
            // Committed, and [4] fetched, while [2, 3] is processed.
            Call::Commit(acks(&input, 0..2)),
            Call::Fetch(vec![4]),
            // [4] is short: the batch before it commits, then [4] is processed and committed.
            Call::Commit(acks(&input, 2..4)),
            Call::Commit(acks(&input, 4..5)),
            Call::Fetch(vec![]),
        ];
        assert_eq!(subscription.calls.into_inner().unwrap(), expected);
    }

    /// A state table whose storage has failed.
    struct FailedStorage;

    impl crate::engine::state::StateTable for FailedStorage {
        fn get(&self, _key: &str) -> Result<Option<crate::engine::state::Versioned>, StateError> {
            Err(StateError::Storage("the disk is gone".into()))
        }

        fn list(&self, _page: &crate::engine::state::KeyPage) -> Result<Vec<String>, StateError> {
            Err(StateError::Storage("the disk is gone".into()))
        }
    }

    /// A state read that fails is the host's failure, not the message's: the instance stops with
    /// nothing of the batch committed, rather than trying the message and dead-lettering it.
    #[test]
    fn a_storage_failure_stops_the_instance_uncommitted_and_dead_letters_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let input = TopicName::parse("in").unwrap();
        store.produce(&input, (0..3).map(|n| OutMessage::new(n.to_string().into_bytes())).collect()).unwrap();
        let config = FunctionConfig::new(Fqfn::parse("a/b/c").unwrap(), vec![input.clone()]);
        let context = MessageContext::new(&config, 0, Box::new(FailedStorage), LogSink::default());
        let mut executor = NativeExecutor::new(
            |message: &GuestMessage, context: &mut MessageContext| {
                use crate::runtime::HostContext as _;
                if message.value == b"1" {
                    // Handled by the function, as a careful author would: the call fails anyway.
                    let _ = context.get_state("k".into());
                }
                Ok(None)
            },
            context,
        );
        let subscription = Recording::of(&store, &input);
        let stop = AtomicBool::new(false);
        let failed = AtomicBool::new(false);
        let halt = Halt { stop: &stop, failed: &failed };
        let metrics = InstanceMetrics::default();
        let result = run_instance(&subscription, &config, &mut executor, &metrics, RunUntil::Idle, &halt);

        match result {
            Err(RunError::State(StateError::Storage(reason))) => {
                assert!(reason.contains("the disk is gone"), "{reason}")
            }
            other => panic!("expected the storage failure, got {other:?}"),
        }
        assert_eq!(subscription.calls.into_inner().unwrap(), vec![Call::Fetch(vec![0, 1, 2])], "nothing committed");
        let stats = metrics.snapshot();
        assert_eq!((stats.succeeded, stats.dead_lettered, stats.system_exceptions), (1, 0, 1));
    }

    /// An executor that rests for an hour.
    struct Resting;

    impl Executor for Resting {
        fn process_batch(&mut self, _batch: &Arc<[GuestMessage]>, _call: Range<usize>) -> Vec<Outcome> {
            Vec::new()
        }
        fn context(&mut self) -> &mut MessageContext {
            unreachable!("resting needs no context")
        }
        fn resting_until(&self) -> Option<Instant> {
            Some(Instant::now() + Duration::from_secs(3_600))
        }
    }

    #[test]
    fn a_stopped_instance_does_not_wait_out_its_rest() {
        let stop = AtomicBool::new(true);
        let failed = AtomicBool::new(false);
        let halt = Halt { stop: &stop, failed: &failed };
        // Returns at once; waiting out the hour would hang the test.
        halt.rest(&Resting);
    }
}
