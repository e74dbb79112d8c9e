//! Telling a member removed from its replica set from a mongod never
//! initiated. Both answer `hello` as in no replica set's configuration
//! (the driver's RSGhost), and the driver sees no difference; mongod's
//! `replSetGetStatus` does: `NotYetInitialized` (94) "no replset config has
//! been received" before any configuration, `InvalidReplicaSetConfig` (93)
//! "Our replica set config is invalid or we are not a member of it" on a
//! mongod that holds a configuration without itself in it: it was removed
//! (or the configuration names it by another host name). mongod's
//! `TopologyCoordinator::prepareStatusResponse`; the states:
//! <https://www.mongodb.com/docs/manual/reference/replica-states/> (10,
//! REMOVED: "was once in a replica set but was subsequently removed").

use std::time::Duration;

use mongodb::bson::doc;
use mongodb::options::ServerAddress;

use super::client::{bound_waits, connect, options, Purpose};
use super::errors::codes::INVALID_REPLICA_SET_CONFIG;
use super::errors::command_code;

/// How long the one question may take, connection included.
const ASK_WITHIN: Duration = Duration::from_secs(5);

/// Whether the mongod at `host` (`host:port`) holds a replica set
/// configuration it is not in, asked over a direct connection with the
/// credentials and options of the connection string `uri`. `false` when it
/// cannot tell: the string does not parse, the member does not answer in
/// 5 s, or refuses the question (a member with access control answers an
/// unauthenticated client `Unauthorized`).
pub async fn is_removed(uri: &str, host: &str) -> bool {
    let Ok((mut options, login)) = options(uri).await else {
        return false;
    };
    let Ok(address) = ServerAddress::parse(host) else {
        return false;
    };
    options.hosts = vec![address];
    bound_waits(&mut options, ASK_WITHIN);
    let Ok(conn) = connect(options, login, Purpose::Direct) else {
        return false;
    };
    let asked = tokio::time::timeout(
        ASK_WITHIN,
        conn.client
            .database("admin")
            .run_command(doc! { "replSetGetStatus": 1 }),
    )
    .await;
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        conn.client.clone().shutdown().immediate(true),
    )
    .await;
    matches!(asked, Ok(Err(e)) if command_code(&e) == Some(INVALID_REPLICA_SET_CONFIG))
}

/// The one line for members `hosts` that [`is_removed`] says were removed,
/// reached through a connection string that names no other member.
pub fn removed_members(hosts: &[String]) -> String {
    let (verb, holds, them) = match hosts {
        [_] => ("answers", "it holds", "it"),
        _ => ("answer", "each holds", "them"),
    };
    format!(
        "{} {verb} as removed from the replica set: {holds} a replica set configuration that \
         does not include {them} (replSetGetStatus: InvalidReplicaSetConfig); ask a current \
         member (`simplechat replset status --uri mongodb://MEMBER:PORT/?replicaSet=NAME`), and \
         to add {them} back, run `simplechat replset apply` with every member against the \
         running set",
        hosts.join(", "),
    )
}
