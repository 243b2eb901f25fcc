//! Builds guest components with the workspace's `guest` profile.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds the guest crates `crates` of the workspace at `workspace` for `wasm32-wasip2` into the
/// target directory `target` (one of the caller's own: a nested build in the running build's
/// directory would wait for its lock); returns the folder holding the components.
pub fn build_guests(workspace: &Path, target: &Path, crates: &[&str]) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(workspace).args(["build", "--target", "wasm32-wasip2", "--profile", "guest"]);
    for name in crates {
        command.args(["-p", name]);
    }
    let output =
        command.arg("--target-dir").arg(target).output().map_err(|error| format!("cargo does not run: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "building the guests failed (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`):\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(target.join("wasm32-wasip2").join("guest"))
}
