//! Re-drive: sends a function's dead letters back through it, normally after an update that fixed
//! what made them fail.
//!
//! A re-drive is the instance loop over the dead-letter topic, on a subscription of its own, in
//! order (failover), under the function's guarantee: each dead letter is acknowledged on that
//! subscription in the commit that holds its effects, so a crash loses or doubles nothing, and the
//! next re-drive goes on where this one stopped. It takes only the dead letters that were there
//! when it started (one that fails again goes back to the end of the dead-letter topic, for a
//! later re-drive), and of those only the ones its filter passes; the rest stay unacknowledged.

use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use regex::Regex;

use super::executor::Executor;
use super::pipeline::{Halt, RunError, RunUntil, run_instance};
use crate::engine::broker::{
    Broker, BrokerError, Effects, FetchWaker, Message, Position, Subscription, SubscriptionType,
};
use crate::function::{FunctionConfig, Ordering};
use crate::metrics::{InstanceMetrics, Stats};
use crate::names::{SubscriptionName, TopicName};

/// Which dead letters to send back.
#[derive(Clone, Debug)]
pub struct RedriveFilter {
    /// Only those whose `ERROR` property (the reason they were dead-lettered) matches.
    pub where_error: Option<Regex>,
    /// At most this many.
    pub limit: Option<u64>,
}

/// The dead-letter property that says why a message was dead-lettered.
const ERROR_PROPERTY: &str = "ERROR";

/// The subscription a re-drive of `fqfn`'s dead letters reads through.
pub fn redrive_subscription(function_subscription: &SubscriptionName) -> Result<SubscriptionName, String> {
    let local = format!("{}-redrive", function_subscription.local());
    SubscriptionName::new(function_subscription.tenant(), function_subscription.namespace(), &local)
        .map_err(|error| error.to_string())
}

/// A consumer that passes on only the dead letters a re-drive takes, and holds the others
/// unacknowledged until it leaves.
struct Filtered {
    inner: Box<dyn Subscription>,
    filter: RedriveFilter,
    /// The dead-letter topic's length when the re-drive started: later messages are not taken.
    end: u64,
    progress: Mutex<Progress>,
}

#[derive(Default)]
struct Progress {
    passed: u64,
    /// Dead letters fetched and not taken: held, so that they come again only to a later re-drive.
    held: Vec<Message>,
    /// Whether the last fetch from the subscription came back empty.
    exhausted: bool,
}

impl Filtered {
    fn takes(&self, progress: &mut Progress, message: &Message) -> bool {
        if message.sequence >= self.end || self.filter.limit.is_some_and(|limit| progress.passed >= limit) {
            return false;
        }
        let matches = self.filter.where_error.as_ref().is_none_or(|pattern| {
            message.body.properties.iter().any(|(name, value)| name == ERROR_PROPERTY && pattern.is_match(value))
        });
        progress.passed += u64::from(matches);
        matches
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Subscription for Filtered {
    fn fetch(&self, max: usize, _wait: Duration) -> Result<Vec<Message>, BrokerError> {
        loop {
            // Every dead letter taken is already in the topic: nothing to wait for.
            let fetched = self.inner.fetch(max, Duration::ZERO)?;
            let mut progress = self.progress();
            if fetched.is_empty() {
                progress.exhausted = true;
                return Ok(fetched);
            }
            let (taken, held): (Vec<Message>, Vec<Message>) =
                fetched.into_iter().partition(|message| self.takes(&mut progress, message));
            progress.held.extend(held);
            if !taken.is_empty() {
                return Ok(taken);
            }
        }
    }

    fn commit(&self, effects: Effects) -> Result<(), BrokerError> {
        self.inner.commit(effects)
    }

    fn drained(&self) -> bool {
        self.progress().exhausted
    }

    fn release(&self, messages: Vec<Message>) {
        self.inner.release(messages);
    }

    fn waker(&self) -> FetchWaker {
        self.inner.waker()
    }
}

/// What a re-drive did.
#[derive(Debug)]
pub struct Redriven {
    /// What the function did with the dead letters it got.
    pub stats: Stats,
    /// Dead letters left where they were: after the limit, not matching, or dead-lettered after
    /// the re-drive started.
    pub left: u64,
}

/// Sends the dead letters of `dead_letters` back through `executor`, an instance of the function
/// `config` runs, and returns what it did; `stop` ends it early.
pub fn redrive(
    broker: &dyn Broker,
    config: &FunctionConfig,
    dead_letters: &TopicName,
    end: u64,
    filter: RedriveFilter,
    mut executor: Box<dyn Executor>,
    stop: &AtomicBool,
) -> Result<Redriven, RunError> {
    let subscription =
        redrive_subscription(&config.subscription).map_err(|reason| RunError::Broker(BrokerError::Storage(reason)))?;
    let mut config = config.clone();
    config.inputs = vec![dead_letters.clone()].into();
    config.subscription = subscription;
    config.parallelism = 1;
    config.window = None;
    // In the order they were dead-lettered, which keeps each key's order.
    config.ordering = Ordering::Retain;
    config.initial_position = Position::Earliest;
    debug_assert_eq!(config.subscription_type(), SubscriptionType::Failover);
    let inner = broker.subscribe(config.subscription_spec(0, 1))?;
    let filtered = Filtered { inner, filter, end, progress: Mutex::default() };
    let failed = AtomicBool::new(false);
    let halt = Halt { stop, failed: &failed };
    let metrics = InstanceMetrics::default();
    run_instance(&filtered, &config, executor.as_mut(), &metrics, RunUntil::Idle, &halt)?;
    let left = filtered.progress().held.len() as u64;
    Ok(Redriven { stats: metrics.snapshot(), left })
}
