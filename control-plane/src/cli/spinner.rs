//! A spinner on stderr while a request is pending: drawn only when stderr
//! is a terminal, and only after 300 ms, so scripts, pipes and fast calls
//! see nothing.

use std::io::{IsTerminal, Write};
use std::time::Duration;

/// A spinner on stderr while something slow runs; only when stderr is a
/// terminal, and only after a short delay so fast calls print nothing.
pub(super) struct Spinner(Option<tokio::task::JoinHandle<()>>);

impl Spinner {
    pub(super) fn start(what: String) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self(None);
        }
        Self(Some(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let frames = ['|', '/', '-', '\\'];
            let mut i = 0usize;
            loop {
                let mut err = std::io::stderr();
                let _ = write!(err, "\r{} waiting for {what}…", frames[i % frames.len()]);
                let _ = err.flush();
                i += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })))
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
            // Clear the spinner line (erase to end of line).
            let mut err = std::io::stderr();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}
