//! Request bodies for the admin API's paths that read one: `cargo +nightly fuzz run admin_api`.
#![no_main]

use std::sync::LazyLock;

use fnhost::fuzzing::AdminApi;

/// One worker for the whole run, in a directory that outlives it.
static ADMIN: LazyLock<AdminApi> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("a scratch directory").keep();
    AdminApi::open(&dir)
});

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    ADMIN.request(bytes);
});
