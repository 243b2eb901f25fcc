//! The function instance loop: fetch a batch, process each message, commit the batch.
//!
//! A message's effects (state changes, published messages, its output) are gathered in a
//! [`MessageContext`]; when the message succeeds they join the batch, when it fails they are
//! dropped and the message is tried again, up to the retry limit, then sent to the dead-letter
//! topic. The batch's effects and the acknowledgement of its messages are committed in one
//! atomic step by [`Subscription::commit`](crate::engine::broker::Subscription::commit), so a crash loses no work that was acknowledged and
//! applies no effect of a message that will be delivered again.
//!
//! [`run`] runs one loop per instance, each with its own consumer of the function's subscription;
//! the processing guarantee decides when messages are acknowledged.

mod checks;
mod context;
mod executor;
mod history;
mod launcher;
mod live_log;
mod log;
mod pending;
mod pipeline;
mod redrive;
mod replay;
mod retry;
mod trace;
mod window_loop;

pub(crate) use window_loop::{Progress as WindowProgress, StoredRecord as StoredWindowRecord};

pub use checks::{INPUT_MESSAGE_ID_PROPERTY, INPUT_TOPIC_PROPERTY, check_message};
pub use context::{MessageContext, Outcome};
pub use executor::{Executor, NativeExecutor, Rest, WasmExecutor};
pub use launcher::{FunctionLauncher, LaunchError};
pub use live_log::{Follower, LiveLog, LogLine};
pub use log::{LogSink, level_name};
pub use pipeline::{RunError, RunUntil, RunningInstance, run, spawn};
pub use redrive::{RedriveFilter, Redriven, redrive, redrive_subscription};
pub use replay::{Replay, ReplayError, ReplayedMessage, StateDiff, replay};
pub use retry::MESSAGES_PER_CALL;
