//! The messages collection as the store reads and writes it: one handle per
//! read preference, and the reads that walk the store order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf, Timestamp};
use mongodb::options::{
    Acknowledgment, CollectionOptions, ReadConcern, ReadPreference, SelectionCriteria, WriteConcern,
};
use mongodb::Collection;

use super::document::{self, Direction, DocId, MessageDoc, Range};
use super::skipped::{self, SkippedDocuments};
use crate::mongo::{Class, Connection};

/// `messages` read as raw documents: the driver's `Document` refuses a
/// whole batch for one string that is not UTF-8, which mongod stores as a
/// client sent it; [`SkippedDocuments::keep`] decodes only what a message
/// is read from.
fn raw(messages: &Collection<Document>) -> Collection<RawDocumentBuf> {
    messages.clone_with_type()
}

/// What one page of a read saw.
struct Page {
    /// How many documents it read, messages or not.
    documents: usize,
    /// Where the last of them stands in the order.
    last: Option<document::Position>,
}

/// The client and the collection handles made from it.
pub(super) struct Collections {
    pub(super) conn: Connection,
    /// Reads (`primaryPreferred`, majority) and writes (majority, journal).
    pub(super) messages: Collection<Document>,
    /// `messages` on the change streams' own client, whose reads are not
    /// retried ([`Connection::change_streams`]): what the change stream
    /// watches.
    pub(super) messages_watched: Collection<Document>,
    /// The check after a duplicate key must see what a majority has, from
    /// the primary: a document still waiting for its majority must not be
    /// reported as stored.
    messages_on_primary: Collection<Document>,
    /// simplechat's own records ([`META_COLLECTION`]), read and written
    /// as `messages` is.
    meta: Collection<Document>,
    meta_on_primary: Collection<Document>,
    /// Where simplechat's first position is kept once known
    /// ([`Collections::history_from`]), and what decides whether a
    /// document is a message.
    skipped: Arc<SkippedDocuments>,
    /// Whether a refusal to record it has been logged.
    record_refusal_logged: AtomicBool,
}

/// The collection of simplechat's own records, beside `messages`: no read
/// of messages meets them, and the change stream does not watch it.
pub(super) const META_COLLECTION: &str = "simplechat_meta";
/// The record of where simplechat's history begins:
/// `{_id: "history", first_position: <Timestamp>}`.
const HISTORY_RECORD: &str = "history";
const FIRST_POSITION: &str = "first_position";
/// Set in a record written for a collection that had no position yet:
/// `first_position` is then the cluster time of that first look, and the
/// documents of that very second (an ObjectId has only seconds) were as
/// likely written just after the look as before it. Another app writing on
/// (the lab's, during the move) would write history that reads show, and
/// that a stream seeing its insert makes news. So such a record's second
/// holds strays, not history: from it on, every document without position
/// is positioned and sent as news. Records written without the field (a
/// first position that was a message's) keep their second as history.
const AT_FIRST_LOOK: &str = "at_first_look";
/// How many of the oldest positions are looked at for a plausible one
/// ([`Collections::oldest_position`]).
const OLDEST_SCAN: i64 = 1000;

impl Collections {
    /// Write concern `majority` + journal with `write_timeout` as wtimeout;
    /// read concern `majority`
    /// (<https://www.mongodb.com/docs/manual/reference/write-concern/>,
    /// <https://www.mongodb.com/docs/manual/reference/read-concern-majority/>).
    pub(super) fn new(
        conn: Connection,
        database: &str,
        write_timeout: Duration,
        skipped: Arc<SkippedDocuments>,
    ) -> Collections {
        let db = conn.client.database(database);
        let write_concern = WriteConcern::builder()
            .w(Acknowledgment::Majority)
            .journal(true)
            .w_timeout(write_timeout)
            .build();
        let watched_db = conn.change_streams.database(database);
        let options = |preference: ReadPreference| {
            CollectionOptions::builder()
                .write_concern(write_concern.clone())
                .read_concern(ReadConcern::majority())
                .selection_criteria(SelectionCriteria::ReadPreference(preference))
                .build()
        };
        let with = |name: &str, preference: ReadPreference| {
            db.collection_with_options(name, options(preference))
        };
        let preferred = || ReadPreference::PrimaryPreferred { options: None };
        Collections {
            messages: with(document::COLLECTION, preferred()),
            messages_watched: watched_db
                .collection_with_options(document::COLLECTION, options(preferred())),
            messages_on_primary: with(document::COLLECTION, ReadPreference::Primary),
            meta: with(META_COLLECTION, preferred()),
            meta_on_primary: with(META_COLLECTION, ReadPreference::Primary),
            skipped,
            record_refusal_logged: AtomicBool::new(false),
            conn,
        }
    }

    /// Why nothing can be read now, when the driver sees no member to read
    /// from (every member and why, as readiness says them); else `reason`,
    /// the failed operation's own.
    pub(super) fn unreadable_or(&self, reason: String) -> String {
        self.conn
            .topology
            .get()
            .and_then(|t| t.not_readable_reason())
            .unwrap_or(reason)
    }

    /// What the store does about a driver error, password scrubbed; a
    /// refused login is recorded in the view ([`Connection::class`]).
    pub(super) fn class(&self, e: &mongodb::error::Error) -> Class {
        self.conn.class(e)
    }

    /// Up to `limit` messages of `range`, oldest first; documents that are
    /// no messages are counted in `skipped` and read past, so fewer than
    /// `limit` means the range holds no more messages (a short page would
    /// end a client's walk through the history, or an SSE replay, early).
    /// Strays are left out until they have their position: they are news,
    /// not history, and a walk that met them at their `datetime` would
    /// meet them again as the newest messages.
    pub(super) async fn read(
        &self,
        range: Range,
        limit: usize,
        skipped: &SkippedDocuments,
    ) -> Result<Vec<MessageDoc>, Class> {
        let direction = match &range {
            Range::Latest => Direction::Older,
            Range::Oldest => Direction::Newer,
            Range::Beyond(_, direction) => *direction,
        };
        let strays = self.strays_from().await?;
        let mut range = range;
        let mut messages = Vec::new();
        // Documents a page reads beyond the messages still wanted: one
        // more each time a page ends on the key it started beyond.
        let mut more = 0;
        while messages.len() < limit {
            let want = limit - messages.len() + more;
            let page = self
                .page(&range, direction, strays, want, skipped, &mut messages)
                .await?;
            // Every document of the page has a place in the order
            // (`well_typed`), a message or not: the next page starts
            // beyond the last one. A string `_id` that is not UTF-8 is
            // given a key that is not its own (`raw_sort_key`), so the
            // page beyond it may be that document again: a larger page
            // gets past it.
            match page.last {
                Some(from) if page.documents == want => {
                    if matches!(&range, Range::Beyond(at, _) if *at == from) {
                        more += 1;
                    }
                    range = Range::Beyond(from, direction);
                }
                _ => break,
            }
        }
        messages.truncate(limit);
        if direction == Direction::Older {
            messages.reverse();
        }
        Ok(messages)
    }

    /// Reads up to `limit` documents of `range` whose order keys are well
    /// typed, in the order `direction` walks, and appends the messages
    /// among them to `messages`. Each document is read into its message as
    /// it arrives, so a read holds one batch of the driver's and the
    /// messages (bounded: [`MessageDoc::from_document`]), never all the
    /// documents at once: another app's documents may be up to 16 MiB each.
    async fn page(
        &self,
        range: &Range,
        direction: Direction,
        strays: Option<ObjectId>,
        limit: usize,
        skipped: &SkippedDocuments,
        messages: &mut Vec<MessageDoc>,
    ) -> Result<Page, Class> {
        let mut filter = vec![Bson::Document(document::well_typed())];
        if let Range::Beyond(from, direction) = range {
            filter.push(Bson::Document(document::beyond(from, *direction)));
        }
        if let Some(strays) = strays {
            filter.push(Bson::Document(document::not_stray(strays)));
        }
        let filter = doc! { "$and": filter };
        let mut cursor = raw(&self.messages)
            .find(filter)
            .sort(document::sort(direction))
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(|e| self.class(&e))?;
        let mut page = Page {
            documents: 0,
            last: None,
        };
        while let Some(doc) = cursor.try_next().await.map_err(|e| self.class(&e))? {
            page.documents += 1;
            if let Some(key) = document::raw_sort_key(&doc) {
                page.last = Some(key);
            }
            messages.extend(skipped.keep(&doc));
        }
        Ok(page)
    }

    /// Counts, in `skipped`, up to `limit` documents whose order keys have
    /// other types: no walk reads them ([`document::well_typed`]).
    pub(super) async fn count_ill_typed(
        &self,
        limit: usize,
        skipped: &SkippedDocuments,
    ) -> Result<(), Class> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut cursor = raw(&self.messages)
            .find(document::ill_typed())
            .limit(limit)
            .await
            .map_err(|e| self.class(&e))?;
        while let Some(doc) = cursor.try_next().await.map_err(|e| self.class(&e))? {
            skipped.keep(&doc);
        }
        Ok(())
    }

    /// The document with this public id, stray or not; from the primary.
    pub(super) async fn find_on_primary(&self, id: &str) -> Result<Option<RawDocumentBuf>, Class> {
        raw(&self.messages_on_primary)
            .find_one(doc! { "_id": DocId::from_public(id).bson() })
            .await
            .map_err(|e| self.class(&e))
    }

    /// The document with this public id if it has its place in the order:
    /// a stray is left out until it has its position, as [`read`] leaves it
    /// out, so that an id found here can always be paged from (a stray's
    /// place at its `datetime` is not where it will stand).
    ///
    /// [`read`]: Collections::read
    pub(super) async fn find_in_order(&self, id: &str) -> Result<Option<RawDocumentBuf>, Class> {
        let mut filter = doc! { "_id": DocId::from_public(id).bson() };
        if let Some(strays) = self.strays_from().await? {
            filter.extend(document::not_stray(strays));
        }
        raw(&self.messages)
            .find_one(filter)
            .await
            .map_err(|e| self.class(&e))
    }

    /// Whether the store holds a document under any of the public `ids`
    /// (whatever it is now: a message, or one skipped), read as reads are.
    pub(super) async fn holds_any(&self, ids: &[String]) -> Result<bool, Class> {
        let keys: Vec<Bson> = ids.iter().map(|id| DocId::from_public(id).bson()).collect();
        raw(&self.messages)
            .find_one(doc! { "_id": { "$in": keys } })
            .projection(doc! { "_id": 1 })
            .await
            .map(|found| found.is_some())
            .map_err(|e| self.class(&e))
    }

    /// The document whose `_id` is `id` (as stored), from the primary.
    pub(super) async fn find_by_key(&self, id: &Bson) -> Result<Option<RawDocumentBuf>, Class> {
        raw(&self.messages_on_primary)
            .find_one(doc! { "_id": id.clone() })
            .await
            .map_err(|e| self.class(&e))
    }

    /// Where strays begin ([`document::strays_from`] of
    /// [`Collections::history_from`]). `None` while that is not known:
    /// every document without a position is then history.
    pub(super) async fn strays_from(&self) -> Result<Option<ObjectId>, Class> {
        Ok(self.history_from().await?.map(document::strays_from))
    }

    /// Where simplechat's history begins: its first position in this
    /// deployment, or, on a collection that had no position when
    /// simplechat first looked, the end of the second before that look
    /// ([`AT_FIRST_LOOK`]). It never
    /// moves: documents written later with older positions (an import of
    /// another deployment's messages, or one written by hand) must not
    /// turn the lab's history into strays. So it is recorded once, in
    /// [`META_COLLECTION`], with write concern majority and journal (the
    /// collection's: <https://www.mongodb.com/docs/manual/reference/write-concern/>),
    /// and read back from there, with read concern majority
    /// (<https://www.mongodb.com/docs/manual/reference/read-concern-majority/>),
    /// so a rollback cannot take it back and every instance reads the
    /// same. Only a store without the record computes it
    /// ([`Collections::oldest_position`]); instances that do so at once
    /// race to insert it under one `_id`, the losers get a duplicate key
    /// and read the winner's. Remembered once read (in `skipped`).
    ///
    /// `None` while it cannot be recorded or read back (no primary): the
    /// computed value is used for that read, not remembered.
    pub(super) async fn history_from(&self) -> Result<Option<Timestamp>, Class> {
        if let Some(from) = self.skipped.history_from() {
            return Ok(Some(from));
        }
        if let Some(from) = self.recorded_history_from(&self.meta).await? {
            return Ok(Some(self.skipped.set_history_from(from)));
        }
        let computed = self.oldest_position().await?;
        // An empty timestamp in a top-level field is replaced by the
        // cluster time at the insert
        // (<https://www.mongodb.com/docs/manual/reference/bson-types/#timestamps>):
        // on a collection with no position yet, history is what was there
        // when simplechat first looked.
        let record = doc! {
            "_id": HISTORY_RECORD,
            FIRST_POSITION: computed.unwrap_or(document::EMPTY_POSITION),
            AT_FIRST_LOOK: computed.is_none(),
        };
        match self
            .meta
            .insert_one(record)
            .await
            .map_err(|e| self.class(&e))
        {
            Ok(_) | Err(Class::Duplicate) => {}
            Err(Class::Fatal(why)) => {
                if self.record_refusal_logged.swap(true, Ordering::Relaxed) {
                    return Ok(computed);
                }
                log::warn!(
                    "cannot record where simplechat's history begins in the {META_COLLECTION} collection ({why}); it is computed again at each read, and moves if documents with older positions are written"
                );
                return Ok(computed);
            }
            Err(_) => return Ok(computed),
        }
        match self.recorded_history_from(&self.meta_on_primary).await? {
            Some(from) => Ok(Some(self.skipped.set_history_from(from))),
            None => Ok(computed),
        }
    }

    /// The recorded first position, if any.
    async fn recorded_history_from(
        &self,
        meta: &Collection<Document>,
    ) -> Result<Option<Timestamp>, Class> {
        let record = meta
            .find_one(doc! { "_id": HISTORY_RECORD })
            .await
            .map_err(|e| self.class(&e))?;
        Ok(record.and_then(|d| {
            let first = d
                .get_timestamp(FIRST_POSITION)
                .ok()
                .filter(|t| *t != document::EMPTY_POSITION)?;
            // Just before the look's second, so that strays begin with it
            // (`document::strays_from`).
            Some(match d.get_bool(AT_FIRST_LOOK) {
                Ok(true) => Timestamp {
                    time: first.time.saturating_sub(1),
                    increment: u32::MAX,
                },
                _ => first,
            })
        }))
    }

    /// The oldest `position` that MongoDB could have given
    /// ([`document::Position::impossible`], nothing known yet of where
    /// history begins): that of the first message simplechat stored, on a
    /// store that has no record of it yet (one written before the record
    /// existed). Up to [`OLDEST_SCAN`] of the oldest are looked at. `None`
    /// while no document has one. An empty timestamp (which mongod fills in
    /// at insert) does not count.
    async fn oldest_position(&self) -> Result<Option<Timestamp>, Class> {
        let mut cursor = raw(&self.messages)
            .find(doc! { document::POSITION: { "$gt": document::EMPTY_POSITION } })
            .sort(document::sort(Direction::Newer))
            .projection(doc! { "_id": 1, "datetime": 1, document::POSITION: 1 })
            .limit(OLDEST_SCAN)
            .await
            .map_err(|e| self.class(&e))?;
        let now = skipped::now_secs();
        while let Some(d) = cursor.try_next().await.map_err(|e| self.class(&e))? {
            match document::read_fields(&d)
                .ok()
                .as_ref()
                .and_then(document::sort_key)
            {
                Some(at) if at.impossible(None, now).is_none() => return Ok(at.stamp),
                _ => {}
            }
        }
        Ok(None)
    }

    /// Up to `limit` documents without a `position` whose `_id` is an
    /// ObjectId from `from` on (`$gte`, or `$gt` unless `inclusive`),
    /// oldest `_id` first: what another app inserted since. Each is read
    /// into its message as it arrives (`None`, counted in `skipped`, for
    /// one that is no message), as [`Collections::read`] does. A
    /// comparison with an ObjectId matches ObjectIds only (type bracketing:
    /// <https://www.mongodb.com/docs/manual/reference/method/db.collection.find/#type-bracketing>),
    /// so string ids never come.
    pub(super) async fn unpositioned_from(
        &self,
        from: ObjectId,
        inclusive: bool,
        limit: usize,
        skipped: &SkippedDocuments,
    ) -> Result<Vec<(ObjectId, Option<MessageDoc>)>, Class> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let op = if inclusive { "$gte" } else { "$gt" };
        let mut cursor = raw(&self.messages)
            .find(doc! { document::POSITION: Bson::Null, "_id": { op: from } })
            .sort(doc! { "_id": 1 })
            .limit(limit)
            .await
            .map_err(|e| self.class(&e))?;
        let mut found = Vec::new();
        while let Some(doc) = cursor.try_next().await.map_err(|e| self.class(&e))? {
            if let Ok(oid) = doc.get_object_id("_id") {
                found.push((oid, skipped.keep(&doc)));
            }
        }
        Ok(found)
    }

    /// The `_id`s of up to `limit` documents without a `position` whose
    /// `_id` is an ObjectId from `from` on and before `before`, oldest
    /// first, read from the primary: strays older than one about to be
    /// positioned ([`Collections::set_positions`]).
    pub(super) async fn unpositioned_before(
        &self,
        from: ObjectId,
        before: ObjectId,
        limit: usize,
    ) -> Result<Vec<Bson>, Class> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut cursor = self
            .messages_on_primary
            .find(doc! { document::POSITION: Bson::Null, "_id": { "$gte": from, "$lt": before } })
            .projection(doc! { "_id": 1 })
            .sort(doc! { "_id": 1 })
            .limit(limit)
            .await
            .map_err(|e| self.class(&e))?;
        let mut found = Vec::new();
        while let Some(doc) = cursor.try_next().await.map_err(|e| self.class(&e))? {
            if let Some(id) = doc.get("_id") {
                found.push(id.clone());
            }
        }
        Ok(found)
    }

    /// Gives a document that another app inserted without a `position` the
    /// current cluster time as its position, unless someone already did
    /// (`$currentDate` with `$type: "timestamp"`:
    /// <https://www.mongodb.com/docs/manual/reference/operator/update/currentDate/>).
    pub(super) async fn set_position(&self, id: &Bson) -> Result<(), Class> {
        self.messages
            .update_one(
                doc! { "_id": id.clone(), document::POSITION: Bson::Null },
                doc! { "$currentDate": { document::POSITION: { "$type": "timestamp" } } },
            )
            .await
            .map_err(|e| self.class(&e))?;
        Ok(())
    }

    /// [`Collections::set_position`] for several documents in one write,
    /// so one majority acknowledgement covers them all. mongod applies a
    /// multi-document update one document at a time, each its own oplog
    /// entry (so its own change event), and `$currentDate` takes a new
    /// cluster time for each document it sets
    /// (<https://www.mongodb.com/docs/manual/reference/method/db.collection.updateMany/#behavior>),
    /// so each gets a position of its own. Not retryable (a multi-document
    /// update is not a retryable write): a failure leaves some documents
    /// without a position, which the change stream's next cycle gives them
    /// as strays.
    pub(super) async fn set_positions(&self, ids: Vec<Bson>) -> Result<(), Class> {
        self.messages
            .update_many(
                doc! { "_id": { "$in": ids }, document::POSITION: Bson::Null },
                doc! { "$currentDate": { document::POSITION: { "$type": "timestamp" } } },
            )
            .await
            .map_err(|e| self.class(&e))?;
        Ok(())
    }

    /// Gives each `(_id, first)` document whose `position` is still
    /// `first` a new one, after every position taken so far, in one write:
    /// the change stream brought its insert after a message whose position
    /// is later, so it goes after that message in the store order. mongod
    /// takes an inserted document's empty timestamp when it checks the
    /// document and the oplog entry's later, when it writes it, so two
    /// inserts on two connections can take their positions in one order and
    /// commit in the other (`fixDocumentForInsert` in mongod's `insert.cpp`;
    /// <https://www.mongodb.com/docs/manual/reference/bson-types/#timestamps>).
    /// Instances that see the same stream ask the same; matching the first
    /// position exactly makes the first write stand, so no message moves
    /// twice. Not retryable, as [`Collections::set_positions`].
    pub(super) async fn reposition(&self, writes: &[(Bson, Timestamp)]) -> Result<(), Class> {
        let each: Vec<Document> = writes
            .iter()
            .map(|(id, first)| doc! { "_id": id.clone(), document::POSITION: *first })
            .collect();
        self.messages
            .update_many(
                doc! { "$or": each },
                doc! { "$currentDate": { document::POSITION: { "$type": "timestamp" } } },
            )
            .await
            .map_err(|e| self.class(&e))?;
        Ok(())
    }
}
