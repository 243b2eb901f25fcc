//! A stored record, damaged or not, as every kind the stores read: `cargo +nightly fuzz run stored_records`.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| fnhost::fuzzing::stored_records(bytes));
