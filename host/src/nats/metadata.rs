//! Records, packages, membership and the leader lease on NATS: key-value buckets and an object
//! store, leases by the buckets' time to live.

use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store, stream};
use tokio::io::AsyncReadExt as _;

use super::failure::Failure;
use super::names::{kv_key, kv_key_name};
use super::{LEADER_KEY, MEMBER_BUCKET, MEMBER_TTL, METADATA_BUCKET, NatsEngine, metadata_storage};
use crate::engine::metadata::{Membership, MetadataError, MetadataStore};

/// Every record of `bucket` whose (decoded) key starts with `prefix`, in key order.
///
/// The keys come from the stream's subjects and each value from its leader: async-nats's key
/// listing makes a consumer, which kept timing out on NATS 2.9 after a server of the cluster died.
pub(super) async fn records(
    jetstream: &jetstream::Context,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<(String, Vec<u8>)>, Failure> {
    use futures_util::TryStreamExt as _;
    let stream = jetstream
        .get_stream(format!("KV_{bucket}"))
        .await
        .map_err(|e| Failure::of(&e).while_(format!("opening {bucket}")))?;
    let subjects: Vec<(String, usize)> = stream
        .info_with_subjects(format!("$KV.{bucket}.>"))
        .await
        .map_err(|e| Failure::of(&e).while_(format!("listing {bucket}")))?
        .try_collect()
        .await
        .map_err(|e| Failure::of(&e).while_(format!("listing {bucket}")))?;
    let key_prefix = format!("$KV.{bucket}.");
    let mut found = Vec::new();
    for (subject, _) in subjects {
        let Some(name) = subject.strip_prefix(&key_prefix).and_then(kv_key_name) else { continue };
        if !name.starts_with(prefix) {
            continue;
        }
        let message = match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => message,
            // Removed since the listing.
            Err(error) if error.kind() == stream::LastRawMessageErrorKind::NoMessageFound => continue,
            Err(error) => return Err(Failure::of(&error).while_(format!("reading {name} in {bucket}"))),
        };
        let removed =
            message.headers.get("KV-Operation").is_some_and(|operation| matches!(operation.as_str(), "DEL" | "PURGE"));
        if !removed {
            found.push((name, message.payload.to_vec()));
        }
    }
    found.sort();
    Ok(found)
}

impl MetadataStore for NatsEngine {
    fn put_record(&self, key: &str, value: &[u8]) -> Result<(), MetadataError> {
        let inner = &self.inner;
        inner.block_on(inner.metadata.put(kv_key(key), value.to_vec().into())).map(drop).map_err(metadata_storage)
    }

    fn remove_record(&self, key: &str) -> Result<(), MetadataError> {
        let inner = &self.inner;
        inner.block_on(inner.metadata.purge(kv_key(key))).map_err(metadata_storage)
    }

    fn records(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, MetadataError> {
        let inner = &self.inner;
        inner.block_on(records(&inner.jetstream, METADATA_BUCKET, prefix)).map_err(metadata_storage)
    }

    fn put_package(&self, digest: &str, bytes: &[u8]) -> Result<(), MetadataError> {
        let inner = &self.inner;
        inner.block_on(async {
            // A deleted object keeps its info, marked deleted: it is kept again, not taken as there.
            if inner.packages.info(digest).await.is_ok_and(|info| !info.deleted) {
                return Ok(());
            }
            inner.packages.put(digest, &mut &bytes[..]).await.map(drop).map_err(metadata_storage)
        })
    }

    fn package(&self, digest: &str) -> Result<Option<Vec<u8>>, MetadataError> {
        let inner = &self.inner;
        inner.block_on(async {
            // The object store reads a deleted object's chunks, which are gone, forever: its info
            // says it is deleted.
            match inner.packages.info(digest).await {
                Ok(info) if info.deleted => return Ok(None),
                Err(error) if error.kind() == object_store::InfoErrorKind::NotFound => return Ok(None),
                _ => {}
            }
            let mut object = match inner.packages.get(digest).await {
                Ok(object) => object,
                Err(error) if error.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
                Err(error) => return Err(metadata_storage(error)),
            };
            let mut bytes = Vec::new();
            object.read_to_end(&mut bytes).await.map_err(metadata_storage)?;
            Ok(Some(bytes))
        })
    }

    fn remove_package(&self, digest: &str) -> Result<(), MetadataError> {
        let inner = &self.inner;
        inner.block_on(async {
            match inner.packages.delete(digest).await {
                Ok(()) => Ok(()),
                Err(error) if error.kind() == object_store::DeleteErrorKind::NotFound => Ok(()),
                Err(error) => Err(metadata_storage(error)),
            }
        })
    }
}

impl Membership for NatsEngine {
    fn lease(&self) -> Duration {
        MEMBER_TTL
    }

    fn heartbeat(&self, worker: &str, info: &[u8]) -> Result<(), MetadataError> {
        let inner = &self.inner;
        let renewed = inner.block_on(inner.members.put(kv_key(worker), info.to_vec().into()));
        renewed.map(drop).map_err(|error| metadata_storage(Failure::of(&error).while_("renewing membership")))
    }

    fn members(&self) -> Result<Vec<(String, Vec<u8>)>, MetadataError> {
        let inner = &self.inner;
        inner.block_on(records(&inner.jetstream, MEMBER_BUCKET, "")).map_err(metadata_storage)
    }

    fn lead(&self, worker: &str) -> Result<bool, MetadataError> {
        let inner = &self.inner;
        inner.block_on(async {
            let current = inner
                .leader
                .entry(LEADER_KEY)
                .await
                .map_err(|e| metadata_storage(Failure::of(&e).while_("reading the lease")))?;
            let held = match current {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    if entry.value != worker.as_bytes() {
                        return Ok(false);
                    }
                    inner.leader.update(LEADER_KEY, worker.as_bytes().to_vec().into(), entry.revision).await.is_ok()
                }
                _ => inner.leader.create(LEADER_KEY, worker.as_bytes().to_vec().into()).await.is_ok(),
            };
            Ok(held)
        })
    }

    fn leader(&self) -> Result<Option<String>, MetadataError> {
        let inner = &self.inner;
        let entry = inner.block_on(inner.leader.entry(LEADER_KEY)).map_err(metadata_storage)?;
        Ok(entry
            .filter(|entry| entry.operation == kv::Operation::Put)
            .map(|entry| String::from_utf8_lossy(&entry.value).into_owned()))
    }

    fn leave(&self, worker: &str) {
        let inner = &self.inner;
        inner.block_on(async {
            let _ = inner.members.purge(kv_key(worker)).await;
            if let Ok(Some(entry)) = inner.leader.entry(LEADER_KEY).await
                && entry.value == worker.as_bytes()
            {
                let _ = inner.leader.purge(LEADER_KEY).await;
            }
        });
    }
}
