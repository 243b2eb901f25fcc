//! `fnhost new`: a ready-to-build function project from a template.
//!
//! Each template is the session-duration function with its unit test. The SDK a project needs to
//! build and test is written into it (the SDKs are not published), so the project stands alone.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};

use crate::limits::MAX_NAME_LEN;

#[derive(Debug, Args)]
pub(super) struct NewArgs {
    /// The function's language.
    #[arg(long, value_enum)]
    lang: Language,
    /// The project's name: its folder and the function's name (lowercase letters, digits, - and _).
    name: String,
    /// The folder to create the project in.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Language {
    Rust,
    Python,
    Js,
}

const RUST_SDK: [(&str, &str); 4] = [
    ("fnhost-guest/src/lib.rs", include_str!("../../../guest-sdk/rust/src/lib.rs")),
    ("fnhost-guest/src/context.rs", include_str!("../../../guest-sdk/rust/src/context.rs")),
    ("fnhost-guest/src/state.rs", include_str!("../../../guest-sdk/rust/src/state.rs")),
    ("fnhost-guest/src/testing.rs", include_str!("../../../guest-sdk/rust/src/testing.rs")),
];
const WIT: &str = include_str!("../../../wit/function.wit");
const PYTHON_SDK: [(&str, &str); 3] = [
    ("fnhost/__init__.py", include_str!("../../../guest-sdk/python/src/fnhost/__init__.py")),
    ("fnhost/testing.py", include_str!("../../../guest-sdk/python/src/fnhost/testing.py")),
    ("fnhost/pulsar.py", include_str!("../../../guest-sdk/python/src/fnhost/pulsar.py")),
];
const JS_SDK: [(&str, &str); 2] = [
    ("fnhost/index.js", include_str!("../../../guest-sdk/js/src/index.js")),
    ("fnhost/testing.js", include_str!("../../../guest-sdk/js/src/testing.js")),
];

/// The files of a project: path and text, with `__NAME__`, `__MODULE__` and `__CLASS__` to fill in.
fn template(language: Language) -> Vec<(&'static str, &'static str)> {
    match language {
        Language::Python => {
            let mut files = vec![
                ("__MODULE__.py", include_str!("templates/python/function.py")),
                ("test___MODULE__.py", include_str!("templates/python/test_function.py")),
                ("requirements.txt", include_str!("templates/python/requirements.txt")),
            ];
            files.extend(PYTHON_SDK);
            files
        }
        Language::Js => {
            let mut files = vec![
                ("__MODULE__.js", include_str!("templates/js/function.js")),
                ("__MODULE__.test.js", include_str!("templates/js/function.test.js")),
                ("package.json", include_str!("templates/js/package.json")),
            ];
            files.extend(JS_SDK);
            files
        }
        Language::Rust => {
            let mut files = vec![
                ("Cargo.toml", include_str!("templates/rust/Cargo.toml")),
                ("src/lib.rs", include_str!("templates/rust/lib.rs")),
                ("fnhost-guest/Cargo.toml", include_str!("templates/rust/fnhost-guest.toml")),
                ("fnhost-guest/wit/function.wit", WIT),
            ];
            files.extend(RUST_SDK);
            files
        }
    }
}

/// `session-duration` → `SessionDuration`.
fn class_name(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|word| !word.is_empty())
        .map(|word| {
            let mut letters = word.chars();
            letters.next().map(|first| first.to_ascii_uppercase().to_string() + letters.as_str()).unwrap_or_default()
        })
        .collect()
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!(
            "`{name}` cannot name a project: use lowercase letters, digits, - and _, starting with a letter, at most {MAX_NAME_LEN} characters (MAX_NAME_LEN), for example session-duration"
        );
    }
    Ok(())
}

fn readme(name: &str, module: &str, class: &str, language: Language) -> String {
    let (build, test, run) = match language {
        Language::Rust => (
            "cargo build --release --target wasm32-wasip2  # needs `rustup target add wasm32-wasip2`".to_owned(),
            "cargo test".to_owned(),
            format!("--wasm target/wasm32-wasip2/release/{module}.wasm"),
        ),
        Language::Python => (
            "python -m pip install -r requirements.txt  # for the tests; fnhost installs the packages into the component itself (with componentize-py: pip install componentize-py==0.25.1)".to_owned(),
            "python -m pytest".to_owned(),
            format!("--py {module}.py --classname {module}.{class}"),
        ),
        Language::Js => (
            "npm install  # for the tests; fnhost bundles the packages into the component itself (with componentize-js and esbuild: npm install -g @bytecodealliance/componentize-js@0.23.0 esbuild@0.25.0)".to_owned(),
            "node --test".to_owned(),
            format!("--js {module}.js"),
        ),
    };
    format!(
        "# {name}\n\nA session-duration function for fnhost, made by `fnhost new`: on login it keeps the timestamp in state, on logout it writes the session's duration to the output topic.\n\n```sh\n{build}\n{test}\nfnhost topics produce input-topic -m '{{\"user_id\": \"u1\", \"event_type\": \"login\", \"timestamp\": 10}}' -m '{{\"user_id\": \"u1\", \"event_type\": \"logout\", \"timestamp\": 30}}'\nfnhost localrun {run} --name {name} --inputs input-topic --output sessions --until-idle\nfnhost topics consume sessions --until-idle\n```\n\n`fnhost` is the SDK this project builds and tests with, copied in by `fnhost new`.\n"
    )
}

pub(super) fn run(args: NewArgs) -> anyhow::Result<()> {
    check_name(&args.name)?;
    let root = args.dir.join(&args.name);
    if root.exists() {
        bail!("{} already exists; choose another name or --dir", root.display());
    }
    let module = args.name.replace('-', "_");
    let class = class_name(&args.name);
    let fill =
        |text: &str| text.replace("__NAME__", &args.name).replace("__MODULE__", &module).replace("__CLASS__", &class);
    let mut files = template(args.lang);
    let readme = readme(&args.name, &module, &class, args.lang);
    files.push(("README.md", &readme));
    for (path, text) in files {
        write(&root.join(fill(path)), &fill(text))?;
    }
    println!("created {} ({:?}); see {}", root.display(), args.lang, root.join("README.md").display());
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_classes_and_bad_names_are_refused() {
        assert_eq!(class_name("session-duration"), "SessionDuration");
        assert_eq!(class_name("a_b-c2"), "ABC2");
        for bad in ["", "Upper", "1st", "has space", "dot.ted", &"x".repeat(MAX_NAME_LEN + 1)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("session-duration").unwrap();
    }
}
