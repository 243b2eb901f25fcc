//! The cluster engine: topics, subscriptions, state and metadata in NATS JetStream, shared by
//! every worker connected to the same NATS cluster.
//!
//! A topic is a stream (`FNT-<topic>`) of batched entries, many messages in one JetStream message
//! (`entry`); a durable subscription is a durable pull consumer per topic with explicit
//! acknowledgement, shared by every instance that reads it; key-shared instances each have their
//! own consumer, which takes its keys from each entry.
//! Function state is a key-value bucket per function (`FNS-<fqfn>`); metadata, packages,
//! membership and the leader lease live in buckets of their own.
//!
//! JetStream has no transaction across streams and buckets, so a commit is a sequence of
//! idempotent steps: outputs carry a `Nats-Msg-Id` (the stream drops a repeat within its
//! duplicate window), ordered subscriptions (failover and key-shared) first write the commit's
//! final values as an intent record that a successor replays, and the acknowledgements go last.
//! See `docs/CLUSTER.md` for what that guarantees.
//!
//! The traits are synchronous and async-nats is not: the engine owns a small tokio runtime and
//! blocks on it, from the instance threads and from the admin API's blocking pool alike.

mod admin;
mod cache;
mod changelog;
mod commit;
mod connect;
mod delivery;
mod entry;
mod expiry;
mod failure;
mod history;
mod logged;
mod metadata;
mod names;
mod past;
mod retention;
mod state;
mod subscription;

use cache::MAX_CACHED_KEYS;
pub(crate) use cache::{CachedValues, ValueCache, remember};
pub(crate) use commit::Intent as CommitIntent;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::ServerAddr;
use async_nats::jetstream::{self, kv, object_store, stream};
use bincode::Decode;

use self::failure::Failure;
use crate::codec::encode;
use crate::engine::broker::{Broker, BrokerError, Inputs, MessageBody, OutMessage, Subscription, SubscriptionSpec};
use crate::engine::clock::{Clock, now_millis};
use crate::engine::metadata::MetadataError;
use crate::engine::state::{StateError, Versioned};
use crate::names::{Fqfn, SubscriptionName, TopicName};
use metadata::records;

pub use connect::NatsSecurity;
pub use entry::MAX_ENTRY_MESSAGES;
use names::{STATE_BUCKET_PREFIX, entry_subject, kv_key, token, topic_stream, topic_subject_prefix};

/// The bucket of metadata records (function records, commit intents).
const METADATA_BUCKET: &str = "fnhost-metadata";
/// The object store of function components, by digest.
const PACKAGE_BUCKET: &str = "fnhost-packages";
/// The bucket of worker heartbeats; an entry expires MEMBER_TTL after its last renewal.
const MEMBER_BUCKET: &str = "fnhost-workers";
/// The bucket of the leader lease; it expires MEMBER_TTL after its last renewal.
const LEADER_BUCKET: &str = "fnhost-leader";
const LEADER_KEY: &str = "leader";
/// How long a worker that stops renewing stays a member (and, if it led, the leader): longer
/// than a NATS leader election (a few seconds), so that a dying NATS server does not make live
/// workers look dead.
pub const MEMBER_TTL: Duration = Duration::from_secs(15);
/// A message delivered to an instance and not acknowledged this long after is delivered again:
/// how long a dead worker's in-flight messages wait before another instance gets them.
pub const CLUSTER_ACK_WAIT: Duration = Duration::from_secs(10);
/// How long a repeated output is recognised and dropped (the streams' duplicate window).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long one JetStream request may take before it fails (leader elections take a few seconds).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a worker waits at start for a NATS cluster that is still forming.
const STARTUP_PATIENCE: Duration = Duration::from_secs(30);
/// How many times a publish that failed for a passing reason is repeated, RETRY_PAUSE apart:
/// a new stream's subjects reach every server of a cluster a moment after it is created, and a
/// leader election takes a few seconds.
const PUBLISH_RETRIES: u32 = 50;
pub(crate) const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The least largest message fnhost works with: a server that allows less is taken to allow this,
/// and refuses what exceeds it.
const MIN_PAYLOAD: usize = 64 << 10;
/// How many bytes one pull of a subscription brings at most, unless the servers' largest message is larger.
const PULL_BYTES: usize = 4 << 20;

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The addresses could not be parsed.
    #[error("--cluster `{given}` is not a list of NATS addresses ({reason}); give nats://HOST:PORT,nats://HOST:PORT,…")]
    BadAddress {
        /// What was given.
        given: String,
        /// What the parser said.
        reason: String,
    },
    /// A credentials or TLS setting is incomplete or unreadable.
    #[error("{flag}: {reason}")]
    BadSecurity {
        /// The flag at fault.
        flag: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The servers refused fnhost's credentials, or the TLS handshake failed.
    #[error(
        "the NATS servers at {urls} refused the connection ({reason}); check --nats-creds, --nats-token-file, --nats-user and --nats-password-file, and --nats-tls-ca, --nats-tls-cert and --nats-tls-key"
    )]
    Refused {
        /// The addresses.
        urls: String,
        /// What the client said.
        reason: String,
    },
    /// No server answered, or JetStream is off.
    #[error("cannot use the NATS cluster at {urls}: {reason}; is nats-server running there with JetStream (-js)?")]
    Unavailable {
        /// The addresses.
        urls: String,
        /// What failed.
        reason: String,
    },
}

/// The NATS JetStream engine; cheap to clone.
#[derive(Clone)]
pub struct NatsEngine {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: tokio::runtime::Runtime,
    client: async_nats::Client,
    jetstream: jetstream::Context,
    replicas: usize,
    streams: Mutex<HashMap<TopicName, stream::Stream>>,
    tables: Mutex<HashMap<Fqfn, kv::Store>>,
    changelogs: Mutex<HashMap<Fqfn, stream::Stream>>,
    /// What this process last read or wrote of each function's state view.
    applied_views: changelog::AppliedViews,
    caches: Mutex<HashMap<Fqfn, ValueCache>>,
    /// Most keys each function's cache holds ([`MAX_CACHED_KEYS`]; fewer in tests).
    cached_keys: usize,
    /// Per function, held for writing while a table opening empties the function's cache and
    /// brings its view up to date, and for reading by each state read: a read in between would
    /// find neither the values emptied from the cache nor the changes not yet in the view.
    openings: Mutex<HashMap<Fqfn, Arc<std::sync::RwLock<()>>>>,
    metadata: kv::Store,
    packages: object_store::ObjectStore,
    members: kv::Store,
    leader: kv::Store,
    /// Each entry delivered to a durable subscription in this process and not yet acknowledged,
    /// by subscription, topic and stream sequence.
    delivered: Mutex<HashMap<delivery::EntryKey, delivery::Held>>,
    /// Makes output message ids unique across this process's commits.
    commits: AtomicU64,
    /// How large an entry may grow (half the servers' largest message, leaving room for headers).
    entry_bytes: usize,
    /// How many bytes one pull may bring: several entries, and never less than the largest one.
    pull_bytes: usize,
    /// Distinguishes this process's output message ids from other processes'.
    process: String,
    /// What decides when state values expire; a test advances it.
    clock: Clock,
}

/// True for failures that pass: no stream yet for the subject, no leader, a timeout.
fn is_transient(error: &BrokerError) -> bool {
    matches!(error, BrokerError::Unavailable(_))
}

/// A failed call as the broker port's error, sorted by its kind; fnhost's own findings (text,
/// such as an undecodable record) last.
fn storage(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> BrokerError {
    Failure::of(&*error.into()).into()
}

/// A failed call as the state port's error.
fn state_storage(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StateError {
    Failure::of(&*error.into()).into()
}

/// A failed call as the metadata port's error.
fn metadata_storage(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> MetadataError {
    Failure::of(&*error.into()).into()
}

fn decode<T: Decode<()>>(bytes: &[u8]) -> Result<T, String> {
    crate::codec::decode(bytes).map_err(|error| error.to_string())
}

impl NatsEngine {
    /// Connects to the servers in `urls` (comma-separated) with `security`'s credentials and TLS,
    /// and opens the shared buckets, creating them with `replicas` copies if they are new.
    pub fn connect(urls: &str, replicas: usize, security: &NatsSecurity) -> Result<Self, NatsError> {
        let addresses = urls
            .split(',')
            .map(|url| url.trim().parse::<ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| NatsError::BadAddress { given: urls.into(), reason: error.to_string() })?;
        let unavailable = |reason: String| NatsError::Unavailable { urls: urls.into(), reason };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fnhost-nats")
            .enable_all()
            .build()
            .map_err(|error| unavailable(format!("cannot start its runtime: {error}")))?;
        let options = runtime.block_on(security.options())?;
        let client = runtime
            .block_on(options.connection_timeout(Duration::from_secs(5)).connect(addresses.as_slice()))
            .map_err(|error| {
                if connect::refused(&error) {
                    NatsError::Refused { urls: urls.into(), reason: error.to_string() }
                } else {
                    unavailable(format!("connecting: {error}"))
                }
            })?;
        let max_payload = client.server_info().max_payload.max(MIN_PAYLOAD);
        let (client, jetstream, metadata, packages, members, leader) = runtime
            .block_on(async {
                let mut jetstream = jetstream::new(client.clone());
                jetstream.set_timeout(REQUEST_TIMEOUT);
                // A cluster that is starting too may not know all its servers yet ("no suitable
                // peers for placement"): keep trying for a while.
                let deadline = tokio::time::Instant::now() + STARTUP_PATIENCE;
                let metadata = loop {
                    match open_bucket(&jetstream, METADATA_BUCKET, replicas, Duration::ZERO).await {
                        Err(error) if tokio::time::Instant::now() < deadline && error.passes() => {
                            tokio::time::sleep(RETRY_PAUSE).await;
                        }
                        opened => break opened?,
                    }
                };
                let members = open_bucket(&jetstream, MEMBER_BUCKET, replicas, MEMBER_TTL).await?;
                let leader = open_bucket(&jetstream, LEADER_BUCKET, replicas, MEMBER_TTL).await?;
                let packages = match jetstream.get_object_store(PACKAGE_BUCKET).await {
                    Ok(store) => store,
                    Err(_) => jetstream
                        .create_object_store(object_store::Config {
                            bucket: PACKAGE_BUCKET.into(),
                            num_replicas: replicas,
                            ..Default::default()
                        })
                        .await
                        .map_err(|error| Failure::of(&error).while_("cannot create the package store"))?,
                };
                Ok::<_, Failure>((client, jetstream, metadata, packages, members, leader))
            })
            .map_err(|failure| unavailable(failure.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                runtime,
                client,
                jetstream,
                replicas,
                streams: Mutex::default(),
                tables: Mutex::default(),
                changelogs: Mutex::default(),
                applied_views: Mutex::default(),
                caches: Mutex::default(),
                cached_keys: MAX_CACHED_KEYS,
                openings: Mutex::default(),
                metadata,
                packages,
                members,
                leader,
                delivered: Mutex::default(),
                commits: AtomicU64::new(0),
                entry_bytes: max_payload / 2,
                pull_bytes: (max_payload * 2).max(PULL_BYTES),
                process: format!("{:x}{:x}", std::process::id(), now_millis()),
                clock: Clock::default(),
            }),
        })
    }
}

/// Opens a key-value bucket, creating it if it is new; `max_age` zero keeps entries forever.
///
/// The bucket's stream is made here rather than by async-nats, without direct gets: on NATS 2.9
/// a direct get kept timing out after a server of the cluster died, while a get through the
/// stream's leader works again once a new leader is elected.
async fn open_bucket(
    jetstream: &jetstream::Context,
    bucket: &str,
    replicas: usize,
    max_age: Duration,
) -> Result<kv::Store, Failure> {
    jetstream
        .get_or_create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            allow_rollup: true,
            deny_delete: true,
            discard: stream::DiscardPolicy::New,
            allow_direct: false,
            ..Default::default()
        })
        .await
        .map_err(|error| Failure::of(&error).while_(format!("cannot create the bucket {bucket}")))?;
    jetstream
        .get_key_value(bucket)
        .await
        .map_err(|error| Failure::of(&error).while_(format!("cannot open the bucket {bucket}")))
}

impl Inner {
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// The stream holding `topic`, created on first use.
    async fn topic_stream(&self, topic: &TopicName) -> Result<stream::Stream, BrokerError> {
        if let Some(stream) = self.streams.lock().unwrap().get(topic) {
            return Ok(stream.clone());
        }
        let mut config = stream::Config {
            name: topic_stream(topic),
            subjects: vec![format!("{}.>", topic_subject_prefix(topic))],
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        admin::apply_to_config(&mut config, &self.namespace_policies(topic.tenant(), topic.namespace()).await?);
        let stream = self
            .jetstream
            .get_or_create_stream(config)
            .await
            .map_err(|error| storage(Failure::of(&error).while_(format!("cannot open the stream of {topic}"))))?;
        self.streams.lock().unwrap().insert(topic.clone(), stream.clone());
        Ok(stream)
    }

    /// Every topic that has a stream.
    async fn topics(&self) -> Result<Vec<TopicName>, BrokerError> {
        use futures_util::TryStreamExt as _;
        let names: Vec<String> = self.jetstream.stream_names().try_collect().await.map_err(storage)?;
        Ok(names.iter().filter_map(|name| names::stream_topic(name)).collect())
    }

    /// Publishes `messages` to `topic` as batched entries, pipelined, and returns their
    /// positions once stored. Entry `n` has the id `ID-n` (`Nats-Msg-Id`, with `id` given or made
    /// here), so a publish that failed in a leader election is simply repeated: the stream drops
    /// the entries it already has.
    async fn publish(
        &self,
        topic: &TopicName,
        messages: Vec<OutMessage>,
        id: Option<&str>,
    ) -> Result<Vec<u64>, BrokerError> {
        self.topic_stream(topic).await?;
        let publish_time = now_millis();
        let bodies: Vec<MessageBody> = messages.into_iter().map(|message| message.stamp(publish_time)).collect();
        let id = id.map_or_else(|| self.commit_id(), str::to_owned);
        let subject = entry_subject(topic);
        let prepared: Vec<(entry::Packed, String)> = entry::pack(&bodies, self.entry_bytes)
            .into_iter()
            .enumerate()
            .map(|(index, packed)| (packed, format!("{id}-{index}")))
            .collect();
        let mut attempt = 0;
        loop {
            match self.publish_once(&subject, &prepared).await {
                Err(error) if attempt < PUBLISH_RETRIES && is_transient(&error) => {
                    attempt += 1;
                    tracing::debug!(%topic, attempt, "publishing again: {error}");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                result => return result,
            }
        }
    }

    async fn publish_once(&self, subject: &str, prepared: &[(entry::Packed, String)]) -> Result<Vec<u64>, BrokerError> {
        let mut pending = Vec::with_capacity(prepared.len());
        for (packed, id) in prepared {
            let publish = jetstream::context::Publish::build()
                .headers(packed.headers.clone())
                .payload(packed.payload.clone())
                .message_id(id);
            pending
                .push((packed.count, self.jetstream.send_publish(subject.to_owned(), publish).await.map_err(storage)?));
        }
        let mut positions = Vec::new();
        for (count, ack) in pending {
            let stream_sequence = ack.await.map_err(storage)?.sequence;
            positions.extend((0..count).map(|index| entry::position(stream_sequence, index)));
        }
        Ok(positions)
    }

    /// The state bucket of `fqfn`, created on first use.
    async fn table(&self, fqfn: &Fqfn) -> Result<kv::Store, StateError> {
        if let Some(store) = self.tables.lock().unwrap().get(fqfn) {
            return Ok(store.clone());
        }
        let bucket = format!("{STATE_BUCKET_PREFIX}{}", token(&fqfn.to_string()));
        let store =
            open_bucket(&self.jetstream, &bucket, self.replicas, Duration::ZERO).await.map_err(state_storage)?;
        self.tables.lock().unwrap().insert(fqfn.clone(), store.clone());
        Ok(store)
    }

    /// The value cache of `fqfn`'s state.
    fn cache(&self, fqfn: &Fqfn) -> ValueCache {
        let mut caches = self.caches.lock().unwrap();
        let cache =
            caches.entry(fqfn.clone()).or_insert_with(|| Arc::new(Mutex::new(CachedValues::new(self.cached_keys))));
        cache.clone()
    }

    /// The value of `key` in `fqfn`'s view `view`, for a key `cache` does not hold: brought up to
    /// date first when the cache was emptied since it last was, so that a value this process
    /// committed and no longer holds is read as committed.
    async fn read_missed(
        &self,
        fqfn: &Fqfn,
        view: &kv::Store,
        cache: &ValueCache,
        key: &str,
    ) -> Result<Option<Versioned>, StateError> {
        let behind = cache.lock().unwrap().view_behind();
        if let Some(emptied) = behind {
            self.materialise(fqfn).await?;
            cache.lock().unwrap().view_caught_up(emptied);
        }
        let entry = self.view_entry(fqfn, view, key).await?;
        Ok(entry.and_then(|(entry, _)| entry.versioned()))
    }

    /// The lock that keeps `fqfn`'s state reads out of its table openings (see `openings`).
    fn opening(&self, fqfn: &Fqfn) -> Arc<std::sync::RwLock<()>> {
        self.openings.lock().unwrap().entry(fqfn.clone()).or_default().clone()
    }

    /// A new id for one commit's outputs, unique across processes.
    fn commit_id(&self) -> String {
        format!("{}-{}", self.process, self.commits.fetch_add(1, Ordering::Relaxed))
    }

    /// Sends the acknowledgement of each message, by its reply subject, and flushes them to the server.
    async fn acknowledge(&self, replies: Vec<async_nats::Subject>) -> Result<(), BrokerError> {
        if replies.is_empty() {
            return Ok(());
        }
        for reply in replies {
            self.client.publish(reply, bytes::Bytes::new()).await.map_err(storage)?;
        }
        self.client.flush().await.map_err(storage)
    }
}

impl Broker for NatsEngine {
    fn produce(&self, topic: &TopicName, messages: Vec<OutMessage>) -> Result<Vec<u64>, BrokerError> {
        let inner = &self.inner;
        inner.block_on(inner.publish(topic, messages, None))
    }

    fn subscribe(&self, spec: SubscriptionSpec) -> Result<Box<dyn Subscription>, BrokerError> {
        Ok(Box::new(subscription::NatsSubscription::open(self.inner.clone(), spec)?))
    }

    fn delete_subscription(&self, name: &SubscriptionName, inputs: &Inputs) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let durable = token(&name.to_string());
        inner.block_on(async {
            use futures_util::TryStreamExt as _;
            for topic in inner.topics().await?.into_iter().filter(|topic| inputs.covers(topic)) {
                let stream = inner.topic_stream(&topic).await?;
                let consumers: Vec<String> = stream.consumer_names().try_collect().await.map_err(storage)?;
                for consumer in consumers {
                    if subscription::consumer_belongs_to(&consumer, &durable) {
                        stream.delete_consumer(&consumer).await.map_err(storage)?;
                    }
                }
            }
            for prefix in [subscription::INTENT_PREFIX, delivery::PARTIAL_PREFIX] {
                let prefix = format!("{prefix}{name}/");
                for (key, _) in records(&inner.jetstream, METADATA_BUCKET, &prefix).await.map_err(storage)? {
                    inner.metadata.purge(kv_key(&key)).await.map_err(storage)?;
                }
            }
            inner.delivered.lock().unwrap().retain(|entry, _| entry.name != *name);
            Ok(())
        })
    }

    fn is_acknowledged(
        &self,
        subscription: &SubscriptionName,
        topic: &TopicName,
        position: u64,
    ) -> Result<bool, BrokerError> {
        let inner = &self.inner;
        let durable = token(&subscription.to_string());
        let (stream_sequence, index) = entry::entry_of(position);
        inner.block_on(async {
            use futures_util::TryStreamExt as _;
            let stream = inner.topic_stream(topic).await?;
            let Ok(message) = stream.get_raw_message(stream_sequence).await else { return Ok(false) };
            let bodies = entry::unpack(Some(&message.headers), &message.payload)
                .map_err(|reason| BrokerError::Corrupt { topic: topic.clone(), sequence: position, reason })?;
            let Some(body) = bodies.get(index as usize) else { return Ok(false) };
            let route = entry::route(body, stream_sequence, index);
            let consumers: Vec<_> = stream.consumers().try_collect().await.map_err(storage)?;
            for consumer in consumers {
                let Some(shares) = subscription::consumer_shares(&consumer.name, &durable) else { continue };
                if route % u64::from(shares.1) != u64::from(shares.0) {
                    continue;
                }
                if subscription::floor(&consumer) >= stream_sequence {
                    return Ok(true);
                }
                let entry =
                    delivery::EntryKey { name: subscription.clone(), shares, topic: topic.clone(), stream_sequence };
                if inner.partial_record(&entry).await?.is_some_and(|ranges| delivery::ranges_hold(&ranges, index)) {
                    return Ok(true);
                }
            }
            Ok(false)
        })
    }
}
