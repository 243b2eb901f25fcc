//! How fast each tenant may change its functions: its quota's `maxFunctionChangesPerMinute`
//! (FUNCTION_CHANGES_PER_MINUTE unless the access file says otherwise), ten seconds' worth at
//! once. Counted on each worker for the changes it is asked to make.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::{WorkerError, lock};
use crate::token_bucket::TokenBucket;

/// Most tenants remembered. Past it full buckets are forgotten (a tenant not remembered gets a
/// full one, so that changes nothing), and if that is not enough, all are: only a worker without
/// tokens, where callers name any tenant and a tenant is no one in particular, gets there, since
/// tokens limit a caller to the tenants of the access file.
const REMEMBERED_TENANTS: usize = 1024;

/// Each tenant's bucket of function changes.
#[derive(Default)]
pub struct ChangeRate {
    tenants: Mutex<HashMap<String, TokenBucket>>,
}

impl ChangeRate {
    /// Spends one of `tenant`'s changes, of `per_minute` (its quota), or refuses with when to try again.
    pub fn take(&self, tenant: &str, per_minute: u32) -> Result<(), WorkerError> {
        self.take_at(tenant, per_minute, Instant::now())
    }

    fn take_at(&self, tenant: &str, per_minute: u32, now: Instant) -> Result<(), WorkerError> {
        if per_minute == 0 {
            return Err(WorkerError::Forbidden(format!(
                "tenant {tenant} may not change functions on this worker (its quota maxFunctionChangesPerMinute is 0); ask the operator"
            )));
        }
        let mut tenants = lock(&self.tenants);
        if tenants.len() >= REMEMBERED_TENANTS {
            tenants.retain(|_, bucket| !bucket.is_full(now));
            if tenants.len() >= REMEMBERED_TENANTS {
                tenants.clear();
            }
        }
        let burst = (per_minute / 6).max(1);
        let bucket = tenants
            .entry(tenant.to_owned())
            .or_insert_with(|| TokenBucket::full(burst, f64::from(per_minute) / 60.0, now));
        bucket.take(now).map_err(|wait| {
            WorkerError::Busy(format!(
                "tenant {tenant} is changing functions faster than its quota allows ({per_minute} creates, updates and deletes a minute, {burst} at once: maxFunctionChangesPerMinute, by default FUNCTION_CHANGES_PER_MINUTE); try again in {:.1} s",
                wait.as_secs_f64()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const PER_MINUTE: u32 = 60;

    #[test]
    fn a_tenant_past_its_burst_is_refused_and_others_are_not() {
        let rate = ChangeRate::default();
        let now = Instant::now();
        for _ in 0..PER_MINUTE / 6 {
            rate.take_at("evil", PER_MINUTE, now).expect("within the burst");
        }
        let refused = rate.take_at("evil", PER_MINUTE, now).expect_err("past the burst");
        assert!(
            matches!(&refused, WorkerError::Busy(why) if why.contains("maxFunctionChangesPerMinute") && why.contains("try again in 1.0 s")),
            "{refused}"
        );
        rate.take_at("acme", PER_MINUTE, now).expect("another tenant has its own burst");
        rate.take_at("evil", PER_MINUTE, now + Duration::from_secs(1)).expect("one change comes back each second");
        let forbidden = rate.take_at("evil", 0, now).expect_err("a quota of 0 allows no change");
        assert!(matches!(forbidden, WorkerError::Forbidden(_)), "{forbidden}");
    }

    #[test]
    fn made_up_tenants_cannot_grow_the_map_past_its_bound() {
        let rate = ChangeRate::default();
        let now = Instant::now();
        for index in 0..3 * REMEMBERED_TENANTS {
            rate.take_at(&format!("made-up-{index}"), PER_MINUTE, now).expect("a new tenant has its burst");
            assert!(lock(&rate.tenants).len() <= REMEMBERED_TENANTS);
        }
    }
}
