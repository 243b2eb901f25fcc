//! A component as `create` gets it, any bytes at all: `cargo +nightly fuzz run component`.
#![no_main]

use std::sync::LazyLock;

static COMPONENTS: LazyLock<fnhost::fuzzing::Components> = LazyLock::new(fnhost::fuzzing::Components::new);

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    COMPONENTS.load(bytes);
});
