//! A function's durable record and its package, in the engine's metadata store.

use std::path::PathBuf;

use anyhow::Context as _;

use super::{FUNCTION_RECORD_PREFIX, FunctionRecord, Worker, WorkerError};
use crate::function::{Code, FunctionKind};
use crate::limits::MAX_PACKAGE_SIZE;
use crate::names::Fqfn;
use crate::runtime::FunctionCode;
use crate::spec::FunctionSpec;

impl Worker {
    pub(super) fn load_package(&self, digest: &str) -> anyhow::Result<FunctionCode> {
        let bytes = self.store.package(digest)?.with_context(|| {
            format!("the component {digest} is missing from the metadata store; create the function again")
        })?;
        Ok(self.runtime.load_bytes(&bytes, &format!("package {digest}"))?)
    }

    /// Keeps a component's bytes under its digest, durably.
    pub(super) fn save_package(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        Ok(self.store.put_package(digest, bytes)?)
    }

    pub(super) fn save_record(&self, fqfn: &Fqfn, record: &FunctionRecord) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(record).expect("a record serializes");
        Ok(self.store.put_record(&format!("{FUNCTION_RECORD_PREFIX}{fqfn}"), &bytes)?)
    }

    /// The component's bytes: uploaded, or read from the component the config names, or built
    /// from the source file it names.
    pub(super) fn package_bytes(
        &self,
        spec: &FunctionSpec,
        world: FunctionKind,
        uploaded: Option<Vec<u8>>,
    ) -> Result<Option<(Vec<u8>, String)>, WorkerError> {
        if let Some(bytes) = uploaded {
            return Ok(Some((bytes, "the uploaded component".into())));
        }
        let bad = |reason: String| WorkerError::BadRequest(reason);
        let Some(code) = spec.code().map_err(|error| bad(error.to_string()))? else { return Ok(None) };
        let code = match code {
            Code::Wasm(path) => {
                let text = path.to_string_lossy();
                Code::Wasm(PathBuf::from(text.strip_prefix("file://").unwrap_or(&text)))
            }
            source => source,
        };
        let file = self.builder.component_file(&code, world).map_err(|error| bad(error.to_string()))?;
        let path = file.display();
        let size = std::fs::metadata(&file)
            .map_err(|error| {
                bad(format!(
                    "the worker cannot read the component {path}: {error}; upload the file instead (multipart field `data`)"
                ))
            })?
            .len();
        if size > MAX_PACKAGE_SIZE as u64 {
            return Err(bad(format!(
                "the component {path} is {size} bytes; the limit (MAX_PACKAGE_SIZE) is {MAX_PACKAGE_SIZE}"
            )));
        }
        let bytes = std::fs::read(&file)
            .map_err(|error| bad(format!("the worker cannot read the component {path}: {error}")))?;
        Ok(Some((bytes, path.to_string())))
    }
}
