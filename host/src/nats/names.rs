//! How fnhost's names become NATS names: stream, consumer, bucket, subject and key names allow
//! fewer characters than topics, subscriptions and state keys do, so every name is escaped
//! reversibly, and subjects carry the key-shared routing tokens.

use base64::Engine as _;

use crate::limits::MAX_PARALLELISM;
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

/// The subject a message with key-shared routing hash `route` is published on: one token per
/// possible instance count `n` (2 to MAX_PARALLELISM), holding `route % n`. A consumer of key
/// share `i` of `n` then selects its messages with one filter subject, which is all NATS 2.9 offers.
pub fn message_subject(topic: &TopicName, route: u64) -> String {
    let mut subject = topic_subject_prefix(topic);
    for count in 2..=u64::from(MAX_PARALLELISM) {
        subject.push('.');
        subject.push_str(&(route % count).to_string());
    }
    subject
}

/// The filter subject of key share `share` of `count` in `topic`'s stream.
pub fn key_share_filter(topic: &TopicName, (share, count): (u32, u32)) -> String {
    let mut filter = topic_subject_prefix(topic);
    if count <= 1 {
        filter.push_str(".>");
        return filter;
    }
    for position in 2..=MAX_PARALLELISM {
        filter.push('.');
        if position == count {
            filter.push_str(&share.to_string());
        } else {
            filter.push('*');
        }
    }
    filter
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

/// True when `subject` matches the filter subject `filter` (`*` one token, a final `>` one or more).
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for filter_token in filter.split('.') {
        match (filter_token, subject_tokens.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(_)) => {}
            (expected, Some(token)) if expected == token => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
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

    /// The filter of exactly one share of each count matches a subject, and it is the route's.
    #[test]
    fn each_subject_matches_the_filter_of_its_routes_share_only() {
        let topic = TopicName::parse("in").unwrap();
        for route in [0_u64, 1, 7, 1_000_003, u64::MAX] {
            let subject = message_subject(&topic, route);
            for count in [1_u32, 2, 3, 5, 64] {
                let owners: Vec<u32> = (0..count)
                    .filter(|&share| subject_matches(&key_share_filter(&topic, (share, count)), &subject))
                    .collect();
                assert_eq!(owners, vec![(route % u64::from(count)) as u32], "route {route}, count {count}");
            }
        }
    }
}
