//! The fuzz targets' corpus (host/fuzz/corpus), replayed on every test run: each input that
//! once found a bug, and each seed, goes through the same entry point as under `cargo fuzz`.

use std::path::PathBuf;

use fnhost::fuzzing::{AdminApi, Components, function_config, stored_records};

/// Every input of the fuzz target `target`, with its file name; the corpus must not be empty.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut inputs: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", dir.display()))
        .map(|entry| {
            let path = entry.expect("a directory entry").path();
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("a corpus file"))
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no inputs in {}", dir.display());
    inputs
}

#[test]
fn function_configs_from_the_corpus_are_checked_without_a_panic() {
    for (name, bytes) in corpus("function_config") {
        eprintln!("function_config/{name}");
        let parsed = function_config(&bytes);
        // The seeds are valid configs, one in each form.
        if ["full.json", "window.yaml"].contains(&name.as_str()) {
            assert!(parsed > 0, "the seed {name} does not parse");
        }
    }
}

#[test]
fn stored_records_from_the_corpus_decode_to_themselves_or_fail_cleanly() {
    for (name, bytes) in corpus("stored_records") {
        eprintln!("stored_records/{name}");
        stored_records(&bytes);
    }
}

#[test]
fn components_from_the_corpus_load_or_are_refused_without_a_panic() {
    let components = Components::new();
    for (name, bytes) in corpus("component") {
        eprintln!("component/{name}");
        let loaded = components.load(&bytes);
        assert_eq!(loaded, name == "exclamation.wasm", "component/{name}: only the real function loads");
    }
}

#[test]
fn admin_api_bodies_from_the_corpus_get_no_server_error() {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let admin = AdminApi::open(dir.path());
    let mut answered = Vec::new();
    for (name, bytes) in corpus("admin_api") {
        eprintln!("admin_api/{name}");
        answered.push((name, admin.request(&bytes).as_u16()));
    }
    // The seeds reach the handlers: a body that parses gets past the 400s of a bad body.
    let produce = answered.iter().find(|(name, _)| name == "produce").map(|(_, status)| *status);
    assert_eq!(produce, Some(200), "{answered:?}");
}
