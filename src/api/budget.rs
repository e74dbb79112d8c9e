//! A bound on the memory large responses hold while they are built and
//! sent.
//!
//! A listing of 1,000 long messages is 8 MB of JSON, built per request.
//! One client that sent 200 such requests at once, each on a connection
//! it closed at once, grew the server by 2 GB: every answer was built,
//! copied to the front door and held until its write failed. Each
//! response past [`LARGE`] bytes now takes its size from a budget of
//! [`BUDGET_BYTES`]: a listing before it reads its messages, for the
//! most its `limit` may bring ([`reserve`]), then keeps what it needs
//! ([`settle`]); any other before the front door copies it ([`take`]). It
//! gives it back once the front door has sent it or dropped it (the budget
//! rides in the response body, [`Holding`]); the rest wait, without a copy
//! of their own. Smaller responses (every page of 100 messages, every
//! listing of up to 124 messages) take nothing.
//!
//! One client (its address) takes at most [`CLIENT_SHARE_BYTES`] of it
//! beside one response's own size: one client that asked for hundreds and
//! read nothing held the whole budget, and every other client's large
//! listings and replays waited a minute for it. Its own wait their turn
//! behind its share; others' take from the rest. Where clients are not
//! told apart by address (`max_connections_per_client` off, as behind a
//! reverse proxy, where every client has the proxy's), there is no share.
//!
//! The budget goes from the handler to the front door through a task-local
//! slot ([`scope`]): Rocket runs the handler within the front door's
//! dispatch, in its task, and gives back only a body to read.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A response past this many bytes takes from the budget.
pub const LARGE: usize = 1 << 20;

/// The bytes of large responses built or in flight at once: eight
/// listings of 1,000 messages of 2,000 characters outside the BMP.
pub const BUDGET_BYTES: usize = 64 << 20;

/// The most of the budget one client's responses take at once, but for
/// one response larger than it (an event stream's page from the store,
/// 32 MiB at most): so one client holds half the budget at most.
pub const CLIENT_SHARE_BYTES: usize = BUDGET_BYTES / 4;

/// The budget is counted in KiB (a semaphore's permits are a `u32`).
const UNIT: usize = 1024;

/// What one response took: its units of the whole budget and, up to
/// [`CLIENT_SHARE_BYTES`], of its client's share. Given back when dropped.
#[derive(Debug)]
pub struct Taken {
    whole: OwnedSemaphorePermit,
    share: Option<OwnedSemaphorePermit>,
}

impl Taken {
    /// Both of `other`'s with these (the same client's).
    fn merge(&mut self, other: Taken) {
        self.whole.merge(other.whole);
        match (&mut self.share, other.share) {
            (Some(share), Some(other)) => share.merge(other),
            (none @ None, other) => *none = other,
            (Some(_), None) => {}
        }
    }

    /// Gives back all but `units`.
    fn keep(&mut self, units: usize) {
        if let Some(extra) = self.whole.num_permits().checked_sub(units) {
            drop(self.whole.split(extra));
        }
        if let Some(share) = &mut self.share {
            if let Some(extra) = share.num_permits().checked_sub(units.min(SHARE_UNITS)) {
                drop(share.split(extra));
            }
        }
    }
}

const SHARE_UNITS: usize = CLIENT_SHARE_BYTES / UNIT;

/// The slot a dispatch's handler takes into, and whose request it is.
struct Slot {
    client: Option<IpAddr>,
    taken: Option<Taken>,
}

tokio::task_local! {
    /// What the handler of the request being dispatched took.
    static HELD: RefCell<Slot>;
}

fn budget() -> &'static Arc<Semaphore> {
    static BUDGET: OnceLock<Arc<Semaphore>> = OnceLock::new();
    BUDGET.get_or_init(|| Arc::new(Semaphore::new(BUDGET_BYTES / UNIT)))
}

/// `client`'s share, alive while any of its responses holds some of it.
fn share_of(client: IpAddr) -> Arc<Semaphore> {
    static SHARES: OnceLock<Mutex<HashMap<IpAddr, Weak<Semaphore>>>> = OnceLock::new();
    let mut shares = SHARES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(share) = shares.get(&client).and_then(Weak::upgrade) {
        return share;
    }
    // Those no response holds any more go as the map grows: at most
    // twice as many as there are clients holding a share.
    if shares.len() >= 64 {
        shares.retain(|_, share| share.strong_count() > 0);
    }
    let share = Arc::new(Semaphore::new(SHARE_UNITS));
    shares.insert(client, Arc::downgrade(&share));
    share
}

/// Waits until the budget has room for a response of `bytes` (the whole
/// budget for one larger than it), and takes it for the request being
/// dispatched, beside what it took already: the front door gives it back
/// when the response is sent or dropped ([`scope`]). Outside a dispatch
/// (a handler run by Rocket's own local client) nothing is taken.
/// Nothing for `bytes` up to [`LARGE`].
pub async fn reserve(bytes: usize) {
    let Ok(client) = HELD.try_with(|held| held.borrow().client) else {
        return;
    };
    let Some(taken) = take(client, bytes).await else {
        return;
    };
    HELD.with(|held| match &mut held.borrow_mut().taken {
        Some(before) => before.merge(taken),
        none => *none = Some(taken),
    });
}

/// Waits until `client`'s share (if it has one) and the budget have room for `bytes` (the
/// whole budget for more than it), and takes it; `None` for `bytes` up to
/// [`LARGE`]. For the front door, which copies a response's body before it
/// sends it: a large one whose handler took nothing (the latest messages,
/// shared by every request for them until one is posted) takes its size
/// here; and for an event stream's page read from the store.
pub async fn take(client: Option<IpAddr>, bytes: usize) -> Option<Taken> {
    if bytes <= LARGE {
        return None;
    }
    let units = units(bytes);
    let permits = |units: usize| u32::try_from(units).unwrap_or(u32::MAX);
    // The share first: a client past it waits holding none of the budget.
    // Neither semaphore is ever closed.
    let share = match client {
        Some(client) => Some(
            share_of(client)
                .acquire_many_owned(permits(units.min(SHARE_UNITS)))
                .await
                .ok()?,
        ),
        None => None,
    };
    let whole = budget()
        .clone()
        .acquire_many_owned(permits(units))
        .await
        .ok()?;
    Some(Taken { whole, share })
}

/// Keeps, of what the request being dispatched took, what a response of
/// `bytes` needs, and gives the rest back: a request takes for the most it
/// may answer before it knows what it will ([`reserve`]), then settles.
pub fn settle(bytes: usize) {
    let _ = HELD.try_with(|held| keep(&mut held.borrow_mut().taken, bytes));
}

/// Keeps, of what `taken` holds, what `bytes` need, and gives the rest
/// back: all of it for `bytes` up to [`LARGE`]. For what is taken outside
/// a dispatch ([`take`]), such as an event stream's replay from the store.
pub fn keep(taken: &mut Option<Taken>, bytes: usize) {
    let Some(held) = taken.as_mut() else {
        return;
    };
    if bytes <= LARGE {
        *taken = None;
    } else {
        held.keep(units(bytes));
    }
}

/// The budget's units `bytes` take: the whole budget at most.
fn units(bytes: usize) -> usize {
    bytes.div_ceil(UNIT).min(BUDGET_BYTES / UNIT)
}

/// Runs `dispatch` (Rocket's handling of one request from `client`, and
/// the reading of its body) with a slot for what its handler takes from
/// the budget, and returns its output with what was taken. `client`:
/// `None` where clients are not told apart by address.
pub async fn scope<F: std::future::Future>(
    client: Option<IpAddr>,
    dispatch: F,
) -> (F::Output, Option<Taken>) {
    let slot = Slot {
        client,
        taken: None,
    };
    HELD.scope(RefCell::new(slot), async {
        let out = dispatch.await;
        let held = HELD.with(|held| held.borrow_mut().taken.take());
        (out, held)
    })
    .await
}

/// How much of a large response [`Holding`] hands hyper at a time.
const CHUNK_BYTES: usize = 64 * 1024;

/// A large response's body that keeps what its response took from the
/// budget until the last of it has been handed to hyper, or it is dropped
/// with its connection.
///
/// It hands hyper a copy of one [`CHUNK_BYTES`] part at a time, and hyper
/// asks for the next only once what it holds unsent (its write queue) has
/// room, so the response stays here, counted, while its client does not
/// read it. Handed over whole, it went into hyper's queue at once, hyper
/// dropped the body, and with it the budget: 120 clients asking for
/// 2 MB listings and reading nothing held 500 MB, every one of them
/// built. Copies, not slices: a slice keeps the whole buffer it is cut
/// from alive, so the response's last part in hyper's queue would have
/// held all of it once the budget was given back.
pub struct Holding {
    rest: Bytes,
    held: Option<Taken>,
}

impl Holding {
    /// `body`, holding `held` until the last of it is handed over.
    pub fn new(body: Bytes, held: Option<Taken>) -> Self {
        Holding { rest: body, held }
    }
}

impl Body for Holding {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.rest.is_empty() {
            self.held = None;
            return Poll::Ready(None);
        }
        let part = self.rest.len().min(CHUNK_BYTES);
        let chunk = Bytes::copy_from_slice(&self.rest[..part]);
        if part == self.rest.len() {
            // The buffer and what it took go together.
            self.rest = Bytes::new();
            self.held = None;
        } else {
            bytes::Buf::advance(&mut self.rest, part);
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

/// The bytes the budget has free, and the lock a test holds while it
/// counts them: the budget is the process's, and tests run side by side.
#[cfg(test)]
pub(crate) mod counted {
    pub(crate) static BY_ONE_TEST: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    pub(crate) fn free_bytes() -> usize {
        super::budget().available_permits() * super::UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)));

    #[tokio::test]
    async fn a_large_response_holds_its_size_until_its_body_is_dropped() {
        let _alone = counted::BY_ONE_TEST.lock().await;
        let free = || budget().available_permits();
        let before = free();
        let ((), held) = scope(CLIENT, reserve(8 << 20)).await;
        assert_eq!(free(), before - (8 << 20) / UNIT, "taken");
        let body = Holding::new(Bytes::from(vec![b' '; 3 * CHUNK_BYTES + 1]), held);
        assert_eq!(free(), before - (8 << 20) / UNIT, "held by the body");
        drop(body);
        assert_eq!(free(), before, "given back");

        // Handed to hyper a part at a time, and held until the last part
        // is: hyper asks for the next only once it has room for it.
        let ((), held) = scope(CLIENT, reserve(8 << 20)).await;
        let mut body = Holding::new(Bytes::from(vec![b' '; 3 * CHUNK_BYTES + 1]), held);
        let mut parts = Vec::new();
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            let data = frame.unwrap().into_data().unwrap();
            parts.push(data.len());
            let taken = free() < before;
            assert_eq!(taken, parts.len() < 4, "after part {}", parts.len());
        }
        assert_eq!(parts, [CHUNK_BYTES, CHUNK_BYTES, CHUNK_BYTES, 1]);
        assert_eq!(free(), before);

        // Small ones take nothing; outside a dispatch, nothing is kept.
        let ((), held) = scope(CLIENT, reserve(LARGE)).await;
        assert!(held.is_none());
        reserve(2 << 20).await;
        assert_eq!(free(), before);

        // Taken for the most a request may answer, then settled to what it
        // answers: the rest is given back at once, all of it for a small
        // answer.
        let ((), held) = scope(CLIENT, async {
            reserve(8 << 20).await;
            settle(3 << 20);
        })
        .await;
        assert_eq!(free(), before - (3 << 20) / UNIT);
        drop(held);
        let ((), held) = scope(CLIENT, async {
            reserve(8 << 20).await;
            settle(1000);
        })
        .await;
        assert!(held.is_none());
        assert_eq!(free(), before);
    }

    /// One client's large responses wait behind its share, past one
    /// response's own size; another client's take from the rest at once.
    #[tokio::test]
    async fn one_client_waits_behind_its_share_and_others_do_not() {
        let _alone = counted::BY_ONE_TEST.lock().await;
        let greedy = Some("192.0.2.7".parse().unwrap());
        let other = Some("198.51.100.7".parse().unwrap());
        let soon = std::time::Duration::from_millis(200);
        let page = 8 << 20;
        let mut held = Vec::new();
        for _ in 0..CLIENT_SHARE_BYTES / page {
            held.push(take(greedy, page).await.expect("within its share"));
        }
        assert!(
            tokio::time::timeout(soon, take(greedy, page))
                .await
                .is_err(),
            "past its share, it waits"
        );
        assert!(
            tokio::time::timeout(soon, take(other, page)).await.is_ok(),
            "another client does not"
        );
        // One response larger than the share takes its whole size once
        // the share is free: half the budget at most for one client.
        held.clear();
        let replay = take(greedy, 32 << 20).await.expect("one large page");
        assert_eq!(replay.whole.num_permits(), (32 << 20) / UNIT);
        assert!(tokio::time::timeout(soon, take(greedy, 2 << 20))
            .await
            .is_err());
        drop(replay);
        assert!(tokio::time::timeout(soon, take(greedy, 2 << 20))
            .await
            .is_ok());
        // Not told apart by address: no share, the budget alone.
        let many: Vec<_> = futures::future::join_all((0..4).map(|_| take(None, page))).await;
        assert!(many.iter().all(Option::is_some));
    }
}
