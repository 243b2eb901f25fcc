//! A JavaScript function's npm packages and its bundle: the `package.json` beside it, if any, is
//! installed with npm (`npm ci` when a `package-lock.json` is there too), and the function is
//! bundled with its imports into one ES module by esbuild (pinned, from npm) before
//! componentize-js builds it.
//!
//! A function runs without files, sockets or processes, so an import of a Node.js built-in that
//! needs them ([`SANDBOXED_BUILTINS`]) is refused at build time, naming the import and the module
//! that makes it. npm runs with `--ignore-scripts`: a package's install script would run on the
//! building machine, outside any sandbox.
//!
//! The installed `node_modules` is cached by the text of `package.json` and `package-lock.json`
//! (the lock file is the resolved set; without one npm resolves once and its result is kept), so
//! an unchanged function installs nothing again; that text goes into the component's key.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::{BuildError, Toolchain, printed};

/// The esbuild release fnhost bundles with (guest-sdk/js's devDependencies).
pub const ESBUILD_VERSION: &str = "0.25.0";

const ESBUILD: Toolchain = Toolchain {
    variable: "FNHOST_ESBUILD",
    default_program: "esbuild",
    version: ESBUILD_VERSION,
    install: "install it with `npm install -g esbuild@0.25.0` (or `npm install` in guest-sdk/js and put its node_modules/.bin on PATH), or set FNHOST_ESBUILD to its path",
};

/// Node.js built-ins that need what a function does not have (files, sockets, processes, the
/// machine): an import of one, with or without `node:`, is refused.
const SANDBOXED_BUILTINS: [&str; 21] = [
    "child_process",
    "cluster",
    "dgram",
    "dns",
    "fs",
    "http",
    "http2",
    "https",
    "inspector",
    "module",
    "net",
    "os",
    "perf_hooks",
    "process",
    "readline",
    "repl",
    "tls",
    "tty",
    "v8",
    "vm",
    "worker_threads",
];

/// What the function's packages add to a build.
pub(super) struct Packages {
    /// The hash of `package.json` and `package-lock.json` with esbuild's version: part of the
    /// component's key.
    pub(super) key: String,
    /// The installed packages.
    node_modules: PathBuf,
}

/// The packages of the JavaScript function `file`: from the `package.json` beside it; `None`
/// when there is none.
pub(super) fn packages(file: &Path, cache_dir: &Path) -> Result<Option<Packages>, BuildError> {
    let folder = file.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let manifest = folder.join("package.json");
    if !manifest.is_file() {
        return Ok(None);
    }
    let read = |path: &Path| {
        std::fs::read(path).map_err(|error| BuildError::Source(format!("cannot read {}: {error}", path.display())))
    };
    let lock_path = folder.join("package-lock.json");
    let manifest_text = read(&manifest)?;
    let lock = if lock_path.is_file() { Some(read(&lock_path)?) } else { None };
    let mut hasher = Sha256::new();
    for part in [manifest_text.as_slice(), lock.as_deref().unwrap_or_default(), ESBUILD_VERSION.as_bytes()] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let key: String = hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect();
    let cache = cache_dir.join("npm-packages");
    let cache_error = |source| BuildError::Cache { dir: cache.display().to_string(), source };
    let installed = cache.join(&key);
    if installed.join("node_modules").is_dir() {
        tracing::info!("using the packages installed earlier for {}", manifest.display());
        return Ok(Some(Packages { key, node_modules: installed.join("node_modules") }));
    }
    std::fs::create_dir_all(&cache).map_err(cache_error)?;
    let staging = tempfile::Builder::new().prefix("install-").tempdir_in(&cache).map_err(cache_error)?;
    std::fs::write(staging.path().join("package.json"), &manifest_text).map_err(cache_error)?;
    if let Some(lock) = &lock {
        std::fs::write(staging.path().join("package-lock.json"), lock).map_err(cache_error)?;
    }
    let npm = std::env::var("FNHOST_NPM").unwrap_or_else(|_| "npm".to_owned());
    let verb = if lock.is_some() { "ci" } else { "install" };
    tracing::info!("installing the packages of {} with npm {verb}", manifest.display());
    let output = Command::new(&npm)
        .arg(verb)
        .args(["--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error", "--omit=dev"])
        .current_dir(staging.path())
        .output()
        .map_err(|error| {
            BuildError::Source(format!(
                "cannot run {npm} to install {} ({error}): install Node.js with npm, or set FNHOST_NPM to it",
                manifest.display()
            ))
        })?;
    if !output.status.success() {
        return Err(BuildError::Packages {
            file: manifest.display().to_string(),
            output: printed(&output),
            offline: "if the npm registry cannot be reached from here, install once where it can: npm keeps what it fetched in its cache (~/.npm), which `npm ci --offline` reads".into(),
        });
    }
    if !staging.path().join("node_modules").is_dir() {
        std::fs::create_dir_all(staging.path().join("node_modules")).map_err(cache_error)?;
    }
    std::fs::rename(staging.keep(), &installed).map_err(cache_error)?;
    Ok(Some(Packages { key, node_modules: installed.join("node_modules") }))
}

/// esbuild's metafile: each input module and its imports.
#[derive(serde::Deserialize)]
struct Metafile {
    inputs: std::collections::BTreeMap<String, Input>,
}

#[derive(serde::Deserialize)]
struct Input {
    #[serde(default)]
    imports: Vec<Import>,
}

#[derive(serde::Deserialize)]
struct Import {
    path: String,
    #[serde(default)]
    external: bool,
}

/// Bundles the staged `entry` (in `root`) with its imports, from `packages` when the function
/// has some, into one ES module; returns its name.
pub(super) fn bundle(root: &Path, entry: &str, packages: Option<&Packages>) -> Result<String, BuildError> {
    let program = ESBUILD.locate()?;
    let cache_error = |source| BuildError::Cache { dir: root.display().to_string(), source };
    if let Some(packages) = packages {
        link_dir(&packages.node_modules, &root.join("node_modules")).map_err(cache_error)?;
    }
    let mut command = Command::new(&program);
    command.arg(entry).args(["--bundle", "--format=esm", "--platform=neutral", "--main-fields=module,main"]).args([
        "--external:fnhost:*",
        "--outfile=bundle.js",
        "--metafile=meta.json",
        "--log-level=error",
    ]);
    for builtin in SANDBOXED_BUILTINS {
        command.arg(format!("--external:{builtin}")).arg(format!("--external:node:{builtin}"));
        command.arg(format!("--external:{builtin}/*")).arg(format!("--external:node:{builtin}/*"));
    }
    let output = command
        .current_dir(root)
        .output()
        .map_err(|error| BuildError::Source(format!("cannot run {program}: {error}")))?;
    if !output.status.success() {
        return Err(BuildError::Failed {
            file: entry.to_owned(),
            tool: program,
            status: output.status.to_string(),
            output: printed(&output),
        });
    }
    let meta: Metafile = std::fs::read(root.join("meta.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| BuildError::Source(format!("{program} wrote no metafile for {entry}")))?;
    for (importer, input) in &meta.inputs {
        for import in input.imports.iter().filter(|import| import.external) {
            let name = import.path.strip_prefix("node:").unwrap_or(&import.path);
            let name = name.split('/').next().unwrap_or(name);
            if SANDBOXED_BUILTINS.contains(&name) {
                return Err(BuildError::NodeBuiltin {
                    import: import.path.clone(),
                    importer: importer.strip_prefix("app/").unwrap_or(importer).to_owned(),
                });
            }
        }
    }
    Ok("bundle.js".into())
}

/// Makes `link` lead to the folder `target`.
fn link_dir(target: &Path, link: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    return std::os::unix::fs::symlink(target, link);
    #[cfg(not(unix))]
    return std::os::windows::fs::symlink_dir(target, link);
}
