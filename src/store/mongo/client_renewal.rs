//! A driver client started afresh when its view of the set can no longer
//! mend by itself.
//!
//! The Server Discovery and Monitoring specification has a driver ignore
//! a primary whose `(setVersion, electionId)` is older than the newest it
//! has seen ("updateRSFromPrimary",
//! <https://github.com/mongodb/specifications/blob/master/source/server-discovery-and-monitoring/server-discovery-and-monitoring.md>),
//! and a client never forgets the newest. After an election that passes
//! within seconds, as the old primary steps down (a primary that cannot
//! see a majority steps down after `electionTimeoutMillis`, 10 s by
//! default: <https://www.mongodb.com/docs/manual/reference/replica-configuration/#mongodb-rsconf-rsconf.settings.electionTimeoutMillis>).
//! A set rebuilt from scratch on the same addresses (its members wiped
//! and initiated again) starts over at version 1 and term 1: its primary
//! stays "stale" to this client for as long as the client lives, and no
//! write is taken. A new client has seen nothing older, and takes it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::collections::Collections;
use super::Shared;
use crate::mongo::errors::Failure;
use crate::mongo::{self, Purpose};

/// How long the client must have taken a primary for stale, with no other
/// primary to write to, before a new client replaces it: three times the
/// longest an old primary that lost its majority stays primary.
pub(super) const STALE_FOR: Duration = Duration::from_secs(30);

/// How often the client's view is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Runs until the store closes: replaces the client once it has taken a
/// primary for stale, and had none to write to, for [`STALE_FOR`]. A new
/// client that cannot be made (a `mongodb+srv` name that does not resolve
/// now) is tried again at the next check.
pub(super) async fn watch(shared: Arc<Shared>) {
    let mut stale_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        if shared.tasks.is_closed() {
            return;
        }
        let stale = shared
            .current()
            .and_then(|c| c.conn.topology.get())
            .is_some_and(|t| {
                !t.writable
                    && t.servers
                        .iter()
                        .any(|s| s.failure == Some(Failure::StalePrimary))
            });
        if !stale {
            stale_since = None;
            continue;
        }
        if stale_since.get_or_insert_with(Instant::now).elapsed() < STALE_FOR {
            continue;
        }
        let made = match mongo::options(&shared.uri).await {
            Ok((options, login)) => mongo::connect(options, login, Purpose::Store),
            Err(e) => Err(e),
        };
        match made {
            Ok(conn) => {
                log::warn!(
                    "MongoDB: a member has said it is primary for {} s, of a replica set \
                     configuration older than one this instance saw before, and no other \
                     member is primary, as when the set is rebuilt from scratch on the same \
                     addresses. Starting the MongoDB client afresh; messages the set no longer holds are \
                     dropped from this instance's cache",
                    STALE_FOR.as_secs()
                );
                shared.replace(Collections::new(
                    conn,
                    &shared.database,
                    shared.write_timeout,
                    shared.skipped.clone(),
                ));
                stale_since = None;
            }
            Err(why) => log::warn!("cannot start a new MongoDB client yet: {why}"),
        }
    }
}
