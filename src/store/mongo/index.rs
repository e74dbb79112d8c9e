//! The index that serves the store order, created at every start and
//! again whenever it is found gone.

use std::sync::Arc;
use std::time::Duration;

use mongodb::options::IndexOptions;
use mongodb::IndexModel;

use super::collections::Collections;
use super::document;
use super::Shared;

/// How often [`keep`] looks for the order index: one `listIndexes` (a read
/// of the collection's catalog entry, no document) per instance this
/// often, as often as the driver checks each member's state by default
/// (`heartbeatFrequencyMS`, 10 s:
/// <https://www.mongodb.com/docs/manual/reference/connection-string-options/>),
/// so a dropped index costs at most this long of listings sorted without
/// it.
const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Creates the order index ([`ensure`]), then looks for it every
/// [`CHECK_EVERY`] and creates it again, saying so in one line, when it
/// is gone while the collection is there: another client dropped it
/// (`dropIndex`, or `dropIndexes()` tidying indexes). Without it, every
/// listing and catch-up read sorts in memory on mongod, reading the whole
/// collection, and on MongoDB before 6.0 a sort needing more than 100 MB
/// fails (<https://www.mongodb.com/docs/v4.4/tutorial/sort-results-with-indexes/>;
/// from 6.0 it writes temporary files instead,
/// <https://www.mongodb.com/docs/manual/tutorial/sort-results-with-indexes/>).
/// A change stream tells of a dropped index only on MongoDB 6.0 and later,
/// with `showExpandedEvents`
/// (<https://www.mongodb.com/docs/manual/reference/change-events/dropIndexes/>),
/// and simplechat supports 4.4, so it looks instead. An index it never saw
/// (its creation failed, and said why in `/api/status`) is not tried again
/// on every look: it is created again only once it was there. A look that
/// fails (no primary, or no collection: after a drop of the collection the
/// change stream creates the index with it, [`ensure_again`]) waits for
/// the next.
pub(super) async fn keep(shared: Arc<Shared>, collections: Arc<Collections>) {
    let mut present = ensure(shared.clone(), collections.clone()).await;
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        if shared.tasks.is_closed() {
            return;
        }
        match collections.messages.list_index_names().await {
            Ok(names) if names.iter().any(|n| n == document::ORDER_INDEX) => present = true,
            Ok(_) if present => {
                log::warn!(
                    "the {} index of the {} collection is gone (another client dropped it, or \
                     the replica set was rebuilt or restored without it); \
                     creating it again",
                    document::ORDER_INDEX,
                    document::COLLECTION
                );
                present = ensure(shared.clone(), collections.clone()).await;
            }
            Ok(_) => {}
            Err(e) => log::debug!(
                "cannot look for the {} index now: {}",
                document::ORDER_INDEX,
                collections.class(&e).reason()
            ),
        }
    }
}

/// Creates the order index, waiting for a primary as long as it takes.
/// Creating an index that exists with the same keys and name is a no-op
/// (<https://www.mongodb.com/docs/manual/reference/method/db.collection.createIndex/>),
/// so every instance does it at every start. It waits out "no primary now"
/// and refused credentials (shown in `/api/status` meanwhile); any other
/// failure is kept for `/api/status`. Whether the index was created (or
/// was there).
pub(super) async fn ensure(shared: Arc<Shared>, collections: Arc<Collections>) -> bool {
    let index = IndexModel::builder()
        .keys(document::order_index_keys())
        .options(
            IndexOptions::builder()
                .name(document::ORDER_INDEX.to_owned())
                .build(),
        )
        .build();
    let set_error = |why: Option<String>| {
        *shared.index_error.lock().unwrap_or_else(|e| e.into_inner()) = why;
    };
    let settled = shared
        .tasks
        .until_settled(
            || async {
                collections
                    .messages
                    .create_index(index.clone())
                    .await
                    .map_err(|e| collections.class(&e))
            },
            // Shown in `/api/status` until the credentials are accepted.
            |reason| {
                set_error(Some(format!(
                    "cannot create the {} index yet: {reason}",
                    document::ORDER_INDEX
                )))
            },
        )
        .await;
    match settled {
        Some(Ok(_)) => {
            set_error(None);
            true
        }
        Some(Err(other)) => {
            let why = format!(
                "cannot create the {} index: {}",
                document::ORDER_INDEX,
                other.reason()
            );
            log::error!("{why}");
            set_error(Some(why));
            false
        }
        None => false,
    }
}

/// The reason for a post that another client's unique index `index` (any
/// but `_id`'s, which simplechat relies on) refused as a duplicate key: the
/// message is not stored, and no retry can store it until an operator
/// drops the index. Shown in `/api/status` (beside the order index's
/// state) until the store next creates its own index (after the collection
/// is dropped, which drops that index too) or restarts, and logged once per
/// index meanwhile, so that a chat refusing post after post does not fill
/// the log.
pub(super) fn refused_by_foreign_index(shared: &Shared, index: &str) -> String {
    let why = format!(
        "the unique index `{index}` on the {} collection, which simplechat did not create (another \
         client did), refuses messages as duplicates of stored ones; an operator must drop it \
         (db.{}.dropIndex(\"{index}\")): simplechat needs no unique index but the one on _id",
        document::COLLECTION,
        document::COLLECTION,
    );
    let mut noted = shared.index_error.lock().unwrap_or_else(|e| e.into_inner());
    if noted.as_deref() != Some(why.as_str()) {
        log::error!("{why}");
        *noted = Some(why.clone());
    }
    format!("the message was not stored: {why}")
}

/// Creates the order index again after the change stream saw the
/// collection dropped (or renamed, or its database dropped): its indexes go
/// with it, and without the order index every listing would sort in memory
/// on mongod. The next insert creates the collection again, without it
/// (<https://www.mongodb.com/docs/manual/reference/method/db.collection.drop/>).
/// Creating the index creates the collection too, which a restore running
/// meanwhile takes as it is (it restores into an existing collection).
pub(super) async fn ensure_again(shared: Arc<Shared>, collections: Arc<Collections>) {
    log::warn!(
        "the {} collection was dropped or renamed; creating its {} index again",
        document::COLLECTION,
        document::ORDER_INDEX
    );
    ensure(shared, collections).await;
}
