//! The MongoDB store against a replica set: the store contract, and what
//! only a replica set can show (elections, lost replies, the change stream).

#[path = "support/cluster.rs"]
mod cluster;
mod contract;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{fast_sim, say, TestCluster, APP_PASSWORD};
use simplechat::cache::Cache;
use simplechat::message::NewMessage;
use simplechat::mongo::uri::with_password;
use simplechat::store::mongo::MongoStore;
use simplechat::store::{Cursor, Inserted, Store, StoreError};

/// Opens a store and waits until the driver has found the primary: the
/// store opens without waiting, by design.
async fn open_ready(
    cluster: &TestCluster,
    db: &str,
    write_timeout: Duration,
    live: Arc<Cache>,
) -> MongoStore {
    open_ready_at(cluster, &cluster.uri(db), db, write_timeout, live).await
}

/// `open_ready` with a connection string of its own (credentials); ready
/// means writable and its change stream running.
async fn open_ready_at(
    cluster: &TestCluster,
    uri: &str,
    db: &str,
    write_timeout: Duration,
    live: Arc<Cache>,
) -> MongoStore {
    let store = open_writable(cluster, uri, db, write_timeout, live).await;
    // What is stored before the change stream's first load is history to
    // this store, never news: a message stored through another store
    // before then is not published here, however long a test waits. On a
    // loaded machine the load can come after the first insert.
    wait_until_running(&store, Duration::from_secs(30)).await;
    store
}

/// A store opened at `uri` once it is writable, its change stream maybe
/// still on its first load.
async fn open_writable(
    cluster: &TestCluster,
    uri: &str,
    db: &str,
    write_timeout: Duration,
    live: Arc<Cache>,
) -> MongoStore {
    let store = MongoStore::open(uri, db, write_timeout, live)
        .await
        .expect("open");
    let deadline = Instant::now() + cluster.election_time();
    while let Err(why) = store.ready().await {
        assert!(Instant::now() < deadline, "store never became ready: {why}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store
}

fn message(id: &str, text: &str) -> NewMessage {
    NewMessage::validate("tester", text, Some(id)).expect("valid")
}

fn sim_only(test: &str) {
    say(&format!(
        "SKIPPED: {test} on real mongod, because it injects faults only the simulator can; running it on replset-sim"
    ));
    say(&format!("{test}: backend: replset-sim"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_store_keeps_the_contract() {
    let cluster = TestCluster::start("mongo_store_keeps_the_contract").await;
    let n = AtomicUsize::new(0);
    contract::run_all(|live| {
        let db = format!("contract{}", n.fetch_add(1, Ordering::SeqCst));
        let cluster = &cluster;
        async move {
            Arc::new(open_ready(cluster, &db, Duration::from_secs(20), live).await)
                as Arc<dyn Store>
        }
    })
    .await;
}

/// The contract once more, as the deployment runs it: access control on, the
/// app's least-privilege user, the password percent-encoded into the URI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_store_keeps_the_contract_with_authentication() {
    const CASES: usize = 16;
    let dbs: Vec<String> = (0..CASES).map(|i| format!("authcontract{i}")).collect();
    let names: Vec<&str> = dbs.iter().map(String::as_str).collect();
    let cluster =
        TestCluster::start_auth("mongo_store_keeps_the_contract_with_authentication", &names).await;
    let n = AtomicUsize::new(0);
    contract::run_all(|live| {
        let i = n.fetch_add(1, Ordering::SeqCst);
        assert!(i < CASES, "more contract cases than databases with a role");
        let db = format!("authcontract{i}");
        let uri = with_password(&cluster.user_uri(&db), APP_PASSWORD).expect("uri");
        let cluster = &cluster;
        async move {
            Arc::new(open_ready_at(cluster, &uri, &db, Duration::from_secs(20), live).await)
                as Arc<dyn Store>
        }
    })
    .await;
}

/// A wrong password: the store opens, says authentication is why it is not
/// ready (never the password), refuses writes with 503; once the user's
/// password matches (set with the key file, as after a rotation), it
/// becomes ready by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_password_is_named_and_clears_without_a_restart() {
    let test = "a_refused_password_is_named_and_clears_without_a_restart";
    let cluster = TestCluster::start_auth(test, &["refused"]).await;
    let wrong = "wr0ng%pass";
    let uri = with_password(&cluster.user_uri("refused"), wrong).unwrap();
    let store = MongoStore::open(&uri, "refused", Duration::from_secs(2), Cache::new())
        .await
        .expect("opens without checking the password");
    let deadline = Instant::now() + cluster.election_time();
    let why = loop {
        match store.ready().await {
            Err(why) if why.contains("authenticat") => break why,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "no authentication reason: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(why.contains("MongoDB refused to authenticate"), "{why}");
    let status = serde_json::to_string(&store.status().await).unwrap();
    let err = store.insert(message("w1", "refused")).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    for text in [&why, &status, &err.to_string()] {
        for secret in [wrong, "wr0ng%25pass", APP_PASSWORD] {
            assert!(!text.contains(secret), "{text}");
        }
    }
    // It stays refused while nothing changes (the driver's monitor finds the
    // members healthy again; the refusal must not flap away).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(store.ready().await.unwrap_err().contains("authenticat"));

    // The operator rotates the password to what this app has.
    let auth = cluster.auth();
    let file = auth.other_password_file(wrong);
    let mut args = auth.init_args();
    args[3] = file.display().to_string();
    args.extend([
        "--key-file".to_string(),
        auth.key_file.display().to_string(),
    ]);
    let (ok, out) = cluster::run_init(&cluster.hosts(), &args).await;
    assert!(ok, "{out}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(why) = store.ready().await {
        assert!(Instant::now() < deadline, "never cleared: {why}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    store
        .insert(message("w2", "accepted now"))
        .await
        .expect("writes work again");

    // What waited for the credentials catches up by itself too: the order
    // index is created, and `/api/status` no longer reports the refusal.
    let client = mongodb::Client::with_uri_str(&uri).await.expect("client");
    let messages = client
        .database("refused")
        .collection::<mongodb::bson::Document>("messages");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let feed = store.status().await.mongodb.expect("mongodb").change_stream;
        let indexes = match messages.list_index_names().await {
            Ok(names) => names,
            Err(e) => vec![format!("listIndexes failed: {e}")],
        };
        let indexed = indexes.iter().any(|n| n == "position_1_datetime_1__id_1");
        if feed.running && feed.last_error.is_none() && indexed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still not caught up: {feed:?}, indexes {indexes:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_waits_out_an_election() {
    let cluster = TestCluster::start("a_write_waits_out_an_election").await;
    let store = open_ready(&cluster, "election", Duration::from_secs(60), Cache::new()).await;
    store
        .insert(message("before", "before"))
        .await
        .expect("insert");
    let primary = cluster.primary().await.expect("a primary");
    cluster.kill(primary).await;
    let started = Instant::now();
    let outcome = store.insert(message("during", "during")).await;
    assert!(
        matches!(outcome, Ok(Inserted::Created(_))),
        "the write waits for the new primary: {outcome:?}"
    );
    say(&format!(
        "a_write_waits_out_an_election: the write waited {:?} for a new primary",
        started.elapsed()
    ));
    assert_eq!(latest_texts(&store, 10).await, ["before", "during"]);
    cluster.restart(primary).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_is_retried_with_the_same_id() {
    sim_only("a_lost_reply_is_retried_with_the_same_id");
    let cluster = TestCluster::start_sim(fast_sim(true)).await;
    let sim = cluster.sim().expect("simulator");
    let store = open_ready(&cluster, "lost", Duration::from_secs(20), Cache::new()).await;
    // The driver retries once by itself; losing both replies leaves the
    // outcome unknown to it, and the store's own retry must find the
    // document it already stored rather than store it again.
    sim.drop_replies("insert", 2);
    let outcome = store.insert(message("once", "stored once")).await;
    assert!(matches!(outcome, Ok(Inserted::Created(_))), "{outcome:?}");
    let docs = sim.documents("lost", "messages");
    assert_eq!(docs.len(), 1, "stored exactly once: {docs:?}");
    // The same post again (an idempotent retry by the client) stores nothing.
    let again = store.insert(message("once", "stored once")).await;
    assert!(matches!(again, Ok(Inserted::Existing(_))), "{again:?}");
    assert_eq!(sim.documents("lost", "messages").len(), 1);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_majority_a_write_answers_503_after_the_timeout() {
    let cluster =
        TestCluster::start("without_a_majority_a_write_answers_503_after_the_timeout").await;
    let store = open_ready(&cluster, "nomajority", Duration::from_secs(3), Cache::new()).await;
    let primary = cluster.primary().await.expect("primary");
    for member in 0..3 {
        if member != primary {
            cluster.kill(member).await;
        }
    }
    let started = Instant::now();
    let outcome = store.insert(message("late", "late")).await;
    let waited = started.elapsed();
    match outcome {
        // The simulator's primary steps down the moment it loses its
        // majority (FIDELITY.md): the driver finds no primary, or sends
        // the write to the old one before it heard, which refuses it.
        Err(StoreError::Unavailable {
            reason,
            retry_after,
        }) if cluster.sim().is_some()
            && reason.starts_with(
                "the message was not stored: no MongoDB primary was available to send it to",
            ) =>
        {
            assert!(retry_after > Duration::ZERO);
        }
        Err(StoreError::Unavailable {
            reason,
            retry_after,
        }) => {
            assert!(retry_after > Duration::ZERO);
            // The write reached the primary, which may have applied it: the
            // client must learn that the outcome is unknown and that
            // retrying with the same id cannot store it twice. (mongod's
            // primary stays one for `electionTimeoutMillis`, 10 s, after
            // it lost its majority.)
            assert!(reason.contains("outcome is unknown"), "{reason}");
            assert!(reason.contains("same id (late) is safe"), "{reason}");
        }
        other => panic!("expected 503 material, got {other:?}"),
    }
    assert!(waited >= Duration::from_secs(2), "it waited: {waited:?}");
    assert!(
        waited < Duration::from_secs(6),
        "bounded by the write timeout: {waited:?}"
    );
    store.close().await;
}

async fn wait_for_event(
    events: &mut tokio::sync::broadcast::Receiver<Arc<simplechat::cache::CachedMessage>>,
    id: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Ok(e)) if e.message.id == id => return,
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
            other => panic!("{id} never reached the other instance: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_delivers_across_instances_and_survives_failover() {
    let cluster =
        TestCluster::start("the_feed_delivers_across_instances_and_survives_failover").await;
    let live_a = Cache::new();
    let a = open_ready(&cluster, "feed", Duration::from_secs(60), live_a.clone()).await;
    let b = open_ready(&cluster, "feed", Duration::from_secs(60), Cache::new()).await;
    let mut events = live_a.subscribe();

    b.insert(message("from-b-1", "one"))
        .await
        .expect("insert through b");
    wait_for_event(&mut events, "from-b-1").await;

    let primary = cluster.primary().await.expect("primary");
    cluster.kill(primary).await;
    b.insert(message("from-b-2", "two"))
        .await
        .expect("insert after failover");
    wait_for_event(&mut events, "from-b-2").await;
    let status = a.status().await;
    let feed = status.mongodb.expect("mongodb status").change_stream;
    assert!(feed.last_delivered.is_some(), "{feed:?}");
    cluster.restart(primary).await;
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_every_member() {
    let cluster = TestCluster::start("status_reports_every_member").await;
    let store = open_ready(&cluster, "status", Duration::from_secs(20), Cache::new()).await;
    let status = store.status().await;
    assert_eq!(status.store, "mongodb");
    assert!(status.ready, "{status:?}");
    let rs = status
        .mongodb
        .and_then(|m| m.replica_set)
        .expect("replica set status");
    assert_eq!(rs.name, "rs");
    assert_eq!(rs.source, "replSetGetStatus");
    assert_eq!(rs.members.len(), 3);
    let primary = cluster.hosts()[cluster.primary().await.expect("primary")].clone();
    assert_eq!(rs.primary.as_deref(), Some(primary.as_str()));
    assert!(rs.members.iter().all(|m| m.health == 1.0), "{rs:?}");
    let json = serde_json::to_value(
        simplechat::replset::status(&cluster.uri("status"), &|_| {})
            .await
            .expect("status"),
    )
    .expect("json");
    assert_eq!(json["members"].as_array().map(Vec::len), Some(3));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_reopens_after_the_whole_set_was_down() {
    let test = "the_feed_reopens_after_the_whole_set_was_down";
    let cluster = TestCluster::start(test).await;
    let live = Cache::new();
    let store = open_ready(&cluster, "outage", Duration::from_secs(60), live.clone()).await;
    let mut events = live.subscribe();
    store.insert(message("o1", "before")).await.expect("insert");
    wait_for_event(&mut events, "o1").await;

    for member in 0..3 {
        cluster.kill(member).await;
    }
    // Longer than the driver's own resume (one server selection).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let feed = store
            .status()
            .await
            .mongodb
            .expect("mongodb status")
            .change_stream;
        if !feed.running && feed.last_error.is_some() {
            say(&format!("{test}: feed while the set is down: {feed:?}"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the feed never noticed: {feed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        live.latest(1).is_none(),
        "the cache is invalidated while the feed is down"
    );
    for member in 0..3 {
        cluster.restart(member).await;
    }
    cluster
        .wait_for_primary(cluster.election_time())
        .await
        .expect("a primary after the restart");

    // Another instance writes; this one's feed must come back by itself.
    let other = open_ready(&cluster, "outage", Duration::from_secs(60), Cache::new()).await;
    other
        .insert(message("o2", "after"))
        .await
        .expect("insert after outage");
    wait_for_event(&mut events, "o2").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while live.latest(2).is_none() {
        assert!(Instant::now() < deadline, "the cache is never whole again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cached: Vec<String> = live
        .latest(2)
        .unwrap_or_default()
        .iter()
        .map(|e| e.message.id.clone())
        .collect();
    assert_eq!(cached, ["o1", "o2"]);
    store.close().await;
    other.close().await;
}

/// Dropping the collection under a running change stream ends it with an
/// `invalidate` event (<https://www.mongodb.com/docs/manual/reference/change-events/invalidate/>);
/// the store must open a new stream by itself, and messages written after
/// the drop must still reach the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_collection_invalidates_the_change_stream_and_it_reopens() {
    let cluster =
        TestCluster::start("a_dropped_collection_invalidates_the_change_stream_and_it_reopens")
            .await;
    let cache = Cache::new();
    let store = open_ready(&cluster, "dropped", Duration::from_secs(30), cache.clone()).await;
    let other = open_ready(&cluster, "dropped", Duration::from_secs(30), Cache::new()).await;
    let mut events = cache.subscribe();
    other
        .insert(message("before-drop", "one"))
        .await
        .expect("insert before the drop");
    wait_for_event(&mut events, "before-drop").await;

    cluster
        .lab_messages("dropped")
        .await
        .drop()
        .await
        .expect("drop the collection");
    // The cache the app answers listings, the page and replays from holds
    // no message the store lost, once the stream has reopened (before, a
    // reset from an empty read kept every message the cache had).
    let cached = |cache: &Cache| -> Option<Vec<String>> {
        cache
            .latest(10)
            .map(|ms| ms.iter().map(|m| m.message.id.clone()).collect())
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while cached(&cache) != Some(Vec::new()) {
        assert!(
            Instant::now() < deadline,
            "the cache still holds {:?}",
            cached(&cache)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Written through the other instance, so only the change stream (not
    // the writer's own publish) can bring it to this cache.
    other
        .insert(message("after-drop", "two"))
        .await
        .expect("insert after the drop");
    wait_for_event(&mut events, "after-drop").await;
    let listed: Vec<String> = store
        .list(Cursor::Latest, 10)
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(listed, ["after-drop"], "the drop removed the older message");
    assert_eq!(cached(&cache), Some(vec!["after-drop".to_owned()]));
    store.close().await;
    other.close().await;
}

/// The lab's own data: documents written as the lab's Flask app wrote them
/// (`{_id: ObjectId, name, text, datetime}` with naive datetimes, here out
/// of arrival order), documents that are no messages, and the lab's app
/// writing while simplechat runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_labs_documents_are_read_in_one_order_and_new_ones_join_it() {
    use mongodb::bson::{doc, oid::ObjectId, DateTime};

    let cluster =
        TestCluster::start("the_labs_documents_are_read_in_one_order_and_new_ones_join_it").await;
    let lab = cluster.lab_messages("messages").await;
    // Arrival order differs from datetime order: a lab in another time zone.
    let hours = |h: i64| DateTime::from_millis(1_700_000_000_000 + h * 3_600_000);
    // Made long before simplechat's first message, as the lab's were.
    let lab_ids: Vec<ObjectId> = (0..4_u8)
        .map(|i| {
            let mut bytes = [0u8; 12];
            bytes[..4].copy_from_slice(&1_700_000_000_u32.to_be_bytes());
            bytes[11] = i;
            ObjectId::from_bytes(bytes)
        })
        .collect();
    for (i, h) in [3, 1, 4, 2].into_iter().enumerate() {
        lab.insert_one(doc! { "_id": lab_ids[i], "name": "lab", "text": format!("lab {h}"), "datetime": hours(h) })
            .await
            .expect("lab insert");
    }
    lab.insert_many([
        doc! { "_id": 17, "name": "x", "text": "int id", "datetime": hours(0) },
        doc! { "_id": "no-name", "text": "missing name", "datetime": hours(0) },
        doc! { "_id": "bad-text", "name": "x", "text": 5, "datetime": hours(0) },
    ])
    .await
    .expect("malformed inserts");

    let cache = Cache::new();
    let store = open_ready(&cluster, "messages", Duration::from_secs(30), cache.clone()).await;
    let mut events = cache.subscribe();
    for i in 0..3 {
        store
            .insert(message(&format!("sc{i}"), &format!("simplechat {i}")))
            .await
            .expect("insert");
    }

    let texts = |ms: Vec<simplechat::message::Message>| -> Vec<String> {
        ms.into_iter().map(|m| m.text).collect()
    };
    let expected = [
        "lab 1",
        "lab 2",
        "lab 3",
        "lab 4",
        "simplechat 0",
        "simplechat 1",
        "simplechat 2",
    ];
    assert_eq!(
        texts(store.list(Cursor::Latest, 100).await.unwrap()),
        expected
    );

    // Walking the whole history both ways returns every message once.
    let mut backwards = Vec::new();
    let mut page = store.list(Cursor::Latest, 2).await.unwrap();
    while let Some(first) = page.first().cloned() {
        backwards.splice(0..0, page.iter().map(|m| m.text.clone()));
        page = store.list(Cursor::Before(first.id), 2).await.unwrap();
    }
    assert_eq!(backwards, expected, "backwards");
    let oldest = store.list(Cursor::Latest, 100).await.unwrap()[0].id.clone();
    let mut forwards = vec!["lab 1".to_owned()];
    let mut page = store.list(Cursor::After(oldest), 2).await.unwrap();
    while let Some(last) = page.last().cloned() {
        forwards.extend(page.iter().map(|m| m.text.clone()));
        page = store.list(Cursor::After(last.id), 2).await.unwrap();
    }
    assert_eq!(forwards, expected, "forwards");

    // An ObjectId message's id is its hex; a post with that id is a retry.
    let hex = lab_ids[0].to_hex();
    let found = store.get(&hex).await.unwrap().expect("found by hex id");
    assert_eq!(found.text, "lab 3");
    let retry = NewMessage::validate("lab", "lab 3", Some(&hex)).unwrap();
    assert!(matches!(
        store.insert(retry).await,
        Ok(Inserted::Existing(_))
    ));
    let other = NewMessage::validate("lab", "other", Some(&hex)).unwrap();
    assert!(matches!(
        store.insert(other).await,
        Err(StoreError::Conflict(_))
    ));

    let status = store.status().await.mongodb.expect("mongodb status");
    assert_eq!(
        status.skipped_documents.get("id_type"),
        Some(&1),
        "{status:?}"
    );
    assert_eq!(status.skipped_documents.get("name"), Some(&1), "{status:?}");
    assert_eq!(status.skipped_documents.get("text"), Some(&1), "{status:?}");

    // The lab's app posts while simplechat runs: its message becomes the
    // newest, whatever its naive datetime says, and reaches the cache.
    let late = ObjectId::new();
    lab.insert_one(
        doc! { "_id": late, "name": "lab", "text": "lab late", "datetime": hours(-100) },
    )
    .await
    .expect("lab insert while running");
    wait_for_event(&mut events, &late.to_hex()).await;
    let latest = texts(store.list(Cursor::Latest, 1).await.unwrap());
    assert_eq!(latest, ["lab late"], "the lab's new message is the newest");
    let stored = lab
        .find_one(doc! { "_id": late })
        .await
        .unwrap()
        .expect("still there");
    assert!(stored.get_timestamp("position").is_ok(), "{stored}");
    assert_eq!(
        stored.get_str("text").unwrap(),
        "lab late",
        "the lab's fields are untouched"
    );
    store.close().await;
}

/// One instance keeps many majority writes in flight at once: with each
/// majority acknowledgement taking 200 ms, 32 concurrent posts are all
/// waiting for their acknowledgement together, not one after another, and
/// each is stored and delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_pipelines_its_majority_writes() {
    let test = "one_instance_pipelines_its_majority_writes";
    let cluster = sim_for(test, Duration::from_millis(200)).await;
    let cache = Cache::new();
    let store = Arc::new(
        open_ready(
            &cluster,
            "pipelined",
            Duration::from_secs(30),
            cache.clone(),
        )
        .await,
    );
    // Writes made before the change stream first loads the cache would be
    // loaded as history and sent to no subscriber (what this test is not
    // about): it starts once the stream runs.
    wait_until_running(&store, Duration::from_secs(30)).await;
    let mut events = cache.subscribe();
    const WRITERS: usize = 32;
    let writes = (0..WRITERS).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.insert(message(&format!("p{i}"), "pipelined")).await })
    });
    for write in futures::future::join_all(writes).await {
        assert!(matches!(write.expect("task"), Ok(Inserted::Created(_))));
    }
    let peak = cluster.sim().expect("simulator").peak_write_concern_waits();
    assert!(
        peak >= WRITERS / 2,
        "at most {peak} of {WRITERS} writes waited for a majority at once"
    );
    let listed = store.list(Cursor::Latest, 100).await.expect("list");
    assert_eq!(listed.len(), WRITERS, "each stored once");
    let mut delivered = std::collections::HashSet::new();
    while delivered.len() < WRITERS {
        let got = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .expect("every write reaches the cache")
            .expect("cache open");
        assert!(
            delivered.insert(got.message.id.clone()),
            "delivered twice: {}",
            got.message.id
        );
    }
    store.close().await;
}

/// The lab's app and simplechat writing at once. A lab document gets its
/// position from an update that follows its insert, so a message stored
/// between the two comes before it in the store order. The change stream
/// published the lab's message at its insert, ahead of such messages, so
/// subscribers (and a replay from their last event) saw another order
/// than the listing, and two instances each their own. Here each update
/// the change stream makes waits 500 ms for its majority, so the second
/// lab message is positioned well after the post that follows it: both
/// instances now deliver every message in the store order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_the_lab_writes_beside_simplechats_are_delivered_in_the_store_order() {
    use mongodb::bson::{doc, oid::ObjectId, DateTime};
    use std::future::IntoFuture;

    let test = "messages_the_lab_writes_beside_simplechats_are_delivered_in_the_store_order";
    let cluster = sim_for(test, Duration::from_millis(500)).await;
    let mut instances = Vec::new();
    for _ in 0..2 {
        let cache = Cache::new();
        let store = open_ready(&cluster, "beside", Duration::from_secs(30), cache.clone()).await;
        instances.push((Arc::new(store), cache.subscribe()));
    }
    let lab = cluster.lab_messages("beside").await;
    let lab_insert = |text: &str| {
        lab.insert_one(doc! { "_id": ObjectId::new(), "name": "lab", "text": text,
        "datetime": DateTime::now() })
            .write_concern(lab_write_concern())
            .into_future()
    };
    lab_insert("lab 1").await.expect("lab insert");
    lab_insert("lab 2").await.expect("lab insert");
    let store = instances[0].0.clone();
    let post = tokio::spawn(async move { store.insert(message("sc1", "simplechat 1")).await });
    lab_insert("lab 3").await.expect("lab insert");
    assert!(matches!(
        post.await.expect("task"),
        Ok(Inserted::Created(_))
    ));
    // The store order is final once every lab message has its position
    // (until then one made in the second of the first position is listed
    // as history, at its datetime).
    let deadline = Instant::now() + Duration::from_secs(30);
    while lab
        .count_documents(doc! { "position": null })
        .await
        .expect("count")
        > 0
    {
        assert!(
            Instant::now() < deadline,
            "the lab's messages never got positions"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let listed = latest_texts(&instances[0].0, 100).await;
    assert_eq!(listed.len(), 4, "{listed:?}");
    // The test is only one if a lab message was positioned after the post.
    assert_ne!(
        listed.last().map(String::as_str),
        Some("simplechat 1"),
        "{listed:?}"
    );
    for (i, (store, events)) in instances.iter_mut().enumerate() {
        assert_eq!(
            next_texts(events, listed.len()).await,
            listed,
            "instance {i}: delivered in the store order"
        );
        assert_eq!(
            latest_texts(store, 100).await,
            listed,
            "instance {i}: listed alike"
        );
    }
    for (store, _) in instances {
        store.close().await;
    }
}

/// A burst of the lab's inserts (a script, an `insert_many`) and a post
/// right after it. The change stream gave each lab document its position
/// with a majority write of its own, so a burst of 300 held the stream up
/// for 300 round trips; the post's copy came back after more than 2 s,
/// and the posting instance published it itself, ahead of lab messages
/// the store orders before it: its subscribers and its listing had
/// another order than the store's and the other instance's. The burst is
/// now positioned in one write, and a post is never published out of the
/// stream's order: both instances deliver and list the store order, and
/// the posting instance's cache never answers a listing without the post.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_the_labs_inserts_keeps_a_post_in_its_place() {
    use mongodb::bson::{doc, oid::ObjectId, DateTime};

    const BURST: usize = 300;
    let test = "a_burst_of_the_labs_inserts_keeps_a_post_in_its_place";
    let cluster = sim_for(test, Duration::from_millis(20)).await;
    let mut instances = Vec::new();
    for _ in 0..2 {
        let cache = Cache::new();
        let store = open_ready(&cluster, "burst", Duration::from_secs(30), cache.clone()).await;
        let events = cache.subscribe();
        instances.push((store, cache, events));
    }
    let first = instances[0].0.insert(message("sc0", "simplechat 0")).await;
    assert!(matches!(first, Ok(Inserted::Created(_))));
    // The burst is made after the second of simplechat's first message, so
    // a lab document is listed only once it has its position.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let lab = cluster.lab_messages("burst").await;
    let burst: Vec<_> = (0..BURST)
        .map(|i| {
            doc! { "_id": ObjectId::new(), "name": "lab", "text": format!("lab {i}"),
            "datetime": DateTime::now() }
        })
        .collect();
    lab.insert_many(burst)
        .write_concern(lab_write_concern())
        .await
        .expect("lab burst");
    let post = instances[0].0.insert(message("sc1", "simplechat 1")).await;
    assert!(matches!(post, Ok(Inserted::Created(_))));
    if let Some(latest) = instances[0].1.latest(simplechat::cache::CACHE_CAPACITY) {
        assert!(
            latest.iter().any(|m| m.message.id == "sc1"),
            "the posting instance's cache answered a listing without the post"
        );
    }

    let mut listed = Vec::new();
    for _ in 0..100 {
        listed = latest_texts(&instances[0].0, BURST + 2).await;
        if listed.len() == BURST + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed.len(), BURST + 2, "every lab message positioned");
    for (i, (store, cache, events)) in instances.iter_mut().enumerate() {
        assert_eq!(
            next_texts(events, listed.len()).await,
            listed,
            "instance {i}: delivered in the store order"
        );
        assert_eq!(latest_texts(store, BURST + 2).await, listed);
        let cached: Vec<String> = cache
            .latest(BURST + 2)
            .expect("the cache answers once the stream caught up")
            .iter()
            .map(|m| m.message.text.clone())
            .collect();
        assert_eq!(cached, listed, "instance {i}: its cache in the store order");
    }
    for (store, _, _) in instances {
        store.close().await;
    }
}

/// What the lab's app wrote while no simplechat instance ran (strays) is
/// given its position when an instance starts, one majority write each;
/// until then the store's reads listed such a message in the history at
/// its `datetime`, and a walk through the history met it there and again
/// as the newest message (or missed it). Reads now leave a stray out until
/// it has its position. Here each position takes 500 ms, and the walk
/// runs while the three strays wait for theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_while_strays_get_their_positions_meets_each_message_once() {
    use mongodb::bson::{doc, oid::ObjectId, DateTime};

    let test = "a_walk_while_strays_get_their_positions_meets_each_message_once";
    let cluster = sim_for(test, Duration::from_millis(500)).await;
    let lab = cluster.lab_messages("strays").await;
    let day = |d: i64| DateTime::from_millis(1_577_836_800_000 + d * 86_400_000);
    // The lab's history, from 2020: ObjectIds of that time.
    for d in 1..=3_u8 {
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&1_577_836_800_u32.to_be_bytes());
        bytes[11] = d;
        lab.insert_one(doc! { "_id": ObjectId::from_bytes(bytes), "name": "lab",
        "text": format!("history {d}"), "datetime": day(i64::from(d)) })
            .write_concern(lab_write_concern())
            .await
            .expect("lab history");
    }
    first_message_then_stop(&cluster, "strays").await;
    // While no instance runs, the lab's app writes three messages, with
    // datetimes older than the whole history (a clock, or a time zone).
    let mut last_stray = String::new();
    for i in 1..=3 {
        let id = ObjectId::new();
        lab.insert_one(doc! { "_id": id, "name": "lab",
        "text": format!("while down {i}"), "datetime": day(-400 + i) })
            .write_concern(lab_write_concern())
            .await
            .expect("lab insert while down");
        last_stray = id.to_hex();
    }

    let cache = Cache::new();
    let mut events = cache.subscribe();
    let uri = cluster.uri("strays");
    let store = open_writable(
        &cluster,
        &uri,
        "strays",
        Duration::from_secs(30),
        cache.clone(),
    )
    .await;
    // The last stray gets its position a second or more from now. Until
    // then it is not found by its id either: paging from its place at its
    // `datetime` would replay the history it will come after.
    assert_eq!(store.get(&last_stray).await.expect("get"), None);
    for cursor in [
        Cursor::After(last_stray.clone()),
        Cursor::Before(last_stray.clone()),
    ] {
        assert!(
            matches!(store.list(cursor, 10).await, Err(StoreError::UnknownId(_))),
            "paging from a stray without its position"
        );
    }
    let mut walk = Vec::new();
    let mut page = store.list(Cursor::Latest, 2).await.expect("latest");
    while let Some(oldest) = page.first().cloned() {
        walk.splice(0..0, page.iter().map(|m| m.text.clone()));
        page = store
            .list(Cursor::Before(oldest.id), 2)
            .await
            .expect("page");
    }
    let history = ["history 1", "history 2", "history 3", "simplechat 1"];
    let strays = ["while down 1", "while down 2", "while down 3"];
    assert!(walk.len() >= history.len(), "{walk:?}");
    assert_eq!(
        walk[..history.len()],
        history,
        "the history first: {walk:?}"
    );
    let after: Vec<&str> = walk[history.len()..].iter().map(String::as_str).collect();
    assert!(
        strays.starts_with(&after),
        "then only strays with their position, oldest first: {walk:?}"
    );

    // A post with a waiting stray's id and content is answered once the
    // stray has its position, as the message a GET then finds.
    let repeat = NewMessage::validate("lab", "while down 3", Some(&last_stray)).expect("valid");
    let repeated = store.insert(repeat).await;
    assert!(
        matches!(&repeated, Ok(Inserted::Existing(m)) if m.text == "while down 3"),
        "{repeated:?}"
    );
    assert!(store.get(&last_stray).await.expect("get").is_some());

    // Once positioned, each is published, and is the newest.
    assert_eq!(next_texts(&mut events, strays.len()).await, strays);
    assert_eq!(
        latest_texts(&store, 100).await,
        [&history[..], &strays[..]].concat()
    );
    let found = store.get(&last_stray).await.expect("get");
    assert_eq!(found.map(|m| m.text).as_deref(), Some("while down 3"));
    let older = store
        .list(Cursor::Before(last_stray.clone()), 100)
        .await
        .expect("before the last stray");
    let older: Vec<String> = older.into_iter().map(|m| m.text).collect();
    assert_eq!(older, [&history[..], &strays[..2]].concat());
    let newer = store.list(Cursor::After(last_stray), 100).await;
    assert!(newer.expect("after the last stray").is_empty());
    store.close().await;
}

/// More strays than the cache holds: each is published as it is given its
/// position, the cache keeps the newest 1,000, and then the stream brings
/// each one's update. The updates of those the cache had let go were
/// published again, and each of those pushed out another, so subscribers
/// got every stray twice. Now each is published once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_strays_than_the_cache_holds_are_each_published_once() {
    use mongodb::bson::{doc, oid::ObjectId, DateTime};
    const STRAYS: usize = 1100;

    let test = "more_strays_than_the_cache_holds_are_each_published_once";
    let cluster = TestCluster::start(test).await;
    first_message_then_stop(&cluster, "many").await;
    let docs = (0..STRAYS)
        .map(|i| {
            doc! { "_id": ObjectId::new(), "name": "lab", "text": format!("while down {i}"),
            "datetime": DateTime::now() }
        })
        .collect();
    insert_lab_docs(&cluster, "many", docs).await;

    let cache = Cache::new();
    let mut events = cache.subscribe();
    // Counted as they come: the broadcast keeps only so many.
    let counter = tokio::spawn(async move {
        let mut seen = std::collections::HashMap::<String, usize>::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
                Ok(Ok(event)) => *seen.entry(event.message.text.clone()).or_default() += 1,
                Ok(Err(e)) => panic!("the counter fell behind: {e}"),
                // Quiet for 5 s: every update has come through.
                Err(_) => return seen,
            }
        }
    });
    let store = open_ready(&cluster, "many", Duration::from_secs(30), cache.clone()).await;
    wait_until_running(&store, Duration::from_secs(60)).await;
    let seen = counter.await.expect("counter");
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} published more than once, e.g. {:?}",
        twice.len(),
        twice.first()
    );
    assert_eq!(seen.len(), STRAYS, "every stray published");
    store.close().await;
}

/// A document of the lab's within about 200 bytes of 16 MiB makes an
/// insert event larger than mongod sends (`BSONObjectTooLarge`), so no
/// stream can be resumed past it. The simulator delivered such events; it
/// now fails them as mongod does, and this shows live updates going on:
/// the store drops its resume token on that error and starts afresh,
/// reading what it missed, so the document itself (shown cut) and what
/// came after it reach subscribers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_too_large_for_its_insert_event_does_not_stop_live_updates() {
    use mongodb::bson::{doc, oid::ObjectId, DateTime};

    let test = "a_document_too_large_for_its_insert_event_does_not_stop_live_updates";
    let cluster = sim_for(test, Duration::ZERO).await;
    let cache = Cache::new();
    let store = open_ready(&cluster, "large", Duration::from_secs(30), cache.clone()).await;
    store
        .insert(message("sc1", "simplechat 1"))
        .await
        .expect("insert");
    let mut events = cache.subscribe();
    // A while after simplechat's first message.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let lab = cluster.lab_messages("large").await;
    let huge = "x".repeat(16 * 1024 * 1024 - 200);
    lab.insert_one(doc! { "_id": ObjectId::new(), "name": "lab", "text": &huge,
    "datetime": DateTime::now() })
        .await
        .expect("a document just under 16 MiB");
    drop(huge);
    lab.insert_one(
        doc! { "_id": ObjectId::new(), "name": "lab", "text": "after it",
        "datetime": DateTime::now() },
    )
    .await
    .expect("lab insert");
    let delivered = next_texts(&mut events, 2).await;
    assert!(
        delivered[0].ends_with("[cut: the message has 16777016 characters]"),
        "{}",
        &delivered[0][delivered[0].len() - 60..]
    );
    assert_eq!(delivered[1], "after it");
    wait_until_running(&store, Duration::from_secs(30)).await;
    store.close().await;
}

/// The texts of the latest `limit` messages, oldest first.
async fn latest_texts(store: &MongoStore, limit: usize) -> Vec<String> {
    store
        .list(Cursor::Latest, limit)
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.text)
        .collect()
}

/// The texts of the next `n` messages the cache publishes.
async fn next_texts(
    events: &mut tokio::sync::broadcast::Receiver<Arc<simplechat::cache::CachedMessage>>,
    n: usize,
) -> Vec<String> {
    let mut texts = Vec::new();
    while texts.len() < n {
        let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .expect("a message reaches the cache in time")
            .expect("cache open");
        texts.push(event.message.text.clone());
    }
    texts
}

/// An instance stores simplechat's first message ("simplechat 1") in `db`
/// and stops; this returns a second later, so that what the lab's app
/// writes next is made after that message's second (a stray, not history).
async fn first_message_then_stop(cluster: &TestCluster, db: &str) {
    let first = open_ready(cluster, db, Duration::from_secs(30), Cache::new()).await;
    first
        .insert(message("sc1", "simplechat 1"))
        .await
        .expect("insert");
    first.close().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

/// The simulator, for a test only it can run, its majority
/// acknowledgements taking `lag` (none: `Duration::ZERO`).
async fn sim_for(test: &str, lag: Duration) -> TestCluster {
    sim_only(test);
    let mut options = fast_sim(true);
    options.secondary_lag = lag;
    TestCluster::start_sim(options).await
}

/// The write concern the lab's app wrote with: it waits for no majority.
fn lab_write_concern() -> mongodb::options::WriteConcern {
    use mongodb::options::{Acknowledgment, WriteConcern};
    WriteConcern::builder().w(Acknowledgment::Nodes(1)).build()
}

/// Inserts lab documents (`{_id: ObjectId, name, text, datetime}`, as the
/// lab's app wrote them) into `db.messages`; returns that collection.
async fn insert_lab_docs(
    cluster: &TestCluster,
    db: &str,
    docs: Vec<mongodb::bson::Document>,
) -> mongodb::Collection<mongodb::bson::Document> {
    let lab = cluster.lab_messages(db).await;
    for chunk in docs.chunks(1000) {
        lab.insert_many(chunk.to_vec()).await.expect("lab inserts");
    }
    lab
}

async fn wait_until_running(store: &MongoStore, within: Duration) {
    wait_for_feed(store, true, within).await;
}

/// Waits until the store's change stream is running, or not, as `running` says.
async fn wait_for_feed(store: &MongoStore, running: bool, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let feed = store.status().await.mongodb.expect("mongodb").change_stream;
        if feed.running == running {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the change stream never became running={running}: {feed:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A history denser than the change stream's clock margin (more than the
/// cache holds within 5 s: a script that filled the lab's collection, or a
/// busy minute): the change stream still starts, the history is not sent to
/// subscribers as news, and a new message reaches them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dense_history_neither_stalls_the_change_stream_nor_becomes_news() {
    use mongodb::bson::{doc, oid::ObjectId, DateTime};
    let test = "a_dense_history_neither_stalls_the_change_stream_nor_becomes_news";
    let cluster = TestCluster::start(test).await;
    let base = 1_700_000_000_000_i64;
    let docs = (0..2500_i64)
        .map(|i| {
            doc! { "_id": ObjectId::new(), "name": "lab", "text": format!("lab {i}"),
            "datetime": DateTime::from_millis(base + i) }
        })
        .collect();
    let lab = insert_lab_docs(&cluster, "dense", docs).await;
    let cache = Cache::new();
    let mut events = cache.subscribe();
    let store = open_ready(&cluster, "dense", Duration::from_secs(30), cache.clone()).await;

    let late = ObjectId::new();
    lab.insert_one(doc! { "_id": late, "name": "lab", "text": "late",
    "datetime": DateTime::from_millis(base + 10_000) })
        .await
        .expect("lab insert while running");
    let first = tokio::time::timeout(Duration::from_secs(30), events.recv())
        .await
        .expect("the new message reaches subscribers")
        .expect("cache open");
    assert_eq!(
        first.message.text, "late",
        "the first news is the new message, not the history"
    );
    let latest = store.list(Cursor::Latest, 3).await.expect("list");
    let texts: Vec<_> = latest.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["lab 2498", "lab 2499", "late"]);
    store.close().await;
}

/// Documents that are no messages, in a run longer than a page: every
/// page but the last is full, and walking the history either way returns
/// every message once (an empty or short page would end a client's walk,
/// and an SSE replay, early).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_stay_full_across_documents_that_are_skipped() {
    use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime};
    let test = "pages_stay_full_across_documents_that_are_skipped";
    let cluster = TestCluster::start(test).await;
    let at = |i: i64| DateTime::from_millis(1_700_000_000_000 + i * 60_000);
    let mut docs = Vec::new();
    for i in 0..30_i64 {
        docs.push(doc! { "_id": ObjectId::new(), "name": "lab", "text": format!("m{i:02}"), "datetime": at(i * 100) });
        if i == 14 {
            // Between m14 and m15: what the lab's app let through, or
            // someone's experiments in the shell.
            for j in 0..25_i64 {
                let odd = match j % 5 {
                    0 => {
                        doc! { "_id": ObjectId::new(), "name": Bson::Null, "text": "null name", "datetime": at(i * 100 + 1 + j) }
                    }
                    1 => {
                        doc! { "_id": ObjectId::new(), "name": 7, "text": "number name", "datetime": at(i * 100 + 1 + j) }
                    }
                    2 => {
                        doc! { "_id": ObjectId::new(), "text": "no name", "datetime": at(i * 100 + 1 + j) }
                    }
                    3 => {
                        doc! { "_id": ObjectId::new(), "name": "x", "text": Bson::Null, "datetime": at(i * 100 + 1 + j) }
                    }
                    _ => {
                        doc! { "_id": format!("bad id {j}"), "name": "x", "text": "y", "datetime": at(i * 100 + 1 + j) }
                    }
                };
                docs.push(odd);
            }
        }
    }
    // Documents whose order keys have other types: a string datetime, none
    // at all, a numeric `_id`, a `position` that is no timestamp.
    docs.push(
        doc! { "_id": ObjectId::new(), "name": "x", "text": "s", "datetime": "2019-11-02 17:08" },
    );
    docs.push(doc! { "_id": ObjectId::new(), "name": "x", "text": "s" });
    docs.push(doc! { "_id": 42, "name": "x", "text": "s", "datetime": at(1) });
    docs.push(
        doc! { "_id": ObjectId::new(), "name": "x", "text": "s", "datetime": at(2), "position": 5 },
    );
    insert_lab_docs(&cluster, "skipped", docs).await;
    let store = open_ready(&cluster, "skipped", Duration::from_secs(30), Cache::new()).await;
    let expected: Vec<String> = (0..30).map(|i| format!("m{i:02}")).collect();
    let texts = |ms: &[simplechat::message::Message]| -> Vec<String> {
        ms.iter().map(|m| m.text.clone()).collect()
    };

    let mut backwards: Vec<String> = Vec::new();
    let mut page = store.list(Cursor::Latest, 10).await.expect("latest");
    loop {
        assert!(
            page.len() == 10 || backwards.len() + page.len() == expected.len(),
            "a short page before the end: {:?} after {backwards:?}",
            texts(&page)
        );
        backwards.splice(0..0, texts(&page));
        let Some(first) = page.first() else { break };
        page = store
            .list(Cursor::Before(first.id.clone()), 10)
            .await
            .expect("before");
    }
    assert_eq!(backwards, expected, "backwards");

    let oldest = store.list(Cursor::Latest, 1000).await.expect("all")[0].clone();
    let mut forwards = vec![oldest.text.clone()];
    let mut page = store
        .list(Cursor::After(oldest.id), 10)
        .await
        .expect("after");
    loop {
        assert!(
            page.len() == 10 || forwards.len() + page.len() == expected.len(),
            "a short page before the end: {:?} after {forwards:?}",
            texts(&page)
        );
        forwards.extend(texts(&page));
        let Some(last) = page.last() else { break };
        page = store
            .list(Cursor::After(last.id.clone()), 10)
            .await
            .expect("after");
    }
    assert_eq!(forwards, expected, "forwards");

    let skipped = store
        .status()
        .await
        .mongodb
        .expect("mongodb")
        .skipped_documents;
    let total: u64 = skipped.values().sum();
    assert_eq!(
        total, 29,
        "every skipped document counted once: {skipped:?}"
    );
    store.close().await;
}

/// A date BSON holds but RFC 3339 cannot write (after 9999, before year 0:
/// `new Date(8.64e15)` in the shell) is a document simplechat cannot show:
/// skipped and counted like any other, never an error for the listing or
/// the change stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datetime_beyond_rfc_3339_is_skipped_not_an_error() {
    use mongodb::bson::{doc, oid::ObjectId, DateTime};
    let test = "a_datetime_beyond_rfc_3339_is_skipped_not_an_error";
    let cluster = TestCluster::start(test).await;
    let docs = vec![
        doc! { "_id": ObjectId::new(), "name": "lab", "text": "ok", "datetime": DateTime::from_millis(1_700_000_000_000) },
        doc! { "_id": ObjectId::new(), "name": "lab", "text": "year 10000", "datetime": DateTime::from_millis(253_402_300_800_000) },
        doc! { "_id": ObjectId::new(), "name": "lab", "text": "max", "datetime": DateTime::MAX },
        doc! { "_id": ObjectId::new(), "name": "lab", "text": "year -1", "datetime": DateTime::from_millis(-62_198_755_200_000) },
    ];
    insert_lab_docs(&cluster, "fardates", docs).await;
    let store = open_ready(&cluster, "fardates", Duration::from_secs(30), Cache::new()).await;
    let listed = store.list(Cursor::Latest, 100).await.expect("the listing");
    let texts: Vec<_> = listed.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["ok"]);
    wait_until_running(&store, Duration::from_secs(10)).await;
    let skipped = store
        .status()
        .await
        .mongodb
        .expect("mongodb")
        .skipped_documents;
    assert_eq!(skipped.get("datetime"), Some(&3), "{skipped:?}");
    store.close().await;
}

/// The change stream's resume point left the oplog while the set was away
/// (`ChangeStreamHistoryLost`): the store opens a fresh stream and reads what
/// was stored meanwhile, so nothing is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_catches_up_when_its_resume_point_left_the_oplog() {
    let test = "the_feed_catches_up_when_its_resume_point_left_the_oplog";
    let cluster = sim_for(test, Duration::ZERO).await;
    let sim = cluster.sim().expect("simulator");
    let live = Cache::new();
    let store = open_ready(&cluster, "lost", Duration::from_secs(60), live.clone()).await;
    // The feed must be following the set before it goes away, with a
    // resume point to lose. Until the cache's first load, the post's own
    // echo is all `h1` proves, and a first load that runs late (a slow
    // machine) reads `h2` as history, which is not sent to the cache's
    // subscribers (the event stream catches its clients up from the store
    // instead).
    wait_until_running(&store, Duration::from_secs(30)).await;
    let mut events = live.subscribe();
    store.insert(message("h1", "before")).await.expect("insert");
    wait_for_event(&mut events, "h1").await;

    for member in 0..3 {
        cluster.kill(member).await;
    }
    sim.truncate_history();
    for member in 0..3 {
        cluster.restart(member).await;
    }
    let other = open_ready(&cluster, "lost", Duration::from_secs(60), Cache::new()).await;
    other
        .insert(message("h2", "while the feed was away"))
        .await
        .expect("insert through another instance");
    wait_for_event(&mut events, "h2").await;
    wait_until_running(&store, Duration::from_secs(30)).await;
    let listed: Vec<_> = store
        .list(Cursor::Latest, 10)
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(listed, ["h1", "h2"]);
    store.close().await;
    other.close().await;
}

/// The lab's app set no limit on a text: a history of 1000 messages of
/// 200 KB each (or of megabytes) must not take the cache to gigabytes, nor
/// make a listing that large. Each is shown cut to a message's 2,000
/// characters, with a marker; the cache holds the latest 1000 within its
/// byte bound, and listings, paging and the feed answer as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_labs_huge_messages_are_shown_cut_and_the_cache_stays_within_its_bytes() {
    use mongodb::bson::{doc, oid::ObjectId, DateTime};
    use simplechat::cache::{CACHE_CAPACITY, CACHE_MAX_BYTES};
    let test = "the_labs_huge_messages_are_shown_cut_and_the_cache_stays_within_its_bytes";
    let cluster = TestCluster::start(test).await;
    let base = 1_700_000_000_000_i64;
    let big = "x".repeat(200_000);
    let docs = (0..1000_i64)
        .map(|i| {
            doc! { "_id": ObjectId::new(), "name": "lab", "text": format!("{i:04} {big}"),
            "datetime": DateTime::from_millis(base + i * 1000) }
        })
        .collect();
    let lab = insert_lab_docs(&cluster, "huge", docs).await;
    let cache = Cache::new();
    let mut events = cache.subscribe();
    let uri = cluster.uri("huge");
    let store = open_writable(
        &cluster,
        &uri,
        "huge",
        Duration::from_secs(30),
        cache.clone(),
    )
    .await;
    // The first load reads megabytes of documents: on a loaded machine
    // more than a minute (a wait, not a timing under test).
    wait_until_running(&store, Duration::from_secs(180)).await;

    let cut = |text: &str, i: usize| {
        assert_eq!(text.chars().count(), 2000, "cut to a message's length");
        assert!(text.starts_with(&format!("{i:04} xxx")), "{}", &text[..10]);
        assert!(
            text.ends_with("x\u{2026}\n[cut: the message has 200005 characters]"),
            "{}",
            &text[text.len() - 50..]
        );
    };
    assert!(
        cache.held_bytes() <= CACHE_MAX_BYTES,
        "{} bytes",
        cache.held_bytes()
    );
    assert_eq!(cache.held_messages(), CACHE_CAPACITY);
    say(&format!(
        "{test}: the cache holds {} bytes",
        cache.held_bytes()
    ));
    assert!(
        cache.held_bytes() < 7_000_000,
        "1000 ASCII messages take about 6.5 MB: {}",
        cache.held_bytes()
    );
    let latest = cache
        .latest(1000)
        .expect("the cache answers for the latest 1000");
    for (i, m) in latest.iter().enumerate() {
        cut(&m.message.text, i);
        assert!(m.json.len() < 2100 && m.frame.len() < 2200);
    }

    // From the store: paging back, forward, one message.
    let older = store
        .list(Cursor::Before(latest[500].message.id.clone()), 1000)
        .await
        .expect("before");
    assert_eq!(older.len(), 500);
    for (i, m) in older.iter().enumerate() {
        cut(&m.text, i);
    }
    let newer = store
        .list(Cursor::After(latest[0].message.id.clone()), 1000)
        .await
        .expect("after");
    assert_eq!(newer.len(), 999);
    cut(&newer[998].text, 999);
    let one = store
        .get(&latest[7].message.id)
        .await
        .expect("get")
        .expect("found");
    cut(&one.text, 7);

    // A post that repeats what is shown is no retry of the lab's message.
    let shown = &latest[3].message;
    let again = NewMessage::validate("lab", &shown.text, Some(&shown.id)).expect("valid");
    assert!(
        matches!(store.insert(again).await, Err(StoreError::Conflict(_))),
        "the stored text is not the one shown"
    );

    // A new one from the lab's app reaches subscribers cut too, and the
    // cache stays within its bound.
    lab.insert_one(
        doc! { "_id": ObjectId::new(), "name": "lab", "text": format!("1000 {big}"),
        "datetime": DateTime::from_millis(base + 1_000_000) },
    )
    .await
    .expect("lab insert while running");
    let news = tokio::time::timeout(Duration::from_secs(30), events.recv())
        .await
        .expect("the new message reaches subscribers")
        .expect("cache open");
    cut(&news.message.text, 1000);
    assert_eq!(cache.held_messages(), CACHE_CAPACITY);
    assert!(cache.held_bytes() <= CACHE_MAX_BYTES);
    store.close().await;
}

/// More messages than the cache holds, stored within the stream's catch-up
/// margin (5 s), then a fresh stream (its resume point left the oplog): the
/// catch-up reads them all again, and those the cache let go of were
/// published, not held back as if they had come behind the store order,
/// so none is given a new position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_the_cache_read_again_by_a_catch_up_moves_nothing() {
    use mongodb::bson::{doc, DateTime, Timestamp};
    use simplechat::cache::CACHE_CAPACITY;
    let test = "a_burst_larger_than_the_cache_read_again_by_a_catch_up_moves_nothing";
    let cluster = sim_for(test, Duration::ZERO).await;
    let sim = cluster.sim().expect("simulator");
    let live = Cache::new();
    let store = open_ready(&cluster, "burst", Duration::from_secs(60), live.clone()).await;
    let mut events = live.subscribe();
    let burst = CACHE_CAPACITY + 100;
    let docs: Vec<_> = (0..burst)
        .map(|i| {
            doc! { "_id": format!("b{i:04}"), "name": "n", "text": "burst",
            "datetime": DateTime::now(), "position": Timestamp { time: 0, increment: 0 } }
        })
        .collect();
    cluster
        .lab_messages("burst")
        .await
        .insert_many(docs)
        .await
        .expect("the burst");
    let last = format!("b{:04}", burst - 1);
    wait_for_event(&mut events, &last).await;
    let positions = |sim: &replset_sim::Cluster| -> Vec<Timestamp> {
        sim.documents("burst", "messages")
            .iter()
            .map(|d| d.get_timestamp("position").expect("a position"))
            .collect()
    };
    let before = positions(sim);
    let updates = sim.commands_run("update");

    // The stream's next reads fail beyond its one automatic resume, and
    // its resume point has left the oplog: the next stream is a fresh one.
    sim.truncate_history();
    sim.drop_replies("getMore", 2);
    wait_for_feed(&store, false, Duration::from_secs(30)).await;
    wait_until_running(&store, Duration::from_secs(30)).await;
    store
        .insert(message("after", "after"))
        .await
        .expect("insert");
    wait_for_event(&mut events, "after").await;
    assert_eq!(sim.commands_run("update"), updates, "no message was moved");
    assert_eq!(positions(sim)[..burst], before[..]);
    store.close().await;
}

/// The driver resumes a change stream itself after a network error, with an
/// `aggregate` naming the stream's resume token. When that `aggregate` is
/// lost after it was sent (the primary going away as it answers), the
/// driver's retryable-reads retry of it (mongodb 3.9) is built without the
/// token: the stream would open at "now" and skip, without an error, what
/// was stored while it was away. The store's stream has retryable reads
/// off, so such a loss is an error and the store resumes from its own token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_resume_of_the_change_stream_skips_nothing() {
    let test = "a_lost_resume_of_the_change_stream_skips_nothing";
    let cluster = sim_for(test, Duration::ZERO).await;
    let sim = cluster.sim().expect("simulator");
    let live = Cache::new();
    let store = open_ready(&cluster, "resume", Duration::from_secs(60), live.clone()).await;
    let mut events = live.subscribe();
    store.insert(message("r1", "before")).await.expect("insert");
    wait_for_event(&mut events, "r1").await;

    // Stored while the store's stream waits in a getMore that brings
    // nothing (held), by another instance, so only the stream can tell.
    sim.hold_change_streams(true);
    let other = open_ready(&cluster, "resume", Duration::from_secs(60), Cache::new()).await;
    other
        .insert(message("r2", "while the stream was held"))
        .await
        .expect("insert through another instance");
    other.close().await;
    // The stream's getMore fails with the primary; the driver's resume
    // `aggregate` runs and its reply is lost.
    sim.drop_replies("aggregate", 1);
    let primary = cluster.primary().await.expect("a primary");
    cluster.kill(primary).await;
    cluster
        .wait_for_primary(Duration::from_secs(30))
        .await
        .expect("a new primary");
    sim.hold_change_streams(false);
    wait_for_event(&mut events, "r2").await;
    cluster.restart(primary).await;
    store.close().await;
}
