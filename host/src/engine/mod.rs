//! The ports between the function host and what stores its topics, state and records: an
//! engine. The instance loop, the worker and the CLI use only these traits and types; two engines
//! implement them, the embedded one in one process (`crate::embedded`) and NATS JetStream for a
//! cluster (`crate::nats`).
//!
//! - [`broker`]: topics, subscriptions and the commit that makes a batch done.
//! - [`state`]: function state tables and the changes a commit applies.
//! - [`history`]: what each commit processed, and the state a message saw.
//! - [`metadata`]: durable records and packages, and a cluster's membership.
//! - [`topics`]: pulsar-admin's topic and namespace verbs, and namespace policies.
//! - [`clock`]: the wall clock every engine stamps with.

pub mod broker;
pub mod clock;
pub mod history;
pub mod metadata;
pub mod state;
pub mod topics;

use broker::Broker;
use history::StateHistory;
use metadata::MetadataStore;
use state::StateStore;
use topics::TopicAdmin;

/// What a worker keeps its functions in: the embedded engine, or a distributed one.
pub trait Engine: Broker + TopicAdmin + StateStore + MetadataStore + StateHistory {}

impl<T: Broker + TopicAdmin + StateStore + MetadataStore + StateHistory> Engine for T {}
