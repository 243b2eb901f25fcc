//! Function metadata: what the worker must remember to run its functions again after a restart,
//! and, in a cluster, what workers need to agree on who runs what.
//!
//! The worker owns the records' meaning; the store only keeps bytes under keys, durably, so that
//! the embedded engine and a distributed one can both hold them.

/// Why the metadata store failed.
#[derive(Debug, thiserror::Error)]
#[error("function metadata storage failed: {0}")]
pub struct MetadataError(pub String);

/// Durable key-value records, and function components by digest.
pub trait MetadataStore: Send + Sync {
    /// Writes `value` under `key`; durable when it returns.
    fn put_record(&self, key: &str, value: &[u8]) -> Result<(), MetadataError>;

    /// Removes `key`; durable when it returns.
    fn remove_record(&self, key: &str) -> Result<(), MetadataError>;

    /// Every record whose key starts with `prefix`, in key order.
    fn records(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, MetadataError>;

    /// Keeps a component under its digest (nothing happens if it is already kept); durable when it returns.
    fn put_package(&self, digest: &str, bytes: &[u8]) -> Result<(), MetadataError>;

    /// The component kept under `digest`, if any.
    fn package(&self, digest: &str) -> Result<Option<Vec<u8>>, MetadataError>;

    /// Forgets the component kept under `digest`.
    fn remove_package(&self, digest: &str) -> Result<(), MetadataError>;
}

/// Membership and leadership of workers sharing one distributed engine.
///
/// Both are leases: an entry lives for a fixed time after its last renewal, so a worker killed
/// without a word drops out on its own.
pub trait Membership: Send + Sync {
    /// How long a membership or the leader lease lasts after its last renewal.
    fn lease(&self) -> std::time::Duration;

    /// Announces `worker`, with `info` (how to reach it), as alive for another lease period.
    fn heartbeat(&self, worker: &str, info: &[u8]) -> Result<(), MetadataError>;

    /// The workers whose lease has not run out, with their info, in name order.
    fn members(&self) -> Result<Vec<(String, Vec<u8>)>, MetadataError>;

    /// Takes the leader lease if nobody holds it, or renews it if `worker` does; true while
    /// `worker` leads.
    fn lead(&self, worker: &str) -> Result<bool, MetadataError>;

    /// The worker holding the leader lease, if any.
    fn leader(&self) -> Result<Option<String>, MetadataError>;

    /// Gives up `worker`'s membership and, if it leads, the lease: a clean shutdown.
    fn leave(&self, worker: &str);
}
