//! The index that serves the store order, created at every start.

use std::sync::Arc;

use mongodb::options::IndexOptions;
use mongodb::IndexModel;

use super::collections::Collections;
use super::document;
use super::Shared;

/// Creates the order index, waiting for a primary as long as it takes.
/// Creating an index that exists with the same keys and name is a no-op
/// (<https://www.mongodb.com/docs/manual/reference/method/db.collection.createIndex/>),
/// so every instance does it at every start. It waits out "no primary now"
/// and refused credentials (shown in `/api/status` meanwhile); any other
/// failure is kept for `/api/status`.
pub(super) async fn ensure(shared: Arc<Shared>, collections: Arc<Collections>) {
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
        Some(Ok(_)) => set_error(None),
        Some(Err(other)) => {
            let why = format!(
                "cannot create the {} index: {}",
                document::ORDER_INDEX,
                other.reason()
            );
            log::error!("{why}");
            set_error(Some(why));
        }
        None => {}
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
