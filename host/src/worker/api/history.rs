//! The wire shapes of a function's history: replay, and where a state value came from.

use serde::{Deserialize, Serialize};

use super::{FunctionState, text_or_base64};
use crate::engine::history::Provenance;
use crate::engine::state::{StateValue, Versioned};
use crate::instance::{Replay, ReplayedMessage};
use crate::runtime::ProcessError;

/// What to replay: one message, or a range of one topic's messages.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplayRequest {
    /// The input topic (needed when the function has several).
    #[serde(default)]
    pub topic: Option<String>,
    /// The message's id, or the first of the range.
    pub message: String,
    /// The last message of the range (its id), included.
    #[serde(default)]
    pub last: Option<String>,
}

/// What a replay would do, committing nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayAnswer {
    /// The state the first message saw: `history` (as it was just before the function processed
    /// it), or `current` (the function has not processed it yet).
    pub state_before: String,
    /// The SHA-256 of the component replayed.
    pub code_digest: String,
    /// Whether the function is deterministic: then each message read the same clocks and random
    /// numbers as when it was first processed.
    pub deterministic: bool,
    /// Each message's results, in order.
    pub messages: Vec<ReplayedMessageAnswer>,
}

/// One replayed message's results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayedMessageAnswer {
    /// The message's topic.
    pub topic: String,
    /// Its id.
    pub message_id: String,
    /// Its output for the output topic, when UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Its output in base64, when not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_base64: Option<String>,
    /// The messages it published.
    pub published: Vec<PublishedAnswer>,
    /// Its log lines.
    pub logs: Vec<LogLineAnswer>,
    /// Each key it changed, before and after (`null`: absent).
    pub state: Vec<StateDiffAnswer>,
    /// The exception it raised, if any: then nothing it did would be kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exception: Option<ExceptionAnswer>,
    /// What it read that its first run may have read otherwise (`clock`, `random`), so that these
    /// results may differ from that run's; always empty for a deterministic function.
    pub may_differ: Vec<String>,
}

/// A message a replayed message published.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishedAnswer {
    /// The topic.
    pub topic: String,
    /// The key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The value, when UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value in base64, when not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

/// A log line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogLineAnswer {
    /// Its level: TRACE, DEBUG, INFO, WARN or ERROR.
    pub level: String,
    /// The line.
    pub line: String,
}

/// One key's change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateDiffAnswer {
    /// The key.
    pub key: String,
    /// Its value before the message (`null`: absent).
    pub before: Option<FunctionState>,
    /// Its value after (`null`: deleted).
    pub after: Option<FunctionState>,
}

/// An exception a replayed message raised.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExceptionAnswer {
    /// `user` (the function returned an error), `system` (a trap, or a limit) or `host` (the
    /// host's storage failed while the function ran).
    pub kind: String,
    /// What it said.
    pub message: String,
}

/// Who wrote a key's current value (`querystate --why`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateProvenance {
    /// The key.
    pub key: String,
    /// `function` (a commit of the function), `operator` (a putstate), or `unknown` (written
    /// before the history the engine still keeps).
    pub written_by: String,
    /// When the write committed, in milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<u64>,
    /// The input topic of the message whose processing wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// That message's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The instance that processed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<u32>,
    /// The SHA-256 of the component that processed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_digest: Option<String>,
}

impl StateProvenance {
    /// The wire form of what the history says of `key`.
    pub fn of(key: &str, provenance: Option<Provenance>) -> Self {
        let mut answer = Self {
            key: key.to_owned(),
            written_by: "unknown".into(),
            time: None,
            topic: None,
            message_id: None,
            instance_id: None,
            code_digest: None,
        };
        if let Some(provenance) = provenance {
            answer.time = Some(provenance.time);
            answer.written_by = "operator".into();
            if let Some(writer) = provenance.writer {
                answer.written_by = "function".into();
                answer.topic = Some(writer.topic.as_str().to_owned());
                answer.message_id = Some(writer.message_id);
                answer.instance_id = Some(writer.instance_id);
                answer.code_digest = Some(writer.code_digest);
            }
        }
        answer
    }
}

impl ReplayAnswer {
    /// The wire form of `replay`, made with the component whose SHA-256 is `code_digest`.
    pub fn of(replay: Replay, code_digest: &str) -> Self {
        Self {
            state_before: if replay.first_processed { "history" } else { "current" }.into(),
            code_digest: code_digest.to_owned(),
            deterministic: replay.deterministic,
            messages: replay
                .messages
                .into_iter()
                .map(|message| ReplayedMessageAnswer::of(message, replay.deterministic))
                .collect(),
        }
    }
}

impl ReplayedMessageAnswer {
    fn of(message: ReplayedMessage, deterministic: bool) -> Self {
        let may_differ = match deterministic {
            true => Vec::new(),
            false => [(message.reads.clock, "clock"), (message.reads.random, "random")]
                .into_iter()
                .filter(|(read, _)| *read)
                .map(|(_, what)| what.to_owned())
                .collect(),
        };
        let (output, output_base64) = message.output.map(text_or_base64).unwrap_or_default();
        let state_value = |key: &str, value: Option<StateValue>| {
            value.map(|value| FunctionState { version: None, ..FunctionState::of(key, Versioned::lasting(value, 0)) })
        };
        Self {
            topic: message.topic.as_str().to_owned(),
            message_id: message.message_id,
            output,
            output_base64,
            published: message
                .published
                .into_iter()
                .map(|(topic, published)| {
                    let (value, value_base64) = text_or_base64(published.value);
                    PublishedAnswer { topic: topic.as_str().to_owned(), key: published.key, value, value_base64 }
                })
                .collect(),
            logs: message
                .logs
                .into_iter()
                .map(|(level, line)| LogLineAnswer { level: crate::instance::level_name(level).to_owned(), line })
                .collect(),
            state: message
                .state
                .into_iter()
                .map(|diff| StateDiffAnswer {
                    before: state_value(&diff.key, diff.before),
                    after: state_value(&diff.key, diff.after),
                    key: diff.key,
                })
                .collect(),
            exception: message.exception.map(|error| match error {
                ProcessError::User(message) => ExceptionAnswer { kind: "user".into(), message },
                ProcessError::System(message) => ExceptionAnswer { kind: "system".into(), message },
                ProcessError::Host(message) => ExceptionAnswer { kind: "host".into(), message },
            }),
            may_differ,
        }
    }
}

/// Which dead letters to send back through the function.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedriveRequest {
    /// The dead-letter topic [default: the function's].
    #[serde(default)]
    pub from_dlq: Option<String>,
    /// Only the dead letters whose reason (their `ERROR` property) matches this regular expression.
    #[serde(default)]
    pub where_error: Option<String>,
    /// At most this many.
    #[serde(default)]
    pub limit: Option<u64>,
}

/// What a re-drive did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedriveAnswer {
    /// The dead-letter topic it read.
    pub dead_letter_topic: String,
    /// Dead letters sent back through the function.
    pub processed: u64,
    /// Those the function processed without an exception.
    pub succeeded: u64,
    /// Those that failed again and went back to the end of the dead-letter topic.
    pub dead_lettered_again: u64,
    /// Dead letters left where they were: not matching, past the limit, or newer than the re-drive.
    pub left: u64,
}
