//! The shutdown signal the front door's connections and event streams
//! watch, polled on every wake of each at the cost of one atomic load.
//!
//! Rocket's `Shutdown` is a trip-wire over tokio's `Notify`, and a pending
//! `Notified` locks its `Notify`'s list of waiters each time it is polled
//! (tokio 1.x, `sync/notify.rs`: `poll_notified` in the `Waiting` state).
//! The front door polls the shutdown with every connection's progress, and
//! an event stream with every event, so 10,000 subscribers took that one
//! lock twice per delivered event, from every worker thread. No signal in
//! tokio, tokio-util (`CancellationToken` waits on a `Notify` too) or
//! hyper-util (`GracefulShutdown` on a `watch`) avoids it; here a waiter
//! joins the `Notify`'s list once, and a later poll with the same waker
//! reads the flag instead.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

/// A future that resolves once the server shuts down, and from then on at
/// every poll. Clones share the signal; each clone waits on its own.
pub struct ShutdownSignal {
    shared: Arc<Shared>,
    /// This clone's place among the `Notify`'s waiters, and the waker it
    /// was last polled with; `None` until first polled.
    waiting: Option<(Pin<Box<OwnedNotified>>, Waker)>,
}

struct Shared {
    /// Set before the waiters are woken, never cleared.
    tripped: AtomicBool,
    notify: Arc<Notify>,
}

impl ShutdownSignal {
    /// A signal that trips once `shutdown` resolves (Rocket's `Shutdown`),
    /// watched by a task spawned on the current tokio runtime.
    ///
    /// Panics when called outside a tokio runtime, as `tokio::spawn` does.
    pub fn after<F>(shutdown: F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let shared = Arc::new(Shared {
            tripped: AtomicBool::new(false),
            notify: Arc::new(Notify::new()),
        });
        let trip = shared.clone();
        tokio::spawn(async move {
            shutdown.await;
            trip.tripped.store(true, Ordering::SeqCst);
            trip.notify.notify_waiters();
        });
        ShutdownSignal {
            shared,
            waiting: None,
        }
    }

    fn tripped(&self) -> bool {
        self.shared.tripped.load(Ordering::SeqCst)
    }
}

impl Clone for ShutdownSignal {
    fn clone(&self) -> Self {
        ShutdownSignal {
            shared: self.shared.clone(),
            waiting: None,
        }
    }
}

impl Future for ShutdownSignal {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.tripped() {
            return Poll::Ready(());
        }
        if let Some((_, waker)) = &self.waiting {
            // Already among the waiters, with a waker that wakes this task.
            if waker.will_wake(cx.waker()) {
                return Poll::Pending;
            }
        }
        let mut notified = match self.waiting.take() {
            Some((notified, _)) => notified,
            None => Box::pin(self.shared.notify.clone().notified_owned()),
        };
        // Joins the waiters with this waker (or changes the waker). A trip
        // after the flag was read above is seen by this poll (the `Notify`
        // counts its wake-ups) or by the second read of the flag.
        if notified.as_mut().poll(cx).is_ready() || self.tripped() {
            return Poll::Ready(());
        }
        self.waiting = Some((notified, cx.waker().clone()));
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::ShutdownSignal;
    use std::time::Duration;

    #[tokio::test]
    async fn every_clone_resolves_once_the_shutdown_does_and_stays_resolved() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let signal = ShutdownSignal::after(async move {
            let _ = rx.await;
        });
        let waiting: Vec<_> = (0..3).map(|_| tokio::spawn(signal.clone())).collect();
        let mut polled_first = signal.clone();
        // Pending while the server runs, polled more than once by one task.
        for _ in 0..2 {
            let pending = tokio::time::timeout(Duration::from_millis(50), &mut polled_first).await;
            assert!(pending.is_err(), "resolved before the shutdown");
        }
        tx.send(()).unwrap();
        for task in waiting {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("a clone waiting in its own task did not resolve")
                .unwrap();
        }
        tokio::time::timeout(Duration::from_secs(5), &mut polled_first)
            .await
            .expect("a clone polled before the shutdown did not resolve");
        // Cloned after the shutdown: resolves at once.
        tokio::time::timeout(Duration::from_millis(50), signal.clone())
            .await
            .expect("a clone made after the shutdown did not resolve");
    }
}
