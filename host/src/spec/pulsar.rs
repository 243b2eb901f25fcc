//! What fnhost does with each of pulsar-admin's function flags and `FunctionConfig` fields that
//! it has no feature of its own for: one table, read by the config check, the CLI's notes, the
//! README's table (a test compares them) and the tests.
//!
//! A Pulsar script or config file runs unchanged where the meaning carries over; where it does
//! not, the flag is accepted with a note that says what fnhost does instead, or refused with the
//! reason and the fnhost way. None is silently ignored, and none is "unexpected".

use serde::{Deserialize, Serialize};

use super::{ConfigError, FunctionSpec};

/// Pulsar's `FunctionConfig` fields that fnhost has no feature for ([`PULSAR_FLAGS`]
/// says what it does with each), kept as given so that a config read back shows them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PulsarFields {
    /// `--state-storage-config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_storage_config: Option<serde_json::Value>,
    /// `--producer-config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer_config: Option<serde_json::Value>,
    /// `--batch-builder`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_builder: Option<String>,
    /// `--forward-source-message-property`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_source_message_property: Option<bool>,
    /// `--max-pending-async-requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_async_requests: Option<u64>,
    /// `--custom-runtime-options`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_runtime_options: Option<String>,
    /// Pulsar's process runtime flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_flags: Option<String>,
    /// `--update-auth-data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_auth_data: Option<bool>,
    /// `--jar` (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jar: Option<String>,
    /// `--go` (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub go: Option<String>,
    /// `--function-type` (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_type: Option<String>,
    /// `--custom-serde-inputs` (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_serde_inputs: Option<serde_json::Value>,
    /// `--custom-schema-inputs` (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_schema_inputs: Option<serde_json::Value>,
    /// `--custom-schema-outputs` (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_schema_outputs: Option<serde_json::Value>,
    /// `--output-serde-classname` (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_serde_class_name: Option<String>,
    /// `--schema-type` (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema_type: Option<String>,
    /// `--input-type-class-name` (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_type_class_name: Option<String>,
    /// `--output-type-class-name` (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_type_class_name: Option<String>,
    /// `--input-specs` (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_specs: Option<serde_json::Value>,
    /// `--skip-to-latest` (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_to_latest: Option<bool>,
    /// `--expose-pulsar-admin-client-enabled` (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose_pulsar_admin_client_enabled: Option<bool>,
}

/// What fnhost does with a Pulsar flag or field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It takes effect, as described.
    Effect(&'static str),
    /// It is accepted and kept, but changes nothing; the note says what fnhost does instead.
    Noted(&'static str),
    /// It is refused: the reason, and the fnhost way.
    Refused(&'static str),
}

/// One of pulsar-admin's flags, its field in `--function-config-file` (a dotted path for nested
/// fields), and what fnhost does with it.
#[derive(Clone, Copy, Debug)]
pub struct PulsarFlag {
    /// The flag, as pulsar-admin spells it.
    pub flag: &'static str,
    /// The `FunctionConfig` field, in camelCase.
    pub field: &'static str,
    /// What fnhost does with it.
    pub outcome: Outcome,
}

const SERDE: &str = "fnhost has no schema registry and no SerDe classes: the function gets each payload as bytes and returns bytes; decode and encode in the function (the Rust SDK's Input and Output types, JSON in Python and JavaScript) and leave this out";

/// Every Pulsar flag whose meaning differs in fnhost. Flags fnhost shares with Pulsar
/// (`--inputs`, `--output`, `--parallelism`, `--ram`, …) behave as documented in `--help`.
pub const PULSAR_FLAGS: &[PulsarFlag] = &[
    PulsarFlag {
        flag: "--memory",
        field: "resources.ram",
        outcome: Outcome::Effect("another name for --ram: the memory limit of each instance's sandbox"),
    },
    PulsarFlag {
        flag: "--auto-ack",
        field: "autoAck",
        outcome: Outcome::Effect(
            "false means --processing-guarantees MANUAL, as in Pulsar: the function acknowledges each message itself; true is the default",
        ),
    },
    PulsarFlag {
        flag: "--cleanup-subscription",
        field: "cleanupSubscription",
        outcome: Outcome::Effect("whether deleting the function deletes its subscription (default true)"),
    },
    PulsarFlag {
        flag: "--cpu",
        field: "resources.cpu",
        outcome: Outcome::Noted(
            "--cpu is not enforced: each instance is one thread, and fnhost bounds its CPU with --timeout-ms per message and a rest after each trap or timeout (MAX_COOL_DOWN_FACTOR)",
        ),
    },
    PulsarFlag {
        flag: "--disk",
        field: "resources.disk",
        outcome: Outcome::Noted(
            "--disk is not enforced: a function has no disk; its state is bounded by MAX_STATE_VALUE_SIZE per value and MAX_WRITTEN_BYTES_PER_MESSAGE per message",
        ),
    },
    PulsarFlag {
        flag: "--state-storage-config",
        field: "stateStorageConfig",
        outcome: Outcome::Noted(
            "the state storage's type is fnhost's to choose: function state lives in the worker's engine (sled in the data directory, or a NATS key-value bucket in cluster mode), whatever type is named",
        ),
    },
    PulsarFlag {
        flag: "--producer-config",
        field: "producerConfig",
        outcome: Outcome::Noted(
            "there is no producer to configure: a function's outputs are written in the commit of their input's batch",
        ),
    },
    PulsarFlag {
        flag: "--batch-builder",
        field: "batchBuilder",
        outcome: Outcome::Noted(
            "there is no producer batching: a function's outputs are written in the commit of their input's batch",
        ),
    },
    PulsarFlag {
        flag: "--forward-source-message-property",
        field: "forwardSourceMessageProperty",
        outcome: Outcome::Noted(
            "a result carries its input's topic and id (__pfn_input_topic__, __pfn_input_msg_id__), not the input's other properties; publish with properties to forward them",
        ),
    },
    PulsarFlag {
        flag: "--max-pending-async-requests",
        field: "maxPendingAsyncRequests",
        outcome: Outcome::Noted(
            "a function processes one message at a time and returns its result; there are no async requests",
        ),
    },
    PulsarFlag {
        flag: "--custom-runtime-options",
        field: "customRuntimeOptions",
        outcome: Outcome::Noted(
            "every instance runs in a wasmtime sandbox inside the worker, with no runtime to customise; its limits are --ram and --timeout-ms",
        ),
    },
    PulsarFlag {
        flag: "--runtime-flags",
        field: "runtimeFlags",
        outcome: Outcome::Noted(
            "every instance runs in a wasmtime sandbox inside the worker, with no process to pass flags to; its limits are --ram and --timeout-ms",
        ),
    },
    PulsarFlag {
        flag: "--update-auth-data",
        field: "updateAuthData",
        outcome: Outcome::Noted("functions carry no authentication data in fnhost: nothing to update"),
    },
    PulsarFlag {
        flag: "--jar",
        field: "jar",
        outcome: Outcome::Refused(
            "Java functions cannot run as WebAssembly components; write the function in Rust, Python or JavaScript (`fnhost new`) and give --wasm, --py or --js",
        ),
    },
    PulsarFlag {
        flag: "--go",
        field: "go",
        outcome: Outcome::Refused(
            "fnhost has no Go SDK yet; write the function in Rust, Python or JavaScript (`fnhost new`), or give any component of wit/function.wit with --wasm",
        ),
    },
    PulsarFlag {
        flag: "--function-type",
        field: "functionType",
        outcome: Outcome::Refused(
            "fnhost has no built-in functions; give the function's code with --wasm, --py or --js",
        ),
    },
    PulsarFlag { flag: "--custom-serde-inputs", field: "customSerdeInputs", outcome: Outcome::Refused(SERDE) },
    PulsarFlag { flag: "--custom-schema-inputs", field: "customSchemaInputs", outcome: Outcome::Refused(SERDE) },
    PulsarFlag { flag: "--custom-schema-outputs", field: "customSchemaOutputs", outcome: Outcome::Refused(SERDE) },
    PulsarFlag { flag: "--output-serde-classname", field: "outputSerdeClassName", outcome: Outcome::Refused(SERDE) },
    PulsarFlag { flag: "--schema-type", field: "outputSchemaType", outcome: Outcome::Refused(SERDE) },
    PulsarFlag { flag: "--input-type-class-name", field: "inputTypeClassName", outcome: Outcome::Refused(SERDE) },
    PulsarFlag { flag: "--output-type-class-name", field: "outputTypeClassName", outcome: Outcome::Refused(SERDE) },
    PulsarFlag {
        flag: "--input-specs",
        field: "inputSpecs",
        outcome: Outcome::Refused(
            "input specs carry per-topic schemas, SerDe classes and consumer settings, which fnhost does not have; give the topics with --inputs or --topics-pattern",
        ),
    },
    PulsarFlag {
        flag: "--skip-to-latest",
        field: "skipToLatest",
        outcome: Outcome::Refused(
            "fnhost never skips messages a subscription has not processed; a new subscription starts where --subs-position says",
        ),
    },
    PulsarFlag {
        flag: "--expose-pulsar-admin-client-enabled",
        field: "exposePulsarAdminClientEnabled",
        outcome: Outcome::Refused(
            "a function reaches only its context (state, publish, logs, metrics), never an admin client; manage functions with `fnhost functions`",
        ),
    },
];

/// The entry of `field`, if the table has one.
fn entry(field: &str) -> Option<&'static PulsarFlag> {
    PULSAR_FLAGS.iter().find(|flag| flag.field == field)
}

/// Whether `value` says something: a field given as `false` or empty says nothing to refuse or note.
fn says_something(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Null | serde_json::Value::Bool(false) => false,
        serde_json::Value::String(text) => !text.is_empty(),
        serde_json::Value::Array(items) => !items.is_empty(),
        serde_json::Value::Object(fields) => !fields.is_empty(),
        _ => true,
    }
}

/// The notes for the Pulsar fields `spec` sets that change nothing in fnhost, or the reason it
/// cannot run if it sets one fnhost refuses.
pub fn notes(spec: &FunctionSpec) -> Result<Vec<String>, ConfigError> {
    let mut given: Vec<(String, serde_json::Value)> = Vec::new();
    let serde_json::Value::Object(fields) = serde_json::json!(spec) else {
        unreachable!("a FunctionSpec serializes to an object")
    };
    for (field, value) in fields {
        match (field.as_str(), value) {
            ("resources", serde_json::Value::Object(resources)) => {
                given.extend(resources.into_iter().map(|(name, value)| (format!("resources.{name}"), value)));
            }
            (_, value) => given.push((field, value)),
        }
    }
    let mut notes = Vec::new();
    for (field, value) in given {
        let Some(flag) = entry(&field) else { continue };
        if !says_something(&value) {
            continue;
        }
        match flag.outcome {
            Outcome::Effect(_) => {}
            Outcome::Noted(note) => notes.push(format!("{} ({field}): {note}", flag.flag)),
            Outcome::Refused(reason) => {
                return Err(ConfigError::new(format!("{} ({field}) is not supported: {reason}", flag.flag)));
            }
        }
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_of_the_table_is_a_field_of_the_config_and_each_outcome_applies() {
        for flag in PULSAR_FLAGS {
            let (document, shown) = match flag.field.split_once('.') {
                Some((outer, inner)) => (format!("{{\"{outer}\": {{\"{inner}\": 1}}}}"), flag.field),
                None => (format!("{{\"{}\": \"x\"}}", flag.field), flag.field),
            };
            let spec: Result<FunctionSpec, _> = serde_json::from_str(&document);
            let spec = match spec {
                Ok(spec) => spec,
                // Typed fields (booleans, numbers) refuse a string: give them a value of their type.
                Err(_) => serde_json::from_str(&document.replace("\"x\"", "true"))
                    .or_else(|_| serde_json::from_str(&document.replace("\"x\"", "1")))
                    .unwrap_or_else(|error| panic!("{shown} is not a config field: {error}")),
            };
            let result = notes(&spec);
            match flag.outcome {
                Outcome::Effect(_) => assert_eq!(result.unwrap(), Vec::<String>::new(), "{shown}"),
                Outcome::Noted(note) => assert!(result.unwrap().iter().any(|line| line.contains(note)), "{shown}"),
                Outcome::Refused(reason) => {
                    let error = result.unwrap_err().to_string();
                    assert!(error.contains(flag.flag) && error.contains(reason), "{shown}: {error}");
                }
            }
        }
    }

    #[test]
    fn the_readme_table_is_this_table() {
        let readme = include_str!("../../../README.md");
        let rows: Vec<&str> = readme.lines().filter(|line| line.starts_with("| `--")).collect();
        for flag in PULSAR_FLAGS {
            let (kind, text) = match flag.outcome {
                Outcome::Effect(text) => ("takes effect", text),
                Outcome::Noted(text) => ("noted", text),
                Outcome::Refused(text) => ("refused", text),
            };
            let row = format!("| `{}` | `{}` | {kind}: {text} |", flag.flag, flag.field);
            assert!(rows.contains(&row.as_str()), "README.md lacks or differs from:\n{row}");
        }
        let table = rows.iter().filter(|row| {
            row.contains(" | takes effect: ") || row.contains(" | noted: ") || row.contains(" | refused: ")
        });
        assert_eq!(table.count(), PULSAR_FLAGS.len(), "README.md has a row the table has not");
    }

    #[test]
    fn a_field_given_as_false_or_empty_is_neither_noted_nor_refused() {
        let spec: FunctionSpec =
            serde_json::from_str(r#"{"skipToLatest": false, "customSerdeInputs": {}, "jar": ""}"#).unwrap();
        assert_eq!(notes(&spec).unwrap(), Vec::<String>::new());
    }
}
