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

#[cfg(test)]
mod tests {
    use fnhost_guest::testing::MockContext;

    use super::*;

    #[test]
    fn a_logout_after_a_login_writes_the_session_and_forgets_the_login() {
        let mut context = MockContext::new();
        let mut function = SessionDuration;
        let login = r#"{"user_id": "user123", "event_type": "login", "timestamp": 1678886400}"#;
        let logout = r#"{"user_id": "user123", "event_type": "logout", "timestamp": 1678886420}"#;
        assert_eq!(context.process(&mut function, login).unwrap(), None);
        assert_eq!(context.acked(), 1);
        let output = context.process(&mut function, logout).unwrap();
        assert_eq!(output.as_deref(), Some(br#"{"user_id":"user123","duration":20}"#.as_slice()));
        assert_eq!(context.state("user123"), None);
    }

    #[test]
    fn a_logout_without_a_login_and_a_malformed_event_write_nothing_and_warn() {
        let mut context = MockContext::new();
        let logout = r#"{"user_id": "u1", "event_type": "logout", "timestamp": 5}"#;
        assert_eq!(context.process(&mut SessionDuration, logout).unwrap(), None);
        assert_eq!(context.process(&mut SessionDuration, "not json").unwrap(), None);
        let warnings = context.logs().into_iter().filter(|(level, _)| *level == fnhost_guest::Level::Warn).count();
        assert_eq!(warnings, 2);
    }
}
