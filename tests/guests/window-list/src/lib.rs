//! window-list: a test window function that writes each window's span and its records' values,
//! so that tests can compare whole windows with an oracle.
//!
//! Output, per window: `{"start": MS, "end": MS, "values": ["v0", "v1", ...]}`.

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

    fn process(&mut self, window: Window<String>, _ctx: &mut Context) -> Result<Self::Output, Error> {
        let (start, end) = (window.start(), window.end());
        let values = window.into_records().into_iter().map(|record| record.value).collect();
        Ok(Json(Listed { start, end, values }))
    }
}

fnhost_guest::export_window!(WindowList);
