//! trap-at-start: a test guest that traps while it is being instantiated, before any message.
//!
//! Its static constructor executes `unreachable`. Rust runs static constructors when the
//! component is first entered, before `process-batch` runs any of the function's code: every
//! message then meets the trap. Otherwise it would echo its input.
//! The integration tests build it with `cargo build --target wasm32-wasip2 --profile guest -p trap-at-start`.

#![allow(unsafe_code, reason = "a constructor in `.init_array` is the only way to run code at instantiation")]

use fnhost_guest::{Context, Error, Function};

/// Runs at instantiation and traps. Only in wasm: a native build (`cargo test --workspace`)
/// would otherwise stop its own test binary.
#[cfg(target_arch = "wasm32")]
extern "C" fn trap_at_start() {
    core::arch::wasm32::unreachable()
}

#[cfg(target_arch = "wasm32")]
#[used]
#[unsafe(link_section = ".init_array")]
static CONSTRUCTOR: extern "C" fn() = trap_at_start;

#[derive(Default)]
struct TrapAtStart;

impl Function for TrapAtStart {
    type Input = String;
    type Output = String;

    fn process(&mut self, message: String, _ctx: &mut Context) -> Result<String, Error> {
        Ok(message)
    }
}

fnhost_guest::export!(TrapAtStart);
