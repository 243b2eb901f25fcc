//! A window function's settings as users write them (`windowConfig`), and their check into the
//! [`WindowSpec`] the windower runs: the one settings type, which flags, files and the REST API
//! all fill.

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::function::ProcessingGuarantee;
use crate::limits::{DEFAULT_WATERMARK_INTERVAL_MS, MAX_WINDOW_DURATION_MS, MAX_WINDOW_RECORDS};
use crate::names::TopicName;
use crate::window::{Extent, TimeBase, WindowConfig, WindowSpec};

/// A window function's settings, in Pulsar's names (`windowConfig`), each optional so that
/// documents layer field by field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WindowConfigSpec {
    /// Records per window (`--window-length-count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_length_count: Option<u64>,
    /// Milliseconds per window (`--window-length-duration-ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_length_duration_ms: Option<u64>,
    /// Records between two windows (`--sliding-interval-count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_interval_count: Option<u64>,
    /// Milliseconds between two windows (`--sliding-interval-duration-ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_interval_duration_ms: Option<u64>,
    /// Place records by their event time (`--event-time`); fnhost's stand-in for Pulsar's
    /// `timestampExtractorClassName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<bool>,
    /// Allowed lateness under event time, milliseconds (`--max-lag-ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag_ms: Option<u64>,
    /// Least time between two moves of the watermark, milliseconds (`--watermark-emit-interval-ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_emit_interval_ms: Option<u64>,
    /// Where records behind the watermark go (`--late-data-topic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_data_topic: Option<String>,
}

impl WindowConfigSpec {
    pub(super) fn resolve(&self, guarantee: ProcessingGuarantee) -> Result<WindowConfig, ConfigError> {
        let spec = self.window_spec().map_err(|error| ConfigError::new(error.to_string()))?;
        if guarantee == ProcessingGuarantee::Manual {
            return Err(ConfigError::new(
                "--processing-guarantees MANUAL does not apply to a window function: fnhost acknowledges a window function's records when it has stored them; leave it out or give ATLEAST_ONCE",
            ));
        }
        if self.late_data_topic.is_some() && self.event_time != Some(true) {
            return Err(ConfigError::new(
                "--late-data-topic applies to event time only (under processing time no record is late): add --event-time, or leave it out",
            ));
        }
        let late_data_topic = self.late_data_topic.as_deref().map(TopicName::parse).transpose()?;
        Ok(WindowConfig { spec, late_data_topic })
    }
}

/// Window settings that cannot work, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WindowSettingsError(String);

impl WindowConfigSpec {
    /// Checks the settings and makes them a [`WindowSpec`]: exactly one window length, at most
    /// one sliding interval, every value greater than zero and within its limit.
    pub fn window_spec(&self) -> Result<WindowSpec, WindowSettingsError> {
        let length = match (self.window_length_count, self.window_length_duration_ms) {
            (Some(count), None) => Extent::Count(count),
            (None, Some(ms)) => Extent::DurationMs(ms),
            (None, None) => {
                return Err(error(
                    "a window needs a length: give --window-length-count or --window-length-duration-ms",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(error(
                    "--window-length-count and --window-length-duration-ms both given: a window has one length, give one of them",
                ));
            }
        };
        let slide = match (self.sliding_interval_count, self.sliding_interval_duration_ms) {
            (Some(count), None) => Extent::Count(count),
            (None, Some(ms)) => Extent::DurationMs(ms),
            // Tumbling windows: each fires when the next begins.
            (None, None) => length,
            (Some(_), Some(_)) => {
                return Err(error(
                    "--sliding-interval-count and --sliding-interval-duration-ms both given: give one of them, or neither for tumbling windows",
                ));
            }
        };
        check(length, "--window-length-count", "--window-length-duration-ms")?;
        check(slide, "--sliding-interval-count", "--sliding-interval-duration-ms")?;
        let time = if self.event_time == Some(true) {
            let watermark_interval_ms = self.watermark_emit_interval_ms.unwrap_or(DEFAULT_WATERMARK_INTERVAL_MS);
            let max_lag_ms = self.max_lag_ms.unwrap_or(0);
            in_range("--watermark-emit-interval-ms", watermark_interval_ms, 1, MAX_WINDOW_DURATION_MS)?;
            in_range("--max-lag-ms", max_lag_ms, 0, MAX_WINDOW_DURATION_MS)?;
            TimeBase::Event { max_lag_ms, watermark_interval_ms }
        } else {
            for (flag, value) in
                [("--max-lag-ms", self.max_lag_ms), ("--watermark-emit-interval-ms", self.watermark_emit_interval_ms)]
            {
                if value.is_some() {
                    return Err(error(format!(
                        "{flag} applies to event time only: add --event-time, or leave {flag} out"
                    )));
                }
            }
            TimeBase::Processing
        };
        Ok(WindowSpec { length, slide, time })
    }
}

fn check(extent: Extent, count_flag: &str, duration_flag: &str) -> Result<(), WindowSettingsError> {
    match extent {
        Extent::Count(count) => in_range(count_flag, count, 1, MAX_WINDOW_RECORDS),
        Extent::DurationMs(ms) => in_range(duration_flag, ms, 1, MAX_WINDOW_DURATION_MS),
    }
}

fn in_range(flag: &str, value: u64, low: u64, high: u64) -> Result<(), WindowSettingsError> {
    if (low..=high).contains(&value) {
        Ok(())
    } else {
        Err(error(format!("{flag} {value} is out of range: give {low} to {high}")))
    }
}

fn error(reason: impl Into<String>) -> WindowSettingsError {
    WindowSettingsError(reason.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[expect(clippy::type_complexity, reason = "a table of cases reads best inline")]
    fn settings_need_exactly_one_length_and_values_above_zero() {
        let settings = |edit: fn(&mut WindowConfigSpec)| {
            let mut settings = WindowConfigSpec::default();
            edit(&mut settings);
            settings.window_spec()
        };
        let tumbling = settings(|s| s.window_length_count = Some(10)).unwrap();
        assert_eq!(
            (tumbling.length, tumbling.slide, tumbling.time),
            (Extent::Count(10), Extent::Count(10), TimeBase::Processing)
        );
        let sliding = settings(|s| {
            s.window_length_duration_ms = Some(10_000);
            s.sliding_interval_duration_ms = Some(5_000);
            s.event_time = Some(true);
        })
        .unwrap();
        assert_eq!(sliding.slide, Extent::DurationMs(5_000));
        assert_eq!(
            sliding.time,
            TimeBase::Event { max_lag_ms: 0, watermark_interval_ms: DEFAULT_WATERMARK_INTERVAL_MS }
        );

        let refused: [(fn(&mut WindowConfigSpec), &str); 7] = [
            (|_| {}, "a window needs a length"),
            (|s| (s.window_length_count, s.window_length_duration_ms) = (Some(1), Some(1)), "a window has one length"),
            (|s| s.window_length_count = Some(0), "--window-length-count 0 is out of range"),
            (|s| s.window_length_count = Some(MAX_WINDOW_RECORDS + 1), "--window-length-count 100001 is out of range"),
            (
                |s| (s.window_length_count, s.sliding_interval_duration_ms) = (Some(5), Some(0)),
                "--sliding-interval-duration-ms 0 is out of range",
            ),
            (
                |s| {
                    (s.window_length_count, s.sliding_interval_count, s.sliding_interval_duration_ms) =
                        (Some(5), Some(1), Some(1))
                },
                "give one of them, or neither for tumbling windows",
            ),
            (
                |s| (s.window_length_count, s.max_lag_ms) = (Some(5), Some(100)),
                "--max-lag-ms applies to event time only",
            ),
        ];
        for (edit, expected) in refused {
            let error = settings(edit).unwrap_err().to_string();
            assert!(error.contains(expected), "`{error}` does not say `{expected}`");
        }
    }
}
