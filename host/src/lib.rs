//! fnhost: a WebAssembly-sandboxed function host in the manner of Apache Pulsar Functions.
//!
//! See `ARCHITECTURE.md` at the repository root for the map of these modules.

pub mod cli;
pub mod codec;
pub mod embedded;
pub mod engine;
pub mod function;
pub mod fuzzing;
pub mod guest_build;
pub mod instance;
pub mod limits;
pub mod metrics;
pub mod names;
pub mod nats;
pub mod runtime;
pub mod seglog;
pub mod spec;
pub mod telemetry;
pub mod token_bucket;
pub mod window;
pub mod worker;
