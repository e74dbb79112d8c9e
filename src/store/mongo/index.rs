//! The index that serves the store order, created at every start.

use std::sync::Arc;
use std::time::Duration;

use mongodb::options::IndexOptions;
use mongodb::IndexModel;

use super::collections::Collections;
use super::document;
use super::Shared;
use crate::mongo::Class;
use crate::retry::Backoff;

/// Creates the order index, waiting for a primary as long as it takes.
/// Creating an index that exists with the same keys and name is a no-op
/// (<https://www.mongodb.com/docs/manual/reference/method/db.collection.createIndex/>),
/// so every instance does it at every start. It waits out "no primary now"
/// and refused credentials (shown in `/api/status` meanwhile); any other
/// failure is kept for `/api/status`.
pub(super) async fn ensure(shared: Arc<Shared>, collections: Arc<Collections>) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let index = IndexModel::builder()
        .keys(document::order_index_keys())
        .options(
            IndexOptions::builder()
                .name(document::ORDER_INDEX.to_owned())
                .build(),
        )
        .build();
    while !shared.tasks.is_closed() {
        let failed = match collections.messages.create_index(index.clone()).await {
            Ok(_) => None,
            Err(e) => match collections.class(&e) {
                Class::Retry(_) => {
                    backoff.wait().await;
                    continue;
                }
                // Refused credentials clear by themselves, without a
                // restart, once the user exists or its password matches:
                // keep trying, and say why meanwhile.
                Class::Unavailable(reason) => {
                    *shared.index_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
                        "cannot create the {} index yet: {reason}",
                        document::ORDER_INDEX
                    ));
                    backoff.wait().await;
                    continue;
                }
                other => {
                    let why = format!(
                        "cannot create the {} index: {}",
                        document::ORDER_INDEX,
                        other.reason()
                    );
                    log::error!("{why}");
                    Some(why)
                }
            },
        };
        *shared.index_error.lock().unwrap_or_else(|e| e.into_inner()) = failed;
        return;
    }
}
