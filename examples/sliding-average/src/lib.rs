//! sliding-average: the average of readings over sliding windows of 10 s every 5 s, on event time.
//!
//! Input: JSON readings `{"value": 21.5}`, each produced with its event time
//! (`fnhost topics produce --event-time MS`), or carrying it as `"time_ms"`, which wins.
//! Readings up to `--max-lag-ms` late still count; later ones go to `--late-data-topic`.
//! Output, per window: `{"start": MS, "end": MS, "count": N, "average": X}`.
//!
//! Run it:
//! ```text
//! cargo build --target wasm32-wasip2 --profile guest -p sliding-average
//! fnhost localrun --wasm target/wasm32-wasip2/guest/sliding_average.wasm --name sliding-average \
//!     --inputs readings --output averages --window-length-duration-ms 10000 \
//!     --sliding-interval-duration-ms 5000 --event-time --max-lag-ms 2000 --late-data-topic late
//! ```

use fnhost_guest::{Context, Error, Json, Message, Window, WindowFunction};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Reading {
    value: f64,
}

#[derive(Deserialize)]
struct Stamped {
    time_ms: Option<u64>,
}

#[derive(Serialize)]
struct Average {
    start: u64,
    end: u64,
    count: usize,
    average: f64,
}

#[derive(Default)]
struct SlidingAverage;

impl WindowFunction for SlidingAverage {
    type Input = Json<Reading>;
    type Output = Json<Average>;

    fn process(&mut self, window: Window<Json<Reading>>, _ctx: &mut Context) -> Result<Self::Output, Error> {
        let count = window.records().len();
        let sum: f64 = window.values().map(|Json(reading)| reading.value).sum();
        Ok(Json(Average { start: window.start(), end: window.end(), count, average: sum / count as f64 }))
    }

    fn event_time(&mut self, value: &[u8], _message: &Message) -> Option<u64> {
        serde_json::from_slice::<Stamped>(value).ok()?.time_ms
    }
}

fnhost_guest::export_window!(SlidingAverage);
