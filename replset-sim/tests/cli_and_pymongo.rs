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
/// `$currentDate: {$type: "timestamp"}` sets a timestamp.
#[test]
fn pymongo_sees_mongods_documented_behaviour() {
    if !pymongo_available() {
        assert!(
            std::env::var_os("SIMPLECHAT_REQUIRE_PYMONGO").is_none(),
            "SIMPLECHAT_REQUIRE_PYMONGO is set but python3 cannot import pymongo"
        );
        eprintln!("SKIPPED: pymongo_sees_mongods_documented_behaviour, because python3 cannot import pymongo (pip install pymongo)");
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
print("ok")
"#;
    let out = Command::new("python3")
        .args(["-c", script, &uri])
        .output()
        .expect("run python3");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
