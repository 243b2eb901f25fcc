//! user-counts: how many events each user had in each tumbling window of 10 events.
//!
//! Input: JSON events with a `user_id` (the session example's events will do).
//! Output, per window: `{"user123": 4, "user7": 6}`, users in name order.
//! Events without a `user_id` count under `""`.
//!
//! Run it:
//! ```text
//! cargo build --target wasm32-wasip2 --profile guest -p user-counts
//! fnhost localrun --wasm target/wasm32-wasip2/guest/user_counts.wasm --name user-counts \
//!     --inputs events --output counts --window-length-count 10 --until-idle
//! ```

use std::collections::BTreeMap;

use fnhost_guest::{Context, Error, Json, Window, WindowFunction};
use serde::Deserialize;

#[derive(Deserialize)]
struct Event {
    user_id: Option<String>,
}

#[derive(Default)]
struct UserCounts;

impl WindowFunction for UserCounts {
    type Input = Json<Event>;
    type Output = Json<BTreeMap<String, u64>>;

    fn process(&mut self, window: Window<Json<Event>>, _ctx: &mut Context) -> Result<Self::Output, Error> {
        let mut counts = BTreeMap::new();
        for Json(event) in window.values() {
            *counts.entry(event.user_id.clone().unwrap_or_default()).or_default() += 1;
        }
        Ok(Json(counts))
    }
}

fnhost_guest::export_window!(UserCounts);
