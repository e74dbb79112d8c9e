//! The live feed: one change stream per app instance on the messages
//! collection, publishing every new message to the `Live` feed.
//!
//! Every (re)open follows the same steps, so nothing is skipped and nothing
//! a subscriber already has is sent twice:
//! 1. the first time only, read the latest messages and `reset` the cache
//!    (history, not news: nobody is sent it);
//! 2. open the stream, from the last resume token if there is one;
//! 3. catch up: with a resumed stream, drain what it replays; without one
//!    (first open, or the token is gone from the oplog), read everything
//!    after the last message this feed knows of;
//! 4. read the latest messages again, publish those newer than anything
//!    published so far, and `reset` the cache (it is whole again);
//! 5. publish each insert event as it comes; `publish` ignores ids it has.
//!
//! A message committed before the stream opened is read in step 3 or 4; one
//! committed after is delivered by the stream (and may also be read, which
//! `publish` dedupes). When the stream fails beyond the driver's one
//! automatic resume, the cache is invalidated and the cycle starts again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use mongodb::bson::{doc, Document};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};
use mongodb::change_stream::ChangeStream;

use super::errors::{classify, Class};
use super::model::{Direction, Key, MessageDoc};
use super::{Handles, Inner, Window};
use crate::live::CACHE_CAPACITY;

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A resumed stream replays what was missed; past this much the reads of
/// step 4 are cheaper than event-by-event catch-up.
const MAX_DRAIN_EVENTS: usize = 10_000;
const MAX_DRAIN_TIME: Duration = Duration::from_secs(10);
/// How far instances' clocks may disagree. Datetimes come from the writing
/// instance's clock, so a message committed later can sort up to this much
/// earlier: catch-up reads start this far back, and `Live` drops the ones it
/// already has.
const CLOCK_SKEW_MS: i64 = 5_000;

type Events = ChangeStream<ChangeStreamEvent<Document>>;

/// Where the feed is in the store order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Position {
    /// The store was empty when first read.
    Start,
    /// The newest message published or read into the cache.
    At(Key),
}

impl Position {
    fn advance(&mut self, key: Key) {
        match self {
            Position::At(k) if *k >= key => {}
            _ => *self = Position::At(key),
        }
    }

    /// Whether `key` may be a message the feed has not delivered yet.
    fn is_before(&self, key: &Key) -> bool {
        match self {
            Position::Start => true,
            Position::At(k) => &k.earlier_by(CLOCK_SKEW_MS) < key,
        }
    }
}

struct Feed {
    inner: Arc<Inner>,
    handles: Arc<Handles>,
    token: Option<ResumeToken>,
    position: Option<Position>,
}

pub(super) async fn run(inner: Arc<Inner>, handles: Arc<Handles>) {
    let mut feed = Feed {
        inner,
        handles,
        token: None,
        position: None,
    };
    let mut backoff = MIN_BACKOFF;
    loop {
        if feed.inner.is_closed() {
            return;
        }
        match feed.cycle().await {
            Ok(()) => backoff = MIN_BACKOFF,
            Err(e) => {
                feed.inner.feed_failed(e);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        feed.inner.feed_stopped();
        feed.inner.live.invalidate();
        tokio::time::sleep(backoff).await;
    }
}

impl Feed {
    /// One life of a change stream. `Ok` when the stream ended by itself
    /// (the collection was dropped or renamed), `Err` when it failed.
    async fn cycle(&mut self) -> Result<(), String> {
        if self.position.is_none() {
            let latest = self.read_latest().await?;
            let position = latest
                .last()
                .map(|m| Position::At(m.key()))
                .unwrap_or(Position::Start);
            self.reset(latest)?;
            self.position = Some(position);
        }
        let (mut stream, resumed) = self.open().await?;
        if stream.resume_token().is_some() {
            self.token = stream.resume_token();
        }
        if resumed {
            if self.drain(&mut stream).await? {
                return Ok(());
            }
        } else {
            self.catch_up().await?;
        }
        let latest = self.read_latest().await?;
        for doc in &latest {
            if self.is_new(&doc.key()) {
                self.publish(doc.clone())?;
            }
        }
        self.reset(latest)?;
        self.inner.feed_running();

        while let Some(event) = stream.next().await {
            let event = event.map_err(|e| self.inner.describe(&e))?;
            self.token = stream.resume_token();
            if self.handle(event)? {
                return Ok(());
            }
        }
        // A stream that ends by itself was closed by the server; resuming
        // before that point would only end it again.
        self.token = None;
        Ok(())
    }

    async fn open(&mut self) -> Result<(Events, bool), String> {
        // Only inserts matter; invalidate events always pass a $match.
        let pipeline = [doc! { "$match": { "operationType": "insert" } }];
        let coll = self.handles.coll.clone_with_type::<Document>();
        if let Some(token) = self.token.clone() {
            match coll
                .watch()
                .pipeline(pipeline.clone())
                .resume_after(token)
                .await
            {
                Ok(stream) => return Ok((stream, true)),
                Err(e) => match classify(&e, self.handles.conn.secret.as_deref()) {
                    Class::Retry(reason) => return Err(reason),
                    // ChangeStreamHistoryLost and friends: the token is no
                    // use any more; step 3 reads what the stream would have
                    // replayed.
                    other => {
                        self.inner.feed_note(format!(
                            "resume token no longer usable ({}); re-reading after the last delivered message",
                            other.reason()
                        ));
                        self.token = None;
                    }
                },
            }
        }
        let stream = coll
            .watch()
            .pipeline(pipeline)
            .await
            .map_err(|e| self.inner.describe(&e))?;
        Ok((stream, false))
    }

    /// Publishes what a resumed stream replays, until it has nothing more
    /// right now. `Ok(true)` when the stream ended.
    async fn drain(&mut self, stream: &mut Events) -> Result<bool, String> {
        let started = Instant::now();
        let mut events = 0;
        while events < MAX_DRAIN_EVENTS && started.elapsed() < MAX_DRAIN_TIME {
            match stream.next_if_any().await {
                Ok(Some(event)) => {
                    self.token = stream.resume_token();
                    events += 1;
                    if self.handle(event)? {
                        return Ok(true);
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(self.inner.describe(&e)),
            }
        }
        Ok(!stream.is_alive())
    }

    /// Publishes every stored message after the feed's position, in pages.
    async fn catch_up(&mut self) -> Result<(), String> {
        loop {
            let window = match &self.position {
                Some(Position::At(key)) => {
                    Window::Beyond(key.earlier_by(CLOCK_SKEW_MS), Direction::Newer)
                }
                _ => Window::First,
            };
            let page = self
                .handles
                .read(window, CACHE_CAPACITY)
                .await
                .map_err(|c| c.reason().to_owned())?;
            let full = page.len() == CACHE_CAPACITY;
            for doc in page {
                self.publish(doc)?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    async fn read_latest(&self) -> Result<Vec<MessageDoc>, String> {
        self.handles
            .read(Window::Latest, CACHE_CAPACITY + 1)
            .await
            .map_err(|c| c.reason().to_owned())
    }

    fn reset(&self, mut latest: Vec<MessageDoc>) -> Result<(), String> {
        let whole = latest.len() <= CACHE_CAPACITY;
        let skip = latest.len().saturating_sub(CACHE_CAPACITY);
        let messages = latest
            .drain(skip..)
            .map(MessageDoc::into_message)
            .collect::<Result<Vec<_>, _>>()?;
        self.inner.live.reset(messages, whole);
        Ok(())
    }

    fn is_new(&self, key: &Key) -> bool {
        self.position.as_ref().is_none_or(|p| p.is_before(key))
    }

    fn publish(&mut self, doc: MessageDoc) -> Result<(), String> {
        let key = doc.key();
        self.inner.live.publish(doc.into_message()?);
        match &mut self.position {
            Some(p) => p.advance(key),
            None => self.position = Some(Position::At(key)),
        }
        Ok(())
    }

    /// `Ok(true)` when the event ends the stream.
    fn handle(&mut self, event: ChangeStreamEvent<Document>) -> Result<bool, String> {
        match event.operation_type {
            OperationType::Insert => {
                let Some(doc) = event.full_document else {
                    return Ok(false);
                };
                match mongodb::bson::from_document::<MessageDoc>(doc) {
                    Ok(message) => self.publish(message)?,
                    // Something other than simplechat wrote to the
                    // collection; it is not a message, so nobody is sent it.
                    Err(e) => self
                        .inner
                        .feed_note(format!("ignored a document that is not a message: {e}")),
                }
                Ok(false)
            }
            OperationType::Invalidate
            | OperationType::Drop
            | OperationType::DropDatabase
            | OperationType::Rename => {
                // An invalidated stream cannot be resumed with resumeAfter;
                // a fresh one plus step 3 covers the gap.
                self.token = None;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ms: i64, id: &str) -> Key {
        Key {
            millis: ms,
            id: id.into(),
        }
    }

    #[test]
    fn position_only_moves_forward() {
        let mut p = Position::Start;
        assert!(p.is_before(&key(0, "a")));
        p.advance(key(5, "b"));
        p.advance(key(3, "z"));
        assert_eq!(p, Position::At(key(5, "b")));
        assert!(p.is_before(&key(5, "c")));
        // Within the clock skew a key is still "maybe new"; Live drops the
        // ones it has.
        assert!(p.is_before(&key(5 - CLOCK_SKEW_MS + 1, "a")));
        assert!(!p.is_before(&key(5 - CLOCK_SKEW_MS - 1, "z")));
    }
}
