//! The simulator as a tool, driven as a person would: the binary on chosen
//! ports with the lab's database in its connection string, then pymongo (a
//! client nobody here wrote) writing the way the lab's Flask app did and
//! checking the server behaviour simplechat relies on.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Kills the simulator when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

fn start(args: &[&str]) -> (Running, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_replset-sim"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start replset-sim");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the connection string");
    (Running(child), line.trim().to_owned())
}

fn pymongo_available() -> bool {
    Command::new("python3")
        .args(["-c", "import pymongo"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `test` can run: python3 imports pymongo. When it cannot, says
/// loudly that `test` skipped, and fails where `SIMPLECHAT_REQUIRE_PYMONGO`
/// says it must run.
fn pymongo_or_skip(test: &str) -> bool {
    if pymongo_available() {
        return true;
    }
    assert!(
        std::env::var_os("SIMPLECHAT_REQUIRE_PYMONGO").is_none(),
        "SIMPLECHAT_REQUIRE_PYMONGO is set but python3 cannot import pymongo"
    );
    eprintln!("SKIPPED: {test}, because python3 cannot import pymongo (pip install pymongo)");
    false
}

/// Runs the Python `script` with the connection string `uri` as its
/// argument; it must succeed and print `ok`.
fn run_pymongo(script: &str, uri: &str) {
    let out = Command::new("python3")
        .args(["-c", script, uri])
        .output()
        .expect("run python3");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_binary_serves_the_labs_database_on_the_ports_given() {
    let ports = free_ports(3);
    let list = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let (_sim, uri) = start(&["--ports", &list, "--database", "messages"]);
    let hosts = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(uri, format!("mongodb://{hosts}/messages?replicaSet=rs"));

    let out = Command::new(env!("CARGO_BIN_EXE_replset-sim"))
        .args(["--members", "3", "--ports", "1,2"])
        .output()
        .expect("run");
    assert!(
        !out.status.success(),
        "a port list of the wrong length is refused"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("one port per member"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// pymongo writes as the lab's app did (`insert_one` with a naive
/// `datetime.now()`), then checks, against what mongod documents: an empty
/// top-level timestamp is replaced by a non-zero, increasing cluster time
/// (bson-types#timestamps), `$type` selects by BSON type, and
/// `$currentDate: {$type: "timestamp"}` sets a timestamp, one of its own
/// for each document of an `update_many` (each its own change event); an
/// update that changes nothing is not counted as modified and makes no
/// event; one that would take a document past 16 MiB is refused.
#[test]
fn pymongo_sees_mongods_documented_behaviour() {
    if !pymongo_or_skip("pymongo_sees_mongods_documented_behaviour") {
        return;
    }
    let (_sim, uri) = start(&["--database", "messages"]);
    let script = r#"
import sys, datetime
from bson import Timestamp
from pymongo import MongoClient
db = MongoClient(sys.argv[1], serverSelectionTimeoutMS=10000).get_default_database()
coll = db.messages
# The lab's app: {name, text, datetime} with a naive local datetime.
lab_id = coll.insert_one({"name": "lab", "text": "hi", "datetime": datetime.datetime.now()}).inserted_id
a = coll.insert_one({"_id": "a", "name": "n", "text": "t", "position": Timestamp(0, 0)}).inserted_id
b = coll.insert_one({"_id": "b", "name": "n", "text": "t", "position": Timestamp(0, 0)}).inserted_id
pa = coll.find_one({"_id": "a"})["position"]
pb = coll.find_one({"_id": "b"})["position"]
assert pa.time > 0 and (pa.time, pa.inc) < (pb.time, pb.inc), (pa, pb)
assert [d["_id"] for d in coll.find({"_id": {"$type": "objectId"}})] == [lab_id]
assert sorted(d["_id"] for d in coll.find({"_id": {"$type": "string"}})) == ["a", "b"]
assert coll.find_one({"_id": lab_id}).get("position") is None
coll.update_one({"_id": lab_id, "position": None}, {"$currentDate": {"position": {"$type": "timestamp"}}})
pl = coll.find_one({"_id": lab_id})["position"]
assert isinstance(pl, Timestamp) and (pl.time, pl.inc) > (pb.time, pb.inc), pl
# Only where it is still missing: a second update changes nothing.
r = coll.update_one({"_id": lab_id, "position": None}, {"$currentDate": {"position": {"$type": "timestamp"}}})
assert r.matched_count == 0 and coll.find_one({"_id": lab_id})["position"] == pl
# update_many: each document its own cluster time and its own change event.
with coll.watch([{"$match": {"operationType": "update"}}]) as stream:
    burst = coll.insert_many([{"name": "lab", "text": str(i), "datetime": datetime.datetime.now()} for i in range(3)]).inserted_ids
    r = coll.update_many({"_id": {"$in": burst}, "position": None}, {"$currentDate": {"position": {"$type": "timestamp"}}})
    assert r.matched_count == 3 and r.modified_count == 3, r.raw_result
    stamps = [coll.find_one({"_id": i})["position"] for i in burst]
    assert len(set((t.time, t.inc) for t in stamps)) == 3 and min((t.time, t.inc) for t in stamps) > (pl.time, pl.inc), stamps
    events = [stream.next()["documentKey"]["_id"] for _ in range(3)]
    assert sorted(events) == sorted(burst), events
    # An update that changes nothing is matched, not modified, and no event.
    r = coll.update_one({"_id": burst[0]}, {"$set": {"name": "lab"}})
    assert r.matched_count == 1 and r.modified_count == 0, r.raw_result
    coll.update_one({"_id": burst[1]}, {"$set": {"name": "changed"}})
    assert stream.next()["documentKey"]["_id"] == burst[1]
# A document the update would take past 16 MiB: refused (17419), unchanged.
from pymongo.errors import WriteError
import bson
doc = {"_id": bson.ObjectId(), "name": "lab", "text": "", "datetime": datetime.datetime.now()}
doc["text"] = "x" * (16 * 1024 * 1024 - len(bson.encode(doc)) - 10)
assert len(bson.encode(doc)) == 16 * 1024 * 1024 - 10
big = coll.insert_one(doc).inserted_id
try:
    coll.update_one({"_id": big}, {"$currentDate": {"position": {"$type": "timestamp"}}})
    raise AssertionError("a 16 MiB document grew")
except WriteError as e:
    assert e.code == 17419, e.details
assert coll.find_one({"_id": big}, {"position": 1}).get("position") is None
print("ok")
"#;
    run_pymongo(script, &uri);
}

/// pymongo deletes as an operator cleaning up the lab's collection would
/// (`delete_one`, `delete_many`), and sees what mongod documents: `n` is
/// how many went, each deleted document is its own `delete` change event
/// with only its `documentKey` (no pre-image), a filter that matches
/// nothing deletes nothing and makes no event, and reads no longer find
/// what was deleted
/// (<https://www.mongodb.com/docs/manual/reference/change-events/delete/>).
#[test]
fn pymongo_deletes_as_mongod_documents() {
    if !pymongo_or_skip("pymongo_deletes_as_mongod_documents") {
        return;
    }
    let (_sim, uri) = start(&["--database", "messages"]);
    let script = r#"
import sys, datetime
from pymongo import MongoClient
db = MongoClient(sys.argv[1], serverSelectionTimeoutMS=10000).get_default_database()
coll = db.messages
ids = coll.insert_many([{"name": "lab", "text": t, "datetime": datetime.datetime.now()} for t in ["spam", "spam", "ham", "spam"]]).inserted_ids
with coll.watch([{"$match": {"operationType": "delete"}}]) as stream:
    r = coll.delete_one({"_id": ids[2]})
    assert r.deleted_count == 1, r.raw_result
    event = stream.next()
    assert event["operationType"] == "delete" and event["documentKey"] == {"_id": ids[2]}, event
    assert "fullDocument" not in event, event
    assert coll.find_one({"_id": ids[2]}) is None
    r = coll.delete_one({"_id": ids[2]})
    assert r.deleted_count == 0, r.raw_result
    r = coll.delete_many({"text": "spam"})
    assert r.deleted_count == 3, r.raw_result
    keys = sorted(stream.next()["documentKey"]["_id"] for _ in range(3))
    assert keys == sorted([ids[0], ids[1], ids[3]]), keys
    assert stream.try_next() is None
assert coll.count_documents({}) == 0
print("ok")
"#;
    run_pymongo(script, &uri);
}

/// A string that is not UTF-8 is stored as sent: mongod checks what it
/// receives for BSON structure only, not for UTF-8 (`validateBSON`'s
/// default mode, `src/mongo/bson/bson_validate.h`; only the `validate`
/// command's `checkBSONConformance` checks UTF-8). pymongo writes raw BSON
/// holding one (as the lab's app could, from a Python 2 `str`), and gets
/// the same bytes back from `find`, from a `getMore`, and in the change
/// event's `fullDocument`. The simulator used to close the connection on
/// such a document, so no read of it could fail as it fails on mongod.
#[test]
fn a_string_that_is_not_utf8_is_stored_and_returned_byte_for_byte() {
    if !pymongo_or_skip("a_string_that_is_not_utf8_is_stored_and_returned_byte_for_byte") {
        return;
    }
    let (_sim, uri) = start(&["--database", "messages"]);
    let script = r#"
import sys, datetime
import bson
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
db = MongoClient(sys.argv[1], serverSelectionTimeoutMS=10000).get_default_database()
raw = db.messages.with_options(codec_options=CodecOptions(document_class=RawBSONDocument))

def latin1(field):
    # Four bytes of Latin-1 where UTF-8 was due, in place of four ASCII ones.
    d = {"_id": bson.ObjectId(), "name": "lab", "text": "ok", "datetime": datetime.datetime(2024, 5, 1)}
    d[field] = {"list": ["XXXX"]} if field == "extra" else "XXXX"
    return d["_id"], RawBSONDocument(bson.encode(d).replace(b"XXXX", b"caf\xe9", 1))

sent = [latin1(f) for f in ["text", "name", "extra", "text"]]
with raw.watch([{"$match": {"operationType": "insert"}}]) as stream:
    for _, d in sent:
        raw.insert_one(d)
    events = [stream.next() for _ in sent]
assert [e["fullDocument"].raw for e in events] == [d.raw for _, d in sent], events
# find, and getMore in batches of one: every document whole, as sent.
got = list(raw.find({}, batch_size=1).sort("_id", 1))
assert [d.raw for d in got] == [d.raw for _, d in sent], got
assert raw.find_one({"_id": sent[0][0]}).raw == sent[0][1].raw
# What a strict decoder makes of it: an error, not a document.
try:
    db.messages.find_one({"_id": sent[0][0]})
    raise AssertionError("a strict decoder read invalid UTF-8")
except bson.errors.InvalidBSON:
    pass
print("ok")
"#;
    run_pymongo(script, &uri);
}

/// pymongo drops indexes as an operator tidying them would, and gets what
/// mongod documents for `dropIndexes`
/// (<https://www.mongodb.com/docs/manual/reference/command/dropIndexes/>):
/// `drop_index` by name or by key spec, `drop_indexes` for all but `_id`'s;
/// the `_id` index refused with `InvalidOptions` (72), an unknown one with
/// `IndexNotFound` (27), and a list naming one unknown index drops none.
/// pymongo's own `drop_index` takes a missing collection (26) as done.
#[test]
fn pymongo_drops_indexes_as_mongod_documents() {
    if !pymongo_or_skip("pymongo_drops_indexes_as_mongod_documents") {
        return;
    }
    let (_sim, uri) = start(&["--database", "messages"]);
    let script = r#"
import sys
from pymongo import MongoClient, ASCENDING, DESCENDING
from pymongo.errors import OperationFailure
db = MongoClient(sys.argv[1], serverSelectionTimeoutMS=10000).get_default_database()
coll = db.messages
coll.drop_index("position_1")  # no collection yet: pymongo allows NamespaceNotFound
coll.insert_one({"_id": "a", "name": "n", "text": "t"})
order = coll.create_index([("position", ASCENDING), ("datetime", ASCENDING), ("_id", ASCENDING)])
assert order == "position_1_datetime_1__id_1", order
coll.create_index("name")
coll.create_index([("text", DESCENDING)])
def names():
    return sorted(coll.index_information())
assert names() == ["_id_", "name_1", order, "text_-1"], names()

def refused(code, name, *args, **kwargs):
    try:
        db.command(*args, **kwargs)
    except OperationFailure as e:
        assert e.code == code and e.details["codeName"] == name, e.details
        return
    raise AssertionError(f"not refused: {args} {kwargs}")

for index in ["_id_", {"_id": 1}]:
    refused(72, "InvalidOptions", "dropIndexes", "messages", index=index)
for index in ["nope_1", {"nope": 1}, ["name_1", "nope_1"]]:
    refused(27, "IndexNotFound", "dropIndexes", "messages", index=index)
try:
    coll.drop_index("_id_")
    raise AssertionError("the _id index was dropped")
except OperationFailure as e:
    assert e.code == 72, e.details
assert names() == ["_id_", "name_1", order, "text_-1"], names()

coll.drop_index([("text", DESCENDING)])
coll.drop_index(order)
assert names() == ["_id_", "name_1"], names()
coll.drop_indexes()
assert names() == ["_id_"], names()
assert coll.find_one({"_id": "a"})["name"] == "n"
print("ok")
"#;
    run_pymongo(script, &uri);
}
