//! The worker's records and packages in their own sled trees.

use super::EmbeddedStore;
use crate::engine::metadata::{MetadataError, MetadataStore};

impl MetadataStore for EmbeddedStore {
    fn put_record(&self, key: &str, value: &[u8]) -> Result<(), MetadataError> {
        self.inner.metadata.insert(key.as_bytes(), value).map_err(metadata_error)?;
        self.inner.metadata.flush().map(drop).map_err(metadata_error)
    }

    fn remove_record(&self, key: &str) -> Result<(), MetadataError> {
        self.inner.metadata.remove(key.as_bytes()).map_err(metadata_error)?;
        self.inner.metadata.flush().map(drop).map_err(metadata_error)
    }

    fn records(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, MetadataError> {
        self.inner
            .metadata
            .scan_prefix(prefix.as_bytes())
            .map(|entry| {
                let (key, value) = entry.map_err(metadata_error)?;
                Ok((String::from_utf8_lossy(&key).into_owned(), value.to_vec()))
            })
            .collect()
    }

    fn put_package(&self, digest: &str, bytes: &[u8]) -> Result<(), MetadataError> {
        if self.inner.packages.contains_key(digest).map_err(metadata_error)? {
            return Ok(());
        }
        self.inner.packages.insert(digest, bytes).map_err(metadata_error)?;
        self.inner.packages.flush().map(drop).map_err(metadata_error)
    }

    fn package(&self, digest: &str) -> Result<Option<Vec<u8>>, MetadataError> {
        Ok(self.inner.packages.get(digest).map_err(metadata_error)?.map(|bytes| bytes.to_vec()))
    }

    fn remove_package(&self, digest: &str) -> Result<(), MetadataError> {
        self.inner.packages.remove(digest).map_err(metadata_error)?;
        self.inner.packages.flush().map(drop).map_err(metadata_error)
    }
}

pub(super) fn metadata_error(error: sled::Error) -> MetadataError {
    MetadataError(error.to_string())
}
