//! NATS failures, sorted once by their kind into those that pass (a timeout, no responders, no
//! leader yet, a stream not yet created) and those that last, then turned into the ports' errors.
//!
//! async-nats reports each call's failure as `Error<Kind>`, wrapping the server's JetStream API
//! error (with its numeric code) or the transport's error as its source. The sort walks that
//! chain and looks at kinds and codes only, never at the text.

use std::error::Error;
use std::fmt;

use async_nats::jetstream::context::RequestErrorKind;
use async_nats::jetstream::context::{CreateKeyValueError, CreateStreamError, PublishError, RequestError};
use async_nats::jetstream::context::{CreateKeyValueErrorKind, CreateStreamErrorKind, PublishErrorKind};
use async_nats::jetstream::kv::{EntryError, EntryErrorKind, UpdateError, UpdateErrorKind};
use async_nats::jetstream::stream::{ConsumerError, ConsumerErrorKind, DirectGetError, DirectGetErrorKind};
use async_nats::jetstream::{self, ErrorCode};

use crate::engine::broker::BrokerError;
use crate::engine::metadata::MetadataError;
use crate::engine::state::StateError;

/// The JetStream API errors that a cluster gives while it elects a leader or places a stream.
const PASSING_CODES: [ErrorCode; 6] = [
    ErrorCode::CLUSTER_NOT_AVAILABLE,
    ErrorCode::CLUSTER_NO_PEERS,
    ErrorCode::CLUSTER_NOT_LEADER,
    ErrorCode::CLUSTER_NOT_ACTIVE,
    ErrorCode::CLUSTER_INCOMPLETE,
    ErrorCode::STREAM_NOT_FOUND,
];

/// A failed NATS call, with whether trying again soon may succeed.
#[derive(Debug)]
pub(super) struct Failure {
    what: String,
    passes: bool,
}

impl Failure {
    /// A failure async-nats reported, sorted by its kind.
    pub(super) fn of(error: &(dyn Error + 'static)) -> Self {
        Self { what: error.to_string(), passes: passes(error) }
    }

    /// A failure that passes by its nature (an answer that did not come in time).
    pub(super) fn passing(what: impl fmt::Display) -> Self {
        Self { what: what.to_string(), passes: true }
    }

    /// Says what was being done when it failed.
    pub(super) fn while_(self, doing: impl fmt::Display) -> Self {
        Self { what: format!("{doing}: {}", self.what), ..self }
    }

    /// Whether trying again soon may succeed.
    pub(super) fn passes(&self) -> bool {
        self.passes
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NATS: {}", self.what)
    }
}

impl Error for Failure {}

impl From<Failure> for BrokerError {
    fn from(failure: Failure) -> Self {
        if failure.passes { Self::Unavailable(failure.to_string()) } else { Self::Storage(failure.to_string()) }
    }
}

impl From<Failure> for StateError {
    fn from(failure: Failure) -> Self {
        Self::Storage(failure.to_string())
    }
}

impl From<Failure> for MetadataError {
    fn from(failure: Failure) -> Self {
        Self(failure.to_string())
    }
}

/// `error` and every error it wraps, outermost first.
pub(super) fn causes<'a>(error: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(error), |&error| error.source())
}

/// Whether `error`, or an error it wraps, is of a kind that passes.
fn passes(error: &(dyn Error + 'static)) -> bool {
    causes(error).any(kind_passes)
}

fn kind_passes(error: &(dyn Error + 'static)) -> bool {
    if let Some(failure) = error.downcast_ref::<Failure>() {
        return failure.passes;
    }
    if let Some(api) = error.downcast_ref::<jetstream::Error>() {
        return PASSING_CODES.contains(&api.error_code());
    }
    if let Some(io) = error.downcast_ref::<std::io::Error>() {
        return matches!(io.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::BrokenPipe);
    }
    macro_rules! kinds {
        ($($error:ty => $passing:pat),* $(,)?) => {
            $(if let Some(error) = error.downcast_ref::<$error>() {
                return matches!(error.kind(), $passing);
            })*
        };
    }
    kinds! {
        RequestError => RequestErrorKind::NoResponders | RequestErrorKind::TimedOut,
        PublishError => PublishErrorKind::StreamNotFound | PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe,
        CreateStreamError => CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable,
        CreateKeyValueError => CreateKeyValueErrorKind::TimedOut,
        ConsumerError => ConsumerErrorKind::TimedOut,
        DirectGetError => DirectGetErrorKind::TimedOut,
        EntryError => EntryErrorKind::TimedOut,
        UpdateError => UpdateErrorKind::TimedOut,
        async_nats::RequestError => async_nats::RequestErrorKind::NoResponders | async_nats::RequestErrorKind::TimedOut,
    }
    false
}

/// Whether `error` says that the stream or bucket asked for does not exist.
pub(super) fn is_not_found(error: &(dyn Error + 'static)) -> bool {
    causes(error)
        .find_map(|error| error.downcast_ref::<jetstream::Error>())
        .is_some_and(|api| api.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_sorted_by_kind_and_by_the_code_they_wrap() {
        let timed_out = PublishError::from(PublishErrorKind::TimedOut);
        assert!(Failure::of(&timed_out).passes());
        let refused = PublishError::from(PublishErrorKind::WrongLastSequence);
        assert!(!Failure::of(&refused).passes());
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow");
        assert!(Failure::of(&io).passes());
        let denied = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "timed out, no responders, leader");
        assert!(!Failure::of(&denied).passes(), "the text is not read");
        assert!(matches!(BrokerError::from(Failure::of(&timed_out)), BrokerError::Unavailable(_)));
        assert!(matches!(
            BrokerError::from(Failure::of(&*Box::<dyn Error + Send + Sync>::from("bad record"))),
            BrokerError::Storage(_)
        ));
    }
}
