//! The live logs of the functions this worker runs: one bounded ring each, for `functions logs`
//! and the console. Lines stay in this worker's memory: in a cluster, each worker has the lines of
//! the instances it runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{Worker, WorkerError, lock};
use crate::instance::LiveLog;
use crate::names::Fqfn;

/// Each function's live log, made when it is first written or read.
#[derive(Default)]
pub(super) struct LiveLogs(Mutex<BTreeMap<Fqfn, Arc<LiveLog>>>);

impl LiveLogs {
    /// The live log of `fqfn`.
    pub(super) fn of(&self, fqfn: &Fqfn) -> Arc<LiveLog> {
        lock(&self.0).entry(fqfn.clone()).or_default().clone()
    }

    /// Forgets a deleted function's lines.
    pub(super) fn remove(&self, fqfn: &Fqfn) {
        lock(&self.0).remove(fqfn);
    }
}

impl Worker {
    /// The live log of the function `fqfn`, which must exist.
    pub fn live_log(&self, fqfn: &Fqfn) -> Result<Arc<LiveLog>, WorkerError> {
        self.function(fqfn)?;
        Ok(self.live_logs.of(fqfn))
    }
}
