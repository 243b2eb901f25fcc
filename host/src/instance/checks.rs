//! What a function's messages, outputs and state keys must be: the size limits shared by the
//! context, the worker's REST producer and the CLI, and the properties an output carries.

use crate::engine::broker::OutMessage;
use crate::limits::{MAX_MESSAGE_KEY_LEN, MAX_MESSAGE_SIZE, MAX_PROPERTIES, MAX_PROPERTY_LEN, MAX_STATE_KEY_LEN};
use crate::runtime::{ContextError, GuestMessage};

/// The output property naming the topic of the input message the output came from (Pulsar's name).
pub const INPUT_TOPIC_PROPERTY: &str = "__pfn_input_topic__";
/// The output property naming the id of the input message the output came from (Pulsar's name).
pub const INPUT_MESSAGE_ID_PROPERTY: &str = "__pfn_input_msg_id__";

/// Properties a dead letter gets besides the message's own.
pub(super) const DEAD_LETTER_PROPERTIES: usize = 3;

/// `text` cut to at most `limit` bytes (at a character boundary), marked with `mark` if it was cut.
pub(super) fn cut(mut text: String, limit: usize, mark: &str) -> String {
    if text.len() > limit {
        let mut end = limit.saturating_sub(mark.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(mark);
    }
    text
}

pub(super) fn check_key(key: &str) -> Result<(), ContextError> {
    crate::engine::state::check_user_key(key).map_err(ContextError::InvalidArgument)?;
    if key.len() > MAX_STATE_KEY_LEN {
        return Err(ContextError::LimitExceeded(format!(
            "state key is {} bytes; the limit (MAX_STATE_KEY_LEN) is {MAX_STATE_KEY_LEN}",
            key.len()
        )));
    }
    Ok(())
}

/// Checks a message against the size limits; the error names the limit.
pub fn check_message(message: &OutMessage) -> Result<(), String> {
    let properties = message.properties.iter().map(|(name, value)| (name.as_str(), value.as_str()));
    check_parts(message.value.len(), message.key.as_deref(), message.properties.len(), properties)
}

/// [`check_message`] of a message with a value of `value_len` bytes, `key`, and `count` properties.
pub(super) fn check_parts<'a>(
    value_len: usize,
    key: Option<&str>,
    count: usize,
    properties: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), String> {
    if value_len > MAX_MESSAGE_SIZE {
        return Err(format!("message value is {value_len} bytes; the limit (MAX_MESSAGE_SIZE) is {MAX_MESSAGE_SIZE}"));
    }
    if let Some(key) = key
        && key.len() > MAX_MESSAGE_KEY_LEN
    {
        return Err(format!(
            "message key is {} bytes; the limit (MAX_MESSAGE_KEY_LEN) is {MAX_MESSAGE_KEY_LEN}",
            key.len()
        ));
    }
    if count > MAX_PROPERTIES {
        return Err(format!("message has {count} properties; the limit (MAX_PROPERTIES) is {MAX_PROPERTIES}"));
    }
    if properties.into_iter().any(|(name, value)| name.len() > MAX_PROPERTY_LEN || value.len() > MAX_PROPERTY_LEN) {
        return Err(format!("a property name or value is longer than MAX_PROPERTY_LEN ({MAX_PROPERTY_LEN}) bytes"));
    }
    Ok(())
}

/// Pulsar's properties naming the input a result came from; trigger looks for them.
pub(super) fn result_properties(origin: &GuestMessage) -> [(&'static str, &str); 2] {
    [(INPUT_TOPIC_PROPERTY, &origin.topic), (INPUT_MESSAGE_ID_PROPERTY, &origin.message_id)]
}
