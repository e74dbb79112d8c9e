//! `replset init`/`status` as the CLI issues them: a direct connection to an
//! uninitiated member, replSetGetStatus, replSetInitiate, then polling.

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, Document};
use mongodb::Client;
use replset_sim::{Cluster, ClusterOptions};

fn code(err: &mongodb::error::Error) -> i32 {
    match *err.kind {
        mongodb::error::ErrorKind::Command(ref c) => c.code,
        ref other => panic!("expected a command error, got {other:?}"),
    }
}

fn message(err: &mongodb::error::Error) -> String {
    match *err.kind {
        mongodb::error::ErrorKind::Command(ref c) => c.message.clone(),
        _ => String::new(),
    }
}

#[tokio::test]
async fn initiate_status_and_config() {
    let cluster = Cluster::start(ClusterOptions {
        initiated: false,
        election_delay: Duration::from_millis(100),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(cluster.member_state(0), "STARTUP");
    let uri = format!("{}&serverSelectionTimeoutMS=5000", cluster.direct_uri(0));
    let client = Client::with_uri_str(&uri).await.unwrap();
    let admin = client.database("admin");

    let hello = admin.run_command(doc! {"hello": 1}).await.unwrap();
    assert_eq!(hello.get_bool("isreplicaset"), Ok(true));
    assert_eq!(hello.get_bool("isWritablePrimary"), Ok(false));
    assert!(hello.get("setName").is_none());

    let err = admin
        .run_command(doc! {"replSetGetStatus": 1})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 94);
    let err = admin
        .run_command(doc! {"replSetGetConfig": 1})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 94);

    // Admin-only commands refuse other databases, as mongod does.
    let err = client
        .database("chat")
        .run_command(doc! {"replSetGetStatus": 1})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 13);

    let hosts = cluster.hosts();
    let elsewhere = doc! {"_id": "rs", "members": [
        {"_id": 0, "host": "storage1.local:27017"},
        {"_id": 1, "host": "storage2.local:27017"},
    ]};
    let err = admin
        .run_command(doc! {"replSetInitiate": elsewhere})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 93);
    assert!(message(&err).contains("maps to this node"), "{err}");

    let wrong_name = doc! {"_id": "other", "members": [{"_id": 0, "host": &hosts[0]}]};
    let err = admin
        .run_command(doc! {"replSetInitiate": wrong_name})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 93);

    let members: Vec<Bson> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| Bson::Document(doc! {"_id": i as i32, "host": h}))
        .collect();
    let config = doc! {"_id": "rs", "members": members};
    admin
        .run_command(doc! {"replSetInitiate": config.clone()})
        .await
        .unwrap();
    let err = admin
        .run_command(doc! {"replSetInitiate": config})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 23);

    // Poll like the CLI until a primary exists (bounded).
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        let status = admin
            .run_command(doc! {"replSetGetStatus": 1})
            .await
            .unwrap();
        if status.get_i32("myState") == Ok(1) {
            break status;
        }
        assert!(Instant::now() < deadline, "no primary: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.get_str("set"), Ok("rs"));
    let members = status.get_array("members").unwrap();
    assert_eq!(members.len(), 3);
    let states: Vec<&str> = members
        .iter()
        .map(|m| m.as_document().unwrap().get_str("stateStr").unwrap())
        .collect();
    assert_eq!(states, ["PRIMARY", "SECONDARY", "SECONDARY"]);
    let me: &Document = members[0].as_document().unwrap();
    assert_eq!(me.get_bool("self"), Ok(true));
    assert_eq!(me.get_str("name").unwrap(), hosts[0]);
    assert!(me.get_datetime("optimeDate").is_ok());

    let config = admin
        .run_command(doc! {"replSetGetConfig": 1})
        .await
        .unwrap();
    let config = config.get_document("config").unwrap();
    assert_eq!(config.get_str("_id"), Ok("rs"));
    assert_eq!(config.get_i32("version"), Ok(1));
    assert_eq!(config.get_array("members").unwrap().len(), 3);

    // A dead member shows as unreachable in the survivors' status.
    cluster.kill(2).await;
    let status = admin
        .run_command(doc! {"replSetGetStatus": 1})
        .await
        .unwrap();
    let m2 = status.get_array("members").unwrap()[2]
        .as_document()
        .unwrap();
    assert_eq!(m2.get_f64("health"), Ok(0.0));
    assert_eq!(m2.get_str("stateStr"), Ok("(not reachable/healthy)"));

    // The initiated set now serves a replica-set client.
    let rs = Client::with_uri_str(format!(
        "{}&serverSelectionTimeoutMS=5000",
        cluster.uri("chat")
    ))
    .await
    .unwrap();
    rs.database("chat")
        .collection::<Document>("messages")
        .insert_one(doc! {"_id": "first"})
        .await
        .unwrap();
}

/// mongod's quorum check names each member that did not answer and why,
/// in its own words: its resolver's `HostNotFound` for a name that does
/// not resolve, a refused connection for a member that is down (see
/// FIDELITY.md). A name with an empty label never resolves, with or
/// without a network.
#[tokio::test]
async fn initiate_names_each_member_that_did_not_answer_as_mongod_does() {
    let cluster = Cluster::start(ClusterOptions {
        initiated: false,
        election_delay: Duration::from_millis(100),
        ..Default::default()
    })
    .await
    .unwrap();
    let hosts = cluster.hosts();
    cluster.kill(2).await;
    let uri = format!("{}&serverSelectionTimeoutMS=5000", cluster.direct_uri(0));
    let client = Client::with_uri_str(&uri).await.unwrap();
    let config = doc! {"_id": "rs", "members": [
        {"_id": 0, "host": &hosts[0]},
        {"_id": 1, "host": "storage2..local:27017"},
        {"_id": 2, "host": &hosts[2]},
    ]};
    let err = client
        .database("admin")
        .run_command(doc! {"replSetInitiate": config})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 74, "{err}");
    assert_eq!(
        message(&err),
        format!(
            "replSetInitiate quorum check failed because not all proposed set members responded \
             affirmatively: storage2..local:27017 failed with Could not find address for \
             storage2..local:27017: SocketException: Host not found (authoritative), {} failed \
             with Error connecting to {} :: caused by :: Connection refused",
            hosts[2], hosts[2]
        )
    );
    assert_eq!(cluster.member_state(0), "STARTUP", "nothing initiated");
}
