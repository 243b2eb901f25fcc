//! How fast each tenant may use what its requests cost the worker's CPU: function changes (its
//! quota's `maxFunctionChangesPerMinute`, ten seconds' worth at once) and bytes received over HTTP
//! (`maxReceiveBytesPerSecond`, a second's worth or one largest answer at once). Counted on each
//! worker for the requests it serves.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::tenant_gate::TenantPermit;
use super::{Worker, WorkerError, lock};
use crate::limits::MAX_RECEIVE_BYTES;
use crate::token_bucket::TokenBucket;

/// Most tenants remembered in each kind of rate. Past it full buckets are forgotten (a tenant not
/// remembered gets a full one, so that changes nothing), and if that is not enough, all are: only
/// a worker without tokens, where callers name any tenant and a tenant is no one in particular,
/// gets there, since tokens limit a caller to the tenants of the access file.
const REMEMBERED_TENANTS: usize = 1024;

/// One bucket per tenant, made on the tenant's first use.
#[derive(Default)]
struct TenantBuckets {
    tenants: Mutex<HashMap<String, TokenBucket>>,
}

impl TenantBuckets {
    /// Runs `use_bucket` on `tenant`'s bucket, made by `new` if the tenant has none.
    fn with<R>(
        &self,
        tenant: &str,
        now: Instant,
        new: impl FnOnce() -> TokenBucket,
        use_bucket: impl FnOnce(&mut TokenBucket) -> R,
    ) -> R {
        let mut tenants = lock(&self.tenants);
        if tenants.len() >= REMEMBERED_TENANTS && !tenants.contains_key(tenant) {
            tenants.retain(|_, bucket| !bucket.is_full(now));
            if tenants.len() >= REMEMBERED_TENANTS {
                tenants.clear();
            }
        }
        use_bucket(tenants.entry(tenant.to_owned()).or_insert_with(new))
    }
}

/// Each tenant's rates on this worker.
#[derive(Default)]
pub struct TenantRates {
    changes: TenantBuckets,
    received_bytes: TenantBuckets,
}

impl TenantRates {
    /// Spends one of `tenant`'s function changes, of `per_minute` (its quota), or refuses with
    /// when to try again.
    pub fn take_change(&self, tenant: &str, per_minute: u32) -> Result<(), WorkerError> {
        self.take_change_at(tenant, per_minute, Instant::now())
    }

    fn take_change_at(&self, tenant: &str, per_minute: u32, now: Instant) -> Result<(), WorkerError> {
        if per_minute == 0 {
            return Err(WorkerError::Forbidden(format!(
                "tenant {tenant} may not change functions on this worker (its quota maxFunctionChangesPerMinute is 0); ask the operator"
            )));
        }
        self.changes
            .with(tenant, now, || change_bucket(per_minute, now), |bucket| bucket.take(now))
            .map_err(|wait| changing_too_fast(tenant, per_minute, wait))
    }

    /// Ok if `tenant` could change a function now, or the refusal [`Self::take_change`] would
    /// give; takes nothing.
    pub fn change_ready(&self, tenant: &str, per_minute: u32) -> Result<(), WorkerError> {
        self.change_ready_at(tenant, per_minute, Instant::now())
    }

    fn change_ready_at(&self, tenant: &str, per_minute: u32, now: Instant) -> Result<(), WorkerError> {
        if per_minute == 0 {
            return self.take_change_at(tenant, per_minute, now);
        }
        self.changes
            .with(tenant, now, || change_bucket(per_minute, now), |bucket| bucket.has_one(now))
            .map_err(|wait| changing_too_fast(tenant, per_minute, wait))
    }

    /// Refuses a receive of `tenant` while it has received more than `per_second` (its quota)
    /// allows, saying when to try again.
    pub fn check_receive(&self, tenant: &str, per_second: u32) -> Result<(), WorkerError> {
        self.check_receive_at(tenant, per_second, Instant::now())
    }

    fn check_receive_at(&self, tenant: &str, per_second: u32, now: Instant) -> Result<(), WorkerError> {
        if per_second == 0 {
            return Err(WorkerError::Forbidden(format!(
                "tenant {tenant} may not receive over HTTP on this worker (its quota maxReceiveBytesPerSecond is 0); ask the operator"
            )));
        }
        self.received_bytes.with(tenant, now, || receive_bucket(per_second, now), |bucket| bucket.ready(now)).map_err(
            |wait| WorkerError::Busy {
                reason: format!(
                    "tenant {tenant} is receiving faster than its quota allows ({per_second} bytes a second: maxReceiveBytesPerSecond, by default RECEIVE_BYTES_PER_SECOND); try again in {:.1} s",
                    wait.as_secs_f64()
                ),
                retry_after: wait,
            },
        )
    }

    /// Counts `bytes` that `tenant` received, against `per_second` (its quota).
    pub fn spend_received(&self, tenant: &str, per_second: u32, bytes: usize) {
        if per_second == 0 {
            return;
        }
        let now = Instant::now();
        self.received_bytes.with(
            tenant,
            now,
            || receive_bucket(per_second, now),
            |bucket| bucket.spend(bytes as f64, now),
        );
    }
}

/// A kind of request that a tenant's rates or caps may hold back.
#[derive(Clone, Copy, Debug)]
pub enum Metered {
    /// A function create, update or delete: `maxFunctionChangesPerMinute`.
    Change,
    /// A REST receive: the concurrent calls' cap and `maxReceiveBytesPerSecond`.
    Receive,
    /// A REST acknowledgement: the concurrent calls' cap.
    Acknowledge,
}

impl Worker {
    /// Ok if `tenant`'s rates and caps let a `request` through now, or the refusal it would get;
    /// takes nothing, so that a request can wait for this before it is read and run.
    pub fn ready(&self, tenant: &str, request: Metered) -> Result<(), WorkerError> {
        let quota = self.access.quota(tenant);
        match request {
            Metered::Change => self.rates.change_ready(tenant, quota.max_function_changes_per_minute),
            Metered::Receive => {
                self.consumer_gate.has_room(tenant)?;
                self.rates.check_receive(tenant, quota.max_receive_bytes_per_second)
            }
            Metered::Acknowledge => self.consumer_gate.has_room(tenant),
        }
    }

    /// One of `tenant`'s held requests, or `None` when it has its most held
    /// ([`MAX_HELD_REQUESTS_PER_TENANT`](crate::limits::MAX_HELD_REQUESTS_PER_TENANT)).
    pub fn hold(&self, tenant: &str) -> Option<TenantPermit> {
        self.held.enter(tenant)
    }
}

/// A tenant's bucket of function changes: `per_minute`, ten seconds' worth at once.
fn change_bucket(per_minute: u32, now: Instant) -> TokenBucket {
    TokenBucket::full(change_burst(per_minute), f64::from(per_minute) / 60.0, now)
}

fn change_burst(per_minute: u32) -> u32 {
    (per_minute / 6).max(1)
}

/// The refusal of a change `wait` too soon.
fn changing_too_fast(tenant: &str, per_minute: u32, wait: Duration) -> WorkerError {
    WorkerError::Busy {
        reason: format!(
            "tenant {tenant} is changing functions faster than its quota allows ({per_minute} creates, updates and deletes a minute, {} at once: maxFunctionChangesPerMinute, by default FUNCTION_CHANGES_PER_MINUTE); try again in {:.1} s",
            change_burst(per_minute),
            wait.as_secs_f64()
        ),
        retry_after: wait,
    }
}

/// A tenant's bucket of received bytes: a second's worth at once, or at least one largest answer.
fn receive_bucket(per_second: u32, now: Instant) -> TokenBucket {
    let largest_answer = u32::try_from(MAX_RECEIVE_BYTES).unwrap_or(u32::MAX);
    TokenBucket::full(per_second.max(largest_answer), f64::from(per_second), now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PER_MINUTE: u32 = 60;

    #[test]
    fn a_tenant_past_its_burst_of_changes_is_refused_and_others_are_not() {
        let rates = TenantRates::default();
        let now = Instant::now();
        for _ in 0..PER_MINUTE / 6 {
            rates.take_change_at("evil", PER_MINUTE, now).expect("within the burst");
        }
        let refused = rates.take_change_at("evil", PER_MINUTE, now).expect_err("past the burst");
        assert!(
            matches!(&refused, WorkerError::Busy { reason, retry_after } if reason.contains("maxFunctionChangesPerMinute") && reason.contains("try again in 1.0 s") && *retry_after == Duration::from_secs(1)),
            "{refused}"
        );
        rates.take_change_at("acme", PER_MINUTE, now).expect("another tenant has its own burst");
        let not_ready = rates.change_ready_at("evil", PER_MINUTE, now).expect_err("no change left");
        assert!(matches!(not_ready, WorkerError::Busy { .. }), "{not_ready}");
        rates
            .take_change_at("evil", PER_MINUTE, now + Duration::from_secs(1))
            .expect("one change comes back each second");
        let forbidden = rates.take_change_at("evil", 0, now).expect_err("a quota of 0 allows no change");
        assert!(matches!(forbidden, WorkerError::Forbidden(_)), "{forbidden}");
    }

    #[test]
    fn asking_whether_a_change_is_ready_takes_none() {
        let rates = TenantRates::default();
        let now = Instant::now();
        for _ in 0..3 * PER_MINUTE {
            rates.change_ready_at("evil", PER_MINUTE, now).expect("asking takes nothing");
        }
        for _ in 0..PER_MINUTE / 6 {
            rates.take_change_at("evil", PER_MINUTE, now).expect("the whole burst is still there");
        }
        let forbidden = rates.change_ready_at("evil", 0, now).expect_err("a quota of 0 allows no change");
        assert!(matches!(forbidden, WorkerError::Forbidden(_)), "{forbidden}");
    }

    #[test]
    fn a_tenant_that_received_past_its_rate_is_refused_until_it_is_paid_back() {
        let rates = TenantRates::default();
        let per_second = 1024 * 1024;
        let now = Instant::now();
        rates.check_receive_at("evil", per_second, now).expect("nothing received yet");
        // One largest answer is let through at once, whatever the rate; past it, the tenant waits.
        rates.spend_received("evil", per_second, 2 * MAX_RECEIVE_BYTES);
        let refused = rates.check_receive_at("evil", per_second, now).expect_err("in debt");
        assert!(
            matches!(&refused, WorkerError::Busy { reason, retry_after } if reason.contains("maxReceiveBytesPerSecond") && reason.contains("try again in") && *retry_after > Duration::ZERO),
            "{refused}"
        );
        rates.check_receive_at("acme", per_second, now).expect("another tenant has its own rate");
        let repaid = now + Duration::from_secs((MAX_RECEIVE_BYTES / per_second as usize + 1) as u64);
        rates.check_receive_at("evil", per_second, repaid).expect("the debt is paid back at the rate");
        let forbidden = rates.check_receive_at("evil", 0, now).expect_err("a quota of 0 allows no receive");
        assert!(matches!(forbidden, WorkerError::Forbidden(_)), "{forbidden}");
    }

    #[test]
    fn made_up_tenants_cannot_grow_the_map_past_its_bound() {
        let rates = TenantRates::default();
        let now = Instant::now();
        for index in 0..3 * REMEMBERED_TENANTS {
            rates.take_change_at(&format!("made-up-{index}"), PER_MINUTE, now).expect("a new tenant has its burst");
            assert!(lock(&rates.changes.tenants).len() <= REMEMBERED_TENANTS);
        }
    }
}
