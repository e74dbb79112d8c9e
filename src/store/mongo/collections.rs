//! The messages collection as the store reads and writes it: one handle per
//! read preference, and the reads that walk the store order.

use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{doc, Bson, Document, Timestamp};
use mongodb::options::{
    Acknowledgment, CollectionOptions, ReadConcern, ReadPreference, SelectionCriteria, WriteConcern,
};
use mongodb::Collection;

use super::document::{self, Direction, DocId, Range};
use crate::mongo::{classify, Class, Connection};

/// The client and the collection handles made from it.
pub(super) struct Collections {
    pub(super) conn: Connection,
    /// Reads (`primaryPreferred`, majority) and writes (majority, journal).
    pub(super) messages: Collection<Document>,
    /// The check after a duplicate key must see what a majority has, from
    /// the primary: a document still waiting for its majority must not be
    /// reported as stored.
    messages_on_primary: Collection<Document>,
}

impl Collections {
    /// Write concern `majority` + journal with `write_timeout` as wtimeout;
    /// read concern `majority`
    /// (<https://www.mongodb.com/docs/manual/reference/write-concern/>,
    /// <https://www.mongodb.com/docs/manual/reference/read-concern-majority/>).
    pub(super) fn new(conn: Connection, database: &str, write_timeout: Duration) -> Collections {
        let db = conn.client.database(database);
        let write_concern = WriteConcern::builder()
            .w(Acknowledgment::Majority)
            .journal(true)
            .w_timeout(write_timeout)
            .build();
        let with = |preference: ReadPreference| {
            db.collection_with_options(
                document::COLLECTION,
                CollectionOptions::builder()
                    .write_concern(write_concern.clone())
                    .read_concern(ReadConcern::majority())
                    .selection_criteria(SelectionCriteria::ReadPreference(preference))
                    .build(),
            )
        };
        let messages = with(ReadPreference::PrimaryPreferred { options: None });
        let messages_on_primary = with(ReadPreference::Primary);
        Collections {
            conn,
            messages,
            messages_on_primary,
        }
    }

    /// What the store does about a driver error, password scrubbed.
    pub(super) fn class(&self, e: &mongodb::error::Error) -> Class {
        classify(e, self.conn.secret.as_deref())
    }

    /// Up to `limit` documents of `range`, oldest first, as stored (see
    /// `MessageDoc::from_document`).
    pub(super) async fn read(&self, range: Range, limit: usize) -> Result<Vec<Document>, Class> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (filter, direction) = match &range {
            Range::Latest => (doc! {}, Direction::Older),
            Range::Oldest => (doc! {}, Direction::Newer),
            Range::Beyond(from, direction) => (document::beyond(from, *direction), *direction),
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let cursor = self
            .messages
            .find(filter)
            .sort(document::sort(direction))
            .limit(limit)
            .await
            .map_err(|e| self.class(&e))?;
        let mut docs: Vec<Document> = cursor.try_collect().await.map_err(|e| self.class(&e))?;
        if direction == Direction::Older {
            docs.reverse();
        }
        Ok(docs)
    }

    /// The document with this public id; from the primary when
    /// `on_primary`.
    pub(super) async fn find(&self, id: &str, on_primary: bool) -> Result<Option<Document>, Class> {
        let coll = if on_primary {
            &self.messages_on_primary
        } else {
            &self.messages
        };
        coll.find_one(doc! { "_id": DocId::from_public(id).bson() })
            .await
            .map_err(|e| self.class(&e))
    }

    /// The oldest `position` of any document: that of the first message
    /// simplechat stored. `None` while no document has one. An empty
    /// timestamp (which mongod fills in at insert) does not count.
    pub(super) async fn oldest_position(&self) -> Result<Option<Timestamp>, Class> {
        let empty = Timestamp {
            time: 0,
            increment: 0,
        };
        let first = self
            .messages
            .find_one(doc! { document::POSITION: { "$gt": empty } })
            .sort(document::sort(Direction::Newer))
            .projection(doc! { document::POSITION: 1 })
            .await
            .map_err(|e| self.class(&e))?;
        Ok(first.and_then(|d| d.get_timestamp(document::POSITION).ok()))
    }

    /// Up to `limit` documents without a `position` whose `_id` is an
    /// ObjectId from `from` on (`$gte`, or `$gt` unless `inclusive`),
    /// oldest `_id` first: what another app inserted since. A comparison
    /// with an ObjectId matches ObjectIds only (type bracketing:
    /// <https://www.mongodb.com/docs/manual/reference/method/db.collection.find/#type-bracketing>),
    /// so string ids never come.
    pub(super) async fn unpositioned_from(
        &self,
        from: ObjectId,
        inclusive: bool,
        limit: usize,
    ) -> Result<Vec<Document>, Class> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let op = if inclusive { "$gte" } else { "$gt" };
        let cursor = self
            .messages
            .find(doc! { document::POSITION: Bson::Null, "_id": { op: from } })
            .sort(doc! { "_id": 1 })
            .limit(limit)
            .await
            .map_err(|e| self.class(&e))?;
        cursor.try_collect().await.map_err(|e| self.class(&e))
    }

    /// Gives a document that another app inserted without a `position` the
    /// current cluster time as its position, unless someone already did
    /// (`$currentDate` with `$type: "timestamp"`:
    /// <https://www.mongodb.com/docs/manual/reference/operator/update/currentDate/>),
    /// and returns the document as it now is, from the primary.
    pub(super) async fn assign_position(&self, id: &Bson) -> Result<Option<Document>, Class> {
        self.messages
            .update_one(
                doc! { "_id": id.clone(), document::POSITION: Bson::Null },
                doc! { "$currentDate": { document::POSITION: { "$type": "timestamp" } } },
            )
            .await
            .map_err(|e| self.class(&e))?;
        self.messages_on_primary
            .find_one(doc! { "_id": id.clone() })
            .await
            .map_err(|e| self.class(&e))
    }
}
