//! Builds components from Python and JavaScript sources with the pinned toolchains.
//!
//! `--py FILE --classname MODULE.CLASS` runs componentize-py and `--js FILE` runs componentize-js
//! over the function's folder, the guest SDK compiled into this binary and `wit/function.wit`,
//! with the function's third-party packages (`python`: pip; `javascript`: npm, then an esbuild
//! bundle).
//! Building takes seconds, so the result is cached under its content hash: the toolchain version,
//! the contract, the SDK, the function's name and every source file of its folder.
//! The same sources therefore build once per machine, and any change builds again.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::function::{Code, FunctionKind, Source};
use crate::limits::MAX_SOURCE_SIZE;

mod javascript;
mod python;

/// The contract every SDK builds against.
const WIT: &str = include_str!("../../../wit/function.wit");
/// The Python SDK as it goes into a component (the mock and the builder stay outside).
const PYTHON_SDK: [(&str, &str); 3] = [
    ("fnhost/__init__.py", include_str!("../../../guest-sdk/python/src/fnhost/__init__.py")),
    ("fnhost/_component.py", include_str!("../../../guest-sdk/python/src/fnhost/_component.py")),
    ("pulsar.py", include_str!("../../../guest-sdk/python/src/fnhost/pulsar.py")),
];
/// The JavaScript SDK's runtime part.
const JS_SDK: &str = include_str!("../../../guest-sdk/js/src/index.js");

/// The componentize-py release fnhost is tested with.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";
/// The componentize-js release fnhost is tested with.
pub const COMPONENTIZE_JS_VERSION: &str = "0.23.0";
/// The weval release componentize-js 0.23 compiles JavaScript ahead of time with (`--aot`).
pub const WEVAL_VERSION: &str = "0.5.0";
/// The value of `FNHOST_WEVAL` that builds JavaScript for the interpreter even when weval is there.
pub const WEVAL_OFF: &str = "off";

/// Why a component could not be built from source.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The toolchain is not installed.
    #[error("{tool} is not installed (or not on PATH): {install}")]
    Missing {
        /// The program.
        tool: String,
        /// How to install it.
        install: &'static str,
    },
    /// Another version of the toolchain is installed.
    #[error("fnhost needs {tool} {wanted}, but `{tool} --version` says `{found}`: {install}")]
    WrongVersion {
        /// The program.
        tool: String,
        /// The version fnhost is tested with.
        wanted: &'static str,
        /// What the program reported.
        found: String,
        /// How to install the right one.
        install: &'static str,
    },
    /// The sources are unreadable or too large.
    #[error("{0}")]
    Source(String),
    /// The toolchain ran and refused the function.
    #[error("building {file} failed ({tool} exited with {status}):\n{output}")]
    Failed {
        /// The function's file.
        file: String,
        /// The program.
        tool: String,
        /// Its exit status.
        status: String,
        /// What it printed.
        output: String,
    },
    /// The function's packages could not be installed.
    #[error("installing the packages of {file} failed:\n{output}\n({offline})")]
    Packages {
        /// The requirements (or package.json) file.
        file: String,
        /// What the installer printed.
        output: String,
        /// What to do when the package index cannot be reached.
        offline: String,
    },
    /// A Python package needs a native extension.
    #[error(
        "the package {package} {version} is not pure Python (its wheel is tagged {tags}): a function's CPython is compiled to WebAssembly and cannot load an extension module built for this machine; use a pure-Python package, or a release of it without the extension"
    )]
    NativePackage {
        /// The distribution's name.
        package: String,
        /// Its version.
        version: String,
        /// Its wheel's tags.
        tags: String,
    },
    /// A JavaScript module imports a Node.js built-in the sandbox has no equivalent of.
    #[error(
        "{importer} imports `{import}`, a Node.js built-in: a function runs in a sandbox without files, sockets or processes, so it cannot be built; reach the outside world through the context (state, publish) instead"
    )]
    NodeBuiltin {
        /// The import, as written.
        import: String,
        /// The module that imports it.
        importer: String,
    },
    /// The cache directory could not be written.
    #[error("cannot write the component cache in {dir}: {source}")]
    Cache {
        /// The directory.
        dir: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// One of the two toolchains.
struct Toolchain {
    /// The environment variable that overrides the program's path.
    variable: &'static str,
    /// The program's name on PATH.
    default_program: &'static str,
    version: &'static str,
    install: &'static str,
}

const COMPONENTIZE_PY: Toolchain = Toolchain {
    variable: "FNHOST_COMPONENTIZE_PY",
    default_program: "componentize-py",
    version: COMPONENTIZE_PY_VERSION,
    install: "install it with `pip install componentize-py==0.25.1` (or `pip install './guest-sdk/python[build]'`), or set FNHOST_COMPONENTIZE_PY to its path",
};

const COMPONENTIZE_JS: Toolchain = Toolchain {
    variable: "FNHOST_COMPONENTIZE_JS",
    default_program: "componentize-js",
    version: COMPONENTIZE_JS_VERSION,
    install: "install it with `npm install -g @bytecodealliance/componentize-js@0.23.0` (or `npm install` in guest-sdk/js and put its node_modules/.bin on PATH), or set FNHOST_COMPONENTIZE_JS to its path",
};

// Optional: without it JavaScript runs in StarlingMonkey's interpreter, about a third slower.
const WEVAL: Toolchain = Toolchain {
    variable: "FNHOST_WEVAL",
    default_program: "weval",
    version: WEVAL_VERSION,
    install: "install it with `cargo install weval --version 0.5.0 --locked`, or set FNHOST_WEVAL to its path (or to `off` to build JavaScript for the interpreter)",
};

impl Toolchain {
    fn program(&self) -> String {
        std::env::var(self.variable).unwrap_or_else(|_| self.default_program.to_owned())
    }

    /// Checks that the toolchain is there in the pinned version, and returns its path.
    fn locate(&self) -> Result<String, BuildError> {
        let program = self.program();
        let output = match Command::new(&program).arg("--version").output() {
            Ok(output) => output,
            Err(error) if error.kind() == ErrorKind::NotFound => {
                return Err(BuildError::Missing { tool: program, install: self.install });
            }
            Err(error) => {
                return Err(BuildError::Source(format!("cannot run {program}: {error}; {}", self.install)));
            }
        };
        let found = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if found.split_whitespace().last() != Some(self.version) {
            return Err(BuildError::WrongVersion { tool: program, wanted: self.version, found, install: self.install });
        }
        Ok(program)
    }
}

/// How a JavaScript function is compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
enum JavaScriptMode {
    /// For StarlingMonkey's interpreter.
    Interpreted,
    /// Ahead of time, with the weval at this absolute path.
    AheadOfTime(PathBuf),
}

impl JavaScriptMode {
    /// Ahead of time when weval is there: the one `FNHOST_WEVAL` names (which must work), else
    /// `weval` on PATH in the pinned version; `FNHOST_WEVAL=off` asks for the interpreter, and so
    /// does a build folder whose path has a space.
    fn choose(build_dir: &Path) -> Result<Self, BuildError> {
        let named = std::env::var_os(WEVAL.variable);
        if named.as_deref() == Some(WEVAL_OFF.as_ref()) {
            return Ok(Self::Interpreted);
        }
        let program = match WEVAL.locate() {
            Ok(program) => program,
            Err(error) if named.is_some() => return Err(error),
            Err(BuildError::Missing { .. }) => return Ok(Self::Interpreted),
            Err(error) => {
                tracing::warn!("{error}; building JavaScript for the interpreter");
                return Ok(Self::Interpreted);
            }
        };
        // weval gets its paths in one space-separated string.
        if build_dir.to_string_lossy().contains(char::is_whitespace) {
            tracing::warn!(
                "weval cannot build under {}, whose path has a space: building JavaScript for the interpreter (set FNHOST_CACHE_DIR to a folder without spaces)",
                build_dir.display()
            );
            return Ok(Self::Interpreted);
        }
        // componentize-js downloads weval unless given a path that exists from its own folder.
        match absolute_program(&program) {
            Some(path) => Ok(Self::AheadOfTime(path)),
            None => {
                Err(BuildError::Source(format!("cannot find where {program} is; set FNHOST_WEVAL to its full path")))
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Interpreted => "for StarlingMonkey's interpreter".to_owned(),
            Self::AheadOfTime(_) => format!("ahead of time with weval {WEVAL_VERSION}"),
        }
    }
}

/// `program` as an absolute path: as given when it has a folder, else found on PATH.
fn absolute_program(program: &str) -> Option<PathBuf> {
    let given = Path::new(program);
    if given.components().count() > 1 {
        return std::path::absolute(given).ok();
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

/// Builds and caches components from source.
#[derive(Clone, Debug)]
pub struct Builder {
    cache_dir: PathBuf,
    interpreted_javascript: bool,
}

impl Builder {
    /// A builder that keeps built components in `cache_dir/components`.
    pub fn new(cache_dir: &Path) -> Self {
        Self { cache_dir: cache_dir.join("components"), interpreted_javascript: false }
    }

    /// The same builder, building JavaScript for the interpreter even where weval is there.
    pub fn interpreted_javascript(self) -> Self {
        Self { interpreted_javascript: true, ..self }
    }

    /// The component file for `code`: the file given, or the one built from the source given for `world`.
    pub fn component_file(&self, code: &Code, world: FunctionKind) -> Result<PathBuf, BuildError> {
        match code {
            Code::Wasm(path) => Ok(path.clone()),
            Code::Source(source) => self.component(source, world),
        }
    }

    /// The component built from `source` for `world`: from the cache when the same sources were
    /// built before.
    pub fn component(&self, source: &Source, world: FunctionKind) -> Result<PathBuf, BuildError> {
        let (toolchain, file) = match source {
            Source::Python { file, .. } => (&COMPONENTIZE_PY, file),
            Source::JavaScript { file } => (&COMPONENTIZE_JS, file),
        };
        let siblings = sources_beside(file, source)?;
        let mode = match source {
            Source::Python { .. } => None,
            Source::JavaScript { .. } if self.interpreted_javascript => Some(JavaScriptMode::Interpreted),
            Source::JavaScript { .. } => Some(JavaScriptMode::choose(&self.cache_dir)?),
        };
        let how = mode.as_ref().map(JavaScriptMode::describe).unwrap_or_default();
        let python_packages = match source {
            Source::Python { file, requirements, wheel_dir, .. } => {
                python::packages(file, requirements.as_deref(), wheel_dir.as_deref(), &self.cache_dir)?
            }
            Source::JavaScript { .. } => None,
        };
        let js_packages = match source {
            Source::JavaScript { file } => javascript::packages(file, &self.cache_dir)?,
            Source::Python { .. } => None,
        };
        let packages_key = python_packages
            .as_ref()
            .map(|packages| packages.key.as_str())
            .or(js_packages.as_ref().map(|packages| packages.key.as_str()));
        let key = content_key(toolchain, source, world, mode.as_ref(), &siblings, packages_key);
        let built = self.cache_dir.join(format!("{key}.wasm"));
        if built.exists() {
            tracing::info!("using the component built earlier from {} {how}", file.display());
            return Ok(built);
        }
        let program = toolchain.locate()?;
        let cache_error = |source| BuildError::Cache { dir: self.cache_dir.display().to_string(), source };
        std::fs::create_dir_all(&self.cache_dir).map_err(cache_error)?;
        let scratch = tempfile::Builder::new().prefix("build-").tempdir_in(&self.cache_dir).map_err(cache_error)?;
        let root = scratch.path();
        let mut entry = stage(root, source, world, &siblings).map_err(cache_error)?;
        if let Source::JavaScript { .. } = source {
            entry = javascript::bundle(root, &entry, js_packages.as_ref())?;
        }
        let partial = root.join("component.wasm");
        let mut command = Command::new(&program);
        match source {
            Source::Python { .. } => {
                command.args([
                    "-d",
                    "wit",
                    "-w",
                    world.wit_name(),
                    "componentize",
                    "-p",
                    "app",
                    "-p",
                    "sdk",
                    "-p",
                    ".",
                ]);
                if let Some(packages) = &python_packages {
                    command.arg("-p").arg(&packages.site);
                }
                command.args([entry.trim_end_matches(".py"), "-o", "component.wasm"])
            }
            Source::JavaScript { .. } => command.args([
                entry.as_str(),
                "-w",
                "wit",
                "-n",
                world.wit_name(),
                "-d",
                "http",
                "fetch-event",
                "-o",
                "component.wasm",
            ]),
        };
        if let Some(JavaScriptMode::AheadOfTime(weval)) = &mode {
            command.arg("--aot").arg("--weval-bin").arg(weval);
        }
        if mode == Some(JavaScriptMode::Interpreted) {
            tracing::info!("weval {WEVAL_VERSION} would compile JavaScript ahead of time: {}", WEVAL.install);
        }
        tracing::info!("building {} with {program} {how}", file.display());
        let started = std::time::Instant::now();
        let output = command
            .current_dir(root)
            .output()
            .map_err(|error| BuildError::Source(format!("cannot run {program}: {error}")))?;
        if !output.status.success() || !partial.exists() {
            return Err(BuildError::Failed {
                file: file.display().to_string(),
                tool: program,
                status: output.status.to_string(),
                output: printed(&output),
            });
        }
        std::fs::rename(&partial, &built).map_err(cache_error)?;
        tracing::info!("built {} in {} ms", file.display(), started.elapsed().as_millis());
        Ok(built)
    }
}

/// What a toolchain printed, its errors first, for an error that shows it.
fn printed(output: &std::process::Output) -> String {
    let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stdout));
    text.trim().to_owned()
}

/// The function's file and the other sources of its language in its folder, by name.
fn sources_beside(file: &Path, source: &Source) -> Result<Vec<(String, Vec<u8>)>, BuildError> {
    let unreadable = |error: std::io::Error| BuildError::Source(format!("cannot read {}: {error}", file.display()));
    if !std::fs::metadata(file).map_err(unreadable)?.is_file() {
        return Err(BuildError::Source(format!("{} is not a file; give the function's source file", file.display())));
    }
    let extensions: &[&str] = match source {
        Source::Python { .. } => &["py"],
        Source::JavaScript { .. } => &["js", "mjs"],
    };
    let folder = match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut found = Vec::new();
    let mut total = 0;
    for entry in std::fs::read_dir(folder).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        let wanted = path.extension().and_then(|ext| ext.to_str()).is_some_and(|ext| extensions.contains(&ext));
        if !wanted || !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(unreadable)?;
        total += bytes.len();
        if total > MAX_SOURCE_SIZE {
            return Err(BuildError::Source(format!(
                "the sources beside {} take more than {MAX_SOURCE_SIZE} bytes (MAX_SOURCE_SIZE); move the function into a folder of its own",
                file.display()
            )));
        }
        let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        found.push((name, bytes));
    }
    found.sort();
    Ok(found)
}

/// The hash naming a build: everything that goes into it.
fn content_key(
    toolchain: &Toolchain,
    source: &Source,
    world: FunctionKind,
    mode: Option<&JavaScriptMode>,
    siblings: &[(String, Vec<u8>)],
    packages: Option<&str>,
) -> String {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(toolchain.default_program.as_bytes());
    field(toolchain.version.as_bytes());
    field(WIT.as_bytes());
    field(world.wit_name().as_bytes());
    match source {
        Source::Python { file, classname, .. } => {
            for (name, text) in PYTHON_SDK {
                field(name.as_bytes());
                field(text.as_bytes());
            }
            field(file_name(file).as_bytes());
            field(classname.as_bytes());
        }
        Source::JavaScript { file } => {
            field(JS_SDK.as_bytes());
            field(file_name(file).as_bytes());
            field(javascript::ESBUILD_VERSION.as_bytes());
            if let Some(JavaScriptMode::AheadOfTime(_)) = mode {
                field(WEVAL.default_program.as_bytes());
                field(WEVAL.version.as_bytes());
            }
        }
    }
    for (name, bytes) in siblings {
        field(name.as_bytes());
        field(bytes);
    }
    if let Some(packages) = packages {
        field(b"packages");
        field(packages.as_bytes());
    }
    hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect()
}

fn file_name(file: &Path) -> String {
    file.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Lays out the build folder (`app/` the function's sources, `sdk/`, `wit/`, and the entry
/// module) and returns the entry module's file name.
fn stage(root: &Path, source: &Source, world: FunctionKind, siblings: &[(String, Vec<u8>)]) -> std::io::Result<String> {
    let write = |relative: &str, bytes: &[u8]| {
        let path = root.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, bytes)
    };
    write("wit/function.wit", WIT.as_bytes())?;
    for (name, bytes) in siblings {
        write(&format!("app/{name}"), bytes)?;
    }
    match source {
        Source::Python { classname, .. } => {
            for (name, text) in PYTHON_SDK {
                write(&format!("sdk/{name}"), text.as_bytes())?;
            }
            // The classname is passed as a Python string literal: JSON's escaping is valid Python.
            let literal = serde_json::to_string(classname).map_err(std::io::Error::other)?;
            let binder = match world {
                FunctionKind::Function => "world",
                FunctionKind::WindowFunction => "window_world",
            };
            write(
                "fnhost_main.py",
                format!("import fnhost._component\nWitWorld = fnhost._component.{binder}({literal})\n").as_bytes(),
            )?;
            Ok("fnhost_main.py".into())
        }
        Source::JavaScript { file } => {
            write("sdk/fnhost.js", JS_SDK.as_bytes())?;
            let module = serde_json::to_string(&format!("./app/{}", file_name(file))).map_err(std::io::Error::other)?;
            let exports = match world {
                FunctionKind::Function => {
                    "import { componentProcessBatch } from \"./sdk/fnhost.js\";\nexport const processBatch = componentProcessBatch(functionModule, host);\n"
                }
                FunctionKind::WindowFunction => {
                    "import { componentWindowFunction } from \"./sdk/fnhost.js\";\nconst windowFunction = componentWindowFunction(functionModule, host);\nexport const processWindow = windowFunction.processWindow;\nexport const eventTimes = windowFunction.eventTimes;\n"
                }
            };
            let entry = format!(
                "import * as functionModule from {module};\nimport * as host from \"fnhost:function/context@0.3.1\";\n{exports}"
            );
            write("fnhost_main.js", entry.as_bytes())?;
            Ok("fnhost_main.js".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python(classname: &str) -> Source {
        Source::Python { file: "f.py".into(), classname: classname.into(), requirements: None, wheel_dir: None }
    }

    #[test]
    fn the_key_changes_with_every_input_of_the_build() {
        let files = vec![("f.py".to_owned(), b"x = 1".to_vec())];
        let base = content_key(&COMPONENTIZE_PY, &python("f.F"), FunctionKind::Function, None, &files, None);
        assert_eq!(
            base,
            content_key(&COMPONENTIZE_PY, &python("f.F"), FunctionKind::Function, None, &files, None),
            "deterministic"
        );
        assert_ne!(
            base,
            content_key(&COMPONENTIZE_PY, &python("f.G"), FunctionKind::Function, None, &files, None),
            "classname"
        );
        let edited = vec![("f.py".to_owned(), b"x = 2".to_vec())];
        assert_ne!(
            base,
            content_key(&COMPONENTIZE_PY, &python("f.F"), FunctionKind::Function, None, &edited, None),
            "source"
        );
        let renamed = vec![("g.py".to_owned(), b"x = 1".to_vec())];
        assert_ne!(
            base,
            content_key(&COMPONENTIZE_PY, &python("f.F"), FunctionKind::Function, None, &renamed, None),
            "file name"
        );
        let js = Source::JavaScript { file: "f.py".into() };
        let interpreted = content_key(
            &COMPONENTIZE_JS,
            &js,
            FunctionKind::Function,
            Some(&JavaScriptMode::Interpreted),
            &files,
            None,
        );
        assert_ne!(base, interpreted, "language");
        let ahead_of_time = JavaScriptMode::AheadOfTime("/usr/bin/weval".into());
        assert_ne!(
            interpreted,
            content_key(&COMPONENTIZE_JS, &js, FunctionKind::Function, Some(&ahead_of_time), &files, None),
            "AOT"
        );
        let window = content_key(&COMPONENTIZE_PY, &python("f.F"), FunctionKind::WindowFunction, None, &files, None);
        assert_ne!(base, window, "world");
        let with_packages =
            content_key(&COMPONENTIZE_PY, &python("f.F"), FunctionKind::Function, None, &files, Some("set"));
        assert_ne!(base, with_packages, "the resolved packages");
    }

    #[test]
    fn the_entry_module_names_the_class_as_a_literal() {
        let root = tempfile::tempdir().unwrap();
        let entry = stage(root.path(), &python("m.C\"; import os"), FunctionKind::Function, &[]).unwrap();
        let text = std::fs::read_to_string(root.path().join(entry)).unwrap();
        assert!(text.ends_with("world(\"m.C\\\"; import os\")\n"), "{text}");
        assert!(root.path().join("sdk/fnhost/_component.py").exists());
        assert!(root.path().join("wit/function.wit").exists());
    }
}
