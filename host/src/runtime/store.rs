//! What each instance's store holds (WASI, the host context, limits, captured output) and the
//! context interface's host side, which hands every call to the [`HostContext`](super::HostContext).

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::fnhost::function::{context, types};
use super::environment::Environment;
use super::stdio::GuestOutput;
use super::{ContextError, Identity, LogLevel};
use super::{FunctionDetails, HostContext, ProcessError};
use crate::limits::MAX_TABLE_ELEMENTS;

/// A memory growth past the instance's limit (`--ram`).
#[derive(Debug, thiserror::Error)]
#[error(
    "the function needed {desired} bytes of memory; its limit is {limit} bytes (--ram): raise --ram or use less memory"
)]
pub(super) struct MemoryLimitExceeded {
    desired: usize,
    limit: u64,
}

/// Everything a store holds for one instance.
pub struct StoreData<H> {
    pub(super) host: H,
    pub(super) details: Arc<FunctionDetails>,
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) memory_limit: u64,
    pub(super) stdout: GuestOutput,
    pub(super) stderr: GuestOutput,
    /// The time limit of one message (`--timeout-ms`).
    pub(super) timeout: Duration,
    /// When the current message runs out of time.
    pub(super) message_deadline: Instant,
    /// Messages of the batch not yet finished; zero once the function was told to stop.
    pub(super) unfinished: usize,
    /// Messages in the batch.
    pub(super) batch_len: usize,
    /// The clocks and random numbers the guest reads.
    pub(super) environment: Environment,
}

impl<H: HostContext> StoreData<H> {
    /// Sends what the guest wrote to stdout and stderr to the function's log, with the message it
    /// belongs to.
    pub(super) fn forward_guest_output(&mut self) {
        for (output, level) in [(&self.stdout, LogLevel::Info), (&self.stderr, LogLevel::Warn)] {
            let text = output.take();
            for line in text.lines().filter(|line| !line.is_empty()) {
                self.host.log(level, line.to_owned());
            }
        }
    }
}

impl<H: Send> WasiView for StoreData<H> {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl<H: Send> wasmtime::ResourceLimiter for StoreData<H> {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory_limit {
            return Err(wasmtime::Error::new(MemoryLimitExceeded { desired, limit: self.memory_limit }));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

impl<H: HostContext> types::Host for StoreData<H> {}

impl<H: HostContext> context::Host for StoreData<H> {
    fn get_identity(&mut self) -> Identity {
        self.details.identity.clone()
    }

    fn input_topics(&mut self) -> Vec<String> {
        self.details.input_topics.clone()
    }

    fn output_topic(&mut self) -> Option<String> {
        self.details.output_topic.clone()
    }

    fn user_config_value(&mut self, key: String) -> Option<String> {
        self.details.user_config.get(&key).cloned()
    }

    fn user_config_map(&mut self) -> Vec<(String, String)> {
        self.details.user_config.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    fn secret(&mut self, name: String) -> Option<String> {
        self.details.secrets.get(&name).cloned()
    }

    fn log(&mut self, level: LogLevel, message: String) {
        self.host.log(level, message);
    }

    fn record_metric(&mut self, name: String, value: f64) {
        self.host.record_metric(name, value);
    }

    fn get_state(&mut self, key: String) -> Result<Option<Vec<u8>>, ContextError> {
        self.host.get_state(key)
    }

    fn put_state(&mut self, key: String, value: Vec<u8>) -> Result<(), ContextError> {
        self.host.put_state(key, value)
    }

    fn put_state_ttl(&mut self, key: String, value: Vec<u8>, ttl_ms: u64) -> Result<(), ContextError> {
        self.host.put_state_ttl(key, value, ttl_ms)
    }

    fn list_state_keys(
        &mut self,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<String>, ContextError> {
        self.host.list_state_keys(prefix, after, limit)
    }

    fn delete_state(&mut self, key: String) -> Result<(), ContextError> {
        self.host.delete_state(key)
    }

    fn incr_counter(&mut self, key: String, amount: i64) -> Result<i64, ContextError> {
        self.host.incr_counter(key, amount)
    }

    fn get_counter(&mut self, key: String) -> Result<i64, ContextError> {
        self.host.get_counter(key)
    }

    fn publish(
        &mut self,
        topic: String,
        value: Vec<u8>,
        key: Option<String>,
        properties: Vec<(String, String)>,
    ) -> Result<(), ContextError> {
        self.host.publish(topic, value, key, properties)
    }

    fn ack(&mut self) {
        self.host.ack();
    }

    fn min_log_level(&mut self) -> LogLevel {
        self.host.min_log_level()
    }

    fn finish_message(&mut self, outcome: Result<Option<Vec<u8>>, String>) -> bool {
        // Finishing more messages than the batch has is ignored: there is no message to end.
        if self.unfinished == 0 {
            return false;
        }
        self.unfinished -= 1;
        self.forward_guest_output();
        let now = Instant::now();
        self.message_deadline = now + self.timeout;
        let reads = self.environment.reads();
        let go_on = self.host.finish_message(outcome.map_err(ProcessError::User), now, reads);
        if !go_on {
            self.unfinished = 0;
        }
        self.environment.begin_message(self.batch_len - self.unfinished);
        go_on
    }
}
