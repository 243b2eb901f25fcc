//! Progress on a terminal for long CLI work (indicatif): messages produced, a build from
//! source, a component uploaded. Nothing is drawn when standard error is not a terminal, so
//! scripts and logs get only the result lines.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::cache_dir;
use crate::function::{Code, FunctionKind};
use crate::guest_build::Builder;

/// How often a spinner turns.
const TICK: Duration = Duration::from_millis(120);

fn drawn(bar: ProgressBar) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

/// A bar counting `total` `unit` (messages, say).
pub(super) fn counter(total: u64, unit: &str) -> ProgressBar {
    let bar = drawn(ProgressBar::new(total));
    if let Ok(style) =
        ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} {unit} ({{per_sec}}, {{eta}} left)"))
    {
        bar.set_style(style);
    }
    bar
}

/// A bar counting `total` bytes of `what`.
pub(super) fn bytes(total: u64, what: &str) -> ProgressBar {
    let bar = drawn(ProgressBar::new(total));
    if let Ok(style) = ProgressStyle::with_template("{msg} {bar:40} {bytes}/{total_bytes} ({bytes_per_sec})") {
        bar.set_style(style);
    }
    bar.set_message(what.to_owned());
    bar
}

/// The component file for `code`, built from source (with a spinner while it builds) if that
/// is what was given.
pub(super) fn component_file(code: &Code, world: FunctionKind) -> anyhow::Result<PathBuf> {
    let Code::Source(source) = code else {
        return Ok(Builder::new(&cache_dir()).component_file(code, world)?);
    };
    let spinner = drawn(ProgressBar::new_spinner());
    spinner.set_message(format!("building {} (cached after the first build)", source.file().display()));
    spinner.enable_steady_tick(TICK);
    let built = Builder::new(&cache_dir()).component_file(code, world);
    spinner.finish_and_clear();
    Ok(built?)
}
