//! Waiting before trying again, the same way everywhere: one exponential
//! backoff (backon's, without jitter so bounds stay exact) and one
//! poll-until-deadline helper.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::time::Instant;

/// Delays that double from `first` up to `max`, forever.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
}

impl Backoff {
    /// Starts at `first`, doubles, stays at `max`.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        let builder = ExponentialBuilder::new()
            .with_min_delay(first)
            .with_max_delay(max)
            .without_max_times();
        Backoff {
            builder,
            delays: builder.build(),
        }
    }

    /// The next delay (never ends: `without_max_times`).
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(Duration::ZERO)
    }

    /// Sleeps for the next delay.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Starts again from `first` (after a success).
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

/// What one look at a condition found.
#[derive(Debug)]
pub enum Check<T> {
    /// The condition holds: stop with this value.
    Done(T),
    /// It cannot hold: stop with this reason.
    Failed(String),
    /// Not yet, and why not (reported if the deadline passes).
    NotYet(String),
}

/// Why [`poll_until`] gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollError {
    /// A check said it cannot hold.
    Failed(String),
    /// The deadline passed; the last finished check's reason, `None` when
    /// the deadline cut the first check short.
    TimedOut(Option<String>),
}

/// Checks every `interval` until a check is `Done` or `Failed`, or until the
/// next check would start after `deadline`. Always starts one check; a
/// check still running at `deadline` is dropped, so the wait ends on time
/// however long one check may take (a driver's server selection, say): a
/// check must be safe to abandon.
pub async fn poll_until<T, F, Fut>(
    deadline: Instant,
    interval: Duration,
    mut check: F,
) -> Result<T, PollError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Check<T>>,
{
    let mut last = None;
    loop {
        match tokio::time::timeout_at(deadline, check()).await {
            Err(_) => return Err(PollError::TimedOut(last)),
            Ok(Check::Done(value)) => return Ok(value),
            Ok(Check::Failed(why)) => return Err(PollError::Failed(why)),
            Ok(Check::NotYet(why)) => {
                if Instant::now() + interval >= deadline {
                    return Err(PollError::TimedOut(Some(why)));
                }
                last = Some(why);
            }
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_bound_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_millis(300));
        let first: Vec<_> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(first, [50, 100, 200, 300, 300]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(50));
    }

    #[tokio::test]
    async fn poll_until_reports_done_failed_and_timed_out() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut n = 0;
        let done = poll_until(deadline, Duration::from_millis(1), || {
            n += 1;
            let seen = n;
            async move {
                if seen < 3 {
                    Check::NotYet(format!("try {seen}"))
                } else {
                    Check::Done(seen)
                }
            }
        })
        .await;
        assert_eq!(done, Ok(3));
        let failed: Result<(), _> = poll_until(deadline, Duration::from_millis(1), || async {
            Check::Failed("no".into())
        })
        .await;
        assert_eq!(failed, Err(PollError::Failed("no".into())));
        let soon = Instant::now() + Duration::from_millis(30);
        let timed_out: Result<(), _> = poll_until(soon, Duration::from_millis(10), || async {
            Check::NotYet("still down".into())
        })
        .await;
        assert_eq!(
            timed_out,
            Err(PollError::TimedOut(Some("still down".into())))
        );
    }

    #[tokio::test]
    async fn a_check_running_at_the_deadline_is_cut_short() {
        let started = Instant::now();
        let deadline = started + Duration::from_millis(300);
        let mut n = 0;
        let timed_out: Result<(), _> = poll_until(deadline, Duration::from_millis(10), || {
            n += 1;
            let first = n == 1;
            async move {
                if !first {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                Check::NotYet(format!("first: {first}"))
            }
        })
        .await;
        assert_eq!(
            timed_out,
            Err(PollError::TimedOut(Some("first: true".into())))
        );
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        let slow: Result<(), _> = poll_until(
            Instant::now() + Duration::from_millis(50),
            Duration::from_millis(10),
            || async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Check::Done(())
            },
        )
        .await;
        assert_eq!(slow, Err(PollError::TimedOut(None)));
    }
}
