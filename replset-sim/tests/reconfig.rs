//! `replSetReconfig`, `replSetGetConfig` with `commitmentStatus`, and
//! `replSetStepDown`: mongod 4.4+'s validation and error codes, members
//! that join empty and catch up, and `newlyAdded`.

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

/// Three members in the config and `spare` more running empty and
/// uninitiated; a second of initial sync so that it can be watched.
async fn cluster(spare: usize, initial_sync: Duration) -> Cluster {
    Cluster::start(ClusterOptions {
        members: 3 + spare,
        initial_config: Some(3),
        initial_sync,
        election_delay: Duration::from_millis(100),
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn direct(cluster: &Cluster, member: usize) -> mongodb::Database {
    let uri = format!(
        "{}&serverSelectionTimeoutMS=5000",
        cluster.direct_uri(member)
    );
    Client::with_uri_str(&uri).await.unwrap().database("admin")
}

async fn config(admin: &mongodb::Database) -> Document {
    admin
        .run_command(doc! {"replSetGetConfig": 1})
        .await
        .unwrap()
        .get_document("config")
        .unwrap()
        .clone()
}

/// `config` with `hosts` as members: existing hosts keep their `_id`, new
/// ones get the next free ids; version + 1.
fn with_members(config: &Document, hosts: &[String]) -> Document {
    let old = config.get_array("members").unwrap();
    let mut next = old
        .iter()
        .filter_map(|m| m.as_document()?.get_i32("_id").ok())
        .max()
        .unwrap_or(-1)
        + 1;
    let members: Vec<Bson> = hosts
        .iter()
        .map(|h| {
            let kept = old
                .iter()
                .filter_map(Bson::as_document)
                .find(|m| m.get_str("host") == Ok(h.as_str()));
            match kept {
                Some(m) => Bson::Document(m.clone()),
                None => {
                    next += 1;
                    Bson::Document(doc! {"_id": next - 1, "host": h})
                }
            }
        })
        .collect();
    let mut c = config.clone();
    c.insert("version", config.get_i32("version").unwrap() + 1);
    c.insert("members", members);
    c
}

async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn status_of(admin: &mongodb::Database, host: &str) -> (String, i32) {
    let s = admin
        .run_command(doc! {"replSetGetStatus": 1})
        .await
        .unwrap();
    let voting = s.get_i32("votingMembersCount").unwrap();
    let state = s
        .get_array("members")
        .unwrap()
        .iter()
        .filter_map(Bson::as_document)
        .find(|m| m.get_str("name") == Ok(host))
        .map(|m| m.get_str("stateStr").unwrap().to_owned())
        .unwrap_or_default();
    (state, voting)
}

#[tokio::test]
async fn a_new_member_joins_empty_catches_up_then_votes() {
    let cluster = cluster(1, Duration::from_millis(800)).await;
    let hosts = cluster.hosts();
    let rs = Client::with_uri_str(format!(
        "{}&serverSelectionTimeoutMS=5000",
        cluster.uri("chat")
    ))
    .await
    .unwrap();
    let coll = rs.database("chat").collection::<Document>("m");
    coll.insert_one(doc! {"_id": "before"}).await.unwrap();
    assert!(!cluster.has_data(3));

    let admin = direct(&cluster, 0).await;
    let before = config(&admin).await;
    assert_eq!(before.get_i32("version"), Ok(1));
    let added = with_members(&before, &hosts);
    admin
        .run_command(doc! {"replSetReconfig": added, "maxTimeMS": 5000})
        .await
        .unwrap();

    // Newly added: in the config, not voting, copying the data.
    let now = config(&admin).await;
    assert_eq!(now.get_i32("version"), Ok(2));
    let fourth = now.get_array("members").unwrap()[3].as_document().unwrap();
    assert_eq!(fourth.get_i32("votes"), Ok(1), "configured votes shown");
    assert!(!fourth.contains_key("newlyAdded"), "hidden by default");
    let internal = admin
        .run_command(doc! {"replSetGetConfig": 1, "$_internalIncludeNewlyAdded": true})
        .await
        .unwrap();
    let fourth = internal
        .get_document("config")
        .unwrap()
        .get_array("members")
        .unwrap()[3]
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(fourth.get_bool("newlyAdded"), Ok(true));
    assert_eq!(status_of(&admin, &hosts[3]).await, ("STARTUP2".into(), 3));
    assert_eq!(cluster.voting_hosts().len(), 3);
    let committed = admin
        .run_command(doc! {"replSetGetConfig": 1, "commitmentStatus": true})
        .await
        .unwrap();
    assert_eq!(committed.get_bool("commitmentStatus"), Ok(true));
    // Writes keep a majority of the three voters meanwhile.
    coll.insert_one(doc! {"_id": "during"}).await.unwrap();

    // Caught up: SECONDARY, votes, and the primary's own reconfig removed
    // newlyAdded (version 3).
    until("the new member to vote", || async {
        status_of(&admin, &hosts[3]).await == ("SECONDARY".into(), 4)
    })
    .await;
    assert_eq!(config(&admin).await.get_i32("version"), Ok(3));
    assert_eq!(cluster.voting_hosts().len(), 4);
    let joined = Client::with_uri_str(format!(
        "{}&serverSelectionTimeoutMS=5000&readPreference=secondaryPreferred",
        cluster.direct_uri(3)
    ))
    .await
    .unwrap();
    let mut cursor = joined
        .database("chat")
        .collection::<Document>("m")
        .find(doc! {})
        .await
        .unwrap();
    let mut seen = Vec::new();
    while cursor.advance().await.unwrap() {
        seen.push(
            cursor
                .deserialize_current()
                .unwrap()
                .get_str("_id")
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(seen, ["before", "during"], "the whole log, copied");
}

#[tokio::test]
async fn unsafe_or_invalid_configs_are_refused_with_mongods_codes() {
    let cluster = cluster(2, Duration::from_millis(100)).await;
    let hosts = cluster.hosts();
    let admin = direct(&cluster, 0).await;
    let current = config(&admin).await;
    let reconfig = |c: Document| {
        let admin = admin.clone();
        async move {
            admin
                .run_command(doc! {"replSetReconfig": c, "maxTimeMS": 5000})
                .await
        }
    };

    // Version not greater.
    let mut same = with_members(&current, &hosts[..3]);
    same.insert("version", 1);
    let err = reconfig(same).await.unwrap_err();
    assert_eq!(code(&err), 103, "{err}");
    assert!(message(&err).contains("must be greater than old"), "{err}");

    // Another set name.
    let mut renamed = with_members(&current, &hosts[..3]);
    renamed.insert("_id", "other");
    let err = reconfig(renamed).await.unwrap_err();
    assert_eq!(code(&err), 103, "{err}");
    assert!(
        message(&err).contains("differ in replica set name"),
        "{err}"
    );

    // A host that changes its _id.
    let mut moved = with_members(&current, &hosts[..3]);
    if let Some(Bson::Document(m)) = moved.get_array_mut("members").unwrap().get_mut(2) {
        m.insert("_id", 9);
    }
    let err = reconfig(moved).await.unwrap_err();
    assert_eq!(code(&err), 103, "{err}");

    // The same host twice.
    let twice = with_members(
        &current,
        &[hosts[0].clone(), hosts[1].clone(), hosts[1].clone()],
    );
    let err = reconfig(twice).await.unwrap_err();
    assert_eq!(code(&err), 93, "{err}");
    assert!(message(&err).contains("same host field"), "{err}");

    // Two voting members removed at once.
    let err = reconfig(with_members(&current, &hosts[..1]))
        .await
        .unwrap_err();
    assert_eq!(code(&err), 93, "{err}");
    assert!(
        message(&err).contains("can only add or remove at most 1 voting member"),
        "{err}"
    );
    // Two voters made non-voting at once is the same change.
    let mut silenced = with_members(&current, &hosts[..3]);
    for i in [1, 2] {
        if let Some(Bson::Document(m)) = silenced.get_array_mut("members").unwrap().get_mut(i) {
            m.insert("votes", 0);
            m.insert("priority", 0);
        }
    }
    let err = reconfig(silenced).await.unwrap_err();
    assert_eq!(code(&err), 93, "{err}");

    // The primary leaving the config.
    let err = reconfig(with_members(&current, &hosts[1..3]))
        .await
        .unwrap_err();
    assert_eq!(code(&err), 74, "{err}");
    assert!(message(&err).contains("maps to this node"), "{err}");

    // Not on a secondary, and commitmentStatus only on the primary.
    let secondary = direct(&cluster, 1).await;
    let err = secondary
        .run_command(doc! {"replSetReconfig": with_members(&current, &hosts[..3])})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 10107, "{err}");
    let err = secondary
        .run_command(doc! {"replSetGetConfig": 1, "commitmentStatus": true})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 10107, "{err}");

    // The new config's voters must answer: with member 2 dead, dropping
    // member 1 leaves {0, 2} of which only 0 answers.
    cluster.kill(2).await;
    let err = reconfig(with_members(
        &current,
        &[hosts[0].clone(), hosts[2].clone()],
    ))
    .await
    .unwrap_err();
    assert_eq!(code(&err), 74, "{err}");
    assert!(message(&err).contains("Quorum check failed"), "{err}");

    // Nothing above changed the config.
    assert_eq!(cluster.config_version(), Some(1));
    assert_eq!(cluster.config_hosts(), hosts[..3]);

    // Removing the dead member alone is one voting change, and allowed;
    // it then reports REMOVED when it comes back.
    reconfig(with_members(&current, &hosts[..2])).await.unwrap();
    assert_eq!(cluster.config_version(), Some(2));
    cluster.restart(2).await.unwrap();
    assert_eq!(cluster.member_state(2), "REMOVED");
    let hello = direct(&cluster, 2)
        .await
        .run_command(doc! {"hello": 1})
        .await
        .unwrap();
    assert!(hello.get("setName").is_none(), "{hello}");
}

#[tokio::test]
async fn step_down_hands_over_to_an_electable_secondary() {
    let cluster = cluster(0, Duration::from_millis(100)).await;
    let admin = direct(&cluster, 0).await;
    let err = direct(&cluster, 1)
        .await
        .run_command(doc! {"replSetStepDown": 30})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 10107);
    let err = admin
        .run_command(doc! {"replSetStepDown": 5, "secondaryCatchUpPeriodSecs": 10})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 2);

    // With the other members unelectable (priority 0) there is no one to
    // hand over to.
    let mut c = config(&admin).await;
    c.insert("version", 2);
    for i in [1, 2] {
        if let Some(Bson::Document(m)) = c.get_array_mut("members").unwrap().get_mut(i) {
            m.insert("priority", 0);
        }
    }
    admin
        .run_command(doc! {"replSetReconfig": c})
        .await
        .unwrap();
    let err = admin
        .run_command(doc! {"replSetStepDown": 5, "secondaryCatchUpPeriodSecs": 1})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 262, "{err}");
    assert_eq!(cluster.primary(), Some(0));

    let mut c = config(&admin).await;
    c.insert("version", 3);
    if let Some(Bson::Document(m)) = c.get_array_mut("members").unwrap().get_mut(1) {
        m.insert("priority", 1);
    }
    admin
        .run_command(doc! {"replSetReconfig": c})
        .await
        .unwrap();
    admin
        .run_command(doc! {"replSetStepDown": 30, "secondaryCatchUpPeriodSecs": 5})
        .await
        .unwrap();
    assert_ne!(cluster.primary(), Some(0));
    let new = cluster
        .wait_for_primary(Duration::from_secs(5))
        .await
        .expect("a new primary");
    assert_eq!(new, 1, "the only electable other member");
    assert_eq!(cluster.term(), 2);
}
