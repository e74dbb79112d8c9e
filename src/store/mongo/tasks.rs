//! The store's background tasks (index creation, change stream, SRV
//! resolution) and the one flag that says the store is closed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::task::JoinHandle;

/// Background tasks, aborted together when the store closes or is dropped.
/// A std `Mutex`: held only to push or take handles, never across `.await`.
#[derive(Default)]
pub(super) struct Tasks {
    closed: AtomicBool,
    running: Mutex<Vec<JoinHandle<()>>>,
}

impl Tasks {
    /// Whether the store has closed; every loop checks it between steps.
    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Keeps `task` to abort on close; aborts it at once if already closed.
    pub(super) fn push(&self, task: JoinHandle<()>) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_closed() {
            task.abort();
        } else {
            running.push(task);
        }
    }

    /// Marks the store closed and aborts every task. The tasks hold nothing
    /// that needs finishing.
    pub(super) fn stop(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let running = std::mem::take(&mut *self.running.lock().unwrap_or_else(|e| e.into_inner()));
        for task in running {
            task.abort();
        }
    }
}
