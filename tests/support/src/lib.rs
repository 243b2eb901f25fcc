//! What fnhost's integration tests and its benchmark share: NATS JetStream servers started on
//! loopback with ports and directories of their own, and the guest components built for
//! `wasm32-wasip2`. Not published; a dev-dependency of `fnhost` only.

mod guests;
mod nats;

pub use guests::build_guests;
pub use nats::Nats;
