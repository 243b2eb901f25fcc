//! A function config from outside, as JSON and as YAML: `cargo +nightly fuzz run function_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    fnhost::fuzzing::function_config(bytes);
});
