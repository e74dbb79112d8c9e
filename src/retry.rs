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
    /// The deadline passed; the last check's reason.
    TimedOut(String),
}

/// Checks every `interval` until a check is `Done` or `Failed`, or until the
/// next check would start after `deadline`. Always checks at least once.
pub async fn poll_until<T, F, Fut>(
    deadline: Instant,
    interval: Duration,
    mut check: F,
) -> Result<T, PollError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Check<T>>,
{
    loop {
        match check().await {
            Check::Done(value) => return Ok(value),
            Check::Failed(why) => return Err(PollError::Failed(why)),
            Check::NotYet(why) => {
                if Instant::now() + interval >= deadline {
                    return Err(PollError::TimedOut(why));
                }
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
        assert_eq!(timed_out, Err(PollError::TimedOut("still down".into())));
    }
}
