//! Raw wire-protocol checks, below the driver: exact retry semantics with a
//! hand-picked lsid/txnNumber, the legacy handshake, and error codes.

use bson::{doc, spec::BinarySubtype, Binary, Bson, DateTime, Document};
use replset_sim::{Cluster, ClusterOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Raw {
    sock: TcpStream,
    next_id: i32,
}

impl Raw {
    async fn connect(host: &str) -> Raw {
        Raw {
            sock: TcpStream::connect(host).await.unwrap(),
            next_id: 1,
        }
    }

    async fn send(&mut self, op_code: i32, payload: &[u8]) -> (i32, Vec<u8>) {
        self.next_id += 1;
        let mut msg = Vec::new();
        msg.extend_from_slice(&((16 + payload.len()) as i32).to_le_bytes());
        msg.extend_from_slice(&self.next_id.to_le_bytes());
        msg.extend_from_slice(&0i32.to_le_bytes());
        msg.extend_from_slice(&op_code.to_le_bytes());
        msg.extend_from_slice(payload);
        self.sock.write_all(&msg).await.unwrap();
        let mut header = [0u8; 16];
        self.sock.read_exact(&mut header).await.unwrap();
        let len = i32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
        let response_to = i32::from_le_bytes(header[8..12].try_into().unwrap());
        assert_eq!(response_to, self.next_id);
        let op = i32::from_le_bytes(header[12..16].try_into().unwrap());
        let mut body = vec![0u8; len - 16];
        self.sock.read_exact(&mut body).await.unwrap();
        (op, body)
    }

    /// OP_MSG with one body section (and optionally a document sequence).
    async fn command(&mut self, body: Document, seq: Option<(&str, Vec<Document>)>) -> Document {
        let mut payload = 0u32.to_le_bytes().to_vec();
        payload.push(0);
        body.to_writer(&mut payload).unwrap();
        if let Some((ident, docs)) = seq {
            let mut section = Vec::new();
            section.extend_from_slice(ident.as_bytes());
            section.push(0);
            for d in docs {
                d.to_writer(&mut section).unwrap();
            }
            payload.push(1);
            payload.extend_from_slice(&((section.len() + 4) as i32).to_le_bytes());
            payload.extend_from_slice(&section);
        }
        let (op, reply) = self.send(2013, &payload).await;
        assert_eq!(op, 2013);
        assert_eq!(reply[4], 0, "body section first");
        Document::from_reader(&reply[5..]).unwrap()
    }
}

fn lsid() -> Document {
    doc! {"id": Binary {subtype: BinarySubtype::Uuid, bytes: vec![7u8; 16]}}
}

#[tokio::test]
async fn retried_insert_with_same_lsid_and_txn_number_applies_once() {
    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    let mut raw = Raw::connect(&cluster.hosts()[0]).await;
    let insert = |txn: i64| {
        doc! {
            "insert": "messages", "$db": "chat", "ordered": true,
            "lsid": lsid(), "txnNumber": txn,
            "writeConcern": {"w": "majority", "j": true},
        }
    };
    let docs = || Some(("documents", vec![doc! {"_id": "m1", "text": "hi"}]));

    let first = raw.command(insert(5), docs()).await;
    assert_eq!(first.get_i32("n"), Ok(1), "{first}");
    assert!(first.get("retriedStmtIds").is_none());
    let again = raw.command(insert(5), docs()).await;
    assert_eq!(again.get_i32("n"), Ok(1), "{again}");
    assert!(again.get("writeErrors").is_none(), "{again}");
    assert_eq!(
        again.get_array("retriedStmtIds").unwrap(),
        &vec![Bson::Int32(0)]
    );
    assert_eq!(cluster.documents("chat", "messages").len(), 1);

    // A new txnNumber is a new write: now it is a duplicate key.
    let dup = raw.command(insert(6), docs()).await;
    assert_eq!(dup.get_i32("n"), Ok(0));
    let we = dup.get_array("writeErrors").unwrap()[0]
        .as_document()
        .unwrap();
    assert_eq!(we.get_i32("code"), Ok(11000));
    assert!(we
        .get_str("errmsg")
        .unwrap()
        .starts_with("E11000 duplicate key error"));

    // An older txnNumber on the same session is refused.
    let old = raw.command(insert(4), docs()).await;
    assert_eq!(old.get_i32("code"), Ok(225), "{old}");

    // The same retry reaches a new primary after failover: the session
    // table is replicated like mongod's config.transactions.
    cluster.kill(0).await;
    let p = cluster
        .wait_for_primary(std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let mut raw = Raw::connect(&cluster.hosts()[p]).await;
    let retried = raw.command(insert(6), docs()).await;
    assert_eq!(
        retried.get_array("writeErrors").unwrap()[0]
            .as_document()
            .unwrap()
            .get_i32("code"),
        Ok(11000),
        "a failed statement is re-executed on retry, as in mongod"
    );
    let mut raw_secondary = Raw::connect(&cluster.hosts()[3 - p]).await;
    let refused = raw_secondary.command(insert(7), docs()).await;
    assert_eq!(refused.get_i32("code"), Ok(10107));
    assert_eq!(refused.get_str("codeName"), Ok("NotWritablePrimary"));
    assert_eq!(
        refused.get_array("errorLabels").unwrap(),
        &vec![Bson::String("RetryableWriteError".into())]
    );
    assert!(refused.get_document("topologyVersion").is_ok());
}

#[tokio::test]
async fn legacy_op_query_handshake_is_answered_with_op_reply() {
    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    let mut raw = Raw::connect(&cluster.hosts()[1]).await;
    let mut payload = 0i32.to_le_bytes().to_vec();
    payload.extend_from_slice(b"admin.$cmd\0");
    payload.extend_from_slice(&0i32.to_le_bytes());
    payload.extend_from_slice(&(-1i32).to_le_bytes());
    doc! {"isMaster": 1, "helloOk": true}
        .to_writer(&mut payload)
        .unwrap();
    let (op, reply) = raw.send(2004, &payload).await;
    assert_eq!(op, 1);
    assert_eq!(i32::from_le_bytes(reply[16..20].try_into().unwrap()), 1);
    let d = Document::from_reader(&reply[20..]).unwrap();
    assert_eq!(d.get_bool("ismaster"), Ok(false));
    assert_eq!(d.get_bool("secondary"), Ok(true));
    assert_eq!(d.get_bool("helloOk"), Ok(true));
    assert_eq!(d.get_str("setName"), Ok("rs"));
    assert_eq!(d.get_i32("maxWireVersion"), Ok(25));
    assert_eq!(d.get_str("primary").unwrap(), cluster.hosts()[0]);
}

#[tokio::test]
async fn queries_and_errors_have_mongod_shapes() {
    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    let mut raw = Raw::connect(&cluster.hosts()[0]).await;
    let t = |ms: i64| DateTime::from_millis(1_700_000_000_000 + ms);
    let docs: Vec<Document> = (0..5)
        .map(|i| doc! {"_id": format!("id{i}"), "name": "n", "text": "t", "datetime": t(i / 2)})
        .collect();
    let r = raw
        .command(
            doc! {"insert": "messages", "$db": "chat"},
            Some(("documents", docs)),
        )
        .await;
    assert_eq!(r.get_i32("n"), Ok(5));

    let idx = doc! {"createIndexes": "messages", "$db": "chat",
    "indexes": [{"key": {"datetime": 1, "_id": 1}, "name": "datetime_1__id_1"}]};
    let r = raw.command(idx.clone(), None).await;
    assert_eq!(r.get_i32("numIndexesAfter"), Ok(2), "{r}");
    let r = raw.command(idx, None).await;
    assert_eq!(r.get_str("note"), Ok("all indexes already exist"));

    // Keyset page backwards from (t(1), "id3"), newest first.
    let r = raw
        .command(
            doc! {"find": "messages", "$db": "chat",
                "filter": {"$or": [{"datetime": {"$lt": t(1)}}, {"datetime": t(1), "_id": {"$lt": "id3"}}]},
                "sort": {"datetime": -1, "_id": -1}, "limit": 2,
                "$readPreference": {"mode": "primaryPreferred"}},
            None,
        )
        .await;
    let batch = r
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap();
    let ids: Vec<&str> = batch
        .iter()
        .map(|d| d.as_document().unwrap().get_str("_id").unwrap())
        .collect();
    assert_eq!(ids, ["id2", "id1"]);
    assert_eq!(r.get_document("cursor").unwrap().get_i64("id"), Ok(0));

    // Small batches leave a cursor; getMore drains it.
    let r = raw
        .command(
            doc! {"find": "messages", "$db": "chat", "sort": {"_id": 1}, "batchSize": 2},
            None,
        )
        .await;
    let id = r.get_document("cursor").unwrap().get_i64("id").unwrap();
    assert_ne!(id, 0);
    let r = raw
        .command(
            doc! {"getMore": id, "collection": "messages", "$db": "chat"},
            None,
        )
        .await;
    let c = r.get_document("cursor").unwrap();
    assert_eq!(c.get_array("nextBatch").unwrap().len(), 3);
    assert_eq!(c.get_i64("id"), Ok(0));
    let r = raw
        .command(
            doc! {"getMore": id, "collection": "messages", "$db": "chat"},
            None,
        )
        .await;
    assert_eq!(r.get_i32("code"), Ok(43));

    let r = raw
        .command(
            doc! {"find": "messages", "$db": "chat", "filter": {"text": {"$regex": "t"}}},
            None,
        )
        .await;
    assert_eq!(r.get_i32("code"), Ok(2), "{r}");
    let r = raw
        .command(doc! {"mapReduce": "messages", "$db": "chat"}, None)
        .await;
    assert_eq!(r.get_i32("code"), Ok(59));
    assert_eq!(r.get_str("errmsg"), Ok("no such command: 'mapReduce'"));

    // Secondaries refuse reads without secondaryOk.
    let mut sec = Raw::connect(&cluster.hosts()[1]).await;
    let r = sec
        .command(doc! {"find": "messages", "$db": "chat"}, None)
        .await;
    assert_eq!(r.get_i32("code"), Ok(13435));
    let r = sec
        .command(
            doc! {"find": "messages", "$db": "chat", "$readPreference": {"mode": "secondaryPreferred"}},
            None,
        )
        .await;
    assert_eq!(
        r.get_document("cursor")
            .unwrap()
            .get_array("firstBatch")
            .unwrap()
            .len(),
        5
    );
    for key in ["$clusterTime", "operationTime"] {
        assert!(r.contains_key(key), "replica set replies gossip {key}");
    }
}

#[tokio::test]
async fn collections_can_be_created_listed_and_dropped() {
    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    let mut raw = Raw::connect(&cluster.hosts()[0]).await;
    let r = raw
        .command(doc! {"create": "messages", "$db": "chat"}, None)
        .await;
    assert_eq!(r.get_f64("ok"), Ok(1.0), "{r}");
    let r = raw
        .command(doc! {"create": "messages", "$db": "chat"}, None)
        .await;
    assert_eq!(r.get_i32("code"), Ok(48));
    let r = raw
        .command(
            doc! {"listCollections": 1, "$db": "chat", "nameOnly": true, "cursor": {}},
            None,
        )
        .await;
    let names = r
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap();
    assert_eq!(names.len(), 1);
    raw.command(
        doc! {"insert": "messages", "$db": "chat"},
        Some(("documents", vec![doc! {"_id": 1}])),
    )
    .await;
    let r = raw
        .command(doc! {"drop": "messages", "$db": "chat"}, None)
        .await;
    assert_eq!(r.get_f64("ok"), Ok(1.0));
    assert!(cluster.documents("chat", "messages").is_empty());
    let r = raw
        .command(
            doc! {"listIndexes": "messages", "$db": "chat", "cursor": {}},
            None,
        )
        .await;
    assert_eq!(r.get_i32("code"), Ok(26));
    let r = raw
        .command(doc! {"dropDatabase": 1, "$db": "chat"}, None)
        .await;
    assert_eq!(r.get_str("dropped"), Ok("chat"));
}

/// `dropIndexes` as mongod documents it
/// (<https://www.mongodb.com/docs/manual/reference/command/dropIndexes/>):
/// by name, by key pattern, a list of names (all or none), `"*"` for every
/// index but `_id`'s; the `_id` index and an unknown index are refused with
/// mongod's codes, changing nothing. Before, it was `no such command`.
#[tokio::test]
async fn indexes_are_dropped_as_mongod_drops_them() {
    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    let mut raw = Raw::connect(&cluster.hosts()[0]).await;
    let names = async |raw: &mut Raw| -> Vec<String> {
        let r = raw
            .command(
                doc! {"listIndexes": "messages", "$db": "chat", "cursor": {}},
                None,
            )
            .await;
        r.get_document("cursor")
            .and_then(|c| c.get_array("firstBatch"))
            .map(|b| {
                b.iter()
                    .filter_map(|d| d.as_document()?.get_str("name").ok().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let drop = |index: Bson| doc! {"dropIndexes": "messages", "$db": "chat", "index": index};

    let r = raw.command(drop("a_1".into()), None).await;
    assert_eq!(r.get_i32("code"), Ok(26), "no collection: {r}");
    let r = raw
        .command(
            doc! {"createIndexes": "messages", "$db": "chat", "indexes": [
                {"key": {"a": 1}, "name": "a_1"},
                {"key": {"b": -1, "c": 1}, "name": "b_-1_c_1"},
                {"key": {"d": 1}, "name": "d_1"},
                {"key": {"e": 1}, "name": "e_1"},
            ]},
            None,
        )
        .await;
    assert_eq!(r.get_i32("numIndexesAfter"), Ok(5), "{r}");

    for (index, code, code_name) in [
        (Bson::from("_id_"), 72, "InvalidOptions"),
        (Bson::from(doc! {"_id": 1}), 72, "InvalidOptions"),
        (Bson::from("nope_1"), 27, "IndexNotFound"),
        (Bson::from(doc! {"b": 1, "c": 1}), 27, "IndexNotFound"),
        (
            Bson::from(vec![Bson::from("a_1"), "nope_1".into()]),
            27,
            "IndexNotFound",
        ),
        (
            Bson::from(vec![Bson::from("a_1"), 1.into()]),
            14,
            "TypeMismatch",
        ),
        (Bson::from(7), 14, "TypeMismatch"),
    ] {
        let r = raw.command(drop(index.clone()), None).await;
        assert_eq!(r.get_i32("code"), Ok(code), "{index}: {r}");
        assert_eq!(r.get_str("codeName"), Ok(code_name), "{index}: {r}");
    }
    let r = raw
        .command(doc! {"dropIndexes": "messages", "$db": "chat"}, None)
        .await;
    assert_eq!(r.get_i32("code"), Ok(40414), "no index field: {r}");
    assert_eq!(
        names(&mut raw).await,
        ["_id_", "a_1", "b_-1_c_1", "d_1", "e_1"],
        "a refused drop drops nothing"
    );

    let r = raw.command(drop("a_1".into()), None).await;
    assert_eq!(r.get_i32("nIndexesWas"), Ok(5), "{r}");
    // A key pattern matches whatever number type its directions have.
    let r = raw
        .command(drop(doc! {"b": -1.0, "c": 1_i64}.into()), None)
        .await;
    assert_eq!(r.get_i32("nIndexesWas"), Ok(4), "{r}");
    assert_eq!(names(&mut raw).await, ["_id_", "d_1", "e_1"]);
    let r = raw
        .command(drop(vec![Bson::from("d_1")].into()), None)
        .await;
    assert_eq!(r.get_i32("nIndexesWas"), Ok(3), "{r}");
    let r = raw.command(drop("*".into()), None).await;
    assert_eq!(r.get_i32("nIndexesWas"), Ok(2), "{r}");
    assert_eq!(
        r.get_str("msg"),
        Ok("non-_id indexes dropped for collection")
    );
    assert_eq!(names(&mut raw).await, ["_id_"]);

    let mut secondary = Raw::connect(&cluster.hosts()[1]).await;
    let r = secondary.command(drop("*".into()), None).await;
    assert_eq!(r.get_i32("code"), Ok(10107), "only the primary drops: {r}");
}

/// A `find` or `getMore` batch stops before the document that would take
/// it past 16 MiB, as mongod's does, whatever `batchSize` says: a batch of
/// large documents must still fit a reply.
#[tokio::test]
async fn batches_stop_at_16_mib() {
    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    let mut raw = Raw::connect(&cluster.hosts()[0]).await;
    let big = "x".repeat(7 * 1024 * 1024);
    for i in 0..3 {
        let stored = raw
            .command(
                doc! { "insert": "big", "$db": "chat" },
                Some(("documents", vec![doc! { "_id": i, "text": &big }])),
            )
            .await;
        assert_eq!(stored.get_i32("n"), Ok(1), "{stored}");
    }
    let found = raw
        .command(
            doc! { "find": "big", "$db": "chat", "sort": { "_id": 1 }, "batchSize": 10 },
            None,
        )
        .await;
    let cursor = found.get_document("cursor").unwrap();
    let first = cursor.get_array("firstBatch").unwrap();
    assert_eq!(first.len(), 2, "two of 7 MiB fit, three do not");
    let id = cursor.get_i64("id").unwrap();
    assert_ne!(id, 0);
    let more = raw
        .command(
            doc! { "getMore": id, "collection": "big", "$db": "chat" },
            None,
        )
        .await;
    let cursor = more.get_document("cursor").unwrap();
    assert_eq!(cursor.get_array("nextBatch").unwrap().len(), 1);
    assert_eq!(cursor.get_i64("id"), Ok(0));
}

/// `Cluster::hold_next`: a find held before it runs reads what was written
/// while it waited; an insert held before its reply is committed (another
/// connection reads it) while its client still waits. Commands the hold
/// does not match, and those of other names, go on.
#[tokio::test]
async fn held_commands_wait_until_released() {
    use replset_sim::HoldPoint;
    use std::time::Duration;

    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    let host = cluster.hosts()[0].clone();
    let find =
        |limit: i32| doc! { "find": "messages", "$db": "chat", "filter": {}, "limit": limit };
    let ids = |reply: &Document| -> Vec<String> {
        reply
            .get_document("cursor")
            .and_then(|c| c.get_array("firstBatch"))
            .map(|b| {
                b.iter()
                    .filter_map(|d| d.as_document()?.get_str("_id").ok().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let until_held = |command: &'static str| {
        let cluster = &cluster;
        async move {
            for _ in 0..2000 {
                if cluster.held(command) > 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            panic!("no {command} was held");
        }
    };

    cluster.hold_next("find", HoldPoint::BeforeRunning, |cmd| {
        cmd.get_i32("limit") == Ok(10)
    });
    let held_find = tokio::spawn({
        let host = host.clone();
        let body = find(10);
        async move { Raw::connect(&host).await.command(body, None).await }
    });
    until_held("find").await;
    let mut raw = Raw::connect(&host).await;
    assert!(
        ids(&raw.command(find(5), None).await).is_empty(),
        "not held"
    );

    cluster.hold_next("insert", HoldPoint::BeforeReplying, |_| true);
    let held_insert = tokio::spawn({
        let host = host.clone();
        async move {
            Raw::connect(&host)
                .await
                .command(
                    doc! { "insert": "messages", "$db": "chat" },
                    Some(("documents", vec![doc! {"_id": "m1"}])),
                )
                .await
        }
    });
    until_held("insert").await;
    assert_eq!(ids(&raw.command(find(5), None).await), ["m1"], "committed");
    assert!(!held_insert.is_finished(), "its reply waits");

    cluster.release("find");
    assert_eq!(ids(&held_find.await.unwrap()), ["m1"], "ran once released");
    assert!(!held_insert.is_finished(), "released by name");
    cluster.release("insert");
    assert_eq!(held_insert.await.unwrap().get_i32("n"), Ok(1));
    assert_eq!(cluster.held("insert"), 0);
}

/// A vanished member (a machine powered off) closes nothing and answers
/// nothing: a connection opened before gets no reply, a new one is accepted
/// and gets none either, and neither is closed until the member restarts.
#[tokio::test]
async fn a_vanished_member_answers_nothing_and_closes_nothing_until_it_restarts() {
    use std::time::Duration;

    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    let host = cluster.hosts()[0].clone();
    let ping = doc! { "ping": 1, "$db": "admin" };
    let mut before = Raw::connect(&host).await;
    assert_eq!(
        before.command(ping.clone(), None).await.get_f64("ok"),
        Ok(1.0)
    );

    cluster.vanish(0);
    assert!(cluster.is_silent(0));
    assert_eq!(cluster.member_state(0), "DOWN");
    let mut after = Raw::connect(&host).await;
    for raw in [&mut before, &mut after] {
        let asked =
            tokio::time::timeout(Duration::from_millis(500), raw.command(ping.clone(), None));
        assert!(asked.await.is_err(), "no reply, no error");
    }

    cluster.restart(0).await.unwrap();
    assert!(!cluster.is_silent(0));
    for raw in [&mut before, &mut after] {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), raw.sock.read(&mut byte))
            .await
            .expect("closed at the restart");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    let mut again = Raw::connect(&host).await;
    assert_eq!(again.command(ping, None).await.get_f64("ok"), Ok(1.0));
}
