//! How many of something each tenant has open at once (REST consumer calls, requests held before
//! their refusal), up to a cap per tenant.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::lock;

/// Counts what each tenant has open, up to `cap` each. Only tenants with something open are
/// remembered, so the map is bounded by what is open.
pub struct TenantGate {
    open: Arc<Mutex<HashMap<String, usize>>>,
    cap: usize,
}

/// One thing a tenant has open; dropping it closes it.
pub struct TenantPermit {
    open: Arc<Mutex<HashMap<String, usize>>>,
    tenant: String,
}

impl Drop for TenantPermit {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        if let Some(count) = open.get_mut(&self.tenant) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

impl TenantGate {
    /// A gate letting each tenant have `cap` open.
    pub fn new(cap: usize) -> Self {
        Self { open: Arc::default(), cap }
    }

    /// Opens one for `tenant`, or `None` when the tenant has its cap open.
    pub fn enter(&self, tenant: &str) -> Option<TenantPermit> {
        let mut open = lock(&self.open);
        let count = open.entry(tenant.to_owned()).or_default();
        if *count >= self.cap {
            if *count == 0 {
                open.remove(tenant);
            }
            return None;
        }
        *count += 1;
        Some(TenantPermit { open: self.open.clone(), tenant: tenant.to_owned() })
    }

    /// True if `tenant` may open one more now.
    pub fn has_room(&self, tenant: &str) -> bool {
        lock(&self.open).get(tenant).is_none_or(|count| *count < self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tenant_opens_up_to_its_cap_and_a_closed_one_makes_room() {
        let gate = TenantGate::new(2);
        let first = gate.enter("evil").expect("under the cap");
        let _second = gate.enter("evil").expect("at the cap");
        assert!(gate.enter("evil").is_none() && !gate.has_room("evil"));
        assert!(gate.has_room("acme") && gate.enter("acme").is_some(), "another tenant has its own cap");
        drop(first);
        assert!(gate.has_room("evil") && gate.enter("evil").is_some());
    }

    #[test]
    fn a_gate_remembers_only_tenants_with_something_open() {
        let gate = TenantGate::new(1);
        for index in 0..100 {
            drop(gate.enter(&format!("made-up-{index}")));
        }
        assert!(lock(&gate.open).is_empty());
        let closed = TenantGate::new(0);
        assert!(closed.enter("evil").is_none());
        assert!(lock(&closed.open).is_empty());
    }
}
