//! The store's background tasks (the order index and the look for it
//! gone, change stream, SRV resolution, the client's renewal), the one flag that says the store
//! is closed, and the one way a start-up task waits out what clears by
//! itself.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::mongo::Class;
use crate::retry::Backoff;

/// Background tasks, aborted together when the store closes or is dropped.
/// A std `Mutex`: held only to push or take handles, never across `.await`.
#[derive(Default)]
pub(super) struct Tasks {
    closed: AtomicBool,
    running: Mutex<Vec<JoinHandle<()>>>,
    /// The tasks of the current driver client (its index, change stream
    /// and counts), aborted when another client replaces it
    /// ([`super::client_renewal`]).
    of_client: Mutex<Vec<JoinHandle<()>>>,
}

impl Tasks {
    /// Whether the store has closed; every loop checks it between steps.
    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Keeps `task` to abort on close; aborts it at once if already closed.
    pub(super) fn push(&self, task: JoinHandle<()>) {
        self.keep(&self.running, task);
    }

    /// Keeps `task`, one of the current client's, to abort when the client
    /// is replaced ([`Tasks::abort_client_tasks`]) or the store closes.
    pub(super) fn push_for_client(&self, task: JoinHandle<()>) {
        self.keep(&self.of_client, task);
    }

    /// Aborts the tasks of the client being replaced.
    pub(super) fn abort_client_tasks(&self) {
        abort_all(&self.of_client);
    }

    /// Keeps `task` in `tasks`; aborts it at once if the store is closed.
    fn keep(&self, tasks: &Mutex<Vec<JoinHandle<()>>>, task: JoinHandle<()>) {
        let mut running = tasks.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_closed() {
            task.abort();
        } else {
            running.push(task);
        }
    }

    /// Runs `attempt` until it settles, while the store is open: "no
    /// primary now" and refused credentials clear by themselves, without a
    /// restart, so both are tried again with backoff (200 ms doubling to
    /// 5 s), and `waiting` is told each refusal's reason meanwhile. `None`
    /// when the store closed first; otherwise the success or the failure
    /// that retrying cannot help.
    pub(super) async fn until_settled<T, F, Fut>(
        &self,
        mut attempt: F,
        mut waiting: impl FnMut(&str),
    ) -> Option<Result<T, Class>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Class>>,
    {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        while !self.is_closed() {
            match attempt().await {
                Err(Class::Retry(_)) => {}
                Err(Class::Unavailable(reason)) => waiting(&reason),
                settled => return Some(settled),
            }
            backoff.wait().await;
        }
        None
    }

    /// Marks the store closed and aborts every task. The tasks hold nothing
    /// that needs finishing.
    pub(super) fn stop(&self) {
        self.closed.store(true, Ordering::SeqCst);
        abort_all(&self.running);
        abort_all(&self.of_client);
    }
}

/// Aborts every task in `tasks` and empties it.
fn abort_all(tasks: &Mutex<Vec<JoinHandle<()>>>) {
    let running = std::mem::take(&mut *tasks.lock().unwrap_or_else(|e| e.into_inner()));
    for task in running {
        task.abort();
    }
}
