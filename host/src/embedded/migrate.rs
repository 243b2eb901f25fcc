//! The layout of releases before the log: topics as sled trees of segments (`topic:NAME`, each
//! value consecutive messages under the sequence number of the first) and state changes in a
//! `state-log` tree. A data directory in that layout is converted when the store first opens it.
//!
//! The conversion writes every topic's messages, with their sequence numbers, into a new log in a
//! staging folder, applies the old state log to the functions' trees, and only then renames the
//! staging folder to the log's and drops the old trees; cursors and state trees keep their form.
//! A crash at any point leaves either the old layout (the staging folder is started again) or the
//! new log with old trees left over (dropped at the next open): nothing is lost or doubled.

use std::path::Path;

use super::journal::{Append, Step};
use super::state::{STATE_TREE_PREFIX, tree_batch};
use crate::engine::broker::MessageBody;
use crate::limits::DEFAULT_LOG_SEGMENT_BYTES;
use crate::names::TopicName;
use crate::seglog::SegmentLog;

const LEGACY_TOPIC_PREFIX: &str = "topic:";
const LEGACY_STATE_LOG_TREE: &str = "state-log";
/// Where the conversion writes the new log before it is complete.
const STAGING_SUFFIX: &str = "converting";

/// Converts the sled-only layout in `db` to a log in `log_dir`, if `db` is in that layout.
pub(super) fn convert_sled_layout(db: &sled::Db, log_dir: &Path) -> Result<(), String> {
    let legacy: Vec<sled::IVec> = db
        .tree_names()
        .into_iter()
        .filter(|name| name.starts_with(LEGACY_TOPIC_PREFIX.as_bytes()) || name == LEGACY_STATE_LOG_TREE.as_bytes())
        .collect();
    if legacy.is_empty() {
        return Ok(());
    }
    let failed = |what: &str, error: &dyn std::fmt::Display| {
        format!("converting the data directory from the sled layout of earlier releases: {what}: {error}")
    };
    if !log_dir.exists() {
        tracing::info!(
            "converting the data directory to the log layout: topics move from sled into {}",
            log_dir.display()
        );
        let staging = log_dir.with_extension(STAGING_SUFFIX);
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|error| failed("removing an unfinished conversion", &error))?;
        }
        let (log, _) = SegmentLog::open(&staging, DEFAULT_LOG_SEGMENT_BYTES)
            .map_err(|error| failed("opening the new log", &error))?;
        let mut end = 0;
        for name in &legacy {
            let Some(topic) = name.strip_prefix(LEGACY_TOPIC_PREFIX.as_bytes()) else { continue };
            let topic = std::str::from_utf8(topic)
                .ok()
                .and_then(|topic| TopicName::parse(topic).ok())
                .ok_or_else(|| failed("a topic tree's name", &String::from_utf8_lossy(name)))?;
            let tree = db.open_tree(name).map_err(|error| failed("opening a topic", &error))?;
            for entry in tree.iter() {
                let (key, value) = entry.map_err(|error| failed("reading a topic", &error))?;
                let first =
                    u64::from_be_bytes(<[u8; 8]>::try_from(&key[..]).map_err(|_| failed("a segment key", &topic))?);
                let bodies: Vec<MessageBody> = crate::codec::decode(&value)
                    .map_err(|error| failed(&format!("the segment at {first} of {topic}"), &error))?;
                let step = Step { appends: vec![Append::new(&topic, first, &bodies)], ..Step::default() };
                end = log
                    .submit_with(step.records(), super::journal::stamp)
                    .map_err(|error| failed("writing the new log", &error))?
                    .end;
            }
        }
        log.wait(end).map_err(|error| failed("writing the new log", &error))?;
        drop(log);
        apply_legacy_state_log(db).map_err(|error| failed("applying the state log", &error))?;
        std::fs::rename(&staging, log_dir).map_err(|error| failed("renaming the new log", &error))?;
        if let Some(parent) = log_dir.parent() {
            std::fs::File::open(parent)
                .and_then(|dir| dir.sync_all())
                .map_err(|error| failed("syncing the data directory", &error))?;
        }
    }
    for name in legacy {
        db.drop_tree(&name).map_err(|error| failed("dropping an old tree", &error))?;
    }
    db.flush().map(drop).map_err(|error| failed("flushing", &error))
}

/// Applies every record of the old state log to its function's tree, in id order: what a crash
/// left between a commit and its checkpoint.
fn apply_legacy_state_log(db: &sled::Db) -> Result<(), String> {
    let log = db.open_tree(LEGACY_STATE_LOG_TREE).map_err(|error| error.to_string())?;
    for entry in log.iter() {
        let (key, bytes) = entry.map_err(|error| error.to_string())?;
        let name = key.split(|byte| *byte == 0).next().unwrap_or_default();
        let name = String::from_utf8_lossy(name);
        let record: super::state::Record = crate::codec::decode(&bytes)
            .map_err(|error| format!("a state log record of {name} cannot be decoded: {error}"))?;
        let tree = db.open_tree(format!("{STATE_TREE_PREFIX}{name}")).map_err(|error| error.to_string())?;
        tree.apply_batch(tree_batch(record.iter().map(|(key, value)| (key, value.as_ref()))))
            .map_err(|error| error.to_string())?;
    }
    db.flush().map(drop).map_err(|error| error.to_string())
}
