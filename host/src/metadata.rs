//! Function metadata: what the worker must remember to run its functions again after a restart.
//!
//! The worker owns the records' meaning; the store only keeps bytes under keys, durably, so that
//! the embedded engine and a distributed one can both hold them.

/// Why the metadata store failed.
#[derive(Debug, thiserror::Error)]
#[error("function metadata storage failed: {0}")]
pub struct MetadataError(pub String);

/// Durable key-value records.
pub trait MetadataStore: Send + Sync {
    /// Writes `value` under `key`; durable when it returns.
    fn put_record(&self, key: &str, value: &[u8]) -> Result<(), MetadataError>;

    /// Removes `key`; durable when it returns.
    fn remove_record(&self, key: &str) -> Result<(), MetadataError>;

    /// Every record whose key starts with `prefix`, in key order.
    fn records(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, MetadataError>;
}
