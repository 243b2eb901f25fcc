//! A batch's messages through the function, in calls, each failed message tried again up to
//! the retry limit and then sent to the dead-letter topic.

use std::sync::Arc;
use std::time::Duration;

use super::context::Outcome;
use super::executor::Executor;
use super::pipeline::{Halt, to_guest};
use super::trace::TracedOutcome;
use crate::engine::broker::{Acks, Message};
use crate::engine::state::StateError;
use crate::function::{FunctionConfig, ProcessingGuarantee};
use crate::metrics::{InstanceMetrics, Stats};
use crate::runtime::{GuestMessage, GuestReads, LogLevel, ProcessError};

/// Processes a batch, trying each failed message again up to the retry limit and then sending it
/// to the dead-letter topic; adds what happened to `metrics` and returns the messages to acknowledge.
///
/// A failure of the host's storage ([`ProcessError::Host`]) is returned instead: the batch is
/// not to be committed, and the instance is to stop, so that its messages come again rather
/// than go to the dead-letter topic for what was not their fault.
pub(super) fn process_batch(
    messages: Vec<Message>,
    config: &FunctionConfig,
    executor: &mut dyn Executor,
    metrics: &InstanceMetrics,
    halt: &Halt<'_>,
) -> Result<Acks, StateError> {
    let restarts_before = executor.restarts();
    let mut stats = Stats::default();
    let acks = process_messages(messages, config, executor, &mut stats, halt);
    executor.context().end_batch();
    stats.restarts = executor.restarts() - restarts_before;
    stats.last_invocation = Some(crate::engine::clock::now_millis());
    stats.user_metrics = executor.context().take_metrics();
    metrics.record_batch(&stats);
    acks
}

/// The most messages one call of the function's `process-batch` export gets.
///
/// A call's fixed cost (entering the guest, a JavaScript promise and event loop, Python's
/// interpreter entry) is spread over its messages, but a call must not be too long either:
/// componentize-js (0.23) keeps every allocation made during a call in a list that each free
/// searches, so a JavaScript call's cost grows with the square of its messages.
/// Calls of 64 made the JavaScript session function 9% (interpreted) and 66% (ahead of time)
/// faster than whole fetched batches of 4,096, and left Rust and Python within the noise
/// (docs/BENCHMARKS.md).
pub const MESSAGES_PER_CALL: usize = 64;

fn process_messages(
    messages: Vec<Message>,
    config: &FunctionConfig,
    executor: &mut dyn Executor,
    stats: &mut Stats,
    halt: &Halt<'_>,
) -> Result<Acks, StateError> {
    let manual = config.guarantee == ProcessingGuarantee::Manual;
    let mut acks = Acks::default();
    let mut positions = Vec::with_capacity(messages.len());
    let mut guests = Vec::with_capacity(messages.len());
    let mut redeliveries = Vec::new();
    // Read once a batch: while tracing is off, this is the hot path's one look at it.
    let tracing = crate::telemetry::tracing();
    for message in messages {
        stats.received += 1;
        let Message { topic, sequence, body, redelivery_count } = message;
        let guest = to_guest(&topic, sequence, body);
        // Under MANUAL a redelivery means the function did not acknowledge the message in time;
        // it gets as many deliveries as a failing message gets tries. (Under the other guarantees a
        // redelivery only means that another instance left without finishing the message.)
        if manual && redelivery_count > config.max_message_retries {
            let reason = format!(
                "not acknowledged after {} deliveries (MANUAL, --max-message-retries {})",
                redelivery_count, config.max_message_retries
            );
            let context = executor.context();
            context.write_log(
                LogLevel::Error,
                format!(
                    "message {} from {}: {reason}; sent to {}",
                    guest.message_id, guest.topic, config.dead_letter_topic
                ),
            );
            context.dead_letter(&config.dead_letter_topic, &guest, &reason);
            stats.dead_lettered += 1;
            acks.add(&topic, sequence);
            continue;
        }
        positions.push((topic, sequence));
        guests.push(guest);
        if tracing.is_some() {
            redeliveries.push(redelivery_count);
        }
    }
    // The function gets the messages in calls of up to MESSAGES_PER_CALL and stops at the first
    // failure, which is tried again on its own before the messages after it: each key's messages
    // keep their order.
    let guests: Arc<[GuestMessage]> = guests.into();
    if let Some(tracing) = &tracing {
        executor.context().trace_batch(tracing, &guests, &redeliveries);
    }
    let mut next = 0;
    while next < guests.len() && !halt.halted() {
        let call = next..guests.len().min(next + MESSAGES_PER_CALL);
        halt.rest(executor);
        for outcome in executor.process_batch(&guests, call) {
            let (topic, sequence) = &positions[next];
            let guest = &guests[next];
            next += 1;
            let mut outcome = outcome;
            for attempt in 1.. {
                // A failure while stopping is the stop's interruption, not the message's fault:
                // the message and the ones after it are left unacknowledged, for the next delivery.
                if outcome.result.is_err() && halt.halted() {
                    return Ok(acks);
                }
                stats.record_latency(outcome.elapsed);
                let error = match outcome.result {
                    Ok(acked) => {
                        stats.succeeded += 1;
                        let traced = match acked || !manual {
                            true => TracedOutcome::Succeeded,
                            false => TracedOutcome::NotAcknowledged,
                        };
                        executor.context().trace_outcome(next - 1, traced, attempt, outcome.elapsed);
                        if acked || !manual {
                            acks.add(topic, *sequence);
                        }
                        break;
                    }
                    Err(ProcessError::Host(reason)) => {
                        let text = format!("message {} from {}: {reason}", guest.message_id, guest.topic);
                        stats.record_exception(false, text);
                        return Err(StateError::Storage(reason));
                    }
                    Err(error) => error,
                };
                let tries = config.max_message_retries + 1;
                let text = format!(
                    "message {} from {} failed (try {attempt} of {tries}) after {:?}: {error}",
                    guest.message_id, guest.topic, outcome.elapsed,
                );
                stats.record_exception(matches!(error, ProcessError::User(_)), text.clone());
                let rest = executor.take_rest().map(|rest| format!("; {rest}")).unwrap_or_default();
                let context = executor.context();
                if attempt < tries {
                    context.write_log(LogLevel::Warn, format!("{text}; trying again{rest}"));
                    halt.rest(executor);
                    outcome = executor.process_batch(&guests, next - 1..next).pop().unwrap_or_else(|| Outcome {
                        result: Err(ProcessError::System("the message was not processed".into())),
                        elapsed: Duration::ZERO,
                        reads: GuestReads::default(),
                    });
                    continue;
                }
                context.write_log(LogLevel::Error, format!("{text}; sent to {}{rest}", config.dead_letter_topic));
                context.dead_letter(&config.dead_letter_topic, guest, &error.to_string());
                context.trace_outcome(next - 1, TracedOutcome::DeadLettered, attempt, outcome.elapsed);
                stats.dead_lettered += 1;
                acks.add(topic, *sequence);
                break;
            }
        }
    }
    Ok(acks)
}
