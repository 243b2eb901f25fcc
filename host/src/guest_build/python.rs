//! A Python function's third-party packages: its requirements file, resolved and installed by
//! pip into a staging folder that componentize-py packs (`-p`).
//!
//! Only pure-Python packages can run: the component's CPython is compiled to WebAssembly and
//! cannot load an extension module built for Linux. So every installed distribution's wheel must
//! be tagged `*-none-any` (a source distribution that builds pure is one), else the build is
//! refused naming the package.
//!
//! Resolving asks the package index, so it is cached twice: the requirements file's text names
//! the set pip resolved from it (`resolved-<hash>.json`), and that set (names, versions and
//! archive hashes) names the installed folder (`site-<hash>/`) and goes into the component's key.
//! A function whose requirements did not change neither resolves nor builds again; to take newer
//! releases of unpinned requirements, edit the file (or pin them). `--wheel-dir` installs from a
//! folder of wheels instead of the index, for machines that cannot reach it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{BuildError, printed};
use crate::limits::MAX_SOURCE_SIZE;

/// The environment variable naming the Python that runs pip [default: `python3`].
const PYTHON_VARIABLE: &str = "FNHOST_PYTHON";

/// What the function's packages add to a build.
pub(super) struct Packages {
    /// The hash of the resolved set: part of the component's key.
    pub(super) key: String,
    /// The folder they are installed in, for componentize-py's `-p`.
    pub(super) site: PathBuf,
}

/// One resolved distribution.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Resolved {
    name: String,
    version: String,
    /// The SHA-256 of the archive pip installed, when pip reported one.
    sha256: Option<String>,
}

/// The packages of the Python function `file`: from `requirements` or the `requirements.txt`
/// beside it; `None` when it has neither.
pub(super) fn packages(
    file: &Path,
    requirements: Option<&Path>,
    wheel_dir: Option<&Path>,
    cache_dir: &Path,
) -> Result<Option<Packages>, BuildError> {
    let beside = file.parent().unwrap_or(Path::new(".")).join("requirements.txt");
    let requirements = match requirements {
        Some(given) => given.to_path_buf(),
        None if beside.is_file() => beside,
        None => return Ok(None),
    };
    let unreadable = |error: std::io::Error| {
        BuildError::Source(format!("cannot read the requirements file {}: {error}", requirements.display()))
    };
    if std::fs::metadata(&requirements).map_err(unreadable)?.len() > MAX_SOURCE_SIZE as u64 {
        return Err(BuildError::Source(format!(
            "the requirements file {} is larger than {MAX_SOURCE_SIZE} bytes (MAX_SOURCE_SIZE)",
            requirements.display()
        )));
    }
    let text = std::fs::read(&requirements).map_err(unreadable)?;
    let cache = cache_dir.join("python-packages");
    let cache_error = |source| BuildError::Cache { dir: cache.display().to_string(), source };
    std::fs::create_dir_all(&cache).map_err(cache_error)?;
    let resolution = cache.join(format!(
        "resolved-{}.json",
        hash(&[&text, wheel_dir.map_or(b"", |dir| dir.as_os_str().as_encoded_bytes())])
    ));
    if let Some(set) =
        std::fs::read(&resolution).ok().and_then(|bytes| serde_json::from_slice::<Vec<Resolved>>(&bytes).ok())
    {
        let key = set_key(&set);
        let site = cache.join(format!("site-{key}"));
        if site.is_dir() {
            tracing::info!("using the packages resolved earlier from {}", requirements.display());
            return Ok(Some(Packages { key, site }));
        }
    }
    let staging = tempfile::Builder::new().prefix("install-").tempdir_in(&cache).map_err(cache_error)?;
    let set = install(&requirements, wheel_dir, staging.path())?;
    check_pure(staging.path().join("site").as_path())?;
    let key = set_key(&set);
    let site = cache.join(format!("site-{key}"));
    if !site.is_dir() {
        std::fs::rename(staging.path().join("site"), &site).map_err(cache_error)?;
    }
    std::fs::write(&resolution, serde_json::to_vec(&set).expect("a resolved set encodes")).map_err(cache_error)?;
    Ok(Some(Packages { key, site }))
}

fn hash(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect()
}

fn set_key(set: &[Resolved]) -> String {
    hash(&[&serde_json::to_vec(set).expect("a resolved set encodes")])
}

/// pip's installation report: what it installed.
#[derive(Deserialize)]
struct Report {
    install: Vec<ReportItem>,
}

#[derive(Deserialize)]
struct ReportItem {
    metadata: ReportMetadata,
    download_info: Option<DownloadInfo>,
}

#[derive(Deserialize)]
struct ReportMetadata {
    name: String,
    version: String,
}

#[derive(Deserialize)]
struct DownloadInfo {
    archive_info: Option<ArchiveInfo>,
}

#[derive(Deserialize)]
struct ArchiveInfo {
    #[serde(default)]
    hashes: std::collections::BTreeMap<String, String>,
}

/// Installs `requirements` into `staging/site` with pip and returns what it resolved.
fn install(requirements: &Path, wheel_dir: Option<&Path>, staging: &Path) -> Result<Vec<Resolved>, BuildError> {
    let python = std::env::var(PYTHON_VARIABLE).unwrap_or_else(|_| "python3".to_owned());
    let report = staging.join("report.json");
    let mut command = Command::new(&python);
    command
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile", "--no-input"])
        .args(["--root-user-action=ignore", "--target"])
        .arg(staging.join("site"))
        .arg("--report")
        .arg(&report)
        .arg("-r")
        .arg(requirements);
    if let Some(dir) = wheel_dir {
        command.arg("--no-index").arg("--find-links").arg(dir);
    }
    tracing::info!("installing the packages of {} with pip", requirements.display());
    let output = command.output().map_err(|error| {
        BuildError::Source(format!(
            "cannot run {python} to install {} ({error}): install Python 3 with pip, or set {PYTHON_VARIABLE} to it",
            requirements.display()
        ))
    })?;
    if !output.status.success() {
        return Err(BuildError::Packages {
            file: requirements.display().to_string(),
            output: printed(&output),
            offline: match wheel_dir {
                Some(dir) => format!("pip looked only in {} (--wheel-dir): add the missing wheels there", dir.display()),
                None => "if the package index cannot be reached from here, fill a folder with `pip download -r requirements.txt -d DIR` where it can, and build with --wheel-dir DIR".into(),
            },
        });
    }
    let report: Report =
        std::fs::read(&report).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).ok_or_else(|| {
            BuildError::Source(format!(
                "pip wrote no installation report for {}; fnhost needs pip 22.2 or later",
                requirements.display()
            ))
        })?;
    let mut set: Vec<Resolved> = report
        .install
        .into_iter()
        .map(|item| Resolved {
            name: item.metadata.name.to_lowercase(),
            version: item.metadata.version,
            sha256: item
                .download_info
                .and_then(|info| info.archive_info)
                .and_then(|archive| archive.hashes.get("sha256").cloned()),
        })
        .collect();
    set.sort();
    Ok(set)
}

/// Refuses an installed distribution that is not pure Python, naming it.
fn check_pure(site: &Path) -> Result<(), BuildError> {
    let unreadable = |error: std::io::Error| BuildError::Source(format!("cannot read {}: {error}", site.display()));
    for entry in std::fs::read_dir(site).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        let Some(name) =
            path.file_name().and_then(|name| name.to_str()).and_then(|name| name.strip_suffix(".dist-info"))
        else {
            continue;
        };
        let wheel = std::fs::read_to_string(path.join("WHEEL")).unwrap_or_default();
        let tags: Vec<&str> = wheel.lines().filter_map(|line| line.strip_prefix("Tag:")).map(str::trim).collect();
        let pure = wheel.lines().any(|line| line.trim() == "Root-Is-Purelib: true")
            && !tags.is_empty()
            && tags.iter().all(|tag| tag.ends_with("-none-any"));
        if !pure {
            let (package, version) = name.rsplit_once('-').unwrap_or((name, "?"));
            return Err(BuildError::NativePackage {
                package: package.to_owned(),
                version: version.to_owned(),
                tags: tags.join(", "),
            });
        }
    }
    Ok(())
}
