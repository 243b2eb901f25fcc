//! `GET …/functions/{tenant}/{namespace}/{name}/logs`: a function's recent log lines, or with
//! `?follow=true` its lines as they are written, as server-sent events.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, ApiResult, Shared, bad_request, blocking, fqfn};
use crate::instance::{Follower, LiveLog, LogLine};
use crate::limits::{MAX_LOG_FOLLOWERS_PER_FUNCTION, MAX_LOG_LINES_PER_REQUEST};
use crate::worker::api::LogLines;

/// How many recent lines a request gets when it does not say.
const DEFAULT_TAIL: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct LogsQuery {
    /// Keep the answer open and send each new line.
    #[serde(default)]
    follow: bool,
    /// Only this instance's lines.
    instance_id: Option<u32>,
    /// Only lines after this sequence (a follower that reconnects).
    #[serde(default)]
    after: u64,
    /// At most this many of the lines already kept.
    tail: Option<usize>,
}

pub(super) async fn logs(
    State(worker): Shared,
    Path((tenant, namespace, name)): Path<(String, String, String)>,
    Query(query): Query<LogsQuery>,
) -> ApiResult<Response> {
    let fqfn = fqfn(&tenant, &namespace, &name)?;
    let tail = query.tail.unwrap_or(DEFAULT_TAIL);
    if tail > MAX_LOG_LINES_PER_REQUEST {
        return Err(bad_request(format!(
            "tail={tail} is more lines than a request gets (MAX_LOG_LINES_PER_REQUEST is {MAX_LOG_LINES_PER_REQUEST})"
        )));
    }
    let log = blocking(move || worker.live_log(&fqfn)).await?;
    let mut watch = log.watch();
    let newest = *watch.borrow_and_update();
    let lines = log.lines(query.after, query.instance_id, tail);
    if !query.follow {
        return Ok(Json(LogLines { lines }).into_response());
    }
    let Some(follower) = log.follow() else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{MAX_LOG_FOLLOWERS_PER_FUNCTION} clients already follow this function's log (MAX_LOG_FOLLOWERS_PER_FUNCTION); stop one, or read without follow"
            ),
        ));
    };
    let seen = lines.last().map_or(newest.max(query.after), |line| line.sequence);
    let following =
        Following { log, watch, _follower: follower, instance: query.instance_id, seen, ready: lines.into() };
    let events = futures_util::stream::unfold(following, |mut following| async move {
        let line = following.next().await?;
        let event = Event::default().id(line.sequence.to_string()).json_data(&line).unwrap_or_default();
        Some((Ok::<_, Infallible>(event), following))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

/// One follower's place in a function's log: the lines it has yet to send, and the last it took.
struct Following {
    log: Arc<LiveLog>,
    watch: tokio::sync::watch::Receiver<u64>,
    _follower: Follower,
    instance: Option<u32>,
    seen: u64,
    ready: VecDeque<LogLine>,
}

impl Following {
    /// The next line to send, waiting for one to be written; `None` if the log is gone.
    async fn next(&mut self) -> Option<LogLine> {
        loop {
            if let Some(line) = self.ready.pop_front() {
                self.seen = line.sequence;
                return Some(line);
            }
            self.watch.changed().await.ok()?;
            // A follower slower than the function misses the lines that left the ring meanwhile.
            self.ready = self.log.lines(self.seen, self.instance, MAX_LOG_LINES_PER_REQUEST).into();
        }
    }
}
