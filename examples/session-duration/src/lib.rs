//! session-duration: the seed's session tracker, with managed state.
//!
//! Input: JSON events `{"user_id": "...", "event_type": "login" | "logout" | ..., "timestamp": seconds}`.
//! On login it stores the timestamp under the user id; on logout it logs the session's duration,
//! writes `{"user_id": ..., "duration": ...}` to the output topic and deletes the state.
//! Other event types are ignored; malformed records are logged as warnings and skipped.
//!
//! Run it:
//! ```text
//! cargo build --target wasm32-wasip2 --profile guest -p session-duration
//! fnhost topics produce input-topic -m '{"user_id": "user123", "event_type": "login", "timestamp": 1678886400}'
//! fnhost localrun --wasm target/wasm32-wasip2/guest/session_duration.wasm \
//!     --name session-duration-calculator --inputs input-topic --output sessions --until-idle
//! ```

use fnhost_guest::{Context, Error, Function, Json};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Event {
    user_id: Option<String>,
    event_type: Option<String>,
    timestamp: Option<i64>,
}

#[derive(Serialize)]
struct SessionEnded {
    user_id: String,
    duration: i64,
}

#[derive(Default)]
struct SessionDuration;

impl Function for SessionDuration {
    type Input = String;
    type Output = Option<Json<SessionEnded>>;

    fn process(&mut self, data: String, ctx: &mut Context) -> Result<Self::Output, Error> {
        // Only --processing-guarantees MANUAL waits for this; like every effect, the acknowledgement
        // is kept only if processing succeeds.
        ctx.ack();
        let event = serde_json::from_str::<Event>(&data).ok();
        let Some(Event { user_id: Some(user_id), event_type: Some(event_type), timestamp: Some(timestamp) }) = event
        else {
            ctx.warn(format_args!("Skipping malformed record: {data}"));
            return Ok(None);
        };
        let state = ctx.state();
        match event_type.as_str() {
            "login" => {
                state.put(&user_id, timestamp.to_string())?;
                ctx.info(format_args!("User {user_id} logged in at {timestamp}"));
                Ok(None)
            }
            "logout" => match state.get_string(&user_id)? {
                Some(login) => {
                    let duration = timestamp - login.parse::<i64>()?;
                    ctx.info(format_args!("User {user_id} session duration: {duration} seconds"));
                    state.delete(&user_id)?;
                    Ok(Some(Json(SessionEnded { user_id, duration })))
                }
                None => {
                    ctx.warn(format_args!("User {user_id} logged out without a prior login."));
                    Ok(None)
                }
            },
            _ => Ok(None),
        }
    }
}

fnhost_guest::export!(SessionDuration);
