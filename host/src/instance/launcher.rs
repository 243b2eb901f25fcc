//! The one recipe for setting up an instance of a wasm function: its details, its context on the
//! function's state table, and its executor. `localrun`, the worker and the benchmark all start
//! instances through it.
//!
//! It lives in the instance loop rather than beside `FunctionConfig` in `function.rs`, because
//! it builds the loop's context and executor, and `function.rs` comes before the loop.

use std::sync::Arc;

use super::context::MessageContext;
use super::executor::{Executor, WasmExecutor};
use super::log::LogSink;
use crate::engine::state::{StateError, StateStore};
use crate::function::FunctionConfig;
use crate::runtime::{PreparedFunction, ProcessError};

/// Why an instance could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The component is not the kind of function the config runs.
    #[error("{0}")]
    WrongKind(String),
    /// The function's state table could not be opened.
    #[error(transparent)]
    State(#[from] StateError),
    /// The first instance could not start (it trapped, or ran out of time or memory, at start).
    #[error("the function {fqfn} could not start: {error}")]
    Start {
        /// The function.
        fqfn: String,
        /// What went wrong.
        error: ProcessError,
    },
}

/// Starts instances of one prepared wasm function under one config.
pub struct FunctionLauncher<'a> {
    config: &'a FunctionConfig,
    function: PreparedFunction<MessageContext>,
    digest: &'a str,
    state: &'a dyn StateStore,
    logs: LogSink,
}

impl<'a> FunctionLauncher<'a> {
    /// A launcher of `function` (whose component has digest `digest`) under `config`, keeping
    /// state in `state` and writing logs to `logs`; refuses a component of the wrong kind.
    pub fn new(
        config: &'a FunctionConfig,
        function: PreparedFunction<MessageContext>,
        digest: &'a str,
        state: &'a dyn StateStore,
        logs: LogSink,
    ) -> Result<Self, LaunchError> {
        config.check_kind(function.kind()).map_err(LaunchError::WrongKind)?;
        Ok(Self { config, function, digest, state, logs })
    }

    /// Sets up instance `instance_id` of the function's `config.parallelism`, and starts its
    /// first wasm instance.
    pub fn executor(&self, instance_id: u32) -> Result<WasmExecutor, LaunchError> {
        let config = self.config;
        let details = Arc::new(config.details(self.digest, instance_id, config.parallelism));
        let context = MessageContext::new(config, instance_id, self.state.table(&config.fqfn)?, self.logs.clone())
            .keeping_history(self.digest);
        WasmExecutor::start(self.function.clone(), details, config.limits, context)
            .map_err(|error| LaunchError::Start { fqfn: config.fqfn.to_string(), error })
    }

    /// Every instance's executor, in instance order, as the instance loop runs them.
    pub fn executors(&self) -> Result<Vec<Box<dyn Executor>>, LaunchError> {
        (0..self.config.parallelism)
            .map(|instance_id| Ok(Box::new(self.executor(instance_id)?) as Box<dyn Executor>))
            .collect()
    }
}
