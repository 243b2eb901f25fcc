//! A subscription's durable position in a topic: the mark before which everything is
//! acknowledged and the acknowledged ranges after it, as the log's steps carry it and the cursor
//! tree keeps it once checkpointed.

use std::collections::BTreeMap;

use crate::names::{SubscriptionName, TopicName};

/// Sequence numbers as disjoint, non-adjacent ranges `[start, end)`, keyed by start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct RangeSet(BTreeMap<u64, u64>);

impl RangeSet {
    pub(super) fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        if let Some((&before, &before_end)) = self.0.range(..=start).next_back()
            && before_end >= start
        {
            start = before;
            end = end.max(before_end);
            self.0.remove(&before);
        }
        while let Some((&after, &after_end)) = self.0.range(start..).next() {
            if after > end {
                break;
            }
            end = end.max(after_end);
            self.0.remove(&after);
        }
        self.0.insert(start, end);
    }

    pub(super) fn contains(&self, sequence: u64) -> bool {
        self.0.range(..=sequence).next_back().is_some_and(|(_, &end)| sequence < end)
    }

    /// The ranges, in order.
    pub(super) fn ranges(&self) -> Vec<(u64, u64)> {
        self.0.iter().map(|(&start, &end)| (start, end)).collect()
    }

    pub(super) fn from_ranges(ranges: Vec<(u64, u64)>) -> Self {
        Self(ranges.into_iter().collect())
    }

    /// Moves `mark` past the ranges that reach it, which it then covers.
    pub(super) fn advance(&mut self, mark: &mut u64) {
        while let Some((&start, &end)) = self.0.first_key_value() {
            if start > *mark {
                break;
            }
            *mark = (*mark).max(end);
            self.0.remove(&start);
        }
    }
}

/// The subscription and topic a cursor tree key names.
pub(super) fn parse_cursor_key(key: &[u8]) -> Option<(SubscriptionName, TopicName)> {
    let text = std::str::from_utf8(key).ok()?;
    let (subscription, topic) = text.split_once('\0')?;
    let mut parts = subscription.splitn(3, '/');
    let (tenant, namespace, local) = (parts.next()?, parts.next()?, parts.next()?);
    Some((SubscriptionName::new(tenant, namespace, local).ok()?, TopicName::parse(topic).ok()?))
}

pub(super) fn cursor_key(subscription: &SubscriptionName, topic: &TopicName) -> Vec<u8> {
    let subscription = subscription.to_string();
    let mut key = Vec::with_capacity(subscription.len() + 1 + topic.as_str().len());
    key.extend_from_slice(subscription.as_bytes());
    key.push(0);
    key.extend_from_slice(topic.as_str().as_bytes());
    key
}

pub(super) fn encode_cursor(mark: u64, acked: &RangeSet) -> Vec<u8> {
    crate::codec::encode(&(mark, acked.ranges()))
}

pub(super) fn decode_cursor(bytes: &[u8]) -> Result<(u64, RangeSet), String> {
    let (mark, ranges): (u64, Vec<(u64, u64)>) = crate::codec::decode(bytes).map_err(|error| error.to_string())?;
    Ok((mark, RangeSet::from_ranges(ranges)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_the_mark_moves_over_them() {
        let mut set = RangeSet::default();
        for (start, end) in [(5, 7), (9, 10), (7, 9), (2, 3)] {
            set.insert(start, end);
        }
        assert_eq!(set.0.iter().map(|(&s, &e)| (s, e)).collect::<Vec<_>>(), [(2, 3), (5, 10)]);
        assert!(set.contains(9) && !set.contains(10) && !set.contains(4));
        let mut mark = 3;
        set.advance(&mut mark);
        assert_eq!(mark, 3, "the mark does not jump a gap");
        set.insert(3, 5);
        set.advance(&mut mark);
        assert_eq!((mark, set.0.len()), (10, 0));
    }
}
