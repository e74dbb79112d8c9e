//! Documents in the collection that are not messages simplechat can show:
//! skipped wherever they are read, counted once each for `/api/status`, and
//! logged once per kind.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use mongodb::bson::{Bson, RawDocument, Timestamp};

use super::collections::Collections;
use super::document::{self, Malformed, MessageDoc};
use super::Shared;

/// How many distinct malformed documents are remembered; past this, counts
/// stop growing (a log line says so once).
const REMEMBERED: usize = 10_000;

/// The skipped documents seen so far, and what decides whether a
/// `position` can be real. A std `Mutex`: held only to update a count,
/// never across `.await`.
#[derive(Default)]
pub(super) struct SkippedDocuments {
    seen: Mutex<Seen>,
    /// Whether a message shown cut has been logged.
    altered_logged: AtomicBool,
    /// simplechat's first position in this deployment, once known
    /// ([`Collections::strays_from`]): positions before it are checked
    /// against the document's own times ([`Position::impossible`]).
    ///
    /// [`Collections::strays_from`]: super::collections::Collections::strays_from
    /// [`Position::impossible`]: super::document::Position::impossible
    history_from: OnceLock<Timestamp>,
}

#[derive(Default)]
struct Seen {
    /// `_id`s already counted, as their BSON text.
    ids: HashSet<String>,
    counts: BTreeMap<&'static str, u64>,
}

impl SkippedDocuments {
    /// The message in `raw` (a name or text that today's rules for a post
    /// would change is cut or mended, which is logged once), or `None`
    /// after counting why it is not one.
    /// Documents come as raw bytes, and only the fields a message is read
    /// from are decoded ([`document::read_fields`]): a string that is not
    /// UTF-8 in one of them makes the document no message, one elsewhere
    /// changes nothing.
    /// A `position` no MongoDB could have given ([`Position::impossible`])
    /// makes it no message: every read, the cache's and MongoDB's, leaves
    /// it out alike, so it has no place in one and another in the other.
    ///
    /// [`Position::impossible`]: super::document::Position::impossible
    pub(super) fn keep(&self, raw: &RawDocument) -> Option<MessageDoc> {
        // Until simplechat's first position is known, no position is
        // taken for one before it: a document is not skipped one moment and
        // listed the next.
        let first = self.history_from().unwrap_or(Timestamp {
            time: 0,
            increment: 0,
        });
        let fields = document::read_fields(raw);
        let read = fields
            .as_ref()
            .map_err(|why| *why)
            .and_then(MessageDoc::from_document)
            .and_then(
                |message| match message.position().impossible(Some(first), now_secs()) {
                    Some(why) => Err(why),
                    None => Ok(message),
                },
            );
        match read {
            Ok(message) => {
                if message.altered && !self.altered_logged.swap(true, Ordering::Relaxed) {
                    log::info!(
                        "the messages collection holds names or texts that today's rules for a post would not take as stored (too long, blank at the ends, not in Unicode NFC, CRLF line breaks, control characters); they are shown cut or mended as those rules make them (the documents are not changed)"
                    );
                }
                Some(message)
            }
            Err(why) => {
                match &fields {
                    Ok(doc) => self.count(doc.get("_id"), why),
                    // Its `_id` may be the string that is not UTF-8: counted
                    // by the `_id` with U+FFFD in its place.
                    Err(_) => {
                        let lossy = document::lossy(raw);
                        self.count(lossy.as_ref().and_then(|d| d.get("_id")), why);
                    }
                }
                None
            }
        }
    }

    fn count(&self, id: Option<&Bson>, why: Malformed) {
        let key = format!("{:?}", id.unwrap_or(&Bson::Null));
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.ids.len() >= REMEMBERED || !seen.ids.insert(key) {
            return;
        }
        let count = seen.counts.entry(why.kind()).or_insert(0);
        *count += 1;
        if *count == 1 {
            log::warn!(
                "skipping documents in the messages collection that are not messages ({}: {}); /api/status counts them",
                why.kind(),
                why.meaning()
            );
        }
    }

    /// Whether the document whose `_id` is `id` was skipped, as far as
    /// this instance remembers (the first [`REMEMBERED`] it counted).
    pub(super) fn was_skipped(&self, id: &Bson) -> bool {
        let key = format!("{id:?}");
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ids
            .contains(&key)
    }

    /// simplechat's first position, once known.
    pub(super) fn history_from(&self) -> Option<Timestamp> {
        self.history_from.get().copied()
    }

    /// Sets simplechat's first position; only the first call counts (it
    /// never moves: [`Collections::strays_from`]).
    ///
    /// [`Collections::strays_from`]: super::collections::Collections::strays_from
    pub(super) fn set_history_from(&self, from: Timestamp) -> Timestamp {
        *self.history_from.get_or_init(|| from)
    }

    /// Distinct skipped documents per kind (`id_type`, `name`, ...).
    pub(super) fn counts(&self) -> BTreeMap<&'static str, u64> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .counts
            .clone()
    }
}

/// This instance's clock, in seconds since the epoch.
pub(super) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Counts, once at start, the documents whose `_id`, `datetime` or
/// `position` has a type the order is not defined on: no listing reads
/// them, so they would otherwise never be counted. Waits for a member to
/// answer, and for the credentials to be accepted, as long as it takes.
pub(super) async fn count_ill_typed(shared: Arc<Shared>, collections: Arc<Collections>) {
    let settled = shared
        .tasks
        .until_settled(
            || collections.count_ill_typed(REMEMBERED, &shared.skipped),
            |_| {},
        )
        .await;
    if let Some(Err(other)) = settled {
        log::warn!(
            "cannot count the documents of the messages collection that are not messages: {}",
            other.reason()
        );
    }
}
