//! What fnhost's integration tests and its benchmark share: NATS JetStream servers started on
//! loopback with ports and directories of their own, an HTTP sink standing in for a collector,
//! and the guest components built for `wasm32-wasip2`. Not published; a dev-dependency of
//! `fnhost` only.

mod guests;
mod http_sink;
mod nats;

pub use guests::build_guests;
pub use http_sink::{HttpSink, Received};
pub use nats::Nats;
