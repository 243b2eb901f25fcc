//! A guest's stdout and stderr, captured up to `MAX_GUEST_STDIO_PER_MESSAGE` and sent to the
//! function's log after each message.

use std::sync::{Arc, Mutex};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use crate::limits::MAX_GUEST_STDIO_PER_MESSAGE;

/// A guest's stdout or stderr: kept in memory until the message is done, then sent to the function's log.
#[derive(Clone, Default)]
pub(super) struct GuestOutput(Arc<Mutex<Vec<u8>>>);

impl GuestOutput {
    pub(super) fn take(&self) -> String {
        let mut bytes = self.lock();
        if bytes.is_empty() {
            return String::new();
        }
        String::from_utf8_lossy(&std::mem::take(&mut *bytes)).into_owned()
    }

    pub(super) fn last_panic(&self) -> Option<String> {
        let bytes = self.lock();
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().collect();
        // Rust prints `thread '<unnamed>' panicked at FILE:LINE:COL:` and the payload on the next line.
        let at = lines.iter().rposition(|line| line.contains("panicked at"))?;
        let location = &lines[at][lines[at].find("panicked at")?..];
        Some(match lines.get(at + 1) {
            Some(payload) => format!("{location} {payload}"),
            None => location.to_owned(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn append(&self, bytes: &[u8]) -> usize {
        let mut buffer = self.lock();
        // Output past the per-message limit is dropped rather than refused: a chatty guest must
        // not fail because of its logging.
        let room = MAX_GUEST_STDIO_PER_MESSAGE.saturating_sub(buffer.len());
        buffer.extend_from_slice(&bytes[..bytes.len().min(room)]);
        bytes.len()
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Ok(self.append(buf)))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
