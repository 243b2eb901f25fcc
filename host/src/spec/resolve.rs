//! From a spec to the config an instance runs: [`FunctionSpec::resolve`] applies the defaults and
//! checks every value against its limit, and the parsers of sizes and durations it uses.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{ConfigError, FunctionSpec, MIN_RAM_BYTES, RamSize, pulsar};
use crate::engine::broker::Inputs;
use crate::function::{FunctionConfig, Ordering, ProcessingGuarantee, SharedLogLevel};
use crate::limits::{
    DEFAULT_ACK_TIMEOUT_MS, DEFAULT_MAX_MESSAGE_RETRIES, DEFAULT_RAM_BYTES, DEFAULT_TIMEOUT_MS, MAX_ACK_TIMEOUT_MS,
    MAX_BATCH_MESSAGES, MAX_CONFIG_SIZE, MAX_MESSAGE_RETRIES, MAX_PARALLELISM, MAX_RAM_BYTES, MAX_STATE_TTL_MS,
    MAX_SUBSCRIPTION_TOPICS, MAX_TIMEOUT_MS,
};
use crate::names::{SubscriptionName, TopicAccess, TopicName, TopicPattern};
use crate::runtime::InstanceLimits;

impl FunctionSpec {
    /// Applies the defaults and checks every value; the error names the flag and what to give.
    pub fn resolve(&self) -> Result<FunctionConfig, ConfigError> {
        let fqfn = self.fqfn()?;
        let pattern = self
            .topics_pattern
            .as_deref()
            .map(|text| TopicPattern::parse(text, fqfn.tenant(), fqfn.namespace()))
            .transpose()?;
        let topics =
            self.inputs.iter().flatten().map(|name| TopicName::parse(name.trim())).collect::<Result<Vec<_>, _>>()?;
        if topics.len() > MAX_SUBSCRIPTION_TOPICS {
            return Err(ConfigError::new(format!(
                "--inputs names {} topics; the limit (MAX_SUBSCRIPTION_TOPICS) is {MAX_SUBSCRIPTION_TOPICS}",
                topics.len()
            )));
        }
        if topics.is_empty() && pattern.is_none() {
            return Err(ConfigError::new(
                "the function has no inputs: give --inputs (inputs) or --topics-pattern (topicsPattern)",
            ));
        }
        let topic = |name: &Option<String>| name.as_deref().map(TopicName::parse).transpose();
        let memory_bytes = match self.resources.as_ref().and_then(|resources| resources.ram.as_ref()) {
            None => DEFAULT_RAM_BYTES,
            Some(RamSize::Bytes(bytes)) => check_ram(*bytes, &bytes.to_string())?,
            Some(RamSize::Text(text)) => parse_ram(text)?,
        };
        let timeout_ms = self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        in_range("--timeout-ms", timeout_ms, 1, MAX_TIMEOUT_MS, "milliseconds")?;
        let parallelism = self.parallelism.unwrap_or(1);
        in_range("--parallelism", parallelism.into(), 1, MAX_PARALLELISM.into(), "(MAX_PARALLELISM)")?;
        let max_message_retries = self.max_message_retries.unwrap_or(DEFAULT_MAX_MESSAGE_RETRIES);
        in_range(
            "--max-message-retries",
            max_message_retries.into(),
            0,
            MAX_MESSAGE_RETRIES.into(),
            "(MAX_MESSAGE_RETRIES)",
        )?;
        let ack_timeout_ms = self.ack_timeout_ms.unwrap_or(DEFAULT_ACK_TIMEOUT_MS);
        in_range("--ack-timeout-ms", ack_timeout_ms, 1, MAX_ACK_TIMEOUT_MS, "milliseconds")?;
        let state_ttl = self.state_ttl.as_deref().map(parse_state_ttl).transpose()?;
        let batch_size = self.batch_size.unwrap_or(MAX_BATCH_MESSAGES);
        in_range("--batch-size", batch_size as u64, 1, MAX_BATCH_MESSAGES as u64, "(MAX_BATCH_MESSAGES)")?;
        let ordering = match (self.retain_ordering.unwrap_or(false), self.retain_key_ordering.unwrap_or(false)) {
            (true, true) => {
                return Err(ConfigError::new(
                    "--retain-ordering (retainOrdering) cannot be used with --retain-key-ordering (retainKeyOrdering): choose one",
                ));
            }
            (true, false) => Ordering::Retain,
            (false, true) => Ordering::RetainKey,
            (false, false) => Ordering::Unordered,
        };
        let user_config = match &self.user_config {
            Some(map) => {
                let size = serde_json::to_string(map).map_or(0, |text| text.len());
                if size > MAX_CONFIG_SIZE {
                    return Err(ConfigError::new(format!(
                        "--user-config is {size} bytes; the limit (MAX_CONFIG_SIZE) is {MAX_CONFIG_SIZE}"
                    )));
                }
                map.iter().map(|(key, value)| (key.clone(), value.to_string())).collect()
            }
            None => BTreeMap::new(),
        };
        let secrets = self
            .secrets
            .iter()
            .flatten()
            .map(|(key, value)| match value {
                serde_json::Value::String(text) => Ok((key.clone(), text.clone())),
                other => {
                    Err(ConfigError::new(format!("--secrets: the value of `{key}` must be a string, not {other}")))
                }
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        pulsar::notes(self)?;
        let guarantee = match (self.processing_guarantees, self.auto_ack) {
            (None | Some(ProcessingGuarantee::Manual), Some(false)) => ProcessingGuarantee::Manual,
            (Some(other), Some(false)) => {
                return Err(ConfigError::new(format!(
                    "--auto-ack false (autoAck) means MANUAL acknowledgement, which contradicts --processing-guarantees {}: give one of them",
                    serde_json::json!(other).as_str().unwrap_or_default()
                )));
            }
            (guarantee, _) => guarantee.unwrap_or(ProcessingGuarantee::AtLeastOnce),
        };
        Ok(FunctionConfig {
            subscription: match &self.sub_name {
                Some(local) => SubscriptionName::new(fqfn.tenant(), fqfn.namespace(), local).map_err(|error| {
                    ConfigError::new(format!(
                        "--subs-name (subName): {error}; it names a subscription inside the function's own namespace"
                    ))
                })?,
                None => SubscriptionName::of_function(&fqfn),
            },
            dead_letter_topic: match topic(&self.dead_letter_topic)? {
                Some(topic) => topic,
                None => fqfn.default_dead_letter_topic(),
            },
            inputs: Inputs { topics, pattern },
            output: topic(&self.output)?,
            log_topic: topic(&self.log_topic)?,
            initial_position: self.subscription_position.unwrap_or_default(),
            user_config,
            secrets,
            limits: InstanceLimits { memory_bytes, timeout: Duration::from_millis(timeout_ms) },
            log_level: SharedLogLevel::new(self.log_level()),
            state_ttl,
            ordering,
            parallelism,
            max_message_retries,
            ack_timeout: Duration::from_millis(ack_timeout_ms),
            batch_size,
            window: self.window_config.as_ref().map(|window| window.resolve(guarantee)).transpose()?,
            guarantee,
            fqfn,
            topic_access: TopicAccess::Any,
            deterministic: self.deterministic.unwrap_or(false),
        })
    }
}

fn in_range(flag: &str, value: u64, low: u64, high: u64, unit: &str) -> Result<(), ConfigError> {
    if (low..=high).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(format!("{flag} {value} is out of range: give {low} to {high} {unit}")))
    }
}

/// Parses `--ram`: bytes, or a number with K, M or G (binary units, an optional trailing `i` or `B`).
pub fn parse_ram(text: &str) -> Result<u64, ConfigError> {
    let not_a_size = || {
        ConfigError::new(format!(
            "--ram (--memory) `{text}` is not a size: give bytes or a number with K, M or G, such as 128M"
        ))
    };
    let trimmed = text.trim().trim_end_matches(['B', 'b']).trim_end_matches('i');
    let (digits, unit) = match trimmed.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => trimmed.split_at(at),
        None => (trimmed, ""),
    };
    let multiplier: u64 = match unit.to_ascii_uppercase().as_str() {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return Err(not_a_size()),
    };
    let bytes = digits.parse::<u64>().ok().and_then(|n| n.checked_mul(multiplier)).ok_or_else(not_a_size)?;
    check_ram(bytes, text)
}

fn check_ram(bytes: u64, text: &str) -> Result<u64, ConfigError> {
    if (MIN_RAM_BYTES..=MAX_RAM_BYTES).contains(&bytes) {
        Ok(bytes)
    } else {
        Err(ConfigError::new(format!(
            "--ram (--memory) `{text}` is out of range: give 1M to 4G (the default is {}M)",
            DEFAULT_RAM_BYTES >> 20
        )))
    }
}

/// A time to live as `--state-ttl` takes it: a number of seconds, or a number with ms, s, m, h
/// or d; from 1 ms to [`MAX_STATE_TTL_MS`].
pub(super) fn parse_state_ttl(given: &str) -> Result<Duration, ConfigError> {
    let bad = || {
        ConfigError::new(format!(
            "--state-ttl (stateTtl) `{given}` is not a time to live: give seconds, or a number with ms, s, m, h or d (90s, 30m, 1h, 7d), up to ten years (MAX_STATE_TTL_MS)"
        ))
    };
    let given = given.trim();
    let at = given.find(|c: char| !c.is_ascii_digit()).unwrap_or(given.len());
    let number: u64 = given[..at].parse().map_err(|_| bad())?;
    let unit_ms = match &given[at..] {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    match number.checked_mul(unit_ms) {
        Some(ms @ 1..=MAX_STATE_TTL_MS) => Ok(Duration::from_millis(ms)),
        _ => Err(bad()),
    }
}
