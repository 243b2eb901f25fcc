//! A token bucket: a rate with a burst, for the bounds that a tenant's requests or a guest's
//! calls spend over time (guest log lines in the worker's log, function changes, bytes received).

use std::time::{Duration, Instant};

/// Holds at most `capacity` tokens and gains `per_second` of them each second.
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    filled_at: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`. `per_second` must be positive.
    pub fn full(capacity: u32, per_second: f64, now: Instant) -> Self {
        debug_assert!(per_second > 0.0, "a bucket that never fills refuses everything after its burst");
        let capacity = f64::from(capacity);
        Self { capacity, per_second, tokens: capacity, filled_at: now }
    }

    /// Takes one token at `now`, or says how long until there is one.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.has_one(now)?;
        self.tokens -= 1.0;
        Ok(())
    }

    /// Ok if [`Self::take`] would take a token at `now`, or how long until it would; takes none.
    pub fn has_one(&mut self, now: Instant) -> Result<(), Duration> {
        self.fill(now);
        if self.tokens < 1.0 {
            return Err(Duration::from_secs_f64((1.0 - self.tokens) / self.per_second));
        }
        Ok(())
    }

    /// Ok if the bucket holds any token at `now`, or how long until it does: a bucket that
    /// [`Self::spend`] took into debt refuses until the debt is paid back.
    pub fn ready(&mut self, now: Instant) -> Result<(), Duration> {
        self.fill(now);
        if self.tokens > 0.0 {
            return Ok(());
        }
        Err(Duration::from_secs_f64((f64::EPSILON - self.tokens) / self.per_second))
    }

    /// Spends `amount` at `now`, into debt if the bucket holds less: for costs known only once
    /// they are paid, such as the bytes of an answer.
    pub fn spend(&mut self, amount: f64, now: Instant) {
        self.fill(now);
        self.tokens -= amount;
    }

    /// True if the bucket is full at `now`: it holds nothing a fresh one would not.
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.fill(now);
        self.tokens >= self.capacity
    }

    fn fill(&mut self, now: Instant) {
        let gained = now.saturating_duration_since(self.filled_at).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + gained).min(self.capacity);
        self.filled_at = self.filled_at.max(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_one_token_per_interval() {
        let start = Instant::now();
        let mut bucket = TokenBucket::full(3, 2.0, start);
        for _ in 0..3 {
            assert_eq!(bucket.take(start), Ok(()));
        }
        let wait = bucket.take(start).expect_err("the burst is spent");
        assert_eq!(wait, Duration::from_millis(500));
        assert!(!bucket.is_full(start));
        assert_eq!(bucket.take(start + wait), Ok(()));
        assert!(bucket.take(start + wait).is_err(), "one token came back in half a second, not more");
        assert!(bucket.is_full(start + Duration::from_secs(60)), "a bucket fills to its burst and no further");
        for _ in 0..3 {
            assert_eq!(bucket.take(start + Duration::from_secs(60)), Ok(()));
        }
        assert!(bucket.take(start + Duration::from_secs(60)).is_err());
    }

    #[test]
    fn a_bucket_in_debt_refuses_until_the_debt_is_paid_back() {
        let start = Instant::now();
        let mut bucket = TokenBucket::full(100, 100.0, start);
        assert_eq!(bucket.ready(start), Ok(()));
        bucket.spend(300.0, start);
        let wait = bucket.ready(start).expect_err("200 in debt");
        assert!((wait.as_secs_f64() - 2.0).abs() < 1e-6, "{wait:?}");
        assert!(bucket.ready(start + Duration::from_millis(1_990)).is_err(), "still in debt");
        assert_eq!(bucket.ready(start + Duration::from_millis(2_010)), Ok(()));
    }
}
