//! __NAME__: a session-duration function, the starting point `fnhost new` gives.
//!
//! Input: JSON events `{"user_id": ..., "event_type": "login" | "logout" | ..., "timestamp": seconds}`.
//! On login it keeps the timestamp in the function's state; on logout it logs the session's
//! duration, writes `{"user_id": ..., "duration": ...}` to the output topic and forgets the login.
//!
//! Build: `cargo build --release --target wasm32-wasip2`
//! Run:   `fnhost localrun --wasm target/wasm32-wasip2/release/__MODULE__.wasm --inputs input-topic --output sessions --name __NAME__`
//! Test:  `cargo test`

use fnhost_guest::{Context, Error, Function, Json};
use serde::{Deserialize, Serialize};

/// An event as producers write it; any field may be missing.
#[derive(Deserialize)]
struct Event {
    user_id: Option<String>,
    event_type: Option<String>,
    timestamp: Option<i64>,
}

/// What a logout writes to the output topic.
#[derive(Debug, PartialEq, Serialize)]
struct SessionEnded {
    user_id: String,
    duration: i64,
}

/// A well-formed event: the user, what happened and when.
fn parse(data: &str) -> Option<(String, String, i64)> {
    let Event { user_id, event_type, timestamp } = serde_json::from_str(data).ok()?;
    Some((user_id?, event_type?, timestamp?))
}

#[derive(Default)]
struct __CLASS__;

impl Function for __CLASS__ {
    type Input = String;
    type Output = Option<Json<SessionEnded>>;

    fn process(&mut self, data: String, ctx: &mut Context) -> Result<Self::Output, Error> {
        let Some((user_id, event_type, timestamp)) = parse(&data) else {
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

fnhost_guest::export!(__CLASS__);

#[cfg(test)]
mod tests {
    use fnhost_guest::testing::MockContext;

    use super::*;

    #[test]
    fn a_logout_after_a_login_writes_the_session_and_forgets_the_login() {
        let mut context = MockContext::new();
        let mut function = __CLASS__;
        let login = r#"{"user_id": "user123", "event_type": "login", "timestamp": 1678886400}"#;
        let logout = r#"{"user_id": "user123", "event_type": "logout", "timestamp": 1678886420}"#;
        assert_eq!(context.process(&mut function, login).unwrap(), None);
        assert_eq!(context.state("user123"), Some(b"1678886400".to_vec()));
        let output = context.process(&mut function, logout).unwrap();
        assert_eq!(output.as_deref(), Some(br#"{"user_id":"user123","duration":20}"#.as_slice()));
        assert_eq!(context.state("user123"), None);
    }

    #[test]
    fn well_formed_events_parse_and_others_do_not() {
        let login = r#"{"user_id": "user123", "event_type": "login", "timestamp": 1678886400}"#;
        assert_eq!(parse(login), Some(("user123".into(), "login".into(), 1678886400)));
        assert_eq!(parse(r#"{"user_id": "u1"}"#), None);
        assert_eq!(parse("not json"), None);
    }
}
