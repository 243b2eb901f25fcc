//! The wall clock that stamps messages (publish time), stats and windows, for every engine and
//! the instance loop alike, and the clock that state expiry reads ([`Clock`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; 0 on a clock set before it. Moved by
/// `FNHOST_CLOCK_SKEW_MS` (a signed number of milliseconds), which tests that run the `fnhost`
/// binary set to see a time to live pass without waiting for it.
pub fn now_millis() -> u64 {
    static SKEW: OnceLock<i64> = OnceLock::new();
    let skew = *SKEW
        .get_or_init(|| std::env::var("FNHOST_CLOCK_SKEW_MS").ok().and_then(|skew| skew.parse().ok()).unwrap_or(0));
    let system = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64);
    system.saturating_add_signed(skew)
}

/// The clock an engine reads when it commits a write with a time to live and when it decides
/// whether a value has expired: [`now_millis`], plus whatever a test advanced it by. Clones
/// share their advance, so a test advances the engine's clock through its own clone.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    advanced_ms: Arc<AtomicU64>,
}

impl Clock {
    /// Milliseconds since the Unix epoch, as this clock reads them.
    pub fn now_millis(&self) -> u64 {
        now_millis().saturating_add(self.advanced_ms.load(Ordering::Relaxed))
    }

    /// Moves this clock (and every clone of it) forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.advanced_ms.fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }
}
