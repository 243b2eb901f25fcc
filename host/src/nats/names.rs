//! How fnhost's names become NATS names: stream, consumer, bucket, subject and key names allow
//! fewer characters than topics, subscriptions and state keys do, so every name is escaped
//! reversibly.

use base64::Engine as _;

use crate::names::TopicName;

/// Streams holding topics are named this followed by the topic's token.
pub const TOPIC_STREAM_PREFIX: &str = "FNT-";
/// Buckets holding function state are named this followed by the function's token.
pub const STATE_BUCKET_PREFIX: &str = "FNS-";

/// `name` with every byte outside `[A-Za-z0-9-]` written as `_` and two hex digits: a valid
/// stream, consumer, bucket and subject token, and reversible by [`untoken`].
pub fn token(name: &str) -> String {
    let mut token = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            token.push(byte as char);
        } else {
            token.push_str(&format!("_{byte:02x}"));
        }
    }
    token
}

/// The name [`token`] escaped, or `None` if `token` is not one.
pub fn untoken(token: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(token.len());
    let mut rest = token.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'_' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(first);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// The stream holding `topic`.
pub fn topic_stream(topic: &TopicName) -> String {
    format!("{TOPIC_STREAM_PREFIX}{}", token(topic.as_str()))
}

/// The topic a stream named `stream` holds, if it holds one.
pub fn stream_topic(stream: &str) -> Option<TopicName> {
    TopicName::parse(&untoken(stream.strip_prefix(TOPIC_STREAM_PREFIX)?)?).ok()
}

/// Every subject of `topic`'s stream starts with this.
pub fn topic_subject_prefix(topic: &TopicName) -> String {
    format!("fnt.{}", token(topic.as_str()))
}

/// The subject every entry of `topic` is published on. Key-shared consumers take their keys
/// from each entry rather than by filter subject, since an entry holds many keys.
pub fn entry_subject(topic: &TopicName) -> String {
    format!("{}.e", topic_subject_prefix(topic))
}

/// A key-value key for any string (state keys are arbitrary): `k_` and the URL-safe base64 of its bytes.
pub fn kv_key(key: &str) -> String {
    format!("k_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key))
}

/// The string [`kv_key`] encoded, if `key` is one.
pub fn kv_key_name(key: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(key.strip_prefix("k_")?).ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_survive_their_escaping() {
        for name in ["persistent://public/default/in", "a_b-c.d*e>f g", "", "ünï"] {
            let escaped = token(name);
            assert!(escaped.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"-_".contains(&byte)), "{escaped}");
            assert_eq!(untoken(&escaped).as_deref(), Some(name));
            assert_eq!(kv_key_name(&kv_key(name)).as_deref(), Some(name));
        }
        let topic = TopicName::parse("in").unwrap();
        assert_eq!(stream_topic(&topic_stream(&topic)), Some(topic));
        assert_eq!(stream_topic("KV_other"), None);
    }
}
