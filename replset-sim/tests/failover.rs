//! The driver against the simulator: elections, retryable writes and change
//! streams across failover.

use std::time::{Duration, Instant};

use futures::StreamExt;
use mongodb::bson::{doc, Document};
use mongodb::options::{ReadPreference, SelectionCriteria, WriteConcern};
use mongodb::{Client, Collection};
use replset_sim::{Cluster, ClusterOptions};

async fn connect(uri: &str) -> Client {
    let sep = if uri.contains('?') { '&' } else { '?' };
    let uri = format!("{uri}{sep}serverSelectionTimeoutMS=10000");
    Client::with_uri_str(&uri).await.expect("client")
}

fn messages(client: &Client) -> Collection<Document> {
    client
        .database("chat")
        .collection::<Document>("messages")
        .clone_with_type()
}

fn majority() -> WriteConcern {
    let mut wc = WriteConcern::majority();
    wc.journal = Some(true);
    wc
}

/// Polls `probe` until it returns `true`, panicking with `what` once
/// `timeout` has passed. The one way these tests wait: for a condition they
/// observe, never for a fixed time.
async fn poll_until<F, Fut>(what: &str, timeout: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if probe().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not observed within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `_id`s a client reads from `chat.messages`, in `_id` order.
async fn ids(client: &Client) -> Vec<String> {
    messages(client)
        .find(doc! {})
        .sort(doc! {"_id": 1})
        .await
        .unwrap()
        .map(|d| d.unwrap().get_str("_id").unwrap().to_string())
        .collect()
        .await
}

fn code(err: &mongodb::error::Error) -> Option<i32> {
    match *err.kind {
        mongodb::error::ErrorKind::Command(ref c) => Some(c.code),
        mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(ref e)) => {
            Some(e.code)
        }
        _ => None,
    }
}

#[tokio::test]
async fn killing_the_primary_elects_another_and_writes_continue() {
    let cluster = Cluster::start(ClusterOptions {
        election_delay: Duration::from_millis(300),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = connect(&cluster.uri("chat")).await;
    let coll = messages(&client);
    coll.insert_one(doc! {"_id": "before", "text": "1"})
        .write_concern(majority())
        .await
        .unwrap();

    let started = Instant::now();
    cluster.kill(0).await;
    assert_eq!(cluster.member_state(0), "DOWN");
    assert_eq!(cluster.primary(), None);

    // The driver waits in server selection until the election, then writes.
    coll.insert_one(doc! {"_id": "after", "text": "2"})
        .write_concern(majority())
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    let new_primary = cluster.primary().expect("elected");
    assert_ne!(new_primary, 0);
    assert_eq!(cluster.term(), 2);

    let hello = client
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await
        .unwrap();
    assert_eq!(hello.get_str("me").unwrap(), cluster.hosts()[new_primary]);

    // Acknowledged majority writes survive, and the old primary rejoins as a
    // secondary with the whole log.
    cluster.restart(0).await.unwrap();
    assert_eq!(cluster.member_state(0), "SECONDARY");
    let direct = connect(&cluster.direct_uri(0)).await;
    assert_eq!(ids(&direct).await, ["after", "before"]);
}

#[tokio::test]
async fn step_down_and_partition_move_the_primary() {
    let cluster = Cluster::start(ClusterOptions {
        election_delay: Duration::from_millis(100),
        ..Default::default()
    })
    .await
    .unwrap();
    cluster.step_down().await;
    assert_eq!(cluster.member_state(0), "SECONDARY");
    let p = cluster
        .wait_for_primary(Duration::from_secs(5))
        .await
        .unwrap();
    assert_ne!(
        p, 0,
        "a stepped-down primary is not re-elected while others can be"
    );

    cluster.partition(p, true).await;
    assert!(cluster.is_partitioned(p));
    let q = cluster
        .wait_for_primary(Duration::from_secs(5))
        .await
        .unwrap();
    assert_ne!(q, p);

    let client = connect(&cluster.uri("chat")).await;
    messages(&client)
        .insert_one(doc! {"_id": "x"})
        .write_concern(majority())
        .await
        .unwrap();

    // Losing a second member leaves no majority: the primary steps down.
    let other = (0..3).find(|m| *m != p && *m != q).unwrap();
    cluster.kill(other).await;
    assert_eq!(cluster.primary(), None);
    // The loss armed an election; once its timer has run, a primary would be
    // there by now if one could be elected.
    assert!(
        cluster.election_pending(),
        "losing the primary arms an election"
    );
    poll_until("the election timer ran", Duration::from_secs(5), || async {
        !cluster.election_pending()
    })
    .await;
    assert_eq!(cluster.primary(), None, "no election without a majority");

    cluster.partition(p, false).await;
    assert!(cluster
        .wait_for_primary(Duration::from_secs(5))
        .await
        .is_some());
    assert_eq!(cluster.documents("chat", "messages").len(), 1);
}

#[tokio::test]
async fn a_retried_insert_is_not_applied_twice() {
    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    let client = connect(&cluster.uri("chat")).await;
    let coll = messages(&client);
    // The first attempt commits, but its reply is lost; the driver retries
    // with the same lsid and txnNumber and must get the first outcome.
    cluster.drop_replies("insert", 1);
    coll.insert_one(doc! {"_id": "once", "text": "hi"})
        .write_concern(majority())
        .await
        .expect("the retry reports success, not a duplicate key");
    assert_eq!(cluster.documents("chat", "messages").len(), 1);

    // Without a session-level retry the same _id is a duplicate key.
    let err = coll
        .insert_one(doc! {"_id": "once", "text": "again"})
        .await
        .unwrap_err();
    match *err.kind {
        mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(ref e)) => {
            assert_eq!(e.code, 11000)
        }
        ref other => panic!("expected a duplicate key error, got {other:?}"),
    }
    assert_eq!(cluster.documents("chat", "messages").len(), 1);
}

#[tokio::test]
async fn writes_to_a_secondary_are_refused_with_mongod_labels() {
    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    let direct = connect(&cluster.direct_uri(1)).await;
    let err = messages(&direct)
        .insert_one(doc! {"_id": "nope"})
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(10107), "{err:?}");
    assert!(err.contains_label("RetryableWriteError"), "{err:?}");

    // The driver reads from a directly connected secondary (it sends
    // primaryPreferred), as mongod allows.
    messages(&direct).find_one(doc! {}).await.unwrap();
}

/// Consumes a change stream the way a live-update task does: always polling,
/// forwarding document ids.
fn consume(
    mut stream: mongodb::change_stream::ChangeStream<
        mongodb::change_stream::event::ChangeStreamEvent<Document>,
    >,
) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(ev) = stream.next().await {
            let ev = ev.expect("change stream error");
            assert!(ev.full_document.is_some());
            let id = ev.document_key.unwrap().get_str("_id").unwrap().to_string();
            if tx.send(id).is_err() {
                return;
            }
        }
    });
    rx
}

async fn recv(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("event in time")
        .expect("stream alive")
}

#[tokio::test]
async fn a_change_stream_resumes_across_failover_without_loss_or_repeats() {
    let cluster = Cluster::start(ClusterOptions {
        election_delay: Duration::from_millis(200),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = connect(&cluster.uri("chat")).await;
    let coll = messages(&client);
    coll.insert_one(doc! {"_id": "old"}).await.unwrap();

    let stream = coll
        .watch()
        .pipeline([doc! {"$match": {"operationType": "insert"}}])
        .max_await_time(Duration::from_secs(5))
        .selection_criteria(SelectionCriteria::ReadPreference(
            ReadPreference::PrimaryPreferred {
                options: Default::default(),
            },
        ))
        .await
        .unwrap();
    let mut rx = consume(stream);

    let insert = |i: usize| {
        let coll = coll.clone();
        async move {
            coll.insert_one(doc! {"_id": format!("m{i}")})
                .write_concern(majority())
                .await
                .unwrap();
        }
    };
    let mut seen = Vec::new();
    for i in 0..3 {
        insert(i).await;
        seen.push(recv(&mut rx).await);
    }
    // Kill the member serving the stream while the consumer's next getMore
    // is waiting there: the driver sees a network error and resumes after
    // m3 on whichever member it selects next.
    insert(3).await;
    seen.push(recv(&mut rx).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let primary = cluster.primary().unwrap();
    cluster.kill(primary).await;
    for i in 4..7 {
        insert(i).await;
    }
    while seen.len() < 7 {
        seen.push(recv(&mut rx).await);
    }
    let expected: Vec<String> = (0..7).map(|i| format!("m{i}")).collect();
    assert_eq!(seen, expected);
    assert_ne!(cluster.primary(), Some(primary));
    // Nothing is delivered twice: the stream is in log order, so a repeat of
    // m0..m6 would arrive before a later write does. That write comes next.
    insert(7).await;
    assert_eq!(recv(&mut rx).await, "m7", "nothing is delivered twice");
}

/// A held change stream delivers nothing, whatever is written; released,
/// it delivers what it was held back from, in order, once. Writes go on
/// meanwhile, and cancelled reply drops drop nothing more.
#[tokio::test]
async fn a_held_change_stream_delivers_what_it_missed_once_released() {
    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    let client = connect(&cluster.uri("chat")).await;
    let coll = messages(&client);
    let stream = coll
        .watch()
        .max_await_time(Duration::from_millis(100))
        .await
        .unwrap();
    let mut rx = consume(stream);
    coll.insert_one(doc! {"_id": "before"}).await.unwrap();
    assert_eq!(recv(&mut rx).await, "before");

    cluster.hold_change_streams(true);
    cluster.drop_replies("insert", 100);
    cluster.drop_replies("insert", 0);
    for id in ["held1", "held2"] {
        coll.insert_one(doc! {"_id": id})
            .write_concern(majority())
            .await
            .expect("writes are not held, and no reply is dropped");
    }
    // Several empty getMores go by.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rx.try_recv().is_err(), "nothing delivered while held");

    cluster.hold_change_streams(false);
    assert_eq!(recv(&mut rx).await, "held1");
    assert_eq!(recv(&mut rx).await, "held2");
    coll.insert_one(doc! {"_id": "after"}).await.unwrap();
    assert_eq!(recv(&mut rx).await, "after", "nothing delivered twice");
}

#[tokio::test]
async fn secondaries_lag_and_majority_writes_wait_for_them() {
    // Long enough that a write acknowledgement and one read on open
    // connections fit inside it even on a loaded machine.
    let lag = Duration::from_secs(1);
    let cluster = Cluster::start(ClusterOptions {
        secondary_lag: lag,
        ..Default::default()
    })
    .await
    .unwrap();
    let client = connect(&cluster.uri("chat")).await;
    let direct = client_on_secondary(&cluster).await;

    // A majority write is on the secondary once acknowledged; reading it
    // there shows that reads see what the secondary has applied.
    messages(&client)
        .insert_one(doc! {"_id": "w0"})
        .write_concern(majority())
        .await
        .unwrap();
    assert_eq!(ids(&direct).await, ["w0"]);

    let started = Instant::now();
    messages(&client)
        .insert_one(doc! {"_id": "w1"})
        .write_concern(WriteConcern::nodes(1))
        .await
        .unwrap();
    // The w: 1 acknowledgement did not wait for the secondary: the same read
    // still sees w0 but not w1.
    assert_eq!(ids(&direct).await, ["w0"]);
    poll_until("w1 on the secondary", Duration::from_secs(10), || async {
        messages(&direct)
            .find_one(doc! {"_id": "w1"})
            .await
            .unwrap()
            .is_some()
    })
    .await;
    assert!(started.elapsed() >= lag, "w1 reached the secondary early");

    let started = Instant::now();
    messages(&client)
        .insert_one(doc! {"_id": "w2"})
        .write_concern(majority())
        .await
        .unwrap();
    assert!(started.elapsed() >= lag);
    assert!(messages(&direct)
        .find_one(doc! {"_id": "w2"})
        .await
        .unwrap()
        .is_some());
}

async fn client_on_secondary(cluster: &Cluster) -> Client {
    connect(&cluster.direct_uri(1)).await
}
