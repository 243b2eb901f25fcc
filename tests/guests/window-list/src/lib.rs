//! window-list: a test window function that writes each window's span and its records' values,
//! so that tests can compare whole windows with an oracle.
//!
//! Output, per window: `{"start": MS, "end": MS, "values": ["v0", "v1", ...]}`.
//! A window holding the value `fail` fails with a user exception, and stores nothing.

use fnhost_guest::{Context, Error, Json, Window, WindowFunction};
use serde::Serialize;

#[derive(Serialize)]
struct Listed {
    start: u64,
    end: u64,
    values: Vec<String>,
}

#[derive(Default)]
struct WindowList;

impl WindowFunction for WindowList {
    type Input = String;
    type Output = Json<Listed>;

    fn process(&mut self, window: Window<String>, ctx: &mut Context) -> Result<Self::Output, Error> {
        if window.values().any(|value| value == "fail") {
            ctx.state().put("failed window stored this", "never")?;
            return Err(Error::msg("asked to fail"));
        }
        let (start, end) = (window.start(), window.end());
        let values = window.into_records().into_iter().map(|record| record.value).collect();
        Ok(Json(Listed { start, end, values }))
    }
}

fnhost_guest::export_window!(WindowList);
