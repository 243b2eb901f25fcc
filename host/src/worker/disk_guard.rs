//! The free-space guard: below a reserve of free space in the data directory, the worker refuses
//! new writes with a clear error, and instances stop fetching, so that the disk never fills and
//! what is already stored and accepted can still be committed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::WorkerError;
use crate::engine::broker::{BrokerError, Effects, FetchWaker, Message, Subscription};

/// How long an instance that may not fetch rests before it looks at the disk again.
const LOW_DISK_REST: Duration = Duration::from_millis(200);
/// How often an instance held by the guard says so in the worker's log.
const LOW_DISK_WARN_EVERY: Duration = Duration::from_secs(60);

/// Watches the free space of the file system that holds a directory.
#[derive(Clone, Debug)]
pub struct DiskGuard {
    dir: PathBuf,
    reserve_bytes: u64,
}

impl DiskGuard {
    /// A guard that keeps `reserve_bytes` free in the file system of `dir`.
    pub fn new(dir: PathBuf, reserve_bytes: u64) -> Self {
        Self { dir, reserve_bytes }
    }

    /// The bytes free for this process, if the system says.
    fn free_bytes(&self) -> Option<u64> {
        let stats = rustix::fs::statvfs(&self.dir).ok()?;
        Some(stats.f_bavail.saturating_mul(stats.f_frsize))
    }

    /// Refuses a write while the free space is below the reserve.
    pub fn check(&self) -> Result<(), WorkerError> {
        match self.free_bytes() {
            Some(free) if free < self.reserve_bytes => Err(WorkerError::InsufficientStorage(format!(
                "the worker's disk has {free} bytes free, less than the {} it keeps in reserve (--min-free-disk-bytes, default MIN_FREE_DISK_BYTES), so it takes no new writes; reads go on, and nothing stored is lost. The operator can free space or lower the reserve; try again then",
                self.reserve_bytes
            ))),
            _ => Ok(()),
        }
    }

    /// `subscription`, made to fetch nothing while the free space is below the reserve: its
    /// instance still commits what it processed, then rests until space is freed.
    pub fn guard(&self, subscription: Box<dyn Subscription>) -> Box<dyn Subscription> {
        Box::new(GuardedSubscription { inner: subscription, guard: self.clone(), warned: std::sync::Mutex::new(None) })
    }
}

struct GuardedSubscription {
    inner: Box<dyn Subscription>,
    guard: DiskGuard,
    /// When the instance last said that the guard holds it.
    warned: std::sync::Mutex<Option<Instant>>,
}

impl Subscription for GuardedSubscription {
    fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Message>, BrokerError> {
        if let Err(error) = self.guard.check() {
            let mut warned = super::lock(&self.warned);
            if warned.is_none_or(|at| at.elapsed() > LOW_DISK_WARN_EVERY) {
                tracing::warn!("the instance fetches no more messages for now: {error}");
                *warned = Some(Instant::now());
            }
            drop(warned);
            std::thread::sleep(wait.min(LOW_DISK_REST));
            return Ok(Vec::new());
        }
        self.inner.fetch(max, wait)
    }

    fn commit(&self, effects: Effects) -> Result<(), BrokerError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_past_the_free_space_refuses_writes_and_a_small_one_does_not() {
        let dir = std::env::temp_dir();
        let refused = DiskGuard::new(dir.clone(), u64::MAX).check();
        assert!(
            matches!(&refused, Err(WorkerError::InsufficientStorage(reason)) if reason.contains("MIN_FREE_DISK_BYTES"))
        );
        assert!(DiskGuard::new(dir, 0).check().is_ok());
    }
}
