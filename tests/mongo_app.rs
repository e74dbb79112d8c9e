//! The whole app on a replica set: two instances sharing one live feed, and
//! the failover the deployment is built for.

#[path = "support/cluster.rs"]
mod cluster;
mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, Bson, Document};
use serde_json::json;
use tokio::sync::mpsc;

use cluster::{say, TestCluster};
use replset_sim::HoldPoint;
use support::app::{spawn_app, TestApp};

async fn start_app(cluster: &TestCluster, db: &str, write_timeout_secs: u64) -> TestApp {
    start_app_with(cluster, db, write_timeout_secs, &[]).await
}

/// [`start_app`] with more settings.
async fn start_app_with(
    cluster: &TestCluster,
    db: &str,
    write_timeout_secs: u64,
    extra: &[(&str, serde_json::Value)],
) -> TestApp {
    let mut settings = vec![
        ("mongodb_uri", json!(cluster.uri(db))),
        ("write_timeout_secs", json!(write_timeout_secs)),
    ];
    settings.extend(extra.iter().cloned());
    let app = spawn_app(&settings).await;
    let deadline = Instant::now() + cluster.election_time();
    loop {
        let response = app.get("/readyz").await;
        if response.status() == 200 {
            return app;
        }
        assert!(
            Instant::now() < deadline,
            "never ready: {}",
            response.text().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The ids of the `message` events an SSE subscriber receives.
struct Subscriber {
    /// What it asked for (path and query), for the failure messages.
    path: String,
    ids: mpsc::UnboundedReceiver<String>,
    received: HashSet<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Connects and waits for the server's first comment, so the
    /// subscription exists before anything is posted.
    async fn connect(app: &TestApp) -> Subscriber {
        Subscriber::connect_to(app, "/api/events").await
    }

    /// Connects to `path` (for example `/api/events?after=<id>`, which
    /// replays what came after that message first).
    async fn connect_to(app: &TestApp, path: &str) -> Subscriber {
        Subscriber::reading(app.get(path).await).await
    }

    /// Reads the event stream `response` opened, once its first comment
    /// came.
    async fn reading(response: reqwest::Response) -> Subscriber {
        assert_eq!(response.status(), 200);
        let url = response.url();
        let path = format!(
            "{}{}",
            url.path(),
            url.query().map_or(String::new(), |q| format!("?{q}"))
        );
        let (tx, ids) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut body = response.bytes_stream();
            let mut buffer = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let frame: String = buffer.drain(..end + 2).collect();
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                    let is_message = frame.lines().any(|l| l == "event: message");
                    let id = frame.lines().find_map(|l| l.strip_prefix("id: "));
                    if let (true, Some(id)) = (is_message, id) {
                        let _ = tx.send(id.to_owned());
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("the event stream starts")
            .expect("subscriber running");
        Subscriber {
            path,
            ids,
            received: HashSet::new(),
            task,
        }
    }

    /// The next `n` ids, in the order they arrive.
    async fn next_ids(&mut self, n: usize, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut ids = Vec::new();
        while ids.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.ids.recv()).await {
                Ok(Some(id)) => ids.push(id),
                _ => panic!(
                    "the subscriber of {} received only {ids:?} of {n} messages",
                    self.path
                ),
            }
        }
        ids
    }

    /// The ids that have arrived and were not taken yet.
    fn arrived(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.ids.try_recv().ok()).collect()
    }

    /// Waits until every id in `want` has arrived.
    async fn wait_for(&mut self, want: &[String], within: Duration) {
        let deadline = Instant::now() + within;
        while !want.iter().all(|id| self.received.contains(id)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.ids.recv()).await {
                Ok(Some(id)) => {
                    self.received.insert(id);
                }
                _ => {
                    let missing: Vec<_> = want
                        .iter()
                        .filter(|id| !self.received.contains(*id))
                        .collect();
                    panic!("the subscriber never received {missing:?}");
                }
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn stored_ids(app: &TestApp) -> HashSet<String> {
    let list = app.get_json("/api/messages?limit=1000").await;
    list.as_array()
        .expect("array")
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_posted_to_one_instance_reaches_subscribers_of_the_other() {
    let cluster =
        TestCluster::start("a_message_posted_to_one_instance_reaches_subscribers_of_the_other")
            .await;
    let a = start_app(&cluster, "twoapps", 20).await;
    let b = start_app(&cluster, "twoapps", 20).await;
    let mut on_b = Subscriber::connect(&b).await;
    let mut on_a = Subscriber::connect(&a).await;

    let posted = a.post_message("ann", "hello from a").await;
    let id = posted["id"].as_str().expect("id").to_owned();
    on_b.wait_for(std::slice::from_ref(&id), Duration::from_secs(20))
        .await;
    on_a.wait_for(std::slice::from_ref(&id), Duration::from_secs(20))
        .await;

    let back = b.post_message("bob", "hello from b").await;
    let back_id = back["id"].as_str().expect("id").to_owned();
    on_a.wait_for(std::slice::from_ref(&back_id), Duration::from_secs(20))
        .await;
    // Each message once, in both instances' listings.
    for app in [&a, &b] {
        let ids = stored_ids(app).await;
        assert!(ids.contains(&id) && ids.contains(&back_id), "{ids:?}");
    }
    let status = b.get_json("/api/status").await;
    assert_eq!(status["store"], "mongodb");
    assert!(
        status["change_stream"]["last_delivered"].is_string(),
        "{status}"
    );
    assert_eq!(
        status["replica_set"]["members"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// The server's log says when the primary is lost and which member is
/// primary after the election: an operator reading it learns when posts
/// stopped and went on, not only that some were answered 503. Before, an
/// election left no line at all. The served binary, its standard error
/// read line by line; the primary gets SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_says_when_the_primary_is_lost_and_who_is_elected() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let test = "the_log_says_when_the_primary_is_lost_and_who_is_elected";
    let cluster = TestCluster::start(test).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let data = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_simplechat"))
        .arg("serve")
        .current_dir(data.path())
        .env_clear()
        .env("SIMPLECHAT_MONGODB_URI", cluster.uri("primarylog"))
        .env("SIMPLECHAT_PORT", port.to_string())
        .env("SIMPLECHAT_ADDRESS", "127.0.0.1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("run simplechat serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, mut lines) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut until = async |wanted: &dyn Fn(&str) -> bool, within: Duration| -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, lines.recv()).await {
                Ok(Some(line)) => {
                    seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                _ => panic!("no such line in time; the log so far:\n{}", seen.join("\n")),
            }
        }
    };
    let first = until(
        &|l| l.contains("MongoDB: ") && l.contains(" is the primary of replica set "),
        Duration::from_secs(30),
    )
    .await;
    let primary = cluster.primary().await.expect("a primary");
    let address = cluster.hosts()[primary].clone();
    assert!(first.contains(&address), "{first} names {address}");

    say(&format!("{test}: SIGKILL to member {primary} ({address})"));
    cluster.kill(primary).await;
    let lost = until(
        &|l| l.contains("is no longer the primary"),
        Duration::from_secs(60),
    )
    .await;
    assert!(
        lost.contains(&format!(
            "MongoDB: {address} is no longer the primary, and no member is ("
        )),
        "{lost}"
    );
    let elected = until(
        &|l| l.contains("is the primary now"),
        cluster.election_time() + Duration::from_secs(60),
    )
    .await;
    let now = cluster.primary().await.expect("a new primary");
    assert!(
        elected.contains(&format!(
            "MongoDB: {} is the primary now (was {address}); posts go on",
            cluster.hosts()[now]
        )),
        "{elected}"
    );
    let _ = child.kill();
    let _ = child.wait();
    cluster.restart(primary).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_primary_loses_no_acknowledged_message() {
    let test = "killing_the_primary_loses_no_acknowledged_message";
    let cluster = TestCluster::start(test).await;
    let write_timeout = cluster.election_time();
    let app = start_app(&cluster, "failover", write_timeout.as_secs()).await;
    let other = start_app(&cluster, "failover", write_timeout.as_secs()).await;
    let mut subscriber = Subscriber::connect(&app).await;
    let mut other_subscriber = Subscriber::connect(&other).await;

    let mut acknowledged = Vec::new();
    let mut refused = Vec::new();
    let mut longest = Duration::ZERO;
    let mut killed = None;
    let mut acked_after_kill = 0;
    let started = Instant::now();
    // A writer posting without pause; the primary dies after 20 messages.
    for n in 0..2000 {
        if acked_after_kill >= 20 || started.elapsed() > Duration::from_secs(180) {
            break;
        }
        if n == 20 {
            let primary = cluster.primary().await.expect("a primary");
            say(&format!("{test}: SIGKILL to member {primary}"));
            cluster.kill(primary).await;
            killed = Some(primary);
        }
        let id = format!("w{n:04}");
        let sent = Instant::now();
        let response = app
            .post_json(
                "/api/messages",
                &json!({ "name": "writer", "text": format!("message {n}"), "id": id }),
            )
            .await;
        let took = sent.elapsed();
        longest = longest.max(took);
        match response.status().as_u16() {
            201 | 200 => {
                acknowledged.push(id);
                if killed.is_some() {
                    acked_after_kill += 1;
                }
            }
            503 => {
                assert!(
                    response.headers().contains_key("retry-after"),
                    "503 without Retry-After"
                );
                refused.push(id);
            }
            other => panic!(
                "POST answered {other}: {}",
                response.text().await.unwrap_or_default()
            ),
        }
    }
    say(&format!(
        "{test}: {} acknowledged, {} refused (503), longest write {longest:?}",
        acknowledged.len(),
        refused.len()
    ));
    let killed = killed.expect("the primary was killed");
    assert!(acked_after_kill >= 20, "writes resumed on the new primary");
    assert!(
        longest <= write_timeout + Duration::from_secs(2),
        "a write stalled {longest:?}, longer than the write timeout {write_timeout:?}"
    );
    assert!(
        refused.is_empty(),
        "the election fits in the write timeout: {refused:?}"
    );

    // Every acknowledged message is stored, and both instances' subscribers
    // received each of them.
    let stored = stored_ids(&app).await;
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|id| !stored.contains(*id))
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    subscriber
        .wait_for(&acknowledged, Duration::from_secs(60))
        .await;
    other_subscriber
        .wait_for(&acknowledged, Duration::from_secs(60))
        .await;

    // The old primary comes back as a secondary with the whole history.
    cluster.restart(killed).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let state = cluster.member_state(killed).await;
        if state == "SECONDARY" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "old primary is {state}, not SECONDARY"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let host = cluster.hosts()[killed].clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let on_member = ids_on_member(&host, "failover").await;
        let missing: Vec<_> = acknowledged
            .iter()
            .filter(|id| !on_member.contains(*id))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rejoined member lacks {} messages, e.g. {:?}",
            missing.len(),
            missing.first()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let status = app.get_json("/api/status").await;
    say(&format!("{test}: status after rejoin: {status}"));
    app.shutdown().await;
    other.shutdown().await;
}

/// The message ids one member holds, read from that member alone.
async fn ids_on_member(host: &str, db: &str) -> HashSet<String> {
    let uri = format!("mongodb://{host}/?directConnection=true&serverSelectionTimeoutMS=2000");
    let Ok(client) = mongodb::Client::with_uri_str(&uri).await else {
        return HashSet::new();
    };
    let coll = client.database(db).collection::<Document>("messages");
    let Ok(cursor) = coll.find(doc! {}).await else {
        return HashSet::new();
    };
    let docs: Vec<Document> = cursor.filter_map(|d| async move { d.ok() }).collect().await;
    let ids = docs
        .iter()
        .filter_map(|d| d.get_str("_id").ok().map(str::to_owned))
        .collect();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_starts_without_its_cluster_and_becomes_ready_when_it_appears() {
    let test = "the_app_starts_without_its_cluster_and_becomes_ready_when_it_appears";
    let cluster = TestCluster::start(test).await;
    for member in 0..3 {
        cluster.kill(member).await;
    }
    let app = spawn_app(&[
        ("mongodb_uri", json!(cluster.uri("late"))),
        ("write_timeout_secs", json!(2)),
    ])
    .await;
    assert_eq!(app.get("/healthz").await.status(), 200, "it serves");
    let not_ready = app.get("/readyz").await;
    assert_eq!(not_ready.status(), 503);
    let why: serde_json::Value = not_ready.json().await.expect("JSON");
    assert!(
        why["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{why}"
    );
    let refused = app
        .post_json("/api/messages", &json!({"name": "a", "text": "too early"}))
        .await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));

    for member in 0..3 {
        cluster.restart(member).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while app.get("/readyz").await.status() != 200 {
        assert!(Instant::now() < deadline, "never became ready by itself");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stored = app.post_message("a", "now it works").await;
    let listed = app.get_json("/api/messages").await;
    assert_eq!(listed[0]["id"], stored["id"]);
    app.shutdown().await;
}

/// The lab's app and simplechat side by side on one collection: a message
/// the other app writes (a plain driver insert, the way the lab's Flask app
/// wrote it) reaches simplechat's SSE subscribers and listing as the
/// newest message, and the lab's reading of `name`, `text`, `datetime`
/// still works on what simplechat wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_labs_app_writes_reaches_simplechats_subscribers() {
    let cluster =
        TestCluster::start("a_message_the_labs_app_writes_reaches_simplechats_subscribers").await;
    let app = start_app(&cluster, "messages", 20).await;
    // Side by side: simplechat is running, its change stream too (ready
    // means it can write; the stream may start a moment later).
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    let mut subscriber = Subscriber::connect(&app).await;
    let ours = app.post_message("ann", "from simplechat").await;

    let lab = cluster.lab_messages("messages").await;
    // A naive local time from a clock far behind: it must not decide the order.
    let lab_id = mongodb::bson::oid::ObjectId::new();
    lab.insert_one(doc! {
        "_id": lab_id,
        "name": "lab",
        "text": "from the lab's app",
        "datetime": mongodb::bson::DateTime::from_millis(1_000_000_000_000),
    })
    .await
    .expect("the lab's insert");
    subscriber
        .wait_for(&[lab_id.to_hex()], Duration::from_secs(10))
        .await;
    let listed = app.get_json("/api/messages?limit=2").await;
    let texts: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert_eq!(texts, ["from simplechat", "from the lab's app"]);
    let one = app
        .get_json(&format!("/api/messages/{}", lab_id.to_hex()))
        .await;
    assert_eq!(one["name"], "lab", "{one}");

    // What the lab's GET /api/messages read: name, text, datetime.
    let id = ours["id"].as_str().expect("id").to_owned();
    let stored = lab
        .find_one(doc! { "_id": &id })
        .await
        .expect("find")
        .expect("simplechat's document");
    assert_eq!(stored.get_str("name").unwrap(), "ann");
    assert_eq!(stored.get_str("text").unwrap(), "from simplechat");
    assert!(stored.get_datetime("datetime").is_ok(), "{stored}");
    app.shutdown().await;
}

/// A clock up to a second behind the newest message's time gives a new
/// message that time, whoever stored the newest (README): another
/// instance, or the lab's app, whose clock is a little ahead. The MongoDB
/// store followed only its own last stamp, so a post right after the
/// lab's message was stamped before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_right_after_a_message_stamped_a_little_ahead_takes_its_time() {
    let cluster =
        TestCluster::start("a_post_right_after_a_message_stamped_a_little_ahead_takes_its_time")
            .await;
    let app = start_app(&cluster, "messages", 20).await;
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    let mut subscriber = Subscriber::connect(&app).await;
    let lab = cluster.lab_messages("messages").await;
    let lab_id = mongodb::bson::oid::ObjectId::new();
    let sent = Instant::now();
    let ahead = mongodb::bson::DateTime::now().timestamp_millis() + 950;
    lab.insert_one(doc! {
        "_id": lab_id,
        "name": "lab",
        "text": "from a clock a little ahead",
        "datetime": mongodb::bson::DateTime::from_millis(ahead),
    })
    .await
    .expect("the lab's insert");
    subscriber
        .wait_for(&[lab_id.to_hex()], Duration::from_secs(10))
        .await;
    let ours = app.post_message("ann", "right after it").await;
    let stamped = time::OffsetDateTime::parse(
        ours["datetime"].as_str().expect("datetime"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339");
    let stamped = i64::try_from(stamped.unix_timestamp_nanos() / 1_000_000).unwrap();
    if sent.elapsed() < Duration::from_millis(900) {
        assert_eq!(stamped, ahead, "stamped with the newest message's time");
    } else {
        // Too slow a machine to tell: the clock has caught up since.
        assert!(stamped >= ahead, "{stamped} before {ahead}");
    }
    app.shutdown().await;
}

/// An ObjectId made at `secs` since the epoch, as a driver on a machine
/// whose clock said so would make it.
fn object_id_at(secs: u32) -> mongodb::bson::oid::ObjectId {
    let mut bytes = [7u8; 12];
    bytes[..4].copy_from_slice(&secs.to_be_bytes());
    mongodb::bson::oid::ObjectId::from_bytes(bytes)
}

/// Waits until the instance's change stream has caught up (`/api/status`).
async fn wait_for_change_stream(app: &TestApp, within: Duration) {
    let deadline = Instant::now() + within;
    while app.get_json("/api/status").await["change_stream"]["running"] != true {
        assert!(Instant::now() < deadline, "the change stream never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The lab's app wrote while no simplechat instance ran (all stopped for
/// an upgrade, say): that message is news, not history, so once
/// simplechat is back it is the newest message, in the listing and to a
/// subscriber that replays from simplechat's last message, whatever its
/// naive `datetime` says. The lab's history from before simplechat's first
/// message stays where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_labs_app_wrote_while_simplechat_was_down_is_the_newest() {
    let cluster =
        TestCluster::start("a_message_the_labs_app_wrote_while_simplechat_was_down_is_the_newest")
            .await;
    let lab = cluster.lab_messages("messages").await;
    let history = object_id_at(1_700_000_000);
    lab.insert_one(doc! {
        "_id": history,
        "name": "lab",
        "text": "history",
        "datetime": mongodb::bson::DateTime::from_millis(1_700_000_000_000),
    })
    .await
    .expect("the lab's history");

    let app = start_app(&cluster, "messages", 20).await;
    let ours = app.post_message("ann", "before the upgrade").await;
    app.shutdown().await;

    // In a later second than simplechat's first message: a document of
    // that very second may have been there before it, and is history.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let news = mongodb::bson::oid::ObjectId::new();
    lab.insert_one(doc! {
        "_id": news,
        "name": "lab",
        "text": "while simplechat was down",
        // A naive local time from a clock far behind: it must not decide.
        "datetime": mongodb::bson::DateTime::from_millis(1_000_000_000_000),
    })
    .await
    .expect("the lab's insert");

    let app = start_app(&cluster, "messages", 20).await;
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    let listed = app.get_json("/api/messages?limit=3").await;
    let texts: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert_eq!(
        texts,
        ["history", "before the upgrade", "while simplechat was down"]
    );
    let ours = ours["id"].as_str().expect("id");
    let mut subscriber = Subscriber::connect_to(&app, &format!("/api/events?after={ours}")).await;
    subscriber
        .wait_for(&[news.to_hex()], Duration::from_secs(10))
        .await;
    assert!(
        !subscriber.received.contains(&history.to_hex()),
        "history replayed as news"
    );
    app.shutdown().await;
}

/// The app as the authenticated deployment runs it: a URI naming the user,
/// the password from `mongodb_password_file`.
async fn spawn_with_password(
    cluster: &TestCluster,
    db: &str,
    password_file: &std::path::Path,
) -> TestApp {
    spawn_app(&[
        ("mongodb_uri", json!(cluster.user_uri(db))),
        ("mongodb_password_file", json!(password_file)),
        ("write_timeout_secs", json!(2)),
    ])
    .await
}

async fn wait_ready(app: &TestApp, within: Duration) {
    // Signing in derives SCRAM's keys, slow in an unoptimised test build
    // on a loaded machine: readiness is waited for here, never timed.
    let deadline = Instant::now() + within.max(Duration::from_secs(20));
    loop {
        let response = app.get("/readyz").await;
        if response.status() == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never ready: {}",
            response.text().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_authentication_everything_works_and_no_password_shows() {
    let test = "with_authentication_everything_works_and_no_password_shows";
    let cluster = TestCluster::start_auth(test, &["authapp"]).await;
    let auth = cluster.auth();
    let a = spawn_with_password(&cluster, "authapp", &auth.password_file).await;
    let b = spawn_with_password(&cluster, "authapp", &auth.password_file).await;
    wait_ready(&a, cluster.election_time()).await;
    wait_ready(&b, cluster.election_time()).await;
    let mut on_b = Subscriber::connect(&b).await;
    let posted = a.post_message("ann", "authenticated hello").await;
    let id = posted["id"].as_str().expect("id").to_owned();
    on_b.wait_for(std::slice::from_ref(&id), Duration::from_secs(20))
        .await;
    assert!(stored_ids(&b).await.contains(&id));

    let status = b.get_json("/api/status").await;
    assert_eq!(
        status["replica_set"]["source"], "replSetGetStatus",
        "{status}"
    );
    assert_eq!(
        status["replica_set"]["members"].as_array().map(Vec::len),
        Some(3)
    );
    let encoded = simplechat::mongo::uri::encode_userinfo(cluster::APP_PASSWORD);
    for text in [
        status.to_string(),
        a.get("/readyz").await.text().await.unwrap(),
    ] {
        assert!(
            !text.contains(cluster::APP_PASSWORD) && !text.contains(&encoded),
            "{text}"
        );
    }

    // `simplechat config` names the file, never the password.
    let empty = tempfile::tempdir().expect("temp dir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_simplechat"))
        .arg("config")
        .current_dir(empty.path())
        .env_clear()
        .env("SIMPLECHAT_MONGODB_URI", cluster.user_uri("authapp"))
        .env("SIMPLECHAT_MONGODB_PASSWORD_FILE", &auth.password_file)
        .output()
        .expect("run simplechat config");
    let text = String::from_utf8_lossy(&out.stdout);
    let all = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{all}");
    assert!(
        !all.contains(cluster::APP_PASSWORD) && !all.contains(&encoded),
        "{all}"
    );
    assert!(
        text.contains("mongodb_uri = \"mongodb://app:****@"),
        "{text}"
    );
    assert!(text.contains("mongodb_password_file = "), "{text}");
    drop(on_b);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_starts_the_app_and_readyz_names_authentication() {
    let test = "a_wrong_password_starts_the_app_and_readyz_names_authentication";
    let cluster = TestCluster::start_auth(test, &["wrongpw"]).await;
    let auth = cluster.auth();
    let wrong = "not-the-p@ssword";
    let file = auth.other_password_file(wrong);
    let app = spawn_with_password(&cluster, "wrongpw", &file).await;
    assert_eq!(app.get("/healthz").await.status(), 200, "it serves");
    let reason = authentication_refusal(&app, cluster.election_time()).await;
    let refused = app
        .post_json("/api/messages", &json!({"name": "a", "text": "refused"}))
        .await;
    assert_eq!(refused.status(), 503);
    let refused = refused.text().await.unwrap();
    // Nothing was sent: certainly not stored, and why, not a timeout's
    // "outcome unknown".
    assert!(
        refused.contains("the message was not stored: MongoDB refused to authenticate"),
        "{refused}"
    );
    // Reads say so too, each time: a read's own error came as the bare
    // "authentication failed: SCRAM failure" whenever the members'
    // heartbeats (which need no login) said they could be read from.
    let mut reads = Vec::new();
    for _ in 0..3 {
        for path in [
            "/api/messages",
            "/api/messages?before=not-in-the-cache",
            "/api/messages/not-in-the-cache",
        ] {
            let response = app.get(path).await;
            assert_eq!(response.status(), 503, "{path}");
            let text = response.text().await.unwrap();
            assert!(
                text.contains("MongoDB refused to authenticate this app (authentication failed")
                    && text.contains("check the user and password"),
                "{path}: {text}"
            );
            reads.push(text);
        }
    }
    let status = app.get("/api/status").await.text().await.unwrap();
    for text in reads.iter().chain([&reason, &refused, &status]) {
        for secret in [wrong, "not-the-p%40ssword", cluster::APP_PASSWORD] {
            assert!(!text.contains(secret), "{text}");
        }
    }
    app.shutdown().await;

    // The right password: as before.
    let app = spawn_with_password(&cluster, "wrongpw", &auth.password_file).await;
    wait_ready(&app, cluster.election_time()).await;
    let stored = app.post_message("a", "right password").await;
    assert_eq!(app.get_json("/api/messages").await[0]["id"], stored["id"]);
    app.shutdown().await;
}

/// The app's user lives in `admin`, but the URI names the `messages`
/// database and no `authSource`: the driver looks the user up there and the
/// set refuses. Readiness, a refused post and `/api/status` say where the
/// user was looked up and what to add.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_looked_up_in_the_uris_database_is_named_with_the_fix() {
    let test = "a_user_looked_up_in_the_uris_database_is_named_with_the_fix";
    let cluster = TestCluster::start_auth(test, &["messages"]).await;
    let uri = format!(
        "mongodb://{}@{}/messages?replicaSet={}",
        cluster::APP_USER,
        cluster.hosts().join(","),
        cluster::SET_NAME
    );
    let app = spawn_app(&[
        ("mongodb_uri", json!(uri)),
        ("mongodb_password_file", json!(cluster.auth().password_file)),
        ("write_timeout_secs", json!(2)),
    ])
    .await;
    let hint = "(the user is looked up in database `messages`; if it was created in admin, \
                add authSource=admin)";
    let reason = authentication_refusal(&app, cluster.election_time()).await;
    let refused = app
        .post_json("/api/messages", &json!({"name": "a", "text": "refused"}))
        .await;
    assert_eq!(refused.status(), 503);
    let refused = refused.text().await.unwrap();
    let status = app.get("/api/status").await.text().await.unwrap();
    say(&format!("{test}: {reason}\n{refused}\n{status}"));
    assert!(
        reason.starts_with("MongoDB refused to authenticate this app") && reason.contains(hint),
        "{reason}"
    );
    assert!(
        refused.contains("the message was not stored: MongoDB refused to authenticate")
            && refused.contains(hint),
        "{refused}"
    );
    assert!(status.contains(hint), "{status}");
    for text in [&reason, &refused, &status] {
        assert!(!text.contains(cluster::APP_PASSWORD), "{text}");
    }
    app.shutdown().await;
}

/// While the set refuses this app's credentials, the driver marks the
/// member a refused connection went to as unknown until its next heartbeat,
/// so a table built from the driver's view would show a healthy member down
/// now and then. `/api/status` shows each member as its heartbeats (which
/// need no authentication) last described it instead: over many reads,
/// every member up, exactly one of them the primary, and no lag (nothing
/// reads the members' optimes without signing in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_credentials_are_refused_status_shows_the_members_as_their_heartbeats_do() {
    let test = "while_the_credentials_are_refused_status_shows_the_members_as_their_heartbeats_do";
    let cluster = TestCluster::start_auth(test, &["refusedstatus"]).await;
    let wrong = "not-the-p@ssword";
    let file = cluster.auth().other_password_file(wrong);
    let app = spawn_with_password(&cluster, "refusedstatus", &file).await;
    let deadline = Instant::now() + cluster.election_time();
    loop {
        let body: serde_json::Value = app.get("/readyz").await.json().await.expect("JSON");
        if body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("refused to authenticate")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no refusal named: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hosts: HashSet<String> = cluster.hosts().into_iter().collect();
    // The refused logins (the change stream's and the index's retries)
    // keep coming; reads spread over more than a heartbeat interval (10 s
    // by default) meet the members they marked.
    for read in 0..30 {
        let response = app.get("/api/status").await;
        assert_eq!(response.status(), 200);
        let text = response.text().await.expect("body");
        for secret in [wrong, "not-the-p%40ssword", cluster::APP_PASSWORD] {
            assert!(!text.contains(secret), "{text}");
        }
        let status: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(status["ready"], false, "{status}");
        let set = &status["replica_set"];
        assert_eq!(set["name"], "rs", "read {read}: {status}");
        assert!(
            set["source"]
                .as_str()
                .is_some_and(|s| s.contains("refused to authenticate")),
            "read {read}: {status}"
        );
        let members = set["members"].as_array().expect("members");
        let names: HashSet<String> = members
            .iter()
            .filter_map(|m| m["name"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(names, hosts, "read {read}: {status}");
        let primaries: Vec<&serde_json::Value> =
            members.iter().filter(|m| m["state"] == "PRIMARY").collect();
        assert_eq!(primaries.len(), 1, "read {read}: {status}");
        assert_eq!(
            set["primary"], primaries[0]["name"],
            "read {read}: {status}"
        );
        for member in members {
            assert!(
                member["state"] == "PRIMARY" || member["state"] == "SECONDARY",
                "read {read}: {status}"
            );
            assert_eq!(member["health"], 1.0, "read {read}: {status}");
            assert!(member["lag_secs"].is_null(), "read {read}: {status}");
            assert!(member.get("error").is_none(), "read {read}: {status}");
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    app.shutdown().await;
}

/// The lab's app set no limit on a text. Over a history of 1000 messages
/// of 200 KB each, the latest thousand are one listing of about 2 MB, not
/// 200 MB: every message is shown cut to 2,000 characters with a marker,
/// in the listing, the page and the event stream alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_labs_huge_messages_are_listed_and_streamed_cut() {
    let cluster = TestCluster::start("the_labs_huge_messages_are_listed_and_streamed_cut").await;
    let lab = cluster.lab_messages("messages").await;
    let big = "y".repeat(200_000);
    let docs: Vec<Document> = (0..1000_i64)
        .map(|i| {
            doc! { "_id": mongodb::bson::oid::ObjectId::new(), "name": "lab",
            "text": format!("{i:04} {big}"),
            "datetime": mongodb::bson::DateTime::from_millis(1_700_000_000_000 + i * 1000) }
        })
        .collect();
    for chunk in docs.chunks(100) {
        lab.insert_many(chunk.to_vec()).await.expect("lab inserts");
    }
    drop(docs);
    let app = start_app(&cluster, "messages", 20).await;
    wait_for_change_stream(&app, Duration::from_secs(60)).await;

    let response = app.get("/api/messages?limit=1000").await;
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.expect("body");
    assert!(body.len() < 2_200_000, "{} bytes", body.len());
    let listed: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let listed = listed.as_array().expect("array");
    assert_eq!(listed.len(), 1000);
    for (i, m) in listed.iter().enumerate() {
        let text = m["text"].as_str().expect("text");
        assert_eq!(text.chars().count(), 2000);
        assert!(text.starts_with(&format!("{i:04} yyy")));
        assert!(text.ends_with("y\u{2026}\n[cut: the message has 200005 characters]"));
    }
    let page = app.get("/").await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("page");
    assert!(html.len() < 1_000_000, "{} bytes", html.len());
    assert!(html.contains("[cut: the message has 200005 characters]"));

    // A replay from the 990th message sends the rest, cut like the listing.
    let from = listed[989]["id"].as_str().expect("id");
    let response = app.get(&format!("/api/events?after={from}")).await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while text.matches("event: message").count() < 10 {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, body.next()).await {
            Ok(Some(Ok(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            _ => panic!("the replay never came: {} bytes", text.len()),
        }
    }
    let frames: Vec<&str> = text
        .split("\n\n")
        .filter(|f| f.contains("event: message"))
        .collect();
    for (k, frame) in frames.iter().enumerate() {
        let i = 990 + k;
        assert!(frame.len() < 2200, "{} bytes", frame.len());
        assert!(frame.contains(&format!("id: {}", listed[i]["id"].as_str().expect("id"))));
        assert!(frame.contains(&format!("\"text\":\"{i:04} yyy")));
    }
    app.shutdown().await;
}

/// The lab's app took any name and text: an empty name, a text of blanks,
/// a NUL or an escape sequence, a bidi override in a name. Such messages
/// were served as stored, against the API's own rules (a name of 1 to 64
/// characters, no control characters), and the NUL went raw into the
/// page. They are shown mended, alike in the listing, by id, on the page
/// and on a retry of the id (a 409: no post has that content).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_labs_messages_that_break_a_posts_rules_are_shown_mended() {
    use mongodb::bson::oid::ObjectId;
    let cluster =
        TestCluster::start("the_labs_messages_that_break_a_posts_rules_are_shown_mended").await;
    let lab = cluster.lab_messages("mended").await;
    let ids: Vec<ObjectId> = (0..3).map(|_| ObjectId::new()).collect();
    let at = mongodb::bson::DateTime::from_millis(1_700_000_000_000);
    lab.insert_many([
        doc! { "_id": ids[0], "name": "", "text": "   ", "datetime": at },
        doc! { "_id": ids[1], "name": " eve\u{202E}gnp.exe ", "text": "a\0b\u{1b}[31m", "datetime": at },
        doc! { "_id": ids[2], "name": "ann", "text": "fine", "datetime": at },
    ])
    .await
    .expect("lab inserts");
    let app = start_app(&cluster, "mended", 20).await;
    // Written in the second simplechat first looks at the collection (most
    // likely): strays, listed once the change stream's first opening has
    // given them their positions (docs/mongodb.md).
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    let expected = [
        ("(no name)", "(empty message)"),
        ("eve\u{FFFD}gnp.exe", "a\u{FFFD}b\u{FFFD}[31m"),
        ("ann", "fine"),
    ];
    let listed = app.get_json("/api/messages").await;
    let listed: Vec<(&str, &str)> = listed
        .as_array()
        .expect("array")
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["text"].as_str().unwrap()))
        .collect();
    assert_eq!(listed, expected);
    for (id, (name, text)) in ids.iter().zip(expected) {
        let one = app
            .get_json(&format!("/api/messages/{}", id.to_hex()))
            .await;
        assert_eq!(
            (one["name"].as_str(), one["text"].as_str()),
            (Some(name), Some(text))
        );
    }
    let page = app.get("/").await.text().await.expect("page");
    assert!(!page.contains('\0') && !page.contains('\u{1b}') && !page.contains('\u{202E}'));
    assert!(
        page.contains("(empty message)"),
        "the page shows the mended text"
    );
    let retry = app
        .post_json(
            "/api/messages",
            &json!({ "id": ids[0].to_hex(), "name": "(no name)", "text": "(empty message)" }),
        )
        .await;
    assert_eq!(retry.status(), 409);
    app.shutdown().await;
}

/// The ids of the latest listing, oldest first.
async fn listed_ids(app: &TestApp) -> Vec<String> {
    app.get_json("/api/messages")
        .await
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect()
}

/// Posts `text` with the idempotency key `id`; the answer's status.
async fn post_with_id(app: &TestApp, id: &str, text: &str) -> reqwest::StatusCode {
    app.post_json(
        "/api/messages",
        &json!({ "name": "ann", "text": text, "id": id }),
    )
    .await
    .status()
}

/// The simulator, for a test of faults only it can inject.
async fn sim_cluster(test: &str) -> TestCluster {
    say(&format!(
        "SKIPPED: {test} on real mongod, because it injects faults only the simulator can; running it on replset-sim"
    ));
    say(&format!("{test}: backend: replset-sim"));
    TestCluster::start_sim(cluster::fast_sim(true)).await
}

/// The lab's app keeps writing while two instances start at once on its
/// history (the migration's first start): each instance's subscriber,
/// placed as soon as the instance answers, is sent every message written
/// after its first one, once, in the order written, and both instances
/// list them all in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_starting_while_the_labs_app_writes_send_every_message_in_order() {
    let test = "two_instances_starting_while_the_labs_app_writes_send_every_message_in_order";
    let cluster = TestCluster::start(test).await;
    let lab = cluster.lab_messages("startwrite").await;
    let base = 1_572_566_400_000; // 2019-11-01, as the lab's naive times
    let history: Vec<Document> = (0..200)
        .map(|i| {
            doc! {
                "name": "h",
                "text": format!("hist {i}"),
                "datetime": mongodb::bson::DateTime::from_millis(base + i * 60_000),
            }
        })
        .collect();
    lab.insert_many(history).await.expect("the lab's history");
    const WRITES: usize = 150;
    let writer = tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 0..WRITES {
            let id = mongodb::bson::oid::ObjectId::new();
            lab.insert_one(doc! {
                "_id": id,
                "name": "lab",
                "text": format!("cw {i}"),
                "datetime": mongodb::bson::DateTime::now(),
            })
            .await
            .expect("the lab's insert");
            ids.push(id.to_hex());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ids
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settings = [
        ("mongodb_uri", json!(cluster.uri("startwrite"))),
        ("write_timeout_secs", json!(20)),
    ];
    let (a, b) = tokio::join!(spawn_app(&settings), spawn_app(&settings));
    let mut subscribers = Vec::new();
    for app in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let response = app.get("/api/events").await;
            if response.status() == 200 {
                subscribers.push(Subscriber::reading(response).await);
                break;
            }
            assert!(Instant::now() < deadline, "no event stream");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let written = writer.await.expect("writer");
    let last = written.last().cloned().expect("writes");
    for (name, subscriber) in ["a", "b"].iter().zip(subscribers.iter_mut()) {
        let mut sent = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while sent.last() != Some(&last) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, subscriber.ids.recv()).await {
                Ok(Some(id)) => sent.push(id),
                _ => panic!(
                    "instance {name}'s subscriber got {} messages, not the last",
                    sent.len()
                ),
            }
        }
        let sent: Vec<usize> = sent
            .iter()
            .filter_map(|id| written.iter().position(|w| w == id))
            .collect();
        let first = sent[0];
        let want: Vec<usize> = (first..WRITES).collect();
        say(&format!(
            "{test}: instance {name}'s subscriber from write {first}"
        ));
        assert_eq!(
            sent, want,
            "instance {name}'s subscriber, from its first message on"
        );
    }
    for (name, app) in [("a", &a), ("b", &b)] {
        let listed: Vec<String> = all_ids(app)
            .await
            .into_iter()
            .filter(|id| written.contains(id))
            .collect();
        assert_eq!(
            listed, written,
            "instance {name}'s listing of what the lab wrote"
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// Both instances stopped (an upgrade), the lab's app writes, and both
/// start again at once: each gives the documents written meanwhile their
/// positions as the other does, and both list them, and replay them to a
/// subscriber that asks for what came after the last message it had, in
/// the order written, once. (Before, a document one instance positioned
/// could reach the other's stream after that one had published a later
/// one, and was moved after the rest.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_restarted_at_once_keep_the_order_of_what_the_lab_wrote_meanwhile() {
    let test = "two_instances_restarted_at_once_keep_the_order_of_what_the_lab_wrote_meanwhile";
    let cluster = TestCluster::start(test).await;
    let first = start_app(&cluster, "restarted", 20).await;
    assert_eq!(post_with_id(&first, "before", "before").await, 201);
    first.shutdown().await;
    // Past the second of the first message: documents of that very second
    // are the lab's history (docs/mongodb.md).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let lab = cluster.lab_messages("restarted").await;
    let mut written = Vec::new();
    for i in 0..20 {
        let id = mongodb::bson::oid::ObjectId::new();
        lab.insert_one(doc! {
            "_id": id,
            "name": "lab",
            "text": format!("while down {i}"),
            "datetime": mongodb::bson::DateTime::now(),
        })
        .await
        .expect("the lab's insert");
        written.push(id.to_hex());
    }
    let settings = [
        ("mongodb_uri", json!(cluster.uri("restarted"))),
        ("write_timeout_secs", json!(20)),
    ];
    let (a, b) = tokio::join!(spawn_app(&settings), spawn_app(&settings));
    for (name, app) in [("a", &a), ("b", &b)] {
        wait_for_change_stream(app, Duration::from_secs(20)).await;
        let mut replay = Subscriber::connect_to(app, "/api/events?after=before").await;
        let sent = replay
            .next_ids(written.len(), Duration::from_secs(20))
            .await;
        assert_eq!(
            sent, written,
            "instance {name}'s replay after the last message"
        );
        let listed = all_ids(app).await;
        let mut want = vec!["before".to_owned()];
        want.extend(written.iter().cloned());
        assert_eq!(listed, want, "instance {name}'s listing");
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// An operator deletes a spam message and corrects another with the
/// MongoDB shell, as the lab's users moderated: every listing and the page
/// show the collection as it now is, without a restart, and the chat goes
/// on. (Before, the cache kept both as they were until the instance
/// restarted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_another_client_deletes_or_edits_is_listed_as_it_now_is() {
    let test = "a_message_another_client_deletes_or_edits_is_listed_as_it_now_is";
    let cluster = TestCluster::start(test).await;
    let app = start_app(&cluster, "moderated", 20).await;
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    let mut events = events_of(app.get("/api/events").await).await;
    for (id, text) in [("a", "helo"), ("b", "hi"), ("spam", "buy now")] {
        assert_eq!(post_with_id(&app, id, text).await, 201);
        assert_eq!(
            next_event(&mut events).await,
            ("message".to_owned(), id.to_owned())
        );
    }
    let page = app.get("/").await.text().await.expect("page");
    assert!(page.contains("buy now"), "the page showed the spam before");

    let shell = cluster.lab_messages("moderated").await;
    let deleted = shell
        .delete_one(doc! { "_id": "spam" })
        .await
        .expect("deleteOne");
    assert_eq!(deleted.deleted_count, 1);
    shell
        .update_one(doc! { "_id": "a" }, doc! { "$set": { "text": "hello" } })
        .await
        .expect("updateOne");

    let listed = |list: &serde_json::Value| -> Vec<(String, String)> {
        list.as_array()
            .expect("array")
            .iter()
            .map(|m| {
                (
                    m["id"].as_str().unwrap_or_default().to_owned(),
                    m["text"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let want = vec![
        ("a".to_owned(), "hello".to_owned()),
        ("b".to_owned(), "hi".to_owned()),
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = listed(&app.get_json("/api/messages").await);
        if now == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the listing still shows {now:?}, not the collection as it is"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    say(&format!("{test}: the listing follows the shell's changes"));
    let page = app.get("/").await.text().await.expect("page");
    assert!(!page.contains("buy now"), "the page still shows the spam");
    assert!(page.contains("hello"), "the page shows the corrected text");
    assert_eq!(app.get("/api/messages/spam").await.status(), 404);

    // The first subscriber was last sent the deleted message: it goes on
    // after the message before it, and is sent the next message as any
    // other (test `the_message_after_a_deleted_newest_one_reaches_subscribers`);
    // a new one is sent the next message.
    let mut later = Subscriber::connect(&app).await;
    assert_eq!(post_with_id(&app, "after", "after").await, 201);
    assert_eq!(
        next_event(&mut events).await,
        ("message".to_owned(), "after".to_owned())
    );
    assert_eq!(later.next_ids(1, Duration::from_secs(20)).await, ["after"]);
    let mut want = want;
    want.push(("after".to_owned(), "after".to_owned()));
    assert_eq!(listed(&app.get_json("/api/messages").await), want);
    app.shutdown().await;
}

/// A change stream whose connection dies without being closed (a firewall
/// or a NAT that forgets the flow) while its member still answers: the
/// driver's monitors see nothing wrong and the driver sets no socket
/// timeout, so only the store's own deadline for an answer ends the wait.
/// The stream reopens from its resume token: what was posted meanwhile
/// reaches the subscriber once, and later posts follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_stream_whose_connection_goes_silent_is_reopened_and_loses_nothing() {
    let test = "a_change_stream_whose_connection_goes_silent_is_reopened_and_loses_nothing";
    let cluster = sim_cluster(test).await;
    let sim = cluster.sim().expect("simulator");
    // Short waits for a server, so the deadline for an answer (its
    // maxAwaitTimeMS, these two and a margin of 10 s) is 13 s, not 21 s.
    let uri = format!(
        "{}&serverSelectionTimeoutMS=1000&connectTimeoutMS=1000",
        cluster.uri("silent")
    );
    let app = start_app_with(&cluster, "silent", 10, &[("mongodb_uri", json!(uri))]).await;
    let mut subscriber = Subscriber::connect(&app).await;
    assert_eq!(post_with_id(&app, "before", "before").await, 201);
    assert_eq!(
        subscriber.next_ids(1, Duration::from_secs(20)).await,
        ["before"]
    );

    // The next getMore on messages runs and is never answered: the change
    // stream's (this store's reads are answered in their first batch).
    sim.hold_next_as("silent", "getMore", HoldPoint::BeforeReplying, |command| {
        command.get_str("collection") == Ok("messages")
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.held("silent") == 0 {
        assert!(Instant::now() < deadline, "no getMore was held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let silent = Instant::now();
    assert_eq!(post_with_id(&app, "meanwhile", "meanwhile").await, 201);
    assert_eq!(
        subscriber.next_ids(1, Duration::from_secs(60)).await,
        ["meanwhile"],
        "the message posted while the stream's connection was silent"
    );
    say(&format!(
        "{test}: the subscriber had it {:?} after the getMore went unanswered",
        silent.elapsed()
    ));
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    assert_eq!(post_with_id(&app, "after", "after").await, 201);
    assert_eq!(
        subscriber.next_ids(1, Duration::from_secs(20)).await,
        ["after"],
        "the next message, and no copy of the one before"
    );
    sim.release("silent");
    app.shutdown().await;
}

/// A POST whose copy the change stream brings back more than 2 s late (a
/// stream that trails the writes). The POST is answered without it; until
/// the stream brings it, the instance's listing and page read MongoDB, so
/// the poster reads the post at once; its subscribers get it once, where
/// the stream brings it: after the message another instance stored just
/// before it, as the listing orders them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_whose_echo_is_late_is_listed_at_once_and_delivered_once_in_order() {
    let test = "a_post_whose_echo_is_late_is_listed_at_once_and_delivered_once_in_order";
    let (cluster, app, mut subscriber) = race_set_up(test, "lateecho").await;
    let sim = cluster.sim().expect("simulator");

    sim.hold_change_streams(true);
    // Another instance's post, as it stores it (the primary fills in the
    // position), just before this instance's.
    cluster
        .lab_messages("lateecho")
        .await
        .insert_one(
            doc! { "_id": "other", "name": "bob", "text": "from another instance",
            "datetime": mongodb::bson::DateTime::now(),
            "position": mongodb::bson::Timestamp { time: 0, increment: 0 } },
        )
        .await
        .expect("another instance's insert");
    assert_eq!(
        post_with_id(&app, "late", "late echo").await,
        201,
        "the POST is answered without its echo"
    );
    assert_eq!(
        listed_ids(&app).await,
        ["first", "other", "late"],
        "the poster reads its post at once, in the store order"
    );
    let page = app.get("/").await.text().await.expect("the page");
    assert!(page.contains("late echo"), "the page shows the post");
    assert_eq!(
        subscriber.arrived(),
        Vec::<String>::new(),
        "nothing is published before the change stream brings it"
    );

    sim.hold_change_streams(false);
    assert_eq!(
        subscriber.next_ids(2, Duration::from_secs(20)).await,
        ["other", "late"],
        "delivered where the change stream brings it, in the store order"
    );
    // Once: the next message delivered is the next one posted.
    assert_eq!(post_with_id(&app, "after", "after").await, 201);
    assert_eq!(
        subscriber.next_ids(1, Duration::from_secs(20)).await,
        ["after"]
    );
    assert_eq!(listed_ids(&app).await, ["first", "other", "late", "after"]);
    app.shutdown().await;
}

/// A subscriber that resumes from a message another instance stored a
/// moment ago, which this instance's change stream has yet to bring (an
/// `EventSource` reconnecting to another instance behind a load
/// balancer): it is sent what the store has after that message, and when
/// the stream brings the messages, none of them again. Before, what the
/// stream brought was sent a second time from the first message not on
/// the page read (an older one): the message resumed from, and the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_a_message_the_change_stream_has_yet_to_bring_sends_each_once() {
    let test = "a_resume_from_a_message_the_change_stream_has_yet_to_bring_sends_each_once";
    let cluster = sim_cluster(test).await;
    let sim = cluster.sim().expect("simulator");
    let app = start_app(&cluster, "resumeahead", 2).await;
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    assert_eq!(post_with_id(&app, "first", "first").await, 201);

    sim.hold_change_streams(true);
    // Another instance's posts, as it stores them.
    let messages = cluster.lab_messages("resumeahead").await;
    for id in ["o1", "o2", "o3", "o4"] {
        messages
            .insert_one(doc! { "_id": id, "name": "bob", "text": id,
            "datetime": mongodb::bson::DateTime::now(),
            "position": mongodb::bson::Timestamp { time: 0, increment: 0 } })
            .write_concern(mongodb::options::WriteConcern::majority())
            .await
            .expect("stored by another instance");
    }
    let mut subscriber = Subscriber::connect_to(&app, "/api/events?after=o2").await;
    assert_eq!(
        subscriber.next_ids(2, Duration::from_secs(20)).await,
        ["o3", "o4"],
        "what the store has after the message resumed from"
    );

    sim.hold_change_streams(false);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !listed_ids(&app).await.contains(&"o4".to_owned()) {
        assert!(
            Instant::now() < deadline,
            "the change stream never brought o4"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(post_with_id(&app, "after", "after").await, 201);
    assert_eq!(
        subscriber.next_ids(1, Duration::from_secs(20)).await,
        ["after"],
        "the next message posted, and nothing the change stream brought again"
    );
    app.shutdown().await;
}

/// A POST answered 503 "outcome unknown" (every reply to its inserts was
/// lost) whose write was applied all the same, then the client's retry
/// with the same id, answered from what that write stored
/// (`Idempotent-Replayed`) while the change stream had not brought it yet.
/// The retry's instance had never been told to expect the message, so its
/// cache answered the listing right after the retry without it. The retry
/// now awaits it as a fresh post does: the listing has it at once, and
/// subscribers get it once, when the stream brings it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_answered_from_an_earlier_attempt_is_listed_at_once() {
    let test = "a_retry_answered_from_an_earlier_attempt_is_listed_at_once";
    let cluster = sim_cluster(test).await;
    let sim = cluster.sim().expect("simulator");
    let app = start_app(&cluster, "retried", 2).await;
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    let mut subscriber = Subscriber::connect(&app).await;
    let body = json!({ "name": "ann", "text": "retried", "id": "retried-1" });

    sim.hold_change_streams(true);
    // More than the attempts of one write deadline, cancelled after.
    sim.drop_replies("insert", 1000);
    let first = app.post_json("/api/messages", &body).await;
    assert_eq!(first.status(), 503);
    let why = first.text().await.expect("body");
    assert!(why.contains("outcome is unknown"), "{why}");
    sim.drop_replies("insert", 0);
    assert_eq!(
        sim.documents("retried", "messages").len(),
        1,
        "it was stored"
    );

    let retry = app.post_json("/api/messages", &body).await;
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(
        listed_ids(&app).await,
        ["retried-1"],
        "the retrying client reads its message at once"
    );
    assert_eq!(subscriber.arrived(), Vec::<String>::new());

    sim.hold_change_streams(false);
    assert_eq!(
        subscriber.next_ids(1, Duration::from_secs(20)).await,
        ["retried-1"]
    );
    assert_eq!(post_with_id(&app, "after", "after").await, 201);
    assert_eq!(
        subscriber.next_ids(1, Duration::from_secs(20)).await,
        ["after"],
        "delivered once"
    );
    app.shutdown().await;
}

/// An app pinned to a secondary (`directConnection=true`) can write
/// nothing: `/readyz` says so and why, and a post is refused at once as
/// not stored, not left "unknown" after the write timeout. Pinned to the
/// primary it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_pinned_to_a_secondary_is_not_ready_and_stores_nothing() {
    let test = "an_app_pinned_to_a_secondary_is_not_ready_and_stores_nothing";
    let cluster = TestCluster::start(test).await;
    let writer = start_app(&cluster, "pinned", 10).await;
    let primary = cluster.primary().await.expect("a primary");
    let hosts = cluster.hosts();
    let secondary = &hosts[(primary + 1) % hosts.len()];
    let pinned = spawn_app(&[
        (
            "mongodb_uri",
            json!(format!(
                "mongodb://{secondary}/pinned?directConnection=true"
            )),
        ),
        ("write_timeout_secs", json!(10)),
    ])
    .await;
    let deadline = Instant::now() + cluster.election_time();
    let reason = loop {
        let response = pinned.get("/readyz").await;
        assert_eq!(response.status(), 503, "never ready pinned to a secondary");
        let body: serde_json::Value = response.json().await.expect("JSON");
        let reason = body["error"].as_str().unwrap_or_default().to_owned();
        if reason.starts_with("connected directly to a secondary") {
            break reason;
        }
        assert!(Instant::now() < deadline, "no reason naming it: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        reason.contains(secondary.as_str()) && reason.contains("use the replica set's URI"),
        "{reason}"
    );

    let started = Instant::now();
    let refused = pinned
        .post_json("/api/messages", &json!({"name": "a", "text": "pinned"}))
        .await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.expect("JSON");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("the message was not stored: connected directly to a secondary"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered at once"
    );
    assert!(stored_ids(&writer).await.is_empty(), "nothing stored");
    pinned.shutdown().await;

    let on_primary = spawn_app(&[(
        "mongodb_uri",
        json!(format!(
            "mongodb://{}/pinned?directConnection=true",
            hosts[primary]
        )),
    )])
    .await;
    wait_ready(&on_primary, cluster.election_time()).await;
    let stored = on_primary.post_message("a", "on the primary").await;
    assert_eq!(stored["text"], "on the primary");
    on_primary.shutdown().await;
    writer.shutdown().await;
}

/// Walks the history from the newest message back, `limit` at a time, as a
/// client paging with `before=` does; oldest first.
async fn walked_ids(app: &TestApp, limit: usize) -> Vec<String> {
    let mut walked: Vec<String> = Vec::new();
    let mut path = format!("/api/messages?limit={limit}");
    loop {
        let page: Vec<String> = app
            .get_json(&path)
            .await
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|m| m["id"].as_str().map(str::to_owned))
            .collect();
        let Some(oldest) = page.first().cloned() else {
            break;
        };
        walked.splice(0..0, page);
        path = format!("/api/messages?limit={limit}&before={oldest}");
    }
    walked
}

/// Waits until an insert the simulator stalls has taken its timestamps.
async fn until_stalled(sim: &replset_sim::Cluster) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.stalled_inserts() == 0 {
        assert!(Instant::now() < deadline, "no insert was stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the simulator has run `n` `update` commands in all.
async fn until_updates(sim: &replset_sim::Cluster, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while sim.commands_run("update") < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} updates",
            sim.commands_run("update")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `/readyz`'s reason once it names authentication (503 all along).
async fn authentication_refusal(app: &TestApp, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let response = app.get("/readyz").await;
        assert_eq!(response.status(), 503);
        let body: serde_json::Value = response.json().await.expect("JSON");
        let reason = body["error"].as_str().unwrap_or_default().to_owned();
        if reason.contains("authenticat") {
            return reason;
        }
        assert!(
            Instant::now() < deadline,
            "no authentication reason: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The race tests' start: the simulator, an app whose change stream runs,
/// and a subscriber that got the app's first message, `first`.
async fn race_set_up(test: &str, db: &str) -> (TestCluster, TestApp, Subscriber) {
    let cluster = sim_cluster(test).await;
    let app = start_app(&cluster, db, 20).await;
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    let mut subscriber = Subscriber::connect(&app).await;
    assert_eq!(post_with_id(&app, "first", "first").await, 201);
    assert_eq!(
        subscriber.next_ids(1, Duration::from_secs(20)).await,
        ["first"]
    );
    (cluster, app, subscriber)
}

/// Posts `slow` and `quick` so that `slow` takes its position first and
/// commits after `quick` (the simulator stalls its insert), both 201.
async fn post_raced(app: &TestApp, sim: &replset_sim::Cluster) {
    sim.stall_insert_of("slow", Duration::from_millis(700));
    let (slow, quick) = tokio::join!(post_with_id(app, "slow", "slow"), async {
        until_stalled(sim).await;
        post_with_id(app, "quick", "quick").await
    });
    assert_eq!((slow.as_u16(), quick.as_u16()), (201, 201));
}

/// mongod takes an inserted document's empty timestamp (its `position`)
/// when it checks the document and the oplog entry's later, so two posts
/// on two connections can take their positions in one order and commit in
/// the other (the simulator stages it). The change stream brings them in
/// commit order. The message that commits behind one with a later
/// position is given a new position, so the store order is the order
/// subscribers got them in: the listing, paging with `before=` one message
/// at a time, a new instance's listing (read from the store) and every
/// subscriber agree, and each message is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_that_commit_against_their_positions_keep_one_order() {
    let test = "posts_that_commit_against_their_positions_keep_one_order";
    let (cluster, app, mut subscriber) = race_set_up(test, "inverted").await;
    let sim = cluster.sim().expect("simulator");

    // "slow" takes its position, then waits; "quick" takes a later one
    // and commits first.
    post_raced(&app, sim).await;
    let delivered = subscriber.next_ids(2, Duration::from_secs(20)).await;
    assert_eq!(delivered, ["quick", "slow"], "delivered in commit order");
    let order = ["first", "quick", "slow"];
    assert_eq!(listed_ids(&app).await, order, "the listing");
    assert_eq!(walked_ids(&app, 1).await, order, "paging one at a time");

    let other = start_app(&cluster, "inverted", 20).await;
    wait_for_change_stream(&other, Duration::from_secs(20)).await;
    assert_eq!(listed_ids(&other).await, order, "read from the store");
    assert_eq!(walked_ids(&other, 1).await, order);

    assert_eq!(post_with_id(&app, "after", "after").await, 201);
    assert_eq!(
        subscriber.next_ids(1, Duration::from_secs(20)).await,
        ["after"],
        "each delivered once"
    );
    other.shutdown().await;
    app.shutdown().await;
}

/// The same race, seen by an instance that read both messages from the
/// store before any change stream brought them (it started while the
/// streams trailed): it loaded them in their first order, and follows the
/// store when one of them is given its new position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_read_a_message_at_its_first_position_follows_the_new_one() {
    let test = "an_instance_that_read_a_message_at_its_first_position_follows_the_new_one";
    let cluster = sim_cluster(test).await;
    let sim = cluster.sim().expect("simulator");
    let app = start_app(&cluster, "reread", 20).await;
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    assert_eq!(post_with_id(&app, "first", "first").await, 201);

    sim.hold_change_streams(true);
    post_raced(&app, sim).await;
    let late = start_app(&cluster, "reread", 20).await;
    wait_for_change_stream(&late, Duration::from_secs(20)).await;
    assert_eq!(
        listed_ids(&late).await,
        ["first", "slow", "quick"],
        "read in the first order while no stream has brought them"
    );

    sim.hold_change_streams(false);
    let order = ["first", "quick", "slow"];
    until_listed(&late, &order, "the reading instance kept the first order").await;
    assert_eq!(walked_ids(&late, 1).await, order);
    assert_eq!(listed_ids(&app).await, order);
    assert_eq!(walked_ids(&app, 1).await, order);
    late.shutdown().await;
    app.shutdown().await;
}

/// Waits (20 s at most) until `app` lists exactly `order`; else fails
/// saying `why`.
async fn until_listed(app: &TestApp, order: &[&str], why: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = listed_ids(app).await;
        if listed == order {
            return;
        }
        assert!(Instant::now() < deadline, "{why}: {listed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The document a restore writes for a backup's copy of message `of`:
/// `_id` and `text` "restored", at a position `secs` seconds before
/// `of`'s; with that position.
async fn restored_copy(
    lab: &mongodb::Collection<Document>,
    of: &str,
    secs: u32,
) -> (Document, mongodb::bson::Timestamp) {
    let mut restored = lab
        .find_one(doc! { "_id": of })
        .await
        .expect("read")
        .expect("stored");
    let position = restored.get_timestamp("position").expect("a position");
    let old = mongodb::bson::Timestamp {
        time: position.time - secs,
        increment: 1,
    };
    restored.insert("_id", "restored");
    restored.insert("text", "restored");
    restored.insert("position", old);
    (restored, old)
}

/// The `position` a document has now.
async fn position_of(lab: &mongodb::Collection<Document>, id: &str) -> mongodb::bson::Timestamp {
    lab.find_one(doc! { "_id": id })
        .await
        .expect("read")
        .expect("stored")
        .get_timestamp("position")
        .expect("a position")
}

/// A raced message that a reload reads before the stream brings its
/// insert (here the reload that follows another instance moving a message
/// this one holds) is kept out of the cache until its new position comes,
/// then sent to subscribers: before, the reload loaded it into the cache,
/// where nothing sent it to anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raced_message_a_reload_reads_first_still_reaches_subscribers() {
    let test = "a_raced_message_a_reload_reads_first_still_reaches_subscribers";
    let (cluster, app, mut subscriber) = race_set_up(test, "reloadfirst").await;
    let sim = cluster.sim().expect("simulator");
    let lab = cluster.lab_messages("reloadfirst").await;

    sim.hold_change_streams(true);
    sim.stall_insert_of("raced", Duration::from_millis(1500));
    let (raced, quick, _) = tokio::join!(
        post_with_id(&app, "raced", "raced"),
        async {
            until_stalled(sim).await;
            post_with_id(&app, "quick", "quick").await
        },
        async {
            // Once "quick" is stored, while "raced" waits to commit.
            until_stalled(sim).await;
            let deadline = Instant::now() + Duration::from_secs(10);
            while !sim
                .documents("reloadfirst", "messages")
                .iter()
                .any(|d| d.get_str("_id") == Ok("quick"))
            {
                assert!(Instant::now() < deadline, "quick was never stored");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            lab.update_one(
                doc! { "_id": "first" },
                doc! { "$currentDate": { "position": { "$type": "timestamp" } } },
            )
            .await
            .expect("another instance moves a message");
        }
    );
    assert_eq!((raced.as_u16(), quick.as_u16()), (201, 201));
    sim.hold_change_streams(false);
    assert_eq!(
        subscriber.next_ids(2, Duration::from_secs(20)).await,
        ["quick", "raced"]
    );
    assert_eq!(post_with_id(&app, "after", "after").await, 201);
    assert_eq!(
        subscriber.next_ids(1, Duration::from_secs(20)).await,
        ["after"],
        "each delivered once"
    );
    let order = ["quick", "first", "raced", "after"];
    assert_eq!(listed_ids(&app).await, order);
    let other = start_app(&cluster, "reloadfirst", 20).await;
    wait_for_change_stream(&other, Duration::from_secs(20)).await;
    assert_eq!(listed_ids(&other).await, order, "read from the store");
    other.shutdown().await;
    app.shutdown().await;
}

/// An instance whose stream trails brings, in one go, a raced insert,
/// another instance's new position for it and a later message, before it
/// sends its own write for the new position. That write moves a message
/// only from its first position, so it moves nothing: the message moved
/// once, and subscribers got the store order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trailing_instance_does_not_move_a_message_twice() {
    let test = "a_trailing_instance_does_not_move_a_message_twice";
    let (cluster, app, mut subscriber) = race_set_up(test, "movedonce").await;
    let sim = cluster.sim().expect("simulator");
    let lab = cluster.lab_messages("movedonce").await;

    sim.hold_change_streams(true);
    post_raced(&app, sim).await;
    // Another instance, whose stream does not trail, gives "slow" its new
    // position as the app does: only from its first.
    let first_position = position_of(&lab, "slow").await;
    let updates = sim.commands_run("update");
    lab.update_many(
        doc! { "$or": [ { "_id": "slow", "position": first_position } ] },
        doc! { "$currentDate": { "position": { "$type": "timestamp" } } },
    )
    .await
    .expect("another instance's write");
    let moved = position_of(&lab, "slow").await;
    assert_eq!(post_with_id(&app, "after", "after").await, 201);
    sim.hold_change_streams(false);
    let delivered = subscriber.next_ids(3, Duration::from_secs(20)).await;
    assert_eq!(delivered, ["quick", "slow", "after"]);
    // The other instance's write and this one's own, sent too late.
    until_updates(sim, updates + 2).await;
    assert_eq!(position_of(&lab, "slow").await, moved, "moved once");
    let order = ["first", "quick", "slow", "after"];
    assert_eq!(listed_ids(&app).await, order);
    let other = start_app(&cluster, "movedonce", 20).await;
    wait_for_change_stream(&other, Duration::from_secs(20)).await;
    assert_eq!(listed_ids(&other).await, order, "read from the store");
    other.shutdown().await;
    app.shutdown().await;
}

/// The write that gives a raced message its new position is refused
/// unapplied (the primary stepped down as it came): the stream starts
/// again past the message's insert, and the message, still held, is given
/// its position by the write sent again, and reaches subscribers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_for_a_new_position_is_sent_again_and_the_message_delivered() {
    let test = "a_refused_write_for_a_new_position_is_sent_again_and_the_message_delivered";
    let (cluster, app, mut subscriber) = race_set_up(test, "refusedmove").await;
    let sim = cluster.sim().expect("simulator");

    sim.hold_change_streams(true);
    post_raced(&app, sim).await;
    sim.refuse_next("update", 1);
    sim.hold_change_streams(false);
    assert_eq!(
        subscriber.next_ids(2, Duration::from_secs(30)).await,
        ["quick", "slow"]
    );
    assert_eq!(post_with_id(&app, "after", "after").await, 201);
    assert_eq!(
        subscriber.next_ids(1, Duration::from_secs(20)).await,
        ["after"]
    );
    let order = ["first", "quick", "slow", "after"];
    assert_eq!(listed_ids(&app).await, order);
    assert_eq!(walked_ids(&app, 1).await, order);
    app.shutdown().await;
}

/// A message is moved once. Here a document whose position is an hour
/// ahead of the set's clock (written by hand, or left by a set whose clock
/// ran ahead) makes every later post come behind it; each is moved once,
/// still behind, and then published where it is, instead of being moved
/// for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_behind_again_after_its_new_position_is_published_not_moved_again() {
    let test = "a_message_behind_again_after_its_new_position_is_published_not_moved_again";
    let cluster = sim_cluster(test).await;
    let sim = cluster.sim().expect("simulator");
    let app = start_app(&cluster, "aheadclock", 20).await;
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    let mut subscriber = Subscriber::connect(&app).await;
    let lab = cluster.lab_messages("aheadclock").await;
    let ahead = mongodb::bson::Timestamp {
        time: u32::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_secs()
                + 3600,
        )
        .expect("seconds"),
        increment: 1,
    };
    lab.insert_one(doc! { "_id": "ahead", "name": "bob", "text": "ahead",
    "datetime": mongodb::bson::DateTime::now(), "position": ahead })
        .await
        .expect("insert");
    assert_eq!(
        subscriber.next_ids(1, Duration::from_secs(20)).await,
        ["ahead"]
    );
    let updates = sim.commands_run("update");
    assert_eq!(post_with_id(&app, "behind", "behind").await, 201);
    assert_eq!(
        subscriber.next_ids(1, Duration::from_secs(20)).await,
        ["behind"]
    );
    let moved = position_of(&lab, "behind").await;
    assert_eq!(post_with_id(&app, "next", "next").await, 201);
    assert_eq!(
        subscriber.next_ids(1, Duration::from_secs(20)).await,
        ["next"],
        "each delivered once"
    );
    // One write each: "behind" was not moved again.
    assert_eq!(sim.commands_run("update"), updates + 2);
    assert_eq!(position_of(&lab, "behind").await, moved, "moved once");
    app.shutdown().await;
}

/// Posts acknowledged while the change stream is down (between a failure
/// and its reopening, as in a failover) wait for the reopened stream, which
/// brings them in the store order: published in the order their writes
/// were acknowledged, the one that raced would have gone ahead of the one
/// the store orders before it, for good (the stream found both in the
/// cache and moved neither).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_acknowledged_while_the_stream_is_down_keep_the_store_order() {
    let test = "posts_acknowledged_while_the_stream_is_down_keep_the_store_order";
    let (cluster, app, mut subscriber) = race_set_up(test, "streamdown").await;
    let sim = cluster.sim().expect("simulator");
    // The stream's next read fails and it cannot reopen until released.
    sim.drop_replies("aggregate", 1000);
    sim.drop_replies("getMore", 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.get_json("/api/status").await["change_stream"]["running"] == true {
        assert!(Instant::now() < deadline, "the change stream never failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    post_raced(&app, sim).await;
    let order = ["first", "slow", "quick"];
    assert_eq!(
        listed_ids(&app).await,
        order,
        "read from the store meanwhile"
    );

    sim.drop_replies("aggregate", 0);
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    assert_eq!(
        subscriber.next_ids(2, Duration::from_secs(20)).await,
        ["quick", "slow"],
        "in the order the reopened stream brought them"
    );
    let order = ["first", "quick", "slow"];
    assert_eq!(listed_ids(&app).await, order);
    assert_eq!(walked_ids(&app, 1).await, order);
    app.shutdown().await;
}

/// A restore (`mongorestore`) or an import writes messages with the
/// positions they had: far older than anything a post's insert can race
/// past (a post takes its position and commits within one insert, and is
/// answered within the write deadline). Such a message is history coming
/// back, not a raced post: it keeps its position (before, the stream held
/// it and gave it a new one, so a restored history moved to the moment of
/// the restore, after everything posted since), takes its place in the
/// listing, and is not sent to subscribers as news.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_message_keeps_its_position_and_takes_its_place() {
    let test = "a_restored_message_keeps_its_position_and_takes_its_place";
    let (cluster, app, mut subscriber) = race_set_up(test, "restored").await;
    let sim = cluster.sim().expect("simulator");
    let lab = cluster.lab_messages("restored").await;
    assert_eq!(post_with_id(&app, "second", "second").await, 201);
    assert_eq!(
        subscriber.next_ids(1, Duration::from_secs(20)).await,
        ["second"]
    );

    // As a backup of an hour ago holds it: a copy of "first", an hour older.
    let (restored, old) = restored_copy(&lab, "first", 3600).await;
    let updates = sim.commands_run("update");
    lab.insert_one(restored).await.expect("restore");

    let order = ["restored", "first", "second"];
    until_listed(&app, &order, "not listed in its place").await;
    assert_eq!(walked_ids(&app, 1).await, order);
    assert_eq!(position_of(&lab, "restored").await, old, "not moved");
    assert_eq!(sim.commands_run("update"), updates, "no write for it");

    assert_eq!(post_with_id(&app, "after", "after").await, 201);
    assert_eq!(
        subscriber.next_ids(1, Duration::from_secs(20)).await,
        ["after"],
        "the restored message is not news"
    );
    assert_eq!(
        listed_ids(&app).await,
        ["restored", "first", "second", "after"]
    );
    app.shutdown().await;
}

/// A restored message a little older than the newest one published (within
/// the clock margin, which every reload publishes again in case the stream
/// had not brought it) is history all the same: it keeps its position, is
/// listed in its place and is not sent to subscribers. Before, the reload
/// that lists it published it as a message that came behind, so it was
/// held, given a new position after the newest and sent live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_message_just_before_the_newest_keeps_its_position() {
    let test = "a_restored_message_just_before_the_newest_keeps_its_position";
    let cluster = sim_cluster(test).await;
    let sim = cluster.sim().expect("simulator");
    // A short write deadline: a restored message is one more than 2 s + 5 s
    // older than its commit.
    let app = start_app(&cluster, "restored_near", 2).await;
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    let mut subscriber = Subscriber::connect(&app).await;
    let lab = cluster.lab_messages("restored_near").await;
    assert_eq!(post_with_id(&app, "newest", "newest").await, 201);
    assert_eq!(
        subscriber.next_ids(1, Duration::from_secs(20)).await,
        ["newest"]
    );
    tokio::time::sleep(Duration::from_secs(8)).await;

    // A backup holds a message posted a second before "newest".
    let (restored, old) = restored_copy(&lab, "newest", 1).await;
    let updates = sim.commands_run("update");
    lab.insert_one(restored).await.expect("restore");

    let order = ["restored", "newest"];
    until_listed(&app, &order, "not listed in its place").await;
    // Long enough for a hold and a move to have happened.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(position_of(&lab, "restored").await, old, "not moved");
    assert_eq!(sim.commands_run("update"), updates, "no write for it");
    assert_eq!(listed_ids(&app).await, order);

    assert_eq!(post_with_id(&app, "after", "after").await, 201);
    assert_eq!(
        subscriber.next_ids(1, Duration::from_secs(20)).await,
        ["after"],
        "the restored message is not news"
    );
    assert_eq!(listed_ids(&app).await, ["restored", "newest", "after"]);
    app.shutdown().await;
}

/// A post whose insert sees the set's cluster time jump ahead between
/// taking its position and committing (a member gossiped a `$clusterTime`
/// from a clock that runs fast), while another post commits first, comes
/// behind that one and far behind its own commit, as a restored message
/// does; but the primary's wall clock at the commit (`wallTime`) did not
/// jump, so it is a raced post: moved behind the other and delivered live.
/// Taken for history, it would have reached no subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_across_a_jump_of_the_cluster_time_is_still_delivered_live() {
    let test = "a_post_across_a_jump_of_the_cluster_time_is_still_delivered_live";
    let (cluster, app, mut subscriber) = race_set_up(test, "jumped").await;
    let sim = cluster.sim().expect("simulator");
    sim.stall_insert_of("jumped", Duration::from_millis(700));
    let (jumped, quick) = tokio::join!(post_with_id(&app, "jumped", "jumped"), async {
        until_stalled(sim).await;
        sim.advance_cluster_time(3600);
        post_with_id(&app, "quick", "quick").await
    });
    assert_eq!((jumped.as_u16(), quick.as_u16()), (201, 201));
    assert_eq!(
        subscriber.next_ids(2, Duration::from_secs(20)).await,
        ["quick", "jumped"],
        "both delivered live"
    );
    let order = ["first", "quick", "jumped"];
    assert_eq!(listed_ids(&app).await, order);
    assert_eq!(walked_ids(&app, 1).await, order);
    app.shutdown().await;
}

/// A number field of a command document, whatever its BSON number type.
fn number_in(command: &Document, key: &str) -> i64 {
    match command.get(key) {
        Some(mongodb::bson::Bson::Int32(n)) => i64::from(*n),
        Some(mongodb::bson::Bson::Int64(n)) => *n,
        // Only whole numbers of documents are asked for.
        Some(mongodb::bson::Bson::Double(n)) => *n as i64,
        _ => 0,
    }
}

/// Waits until the simulator holds a command named `command`.
async fn until_held(sim: &replset_sim::Cluster, command: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while sim.held(command) == 0 {
        assert!(Instant::now() < deadline, "no {command} was held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A post made through an instance while its change stream makes its
/// first load (the instance is starting), stored before that load read the
/// latest messages and answered after it, reaches the instance's
/// subscribers at once. Before, the load took it for history: the
/// subscriber got it only with the next message posted (or at its next
/// heartbeat, here an hour away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_made_during_the_first_load_reaches_subscribers_at_once() {
    let test = "a_post_made_during_the_first_load_reaches_subscribers_at_once";
    let cluster = sim_cluster(test).await;
    let sim = cluster.sim().expect("simulator");
    cluster
        .lab_messages("firstload")
        .await
        .insert_one(doc! { "_id": "first", "name": "bob", "text": "first",
        "datetime": mongodb::bson::DateTime::now(),
        "position": mongodb::bson::Timestamp { time: 0, increment: 0 } })
        .await
        .expect("an earlier message");
    // The first load's read of the latest messages (a page of them, in
    // the store order) waits; the subscriber's start, which reads the
    // newest message only, does not.
    sim.hold_next("find", HoldPoint::BeforeRunning, |command| {
        command.contains_key("sort") && number_in(command, "limit") > 1
    });
    let app = start_app_with(
        &cluster,
        "firstload",
        20,
        &[("heartbeat_secs", json!(3600))],
    )
    .await;
    until_held(sim, "find").await;
    let mut subscriber = Subscriber::connect(&app).await;

    // Stored while the load waits; its answer comes once the load is done.
    sim.hold_next("insert", HoldPoint::BeforeReplying, |command| {
        command.get_array("documents").is_ok_and(|docs| {
            docs.iter()
                .any(|d| d.as_document().and_then(|d| d.get_str("_id").ok()) == Some("during"))
        })
    });
    let (during, ()) = tokio::join!(post_with_id(&app, "during", "during"), async {
        until_held(sim, "insert").await;
        sim.release("find");
        wait_for_change_stream(&app, Duration::from_secs(20)).await;
        sim.release("insert");
    });
    assert_eq!(during, 201);
    assert_eq!(
        subscriber.next_ids(1, Duration::from_secs(20)).await,
        ["during"],
        "delivered without another post"
    );
    assert_eq!(post_with_id(&app, "after", "after").await, 201);
    assert_eq!(
        subscriber.next_ids(1, Duration::from_secs(20)).await,
        ["after"],
        "delivered once"
    );
    assert_eq!(listed_ids(&app).await, ["first", "during", "after"]);
    app.shutdown().await;
}

/// The ids of every message, oldest first (at most 1,000).
async fn all_ids(app: &TestApp) -> Vec<String> {
    app.get_json("/api/messages?limit=1000")
        .await
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect()
}

/// A restore writes an older backup's messages, with their positions, in
/// many inserts, and the change stream brings them in as many batches.
/// The instance's cache (which holds the whole history here) is reloaded
/// once for them, when the stream goes quiet: before, it was reloaded
/// after each batch, each time reading the latest 1,001 messages, so a
/// restore of 100,000 messages read the collection hundreds of times. The
/// restored messages take their places and are not sent to subscribers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_in_many_inserts_reloads_the_cache_once() {
    const BATCHES: u32 = 20;
    const EACH: u32 = 10;
    let test = "a_restore_in_many_inserts_reloads_the_cache_once";
    let (cluster, app, mut subscriber) = race_set_up(test, "restoredmany").await;
    let sim = cluster.sim().expect("simulator");
    let lab = cluster.lab_messages("restoredmany").await;
    let first = position_of(&lab, "first").await;

    let finds = sim.commands_run("find");
    let mut restored = Vec::new();
    for batch in 0..BATCHES {
        let docs: Vec<Document> = (0..EACH)
            .map(|i| {
                let n = batch * EACH + i;
                let id = format!("restored-{n:03}");
                restored.push(id.clone());
                // As a backup of an hour ago holds them, in their order.
                doc! { "_id": id, "name": "bob", "text": "restored",
                "datetime": mongodb::bson::DateTime::from_millis(
                    (i64::from(first.time) - 3600) * 1000 + i64::from(n)),
                "position": mongodb::bson::Timestamp {
                    time: first.time - 3600, increment: n + 1 } }
            })
            .collect();
        // Each batch once the stream has asked for more after the one
        // before, so that it brings each in a batch of its own, as it
        // does a restore's that come slower than it reads them.
        let asked = sim.commands_run("getMore");
        lab.insert_many(docs).await.expect("restore");
        let deadline = Instant::now() + Duration::from_secs(20);
        while sim.commands_run("getMore") <= asked {
            assert!(Instant::now() < deadline, "the stream never asked for more");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(post_with_id(&app, "after", "after").await, 201);
    assert_eq!(
        subscriber.next_ids(1, Duration::from_secs(20)).await,
        ["after"],
        "the restored messages are not news"
    );
    let mut order = restored.clone();
    order.extend(["first".to_owned(), "after".to_owned()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while all_ids(&app).await != order {
        assert!(Instant::now() < deadline, "not listed in their places");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One reload: its read of the latest messages and, the first time,
    // of where strays begin.
    let reads = sim.commands_run("find") - finds;
    say(&format!("{test}: {reads} finds for {BATCHES} batches"));
    assert!(
        reads <= 2,
        "{reads} reads of the collection for a restore in {BATCHES} batches"
    );
    assert_eq!(subscriber.arrived(), Vec::<String>::new());
    app.shutdown().await;
}

/// The lab's messages, `n` of them, as its app wrote them `ago` seconds
/// ago: ObjectIds of that second, naive datetimes a millisecond apart, no
/// `position`. Their ids, oldest first.
async fn lab_history(lab: &mongodb::Collection<Document>, n: usize, ago: i64) -> Vec<String> {
    let start = mongodb::bson::DateTime::now().timestamp_millis() - ago * 1000;
    let made = u32::try_from(start / 1000).expect("seconds");
    let docs: Vec<Document> = (0..n)
        .map(|i| {
            let mut id = mongodb::bson::oid::ObjectId::new().bytes();
            id[..4].copy_from_slice(&made.to_be_bytes());
            doc! {
                "_id": mongodb::bson::oid::ObjectId::from_bytes(id),
                "name": "lab",
                "text": format!("history {i}"),
                "datetime": mongodb::bson::DateTime::from_millis(start + i as i64),
            }
        })
        .collect();
    let ids = docs
        .iter()
        .filter_map(|d| d.get_object_id("_id").ok().map(|id| id.to_hex()))
        .collect();
    lab.insert_many(docs).await.expect("the lab's history");
    ids
}

/// How many documents `/api/status` says were skipped for `kind`.
async fn skipped(app: &TestApp, kind: &str) -> u64 {
    app.get_json("/api/status").await["skipped_documents"][kind]
        .as_u64()
        .unwrap_or(0)
}

/// Waits until `/api/status` counts `n` documents skipped for `kind`.
async fn until_skipped(app: &TestApp, kind: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while skipped(app, kind).await < n {
        assert!(
            Instant::now() < deadline,
            "never counted as {kind}: {}",
            app.get_json("/api/status").await["skipped_documents"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Another client writes a document whose `position` is from 1970 (its own
/// ObjectId and datetime say now), and an import brings another
/// deployment's message with its older position. Where simplechat's
/// history begins does not move: the lab's 200 messages stay history,
/// listed, found by id and paged to, unchanged (no `position` written
/// into them), and are never sent as news, before or after a restart. The
/// 1970 position, before simplechat's first and a day before its own
/// document was written, cannot be one MongoDB gave: it is skipped and
/// counted. The imported message keeps its position, between the lab's
/// history and simplechat's messages. Before, the oldest position in the
/// collection was taken for simplechat's first: the lab's history turned
/// into strays at once (2 messages listed, a lab id 404) and was given
/// positions and sent to subscribers as news at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_older_than_simplechats_first_leave_the_labs_history_as_it_was() {
    let test = "positions_older_than_simplechats_first_leave_the_labs_history_as_it_was";
    let cluster = TestCluster::start(test).await;
    let lab = cluster.lab_messages("foreign").await;
    let history = lab_history(&lab, 200, 60).await;

    let app = start_app(&cluster, "foreign", 20).await;
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    let ours = app.post_message("ann", "ours").await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let mut subscriber = Subscriber::connect(&app).await;

    lab.insert_one(doc! {
        "_id": mongodb::bson::oid::ObjectId::new(),
        "name": "someone",
        "text": "from 1970",
        "datetime": mongodb::bson::DateTime::now(),
        "position": mongodb::bson::Timestamp { time: 1, increment: 1 },
    })
    .await
    .expect("another client's insert");
    // Another deployment's message, a year old, as an import writes it.
    let year_ago = mongodb::bson::DateTime::now().timestamp_millis() - 365 * 86_400_000;
    lab.insert_one(doc! {
        "_id": "imported",
        "name": "bob",
        "text": "from the old deployment",
        "datetime": mongodb::bson::DateTime::from_millis(year_ago),
        "position": mongodb::bson::Timestamp {
            time: u32::try_from(year_ago / 1000).expect("seconds"),
            increment: 1,
        },
    })
    .await
    .expect("the import");

    let mut expected = history.clone();
    expected.push("imported".to_owned());
    expected.push(ours.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = all_ids(&app).await;
        if listed.contains(&"imported".to_owned()) {
            assert_eq!(listed.len(), 202, "the lab's history is listed");
            assert_eq!(listed, expected);
            break;
        }
        assert!(Instant::now() < deadline, "the import is never listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until_skipped(&app, "position_before_written", 1).await;
    assert_eq!(
        app.get(&format!("/api/messages/{}", history[150]))
            .await
            .status(),
        200,
        "a lab message is found by its id"
    );
    let before_import = app
        .get_json("/api/messages?limit=2&before=imported")
        .await
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect::<Vec<_>>();
    assert_eq!(before_import, history[198..]);
    assert_eq!(walked_ids(&app, 50).await, expected);
    assert_eq!(
        lab.count_documents(doc! { "position": null })
            .await
            .expect("count"),
        200,
        "the lab's history is unchanged"
    );
    assert_eq!(post_with_id(&app, "next", "next").await, 201);
    assert_eq!(
        subscriber.next_ids(1, Duration::from_secs(20)).await,
        ["next"],
        "nothing else is news"
    );
    app.shutdown().await;

    let app = start_app(&cluster, "foreign", 20).await;
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    expected.push("next".to_owned());
    assert_eq!(all_ids(&app).await, expected, "after a restart");
    assert_eq!(
        lab.count_documents(doc! { "position": null })
            .await
            .expect("count"),
        200,
        "no position was written into the lab's history"
    );
    let mut replay = Subscriber::connect_to(&app, &format!("/api/events?after={ours}")).await;
    assert_eq!(
        replay.next_ids(1, Duration::from_secs(20)).await,
        ["next"],
        "a client reconnecting after our message is sent what came after it"
    );
    assert_eq!(post_with_id(&app, "last", "last").await, 201);
    assert_eq!(
        replay.next_ids(1, Duration::from_secs(20)).await,
        ["last"],
        "the lab's history is not sent as news"
    );
    assert_eq!(skipped(&app, "position_before_written").await, 1);
    app.shutdown().await;
}

/// A document whose `position` is from the year 2096 (no cluster time can
/// be that far ahead of the clock) is skipped alike by the cache and by
/// reads of MongoDB, and counted: the latest page, a walk two messages at
/// a time and a listing of a thousand show the same messages, and later
/// posts reach subscribers as before. Before, the cache listed it between
/// the posts before and after it while MongoDB sorted it after all of
/// them, so a walk with `before=` missed it and a long listing showed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_far_ahead_of_the_clock_is_skipped_alike_everywhere() {
    let test = "a_position_far_ahead_of_the_clock_is_skipped_alike_everywhere";
    let cluster = TestCluster::start(test).await;
    let lab = cluster.lab_messages("ahead").await;
    let app = start_app(&cluster, "ahead", 20).await;
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    let mut subscriber = Subscriber::connect(&app).await;
    for id in ["a", "b"] {
        assert_eq!(post_with_id(&app, id, id).await, 201);
    }
    assert_eq!(
        subscriber.next_ids(2, Duration::from_secs(20)).await,
        ["a", "b"]
    );
    let future = mongodb::bson::oid::ObjectId::new();
    lab.insert_one(doc! {
        "_id": future,
        "name": "someone",
        "text": "from 2096",
        "datetime": mongodb::bson::DateTime::now(),
        "position": mongodb::bson::Timestamp { time: 4_000_000_000, increment: 1 },
    })
    .await
    .expect("another client's insert");
    for id in ["c", "d"] {
        assert_eq!(post_with_id(&app, id, id).await, 201);
    }
    assert_eq!(
        subscriber.next_ids(2, Duration::from_secs(20)).await,
        ["c", "d"],
        "later posts are delivered in order"
    );
    until_skipped(&app, "position_ahead", 1).await;

    let order = ["a", "b", "c", "d"];
    assert_eq!(listed_ids(&app).await, order);
    assert_eq!(all_ids(&app).await, order);
    assert_eq!(walked_ids(&app, 2).await, order);
    assert_eq!(walked_ids(&app, 1).await, order);
    assert_eq!(
        app.get(&format!("/api/messages/{}", future.to_hex()))
            .await
            .status(),
        404
    );
    assert!(
        !subscriber.arrived().contains(&future.to_hex()),
        "never sent to subscribers"
    );
    app.shutdown().await;

    // A new instance, which reads it from MongoDB only, agrees.
    let app = start_app(&cluster, "ahead", 20).await;
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    assert_eq!(listed_ids(&app).await, order);
    assert_eq!(walked_ids(&app, 2).await, order);
    assert_eq!(skipped(&app, "position_ahead").await, 1);
    app.shutdown().await;
}

/// A store that an earlier simplechat wrote before where its history
/// begins was recorded, and where another client has since written a
/// position from 1970: the first instance takes simplechat's oldest real
/// position as the beginning, records it, and the lab's history stays
/// history. Before, the 1970 position was taken for simplechat's first: at
/// start every lab message was given a position and listed after
/// simplechat's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_the_record_begins_at_its_oldest_real_position() {
    let test = "a_store_without_the_record_begins_at_its_oldest_real_position";
    let cluster = TestCluster::start(test).await;
    let lab = cluster.lab_messages("unrecorded").await;
    let mut expected = lab_history(&lab, 20, 3600).await;
    let then = mongodb::bson::DateTime::now().timestamp_millis() - 1_800_000;
    let first = mongodb::bson::Timestamp {
        time: u32::try_from(then / 1000).expect("seconds"),
        increment: 1,
    };
    lab.insert_one(doc! {
        "_id": "earlier",
        "name": "ann",
        "text": "stored by an earlier simplechat",
        "datetime": mongodb::bson::DateTime::from_millis(then),
        "position": first,
    })
    .await
    .expect("an earlier simplechat's message");
    lab.insert_one(doc! {
        "_id": mongodb::bson::oid::ObjectId::new(),
        "name": "someone",
        "text": "from 1970",
        "datetime": mongodb::bson::DateTime::now(),
        "position": mongodb::bson::Timestamp { time: 1, increment: 1 },
    })
    .await
    .expect("another client's insert");
    expected.push("earlier".to_owned());

    let app = start_app(&cluster, "unrecorded", 20).await;
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    assert_eq!(all_ids(&app).await, expected);
    assert_eq!(
        lab.count_documents(doc! { "position": null })
            .await
            .expect("count"),
        20,
        "no position was written into the lab's history"
    );
    assert_eq!(skipped(&app, "position_before_written").await, 1);
    let record = lab
        .client()
        .database("unrecorded")
        .collection::<Document>("simplechat_meta")
        .find_one(doc! { "_id": "history" })
        .await
        .expect("read")
        .expect("recorded");
    assert_eq!(record.get_timestamp("first_position"), Ok(first));
    app.shutdown().await;
}

/// Another client made `name` unique (`createIndex({name: 1}, {unique:
/// true})`). A post by a name already used is refused by that index, not
/// because its id is taken: the answer says at once that it was not stored,
/// names the index and says an operator must drop it, and `/api/status`
/// says so too. Before, the duplicate key was taken for a clash on `_id`
/// with a write not yet on a majority, and the post waited out the write
/// timeout to answer that its outcome was unknown and a retry was safe,
/// which no retry could ever make true.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_index_of_another_client_refuses_a_post_at_once_naming_it() {
    let cluster =
        TestCluster::start("a_unique_index_of_another_client_refuses_a_post_at_once_naming_it")
            .await;
    let app = start_app(&cluster, "foreignunique", 20).await;
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    let lab = cluster.lab_messages("foreignunique").await;
    let unique = mongodb::IndexModel::builder()
        .keys(doc! { "name": 1 })
        .options(
            mongodb::options::IndexOptions::builder()
                .unique(true)
                .build(),
        )
        .build();
    lab.create_index(unique)
        .await
        .expect("another client's index");

    app.post_message("bob", "hello").await;
    let refused = app
        .post_json(
            "/api/messages",
            &json!({ "name": "bob", "text": "hello 2", "id": "second" }),
        )
        .await;
    assert_eq!(refused.status(), 503);
    let body = refused.text().await.expect("body");
    assert!(body.contains("not stored"), "{body}");
    assert!(body.contains("name_1"), "{body}");
    assert!(body.contains("did not create"), "{body}");
    assert!(!body.contains("outcome is unknown"), "{body}");
    assert!(
        lab.find_one(doc! { "_id": "second" })
            .await
            .expect("find")
            .is_none(),
        "nothing is stored"
    );
    let status = app.get_json("/api/status").await;
    assert!(
        status.to_string().contains("name_1"),
        "/api/status names the index: {status}"
    );
    // Another name is stored as before.
    app.post_message("ann", "hello").await;
    app.shutdown().await;
}

/// Another client drops the collection while the app runs: its indexes go
/// with it, and the app creates its order index again, so listings keep
/// using it (on mongod, a listing without it sorts in memory). Before, the
/// index came back only with a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_index_is_created_again_after_the_collection_is_dropped() {
    let cluster =
        TestCluster::start("the_order_index_is_created_again_after_the_collection_is_dropped")
            .await;
    let app = start_app(&cluster, "droppedindex", 20).await;
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    app.post_message("ann", "before the drop").await;
    let lab = cluster.lab_messages("droppedindex").await;
    let index_names = || async { lab.list_index_names().await.unwrap_or_default() };
    let order_index = "position_1_datetime_1__id_1".to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !index_names().await.contains(&order_index) {
        assert!(Instant::now() < deadline, "no order index at start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    lab.drop()
        .await
        .expect("another client drops the collection");
    app.post_message("ann", "after the drop").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let names = index_names().await;
        if names.contains(&order_index) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the order index was not created again: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = listed_ids(&app).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    app.shutdown().await;
}

/// The lab's history (documents without `position`, ObjectIds and
/// datetimes from long ago) restored while the app runs: another client
/// drops the collection and inserts the same documents again, one by one,
/// as `mongorestore` of an unchanged backup does. They are history coming
/// back, not the lab's app's new posts: they keep no position, no
/// subscriber is sent them, and they are listed in their places, before
/// what is posted next. Before, each was given a position and sent to
/// subscribers as new, and the lab's history became the newest messages
/// for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_labs_history_restored_while_the_app_runs_stays_history() {
    const HISTORY: u32 = 1000;
    let cluster =
        TestCluster::start("the_labs_history_restored_while_the_app_runs_stays_history").await;
    let lab = cluster.lab_messages("restoredlab").await;
    let history: Vec<Document> = (0..HISTORY)
        .map(|i| {
            let secs = 1_600_000_000 + i * 60;
            doc! {
                "_id": object_id_at(secs),
                "name": "lab",
                "text": format!("old {i}"),
                "datetime": mongodb::bson::DateTime::from_millis(i64::from(secs) * 1000),
            }
        })
        .collect();
    lab.insert_many(history.clone()).await.expect("the history");
    let app = start_app(&cluster, "restoredlab", 20).await;
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    let mut subscriber = Subscriber::connect(&app).await;

    lab.drop().await.expect("the restore drops the collection");
    for doc in history {
        lab.insert_one(doc).await.expect("the restore's insert");
    }
    assert_eq!(post_with_id(&app, "after", "after").await, 201);
    assert_eq!(
        subscriber.next_ids(1, Duration::from_secs(30)).await,
        ["after"],
        "the restored history is not news"
    );
    let positioned = lab
        .count_documents(doc! { "position": { "$exists": true } })
        .await
        .expect("count");
    assert_eq!(positioned, 1, "only the post has a position");
    let mut expected: Vec<String> = (1..HISTORY)
        .map(|i| object_id_at(1_600_000_000 + i * 60).to_hex())
        .collect();
    expected.push("after".to_owned());
    let deadline = Instant::now() + Duration::from_secs(20);
    while all_ids(&app).await != expected {
        assert!(Instant::now() < deadline, "not listed in their places");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(subscriber.arrived(), Vec::<String>::new());
    app.shutdown().await;
}

// Subscribers that connect to an instance before its first load.

/// Holds, under `label`, the next read of the messages in the store order
/// whose `limit` `wanted` accepts: a page of the latest (a first load's,
/// more than one) or the newest message alone (a live start's, one).
fn hold_read_of_messages(sim: &replset_sim::Cluster, label: &str, wanted: fn(i64) -> bool) {
    sim.hold_next_as(label, "find", HoldPoint::BeforeRunning, move |command| {
        command.get_str("find") == Ok("messages")
            && command.contains_key("sort")
            && wanted(number_in(command, "limit"))
    });
}

/// A subscriber that connects to an instance before its first load (the
/// instance is starting, its cache empty) starts after the newest message
/// the store has. That was read after the subscription, and after the
/// stream had opened (its response sent): a message stored in between
/// reached the subscriber only if the subscriber saw it before the load
/// was done, and was otherwise taken for one it had and never sent; the
/// simulator holds the read of the newest message to store one there. The
/// stream now opens once it knows where it starts: every message stored
/// after it opened reaches the subscriber, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_connecting_before_the_first_load_gets_every_message_stored_after_it_opened() {
    let test =
        "a_subscriber_connecting_before_the_first_load_gets_every_message_stored_after_it_opened";
    let cluster = sim_cluster(test).await;
    let sim = cluster.sim().expect("simulator");
    cluster
        .lab_messages("firstopen")
        .await
        .insert_one(doc! { "_id": "first", "name": "bob", "text": "first",
        "datetime": mongodb::bson::DateTime::now(),
        "position": mongodb::bson::Timestamp { time: 0, increment: 0 } })
        .await
        .expect("an earlier message");
    hold_read_of_messages(sim, "load", |limit| limit > 1);
    let app = start_app_with(
        &cluster,
        "firstopen",
        20,
        &[("heartbeat_secs", json!(3600))],
    )
    .await;
    until_held(sim, "load").await;
    hold_read_of_messages(sim, "newest", |limit| limit == 1);
    let opened = std::sync::atomic::AtomicBool::new(false);
    let (mut subscriber, opened_before_during) = tokio::join!(
        async {
            let response = app.get("/api/events").await;
            opened.store(true, std::sync::atomic::Ordering::SeqCst);
            Subscriber::reading(response).await
        },
        async {
            until_held(sim, "newest").await;
            let opened_before_during = opened.load(std::sync::atomic::Ordering::SeqCst);
            // Published at once (the instance has not loaded yet), and
            // read as the newest message.
            assert_eq!(post_with_id(&app, "during", "during").await, 201);
            sim.release("load");
            wait_for_change_stream(&app, Duration::from_secs(20)).await;
            sim.release("newest");
            opened_before_during
        }
    );
    assert_eq!(post_with_id(&app, "after", "after").await, 201);
    let expected: &[&str] = if opened_before_during {
        &["during", "after"]
    } else {
        &["after"]
    };
    assert_eq!(
        subscriber
            .next_ids(expected.len(), Duration::from_secs(20))
            .await,
        expected,
        "every message stored after the stream opened, once, in order"
    );
    assert!(
        !opened_before_during,
        "the stream opened before it knew where it starts"
    );
    assert_eq!(listed_ids(&app).await, ["first", "during", "after"]);
    assert_eq!(subscriber.arrived(), Vec::<String>::new());
    app.shutdown().await;
}

/// Subscribers that connect to an instance before its first load get what
/// another instance stores and what this one stores before that load in
/// the store order, once: one that starts live, one that resumes from a
/// message (`after`, as `Last-Event-ID`) and one that names no message id
/// (it gets a `reset` first). The instance publishes its own post at once
/// before its load, and only the load brings in the other instance's
/// message: before, the post was sent as it came, and the other message,
/// which comes before it, never (the resuming subscriber did not look for
/// what the load brought in; the others looked only after the post).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_connecting_before_the_first_load_get_what_is_stored_in_the_store_order() {
    let test = "subscribers_connecting_before_the_first_load_get_what_is_stored_in_the_store_order";
    let cluster = sim_cluster(test).await;
    let sim = cluster.sim().expect("simulator");
    let other = start_app(&cluster, "firstorder", 20).await;
    wait_for_change_stream(&other, Duration::from_secs(20)).await;
    assert_eq!(post_with_id(&other, "first", "first").await, 201);
    hold_read_of_messages(sim, "load", |limit| limit > 1);
    let app = start_app_with(
        &cluster,
        "firstorder",
        20,
        &[("heartbeat_secs", json!(3600))],
    )
    .await;
    until_held(sim, "load").await;
    let mut subscribers = Vec::new();
    for path in [
        "/api/events",
        "/api/events?after=first",
        "/api/events?after=not%20an%20id",
    ] {
        subscribers.push((path, Subscriber::connect_to(&app, path).await));
    }

    assert_eq!(post_with_id(&other, "elsewhere", "elsewhere").await, 201);
    assert_eq!(post_with_id(&app, "here", "here").await, 201);
    sim.release("load");
    for (path, subscriber) in &mut subscribers {
        assert_eq!(
            subscriber.next_ids(2, Duration::from_secs(20)).await,
            ["elsewhere", "here"],
            "{path}"
        );
    }
    assert_eq!(listed_ids(&app).await, ["first", "elsewhere", "here"]);
    assert_eq!(post_with_id(&app, "after", "after").await, 201);
    for (path, subscriber) in &mut subscribers {
        assert_eq!(
            subscriber.next_ids(1, Duration::from_secs(20)).await,
            ["after"],
            "{path}: once"
        );
        assert_eq!(subscriber.arrived(), Vec::<String>::new(), "{path}");
    }
    app.shutdown().await;
    other.shutdown().await;
}

/// Runs `script` with python3 and pymongo (a client nobody here wrote,
/// which can send raw BSON), with `args` after it; its standard output.
/// `None`, after saying so loudly, when pymongo cannot be imported
/// (`SIMPLECHAT_REQUIRE_PYMONGO=1` makes that a failure).
fn pymongo(test: &str, script: &str, args: &[&str]) -> Option<String> {
    let available = std::process::Command::new("python3")
        .args(["-c", "import pymongo"])
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        assert!(
            std::env::var_os("SIMPLECHAT_REQUIRE_PYMONGO").is_none(),
            "SIMPLECHAT_REQUIRE_PYMONGO is set but python3 cannot import pymongo"
        );
        say(&format!(
            "SKIPPED: {test}, because python3 cannot import pymongo (pip install pymongo)"
        ));
        return None;
    }
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "pymongo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// pymongo, writing raw BSON, stores documents whose strings are not UTF-8
/// (four bytes of Latin-1, `caf\xe9`), as mongod lets any client do (it
/// checks BSON structure only): with `phase` `history`, the lab's history,
/// where such a `text`, `name` and string `_id` lie among messages old
/// enough to be read only from MongoDB and one among the latest, which the
/// cache's first load reads, and a message whose only such string is in a
/// field simplechat does not read; with `phase` `live`, one without a
/// position (the lab's app) and one with the empty position simplechat's
/// own inserts carry, while the app runs. Prints the ids as JSON.
const NOT_UTF8_SCRIPT: &str = r#"
import sys, json, datetime
import bson
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
db = MongoClient(sys.argv[1], serverSelectionTimeoutMS=10000).get_default_database()
start = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(hours=2)

def at(ms):
    return start + datetime.timedelta(milliseconds=ms)

def message(ms, **fields):
    d = {"_id": bson.ObjectId(), "name": "lab", "text": "ok", "datetime": at(ms)}
    d.update(fields)
    return d

def not_utf8(d):
    # "XXXX" in place of four bytes of Latin-1, where UTF-8 was due.
    return RawBSONDocument(bson.encode(d).replace(b"XXXX", b"caf\xe9", 1))

if sys.argv[2] == "history":
    good, bad, docs = [], [], []
    def keep(d):
        good.append(str(d["_id"])); docs.append(d)
    def spoil(d):
        if isinstance(d["_id"], bson.ObjectId):
            bad.append(str(d["_id"]))
        docs.append(not_utf8(d))
    keep(message(0, text="h0"))
    spoil(message(1, text="XXXX"))
    keep(message(2, text="h1"))
    spoil(message(3, name="XXXX"))
    keep(message(4, text="h2"))
    extra = message(5, text="extra", note={"said": ["XXXX"]})
    good.append(str(extra["_id"])); docs.append(not_utf8(extra))
    keep(message(6, text="h3"))
    spoil(message(7, _id="XXXX"))
    for i in range(1100):
        keep(message(10 + i, text="f%d" % i))
    spoil(message(2000, text="XXXX"))
    keep(message(2001, text="last"))
    db.messages.insert_many(docs)
    print(json.dumps({"good": good, "bad": bad, "extra": str(extra["_id"])}))
else:
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    lab = message(0, text="XXXX", datetime=now)
    ours = message(0, _id="notutf8-live", text="XXXX", datetime=now, position=bson.Timestamp(0, 0))
    db.messages.insert_one(not_utf8(lab))
    db.messages.insert_one(not_utf8(ours))
    print(json.dumps({"bad": [str(lab["_id"]), "notutf8-live"]}))
"#;

/// Walks the history by `after=` from `from`, `limit` at a time, `steps`
/// times: what it met, in order.
async fn walked_forward(app: &TestApp, from: &str, limit: usize, steps: usize) -> Vec<String> {
    let mut walked = vec![from.to_owned()];
    for _ in 0..steps {
        let last = walked.last().cloned().expect("a message");
        let page = app
            .get_json(&format!("/api/messages?limit={limit}&after={last}"))
            .await;
        let page: Vec<String> = page
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|m| m["id"].as_str().map(str::to_owned))
            .collect();
        if page.is_empty() {
            break;
        }
        walked.extend(page);
    }
    walked
}

/// Documents whose `name`, `text` or string `_id` is not UTF-8 (another
/// client wrote raw bytes; mongod stores them, as it checks BSON structure
/// only) are skipped and counted under `utf8` everywhere the store reads:
/// the cache's first load, paging from MongoDB both ways, one at a time
/// too, a message by its id (404), and the change stream, whose
/// subscribers still get the posts that follow, in order. A message whose
/// only such string is in a field simplechat does not read is listed as
/// any other. Before, the driver refused the whole batch: the first load
/// failed, so did every listing that met one, and the change stream
/// failed on the event and started over on it for ever, so subscribers
/// got nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strings_that_are_not_utf8_are_skipped_and_the_rest_listed() {
    let test = "strings_that_are_not_utf8_are_skipped_and_the_rest_listed";
    let cluster = TestCluster::start(test).await;
    let uri = cluster.uri("notutf8");
    let Some(written) = pymongo(test, NOT_UTF8_SCRIPT, &[&uri, "history"]) else {
        return;
    };
    let written: serde_json::Value = serde_json::from_str(&written).expect("ids");
    let ids = |key: &str| -> Vec<String> {
        written[key]
            .as_array()
            .expect("ids")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let (good, bad) = (ids("good"), ids("bad"));
    let extra = written["extra"].as_str().expect("id").to_owned();

    let app = start_app(&cluster, "notutf8", 20).await;
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    // The cache's first load met the one among the latest.
    until_skipped(&app, "utf8", 1).await;
    assert_eq!(listed_ids(&app).await, good[good.len() - 100..]);
    assert_eq!(all_ids(&app).await, good[good.len() - 1000..]);

    // Paging from MongoDB: the whole history, and one at a time across the
    // old ones both ways.
    assert_eq!(walked_ids(&app, 100).await, good);
    let (first, fifth) = (&good[0], &good[5]);
    let back = app
        .get_json(&format!("/api/messages?limit=5&before={}", good[6]))
        .await;
    let back: Vec<&str> = back
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(
        back,
        good[1..6].iter().map(String::as_str).collect::<Vec<_>>()
    );
    let mut one_back = vec![fifth.clone()];
    loop {
        let page = app
            .get_json(&format!("/api/messages?limit=1&before={}", one_back[0]))
            .await;
        let Some(id) = page[0]["id"].as_str() else {
            break;
        };
        one_back.insert(0, id.to_owned());
    }
    assert_eq!(one_back, good[..6]);
    assert_eq!(walked_forward(&app, first, 1, 5).await, good[..6]);
    assert_eq!(walked_forward(&app, first, 2, 3).await, good[..7]);
    assert_eq!(skipped(&app, "utf8").await, 4, "each counted once");

    // By id: a document that is no message is not found; the message with
    // an unread field that is not UTF-8 is.
    assert_eq!(
        app.get(&format!("/api/messages/{}", bad[0])).await.status(),
        404
    );
    let found = app.get_json(&format!("/api/messages/{extra}")).await;
    assert_eq!(found["text"], "extra");

    // Live: the change stream skips them and goes on.
    let mut subscriber = Subscriber::connect(&app).await;
    assert_eq!(post_with_id(&app, "before", "before").await, 201);
    let Some(live) = pymongo(test, NOT_UTF8_SCRIPT, &[&uri, "live"]) else {
        return;
    };
    assert!(live.contains("notutf8-live"), "{live}");
    assert_eq!(post_with_id(&app, "after", "after").await, 201);
    assert_eq!(post_with_id(&app, "later", "later").await, 201);
    assert_eq!(
        subscriber.next_ids(3, Duration::from_secs(20)).await,
        ["before", "after", "later"]
    );
    until_skipped(&app, "utf8", 6).await;
    let mut expected: Vec<String> = good[good.len() - 97..].to_vec();
    expected.extend(["before", "after", "later"].map(str::to_owned));
    assert_eq!(listed_ids(&app).await, expected);
    assert_eq!(
        app.get_json("/api/status").await["skipped_documents"],
        json!({ "utf8": 6 }),
        "nothing else skipped: the unread field skips nothing"
    );
    app.shutdown().await;
}

// --- The order index dropped by itself --------------------------------------

/// The names of the indexes on `lab`'s collection, read by another client.
async fn index_names(lab: &mongodb::Collection<Document>) -> Vec<String> {
    lab.list_index_names().await.unwrap_or_default()
}

/// Another client drops the order index alone (`dropIndex`, as an operator
/// tidying indexes would) while the app runs: the app finds it gone and
/// creates it again, without a restart, and listings, the latest and
/// older pages read from MongoDB, keep the store order. Before, the index
/// came back only at the next start, and until then every listing on
/// mongod sorted the whole collection in memory (and on MongoDB before
/// 6.0 failed past 100 MB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_index_dropped_by_another_client_is_created_again() {
    const ORDER_INDEX: &str = "position_1_datetime_1__id_1";
    let cluster =
        TestCluster::start("the_order_index_dropped_by_another_client_is_created_again").await;
    let app = start_app(&cluster, "droppedorderindex", 20).await;
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    for id in ["first", "second", "third"] {
        assert_eq!(post_with_id(&app, id, id).await, 201);
    }
    let lab = cluster.lab_messages("droppedorderindex").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !index_names(&lab).await.iter().any(|n| n == ORDER_INDEX) {
        assert!(Instant::now() < deadline, "no order index at start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    lab.drop_index(ORDER_INDEX)
        .await
        .expect("another client drops the order index");
    assert!(
        !index_names(&lab).await.iter().any(|n| n == ORDER_INDEX),
        "the order index was dropped"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let names = index_names(&lab).await;
        if names.iter().any(|n| n == ORDER_INDEX) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the order index was not created again: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(listed_ids(&app).await, ["first", "second", "third"]);
    assert_eq!(
        walked_ids(&app, 1).await,
        ["first", "second", "third"],
        "paged from MongoDB, one at a time"
    );
    assert_eq!(post_with_id(&app, "fourth", "fourth").await, 201);
    let deadline = Instant::now() + Duration::from_secs(20);
    while listed_ids(&app).await != ["first", "second", "third", "fourth"] {
        assert!(Instant::now() < deadline, "{:?}", listed_ids(&app).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.shutdown().await;
}

// Event streams that the cache cannot place: more messages than it holds
// stored before its first load, a reset of the cache under a live stream,
// and streams that wait for the cache.

/// More messages than the cache holds (1,000), stored by another writer
/// into an empty store while an instance makes its first load, all reach
/// a subscriber that connected to that instance before the load: every
/// one, in the store order, once. Before, the subscriber, placed before
/// any message was stored, caught up with "the latest" page once the load
/// was done, and the 200 oldest never came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_messages_than_the_cache_holds_stored_during_the_first_load_all_reach_a_live_subscriber(
) {
    let test =
        "more_messages_than_the_cache_holds_stored_during_the_first_load_all_reach_a_live_subscriber";
    let cluster = sim_cluster(test).await;
    let sim = cluster.sim().expect("simulator");
    hold_read_of_messages(sim, "load", |limit| limit > 1);
    let app = start_app_with(
        &cluster,
        "manyfirst",
        20,
        &[("heartbeat_secs", json!(3600))],
    )
    .await;
    until_held(sim, "load").await;
    let mut subscriber = Subscriber::connect(&app).await;

    // Stored as another instance stores them: the server stamps each
    // position, in the order of the batch.
    let stored: Vec<String> = (0..1200).map(|i| format!("m{i:04}")).collect();
    let documents = stored.iter().map(|id| {
        doc! { "_id": id, "name": "bob", "text": id,
        "datetime": mongodb::bson::DateTime::now(),
        "position": mongodb::bson::Timestamp { time: 0, increment: 0 } }
    });
    cluster
        .lab_messages("manyfirst")
        .await
        .insert_many(documents)
        .await
        .expect("stored by another writer");
    sim.release("load");
    assert_eq!(
        subscriber
            .next_ids(stored.len(), Duration::from_secs(30))
            .await,
        stored,
        "every message stored after the stream opened, once, in order"
    );
    assert_eq!(post_with_id(&app, "after", "after").await, 201);
    assert_eq!(
        subscriber.next_ids(1, Duration::from_secs(20)).await,
        ["after"]
    );
    assert_eq!(subscriber.arrived(), Vec::<String>::new());
    app.shutdown().await;
}

/// A primary that vanishes (a machine powered off, its network gone: no
/// connection is closed or refused, nothing more is answered) loses no
/// acknowledged message and stops no instance's live updates. Each
/// instance's change stream waits in a `getMore` on that primary, and the
/// driver has no socket timeout; what ends the wait is the driver's
/// monitor of that member: once it hears of the new primary, its next
/// check times out after `connectTimeoutMS` (5 s here, as in production),
/// which clears the member's pool and interrupts the connections in use
/// (the CMAP specification's `interruptInUseConnections`), and the stream
/// resumes on the new primary. Simulator only: it keeps the vanished
/// member's sockets open and silent (a real mongod would need SIGSTOP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_vanishes_without_closing_its_connections_loses_nothing_and_stops_no_stream()
{
    let test =
        "a_primary_that_vanishes_without_closing_its_connections_loses_nothing_and_stops_no_stream";
    let cluster = sim_cluster(test).await;
    let sim = cluster.sim().expect("simulator");
    let write_timeout = 40;
    let app = start_app(&cluster, "vanish", write_timeout).await;
    let other = start_app(&cluster, "vanish", write_timeout).await;
    let mut subscriber = Subscriber::connect(&app).await;
    let mut other_subscriber = Subscriber::connect(&other).await;
    let first = post_with_id(&app, "before", "before").await;
    assert_eq!(first, 201);
    subscriber
        .wait_for(&["before".to_owned()], Duration::from_secs(20))
        .await;
    other_subscriber
        .wait_for(&["before".to_owned()], Duration::from_secs(20))
        .await;

    let primary = cluster.primary().await.expect("a primary");
    say(&format!("{test}: member {primary} vanishes"));
    sim.vanish(primary);
    let vanished = Instant::now();
    let mut acknowledged = Vec::new();
    let mut refused = Vec::new();
    for n in 0..200 {
        if acknowledged.len() >= 10 || vanished.elapsed() > Duration::from_secs(150) {
            break;
        }
        let id = format!("v{n:03}");
        let response = app
            .post_json(
                "/api/messages",
                &json!({ "name": "writer", "text": format!("message {n}"), "id": id }),
            )
            .await;
        match response.status().as_u16() {
            201 | 200 => acknowledged.push(id),
            503 => {
                assert!(
                    response.headers().contains_key("retry-after"),
                    "503 without Retry-After"
                );
                refused.push(id);
            }
            status => panic!(
                "POST answered {status}: {}",
                response.text().await.unwrap_or_default()
            ),
        }
    }
    let first_ack = vanished.elapsed();
    say(&format!(
        "{test}: {} acknowledged, {} refused (503) within {first_ack:?}",
        acknowledged.len(),
        refused.len()
    ));
    assert_eq!(acknowledged.len(), 10, "writes resumed on the new primary");
    subscriber
        .wait_for(&acknowledged, Duration::from_secs(60))
        .await;
    other_subscriber
        .wait_for(&acknowledged, Duration::from_secs(60))
        .await;
    say(&format!(
        "{test}: both instances' subscribers had every acknowledged message {:?} after the primary vanished",
        vanished.elapsed()
    ));
    for instance in [&app, &other] {
        let listed = stored_ids(instance).await;
        let missing: Vec<_> = acknowledged
            .iter()
            .filter(|id| !listed.contains(*id))
            .collect();
        assert!(missing.is_empty(), "acknowledged, not listed: {missing:?}");
    }

    // Back (its sockets closed as the machine restarts): it rejoins, and
    // what is posted next reaches both.
    sim.restart(primary).await.expect("restart");
    assert_eq!(post_with_id(&app, "back", "back").await, 201);
    subscriber
        .wait_for(&["back".to_owned()], Duration::from_secs(30))
        .await;
    other_subscriber
        .wait_for(&["back".to_owned()], Duration::from_secs(30))
        .await;
    app.shutdown().await;
    other.shutdown().await;
}

/// A subscriber placed before the instance's first load, on an empty
/// store, is sent what the cache holds once the load is done, and nothing
/// ahead of it. It used to read the store from its oldest message: a
/// message another instance had just stored, which this instance's change
/// stream had yet to bring, was on the stream while this instance's
/// listings did not show it (a page reloaded then lost it from view). The
/// simulator holds the first load's reply until such a message is stored,
/// and the opening of the change stream that would bring it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_is_not_sent_a_message_before_the_instances_listings_show_it() {
    let test = "a_subscriber_is_not_sent_a_message_before_the_instances_listings_show_it";
    let cluster = sim_cluster(test).await;
    let sim = cluster.sim().expect("simulator");
    // The load's read of the latest messages, the newest first.
    sim.hold_next_as("load", "find", HoldPoint::BeforeReplying, |command| {
        command.get_str("find") == Ok("messages")
            && number_in(command, "limit") > 1
            && command
                .get_document("sort")
                .is_ok_and(|sort| sort.values().all(|v| v.as_i32() == Some(-1)))
    });
    sim.hold_next_as("open", "aggregate", HoldPoint::BeforeRunning, |command| {
        command.get_str("aggregate") == Ok("messages")
            && command
                .get_array("pipeline")
                .ok()
                .and_then(|stages| stages.first())
                .and_then(|stage| stage.as_document())
                .is_some_and(|stage| stage.contains_key("$changeStream"))
    });
    let app = start_app_with(
        &cluster,
        "aheadofcache",
        20,
        &[("heartbeat_secs", json!(3600))],
    )
    .await;
    until_held(sim, "load").await;
    let mut subscriber = Subscriber::connect(&app).await;
    // After the load's read, before this instance's change stream runs.
    cluster
        .lab_messages("aheadofcache")
        .await
        .insert_one(
            doc! { "_id": "elsewhere", "name": "bob", "text": "stored elsewhere",
            "datetime": mongodb::bson::DateTime::now(),
            "position": mongodb::bson::Timestamp { time: 0, increment: 0 } },
        )
        .write_concern(mongodb::options::WriteConcern::majority())
        .await
        .expect("stored by another instance");
    sim.release("load");
    // Listings come from the store until the cache is complete, then
    // from the cache, which does not have the message yet.
    let deadline = Instant::now() + Duration::from_secs(20);
    while stored_ids(&app).await.contains("elsewhere") {
        assert!(Instant::now() < deadline, "the first load never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A subscriber waiting for the cache catches up as soon as it is
    // complete: given time to.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = subscriber.arrived();
    let listed = stored_ids(&app).await;
    assert!(
        sent.iter().all(|id| listed.contains(id)),
        "sent {sent:?} while the listing had {listed:?}"
    );

    sim.release("open");
    let mut sent = sent;
    if sent.is_empty() {
        sent = subscriber.next_ids(1, Duration::from_secs(20)).await;
    }
    assert_eq!(sent, ["elsewhere"]);
    assert!(stored_ids(&app).await.contains("elsewhere"));
    assert_eq!(post_with_id(&app, "after", "after").await, 201);
    assert_eq!(
        subscriber.next_ids(1, Duration::from_secs(20)).await,
        ["after"],
        "once, then what follows"
    );
    app.shutdown().await;
}

/// The `event:` and `id:` of every event a stream opened by `response`
/// sends (`message` and `reset`), in order.
async fn events_of(response: reqwest::Response) -> mpsc::UnboundedReceiver<(String, String)> {
    assert_eq!(response.status(), 200);
    let (tx, events) = mpsc::unbounded_channel();
    let (opened, open) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut opened = Some(opened);
        let mut body = response.bytes_stream();
        let mut buffer = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let frame: String = buffer.drain(..end + 2).collect();
                if let Some(opened) = opened.take() {
                    let _ = opened.send(());
                }
                let field = |name: &str| frame.lines().find_map(|l| l.strip_prefix(name));
                if let (Some(event), Some(id)) = (field("event: "), field("id: ")) {
                    if tx.send((event.to_owned(), id.to_owned())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), open)
        .await
        .expect("the event stream starts")
        .expect("reader running");
    events
}

/// The next event of `events`, as `(event, id)`.
async fn next_event(events: &mut mpsc::UnboundedReceiver<(String, String)>) -> (String, String) {
    tokio::time::timeout(Duration::from_secs(20), events.recv())
        .await
        .expect("an event in time")
        .expect("the stream is open")
}

/// After the store lost what a live subscriber was sent: its next event is
/// a `reset` naming `first`, the newest message now; the next post is sent
/// as a message; the listing is those two.
async fn reset_then_live(
    app: &TestApp,
    events: &mut mpsc::UnboundedReceiver<(String, String)>,
    first: &str,
) {
    assert_eq!(
        next_event(events).await,
        ("reset".to_owned(), first.to_owned()),
        "what the subscriber has is gone"
    );
    assert_eq!(post_with_id(app, "later", "later").await, 201);
    assert_eq!(
        next_event(events).await,
        ("message".to_owned(), "later".to_owned())
    );
    assert_eq!(listed_ids(app).await, [first, "later"]);
}

/// A subscriber following live while the store loses every message (another
/// client drops the collection): the instance's cache is reset from the
/// empty store, a new epoch of its arrivals, and the next message posted
/// is the first of that epoch the subscriber is sent. It is told, with a
/// `reset` naming that message, that what it has is gone (a page then
/// shows the latest messages), then goes on live. Before, a message of a
/// newer epoch than the subscriber's place was sent as the next message:
/// the page went on showing messages the store no longer has, above it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_subscriber_whose_messages_the_store_lost_is_sent_a_reset() {
    let test = "a_live_subscriber_whose_messages_the_store_lost_is_sent_a_reset";
    let cluster = sim_cluster(test).await;
    let sim = cluster.sim().expect("simulator");
    let app = start_app_with(&cluster, "lost", 20, &[("heartbeat_secs", json!(3600))]).await;
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    let mut events = events_of(app.get("/api/events").await).await;
    assert_eq!(post_with_id(&app, "before", "before").await, 201);
    assert_eq!(
        next_event(&mut events).await,
        ("message".to_owned(), "before".to_owned())
    );

    // The reopened change stream's read of the latest messages (one more
    // than the cache holds; a catch-up reads a page of 1,000) waits, so the
    // cache is reset from the empty store before anything is posted.
    hold_read_of_messages(sim, "reload", |limit| limit > 1000);
    cluster
        .lab_messages("lost")
        .await
        .drop()
        .await
        .expect("another client drops the collection");
    until_held(sim, "reload").await;
    sim.release("reload");
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    assert_eq!(listed_ids(&app).await, Vec::<String>::new());

    assert_eq!(post_with_id(&app, "after", "after").await, 201);
    reset_then_live(&app, &mut events, "after").await;
    app.shutdown().await;
}

/// A backup restored (`mongorestore`, which keeps every field) after the
/// collection was dropped or emptied brings back messages subscribers were
/// sent before: history coming back, listed in its place, not sent again.
/// Before, the store's loss made every restored message look newer than
/// anything delivered, and each was sent to every subscriber once more.
async fn a_restore_after_the_loss_is_not_sent_again(test: &str, db: &str, drop: bool, wait: u64) {
    let cluster = TestCluster::start(test).await;
    // A short write deadline: a restored message is one more than 2 s + 5 s
    // older than its commit.
    let app = start_app_with(&cluster, db, 2, &[("heartbeat_secs", json!(3600))]).await;
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    let mut events = events_of(app.get("/api/events").await).await;
    let sent: Vec<String> = (1..=12).map(|i| format!("m{i:02}")).collect();
    let sent: Vec<&str> = sent.iter().map(String::as_str).collect();
    for &id in &sent {
        assert_eq!(post_with_id(&app, id, id).await, 201);
        assert_eq!(
            next_event(&mut events).await,
            ("message".to_owned(), id.to_owned())
        );
    }
    tokio::time::sleep(Duration::from_secs(wait)).await;

    let lab = cluster.lab_messages(db).await;
    let backup: Vec<Document> = lab
        .find(doc! {})
        .await
        .expect("back up")
        .try_collect()
        .await
        .expect("back up");
    if drop {
        lab.drop()
            .await
            .expect("another client drops the collection");
    } else {
        lab.delete_many(doc! {})
            .await
            .expect("another client empties the collection");
    }
    // As an operator's restore follows the drop, not waiting for the
    // instances to notice it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // In batches, as mongorestore writes, which the change stream brings
    // apart.
    for batch in backup.chunks(4) {
        lab.insert_many(batch.to_vec()).await.expect("restore");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    until_listed(&app, &sent, "the restore not listed").await;

    assert_eq!(post_with_id(&app, "after", "after").await, 201);
    assert_eq!(
        next_event(&mut events).await,
        ("message".to_owned(), "after".to_owned()),
        "the restored messages are not news"
    );
    let mut order = sent.clone();
    order.push("after");
    assert_eq!(listed_ids(&app).await, order);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restored_after_the_collection_was_dropped_is_not_sent_again() {
    let test = "a_backup_restored_after_the_collection_was_dropped_is_not_sent_again";
    a_restore_after_the_loss_is_not_sent_again(test, "restoredrop", true, 8).await;
}

/// A backup taken moments before the loss: its positions are not far
/// behind their restore, yet subscribers were sent them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_just_before_the_collection_was_dropped_is_not_sent_again() {
    let test = "a_backup_taken_just_before_the_collection_was_dropped_is_not_sent_again";
    a_restore_after_the_loss_is_not_sent_again(test, "restorerecent", true, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restored_after_the_collection_was_emptied_is_not_sent_again() {
    let test = "a_backup_restored_after_the_collection_was_emptied_is_not_sent_again";
    a_restore_after_the_loss_is_not_sent_again(test, "restoreempty", false, 8).await;
}

/// A document the lab's app wrote that is no message (here a name that is
/// no string), skipped by running instances, then corrected by hand: every
/// instance lists it once, the listing and a walk back agree. Before, it
/// was found by id and by paging back, but the listings answered from the
/// cache never showed it until every instance restarted, and a restarted
/// instance disagreed with the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_document_corrected_by_hand_is_listed_by_every_instance() {
    let test = "a_skipped_document_corrected_by_hand_is_listed_by_every_instance";
    let cluster = TestCluster::start(test).await;
    let settings = [
        ("mongodb_uri", json!(cluster.uri("corrected"))),
        ("write_timeout_secs", json!(20)),
    ];
    let (a, b) = tokio::join!(spawn_app(&settings), spawn_app(&settings));
    for app in [&a, &b] {
        wait_for_change_stream(app, Duration::from_secs(20)).await;
    }
    assert_eq!(post_with_id(&a, "first", "first").await, 201);
    let lab = cluster.lab_messages("corrected").await;
    let bad = mongodb::bson::oid::ObjectId::new();
    lab.insert_one(doc! {
        "_id": bad,
        "name": 42,
        "text": "a name that is no string",
        "datetime": mongodb::bson::DateTime::now(),
    })
    .await
    .expect("the lab's insert");
    // The lab's next message: positioning it, an instance positions the
    // older document too, as it does every document nobody positioned yet.
    let next = mongodb::bson::oid::ObjectId::new();
    lab.insert_one(doc! {
        "_id": next,
        "name": "lab",
        "text": "next",
        "datetime": mongodb::bson::DateTime::now(),
    })
    .await
    .expect("the lab's insert");
    let next = next.to_hex();
    until_listed(&a, &["first", &next], "the skipped document listed").await;
    until_listed(&b, &["first", &next], "the skipped document listed").await;
    let stored = lab
        .find_one(doc! { "_id": bad })
        .await
        .expect("read")
        .expect("stored");
    assert!(
        stored.get_timestamp("position").is_ok(),
        "positioned: {stored:?}"
    );

    lab.update_one(doc! { "_id": bad }, doc! { "$set": { "name": "fixed" } })
        .await
        .expect("corrected by hand");
    let bad = bad.to_hex();
    for app in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let listed = listed_ids(app).await;
            if listed.contains(&bad) {
                assert_eq!(listed.len(), 3, "listed once: {listed:?}");
                assert_eq!(walked_ids(app, 1).await, listed, "the walk back agrees");
                break;
            }
            assert!(Instant::now() < deadline, "never listed: {listed:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(
        listed_ids(&a).await,
        listed_ids(&b).await,
        "the instances agree"
    );
    let shown = a.get_json(&format!("/api/messages/{bad}")).await;
    assert_eq!(shown["name"], "fixed");
    a.shutdown().await;
    b.shutdown().await;
}

/// A document of the lab's history (written before simplechat's first
/// start) that was no message, corrected by hand: it is listed in its
/// place among the lab's history, as every other of them, gets no
/// `position`, and is no news to subscribers. It was given a position and
/// made the newest message, sent to every subscriber, when the instance
/// had skipped it; in its place when it had not: one correction, two
/// outcomes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_document_of_the_labs_history_corrected_by_hand_keeps_its_place() {
    let test = "a_skipped_document_of_the_labs_history_corrected_by_hand_keeps_its_place";
    let cluster = TestCluster::start(test).await;
    let lab = cluster.lab_messages("historyfix").await;
    // 2019-01-01, -02 and -03, one a day.
    let day = |n: u32| object_id_at(1_546_300_800 + n * 86_400);
    for (n, name) in [
        (0, Bson::from("lab")),
        (1, Bson::from(42)),
        (2, Bson::from("lab")),
    ] {
        lab.insert_one(doc! {
            "_id": day(n),
            "name": name,
            "text": format!("day {n}"),
            "datetime": mongodb::bson::DateTime::from_millis(1_546_300_800_000 + i64::from(n) * 86_400_000),
        })
        .await
        .expect("the lab's insert");
    }
    let (first, bad, third) = (day(0).to_hex(), day(1).to_hex(), day(2).to_hex());
    let app = start_app(&cluster, "historyfix", 20).await;
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    until_skipped(&app, "name", 1).await;
    let mut subscriber = Subscriber::connect(&app).await;
    assert_eq!(post_with_id(&app, "ours", "ours").await, 201);
    until_listed(
        &app,
        &[&first, &third, "ours"],
        "the lab's history, then ours",
    )
    .await;
    subscriber
        .wait_for(&["ours".to_owned()], Duration::from_secs(10))
        .await;

    lab.update_one(doc! { "_id": day(1) }, doc! { "$set": { "name": "fixed" } })
        .await
        .expect("corrected by hand");
    until_listed(&app, &[&first, &bad, &third, "ours"], "listed in its place").await;
    assert_eq!(
        walked_ids(&app, 1).await,
        listed_ids(&app).await,
        "the walk back agrees"
    );
    let stored = lab
        .find_one(doc! { "_id": day(1) })
        .await
        .expect("read")
        .expect("stored");
    assert!(stored.get("position").is_none(), "no position: {stored:?}");
    assert_eq!(post_with_id(&app, "after", "after").await, 201);
    assert_eq!(
        subscriber.next_ids(1, Duration::from_secs(10)).await,
        ["after"],
        "the corrected document is no news"
    );
    app.shutdown().await;
}

/// The newest message deleted by another client (a moderator, from the
/// shell) after subscribers were sent it: the next message reaches them
/// as a message. Their stream used to meet the deleted id as unknown, send
/// a `reset` naming the next message instead, and go on after it: a client
/// that listens for messages alone never got it, and its `Last-Event-ID`
/// was already past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_after_a_deleted_newest_one_reaches_subscribers() {
    let test = "the_message_after_a_deleted_newest_one_reaches_subscribers";
    let cluster = TestCluster::start(test).await;
    let app = start_app(&cluster, "deletednewest", 20).await;
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    let mut subscriber = Subscriber::connect(&app).await;
    assert_eq!(post_with_id(&app, "kept", "kept").await, 201);
    assert_eq!(post_with_id(&app, "doomed", "doomed").await, 201);
    assert_eq!(
        subscriber.next_ids(2, Duration::from_secs(10)).await,
        ["kept", "doomed"]
    );
    let lab = cluster.lab_messages("deletednewest").await;
    lab.delete_one(doc! { "_id": "doomed" })
        .await
        .expect("deleted by hand");
    until_listed(&app, &["kept"], "the deletion seen").await;
    assert_eq!(post_with_id(&app, "after", "after").await, 201);
    assert_eq!(
        subscriber.next_ids(1, Duration::from_secs(10)).await,
        ["after"],
        "the next message sent as a message"
    );
    // A reconnect from the deleted message replays what came after it.
    let mut resumed = Subscriber::connect_to(&app, "/api/events?after=doomed").await;
    assert_eq!(
        resumed.next_ids(1, Duration::from_secs(10)).await,
        ["after"],
        "replayed from the deleted message's place"
    );
    app.shutdown().await;
}

/// With every member down, a read the cache cannot answer is a 503 that
/// names each member and why, as readiness does, not the driver's
/// "Server selection timeout: No available servers"; so does the change
/// stream's last error in the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_with_every_member_down_names_each_member() {
    let test = "a_read_with_every_member_down_names_each_member";
    let cluster = TestCluster::start(test).await;
    let app = start_app(&cluster, "alldown", 20).await;
    assert_eq!(post_with_id(&app, "first", "first").await, 201);
    for member in 0..3 {
        cluster.kill(member).await;
    }
    let response = app.get("/api/messages/not-in-the-cache").await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value = response.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("can be read from"), "{error}");
    for host in cluster.hosts() {
        assert!(
            error.contains(&format!("{host} unreachable")),
            "{host}: {error}"
        );
    }
    // The change stream, which cannot reopen either, says the same in the
    // status (and its log line) once its own wait for a member ends.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stream_error = loop {
        let status = app.get_json("/api/status").await;
        let last = status["change_stream"]["last_error"].as_str().unwrap_or("");
        if last.contains("can be read from") || Instant::now() > deadline {
            break last.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        !stream_error.contains("No available servers"),
        "{stream_error}"
    );
    for host in cluster.hosts() {
        assert!(
            stream_error.contains(&format!("{host} unreachable")),
            "{host}: {stream_error}"
        );
    }
    // The status's own command waits in server selection and never
    // leaves: it says so, not that a member failed to answer it.
    let status = app.get_json("/api/status").await;
    let source = status["replica_set"]["source"].as_str().unwrap_or("");
    assert!(
        source.contains("replSetGetStatus was not sent: no member answered within 2 s"),
        "{status}"
    );
    app.shutdown().await;
}

/// A simulated set with a primary, and its ports, for a set rebuilt on
/// them ([`sim_rebuilt_on`]).
async fn sim_with_primary() -> (replset_sim::Cluster, Vec<u16>) {
    let sim = replset_sim::Cluster::start(cluster::fast_sim(true))
        .await
        .expect("start replset-sim");
    sim.wait_for_primary(Duration::from_secs(10))
        .await
        .expect("a primary");
    let ports = sim
        .hosts()
        .iter()
        .map(|h| h.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    (sim, ports)
}

/// A new, empty simulated set on the `ports` a dropped one had, with a
/// primary: the set wiped and initiated again on the same addresses.
async fn sim_rebuilt_on(ports: &[u16]) -> replset_sim::Cluster {
    // The old set's listeners close as their aborted tasks are dropped.
    let deadline = Instant::now() + Duration::from_secs(10);
    let rebuilt = loop {
        let options = replset_sim::ClusterOptions {
            ports: ports.to_vec(),
            ..cluster::fast_sim(true)
        };
        match replset_sim::Cluster::start(options).await {
            Ok(rebuilt) => break rebuilt,
            Err(e) if Instant::now() < deadline => {
                say(&format!("the rebuilt set's ports not free yet: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the rebuilt set: {e}"),
        }
    };
    rebuilt
        .wait_for_primary(Duration::from_secs(10))
        .await
        .expect("a primary");
    rebuilt
}

/// A set wiped and initiated again on the same addresses while a post
/// waited for it (every member down): the post is stored in the new set,
/// and a subscriber following live is sent a `reset`, as when the store
/// loses its messages otherwise, then what follows. Before, the waiting
/// post was sent as the next message after the lost ones, and the page
/// went on showing them above it. Simulator only: it rebuilds a set on the
/// ports a running one had (with no election between, the driver takes the
/// new set's primary at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_wiped_while_a_post_waits_sends_live_subscribers_a_reset() {
    let (first, ports) = sim_with_primary().await;
    let app = Arc::new(
        spawn_app(&[
            ("mongodb_uri", json!(first.uri("wiped"))),
            ("write_timeout_secs", json!(30)),
            ("heartbeat_secs", json!(3600)),
        ])
        .await,
    );
    assert_eq!(post_with_id(&app, "before", "before").await, 201);
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    let mut events = events_of(app.get("/api/events").await).await;
    drop(first);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let waiting = {
        let app = app.clone();
        tokio::spawn(async move { post_with_id(&app, "waited", "waited").await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _rebuilt = sim_rebuilt_on(&ports).await;
    assert_eq!(waiting.await.unwrap(), 201);
    reset_then_live(&app, &mut events, "waited").await;
    Arc::into_inner(app).expect("one owner").shutdown().await;
}

/// A set rebuilt from scratch on the same addresses (its members wiped and
/// initiated again) has a primary this instance's driver takes for stale
/// for ever: its configuration's election id is older than the one seen
/// before. Readiness said the member was unreachable, which it was not;
/// it now says what it is, and after 30 s of it the instance starts its
/// client afresh: ready again without a restart, posts taken, a subscriber
/// told that what it had is gone (`reset`) and sent what follows, and the
/// listing is the rebuilt set's. Before, only a restart mended it.
/// Simulator only: it rebuilds a set on the ports a running one had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_rebuilt_on_the_same_addresses_is_named_as_such_by_readiness() {
    let (first, ports) = sim_with_primary().await;
    let app = spawn_app(&[
        ("mongodb_uri", json!(first.uri("rebuilt"))),
        ("write_timeout_secs", json!(5)),
    ])
    .await;
    assert_eq!(post_with_id(&app, "before", "before").await, 201);
    // Two elections: the election id the driver keeps grows with each.
    first.step_down().await;
    first.wait_for_primary(Duration::from_secs(10)).await;
    first.step_down().await;
    first.wait_for_primary(Duration::from_secs(10)).await;
    assert_eq!(post_with_id(&app, "between", "between").await, 201);
    // The elections interrupted the change stream: a subscriber placed
    // before it brought "between" back would be sent it.
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    assert_eq!(listed_ids(&app).await, ["before", "between"]);
    let mut events = events_of(app.get("/api/events").await).await;
    drop(first);

    let _rebuilt = sim_rebuilt_on(&ports).await;
    // Each member comes back into the driver's view at its own monitor's
    // next check (until then one may still be unreachable), the primary
    // first named stale. The post below is made at once: the client is
    // started afresh 30 s after that.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = app.get("/readyz").await;
        let text = response.text().await.unwrap();
        if text.contains("taken for stale") {
            assert!(text.contains("starts its MongoDB client afresh"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "never named: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A post waits out its deadline, and says why, as readiness does; or,
    // when another operation (the look for the order index, a read) used
    // the client while its last attempt waited for a primary, that its
    // outcome is unknown: it cannot tell its own attempt was never sent.
    // Either way it is refused, and (no primary taken) nothing is stored.
    let refused = app
        .post_json(
            "/api/messages",
            &json!({"id": "after", "name": "ann", "text": "after"}),
        )
        .await;
    assert_eq!(refused.status(), 503);
    let text = refused.text().await.unwrap();
    assert!(
        text.contains("taken for stale") || text.contains("the write's outcome is unknown"),
        "{text}"
    );

    // Without a restart: a new client takes the rebuilt set's primary.
    let deadline = Instant::now() + Duration::from_secs(60);
    while app.get("/readyz").await.status() != 200 {
        assert!(Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    assert_eq!(post_with_id(&app, "renewed", "renewed").await, 201);
    reset_then_live(&app, &mut events, "renewed").await;
    app.shutdown().await;
}

/// Subscribers that connect to an instance while its first load waits
/// (resuming from a message with `after=` or `Last-Event-ID`, or live) are
/// sent the instance's own post at once, after the message another
/// instance stored before it, in the store order, while the load still
/// waits; once it is done, what follows, once. Before, they were sent
/// nothing until the load was done, however long it took: a user whose
/// page connected while the instance started saw no one's messages, even
/// those posted through the same instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_waiting_for_the_first_load_get_the_instances_posts_meanwhile() {
    let test = "subscribers_waiting_for_the_first_load_get_the_instances_posts_meanwhile";
    let cluster = sim_cluster(test).await;
    let sim = cluster.sim().expect("simulator");
    let other = start_app(&cluster, "waitload", 20).await;
    wait_for_change_stream(&other, Duration::from_secs(20)).await;
    assert_eq!(post_with_id(&other, "first", "first").await, 201);
    hold_read_of_messages(sim, "load", |limit| limit > 1);
    let app = start_app_with(&cluster, "waitload", 20, &[("heartbeat_secs", json!(3600))]).await;
    until_held(sim, "load").await;
    let with_header = reqwest::Client::new()
        .get(app.url("/api/events"))
        .header("Last-Event-ID", "first")
        .send()
        .await
        .expect("GET");
    let mut subscribers = vec![
        (
            "after=first",
            Subscriber::connect_to(&app, "/api/events?after=first").await,
        ),
        (
            "Last-Event-ID: first",
            Subscriber::reading(with_header).await,
        ),
        ("live", Subscriber::connect(&app).await),
    ];

    assert_eq!(post_with_id(&other, "elsewhere", "elsewhere").await, 201);
    assert_eq!(post_with_id(&app, "here", "here").await, 201);
    for (how, subscriber) in &mut subscribers {
        assert_eq!(
            subscriber.next_ids(2, Duration::from_secs(20)).await,
            ["elsewhere", "here"],
            "{how}"
        );
    }
    assert_eq!(sim.held("load"), 1, "sent while the load still waits");
    sim.release("load");
    wait_for_change_stream(&app, Duration::from_secs(20)).await;
    assert_eq!(post_with_id(&app, "after", "after").await, 201);
    for (how, subscriber) in &mut subscribers {
        assert_eq!(
            subscriber.next_ids(1, Duration::from_secs(20)).await,
            ["after"],
            "{how}: once"
        );
        assert_eq!(subscriber.arrived(), Vec::<String>::new(), "{how}");
    }
    assert_eq!(
        listed_ids(&app).await,
        ["first", "elsewhere", "here", "after"]
    );
    app.shutdown().await;
    other.shutdown().await;
}

/// Two posts of one id and content sent at the same moment, through one
/// instance and through two: one stores the message and is answered 201;
/// the other, refused for the id, is a retry and says so
/// (`Idempotent-Replayed: true`), as the README promises. Before, the
/// second was taken for the first's own write whenever both were stamped
/// the same millisecond (a fifth to two fifths of such pairs), and both
/// answered as fresh. Forty pairs each way: on the old code the chance
/// that none shows it is below one in ten thousand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_of_one_id_at_the_same_moment_answer_one_as_a_retry() {
    let cluster =
        TestCluster::start("posts_of_one_id_at_the_same_moment_answer_one_as_a_retry").await;
    let one = start_app(&cluster, "samemoment", 20).await;
    let two = start_app(&cluster, "samemoment", 20).await;
    for (second, label) in [(&one, "one-instance"), (&two, "two-instances")] {
        for pair in 0..40 {
            let body =
                json!({ "name": "ann", "text": "the same", "id": format!("{label}-{pair}") });
            let (a, b) = tokio::join!(
                one.post_json("/api/messages", &body),
                second.post_json("/api/messages", &body)
            );
            let replayed: Vec<bool> = [&a, &b]
                .iter()
                .map(|answer| {
                    assert_eq!(answer.status(), 201, "{label}, pair {pair}");
                    answer
                        .headers()
                        .get("idempotent-replayed")
                        .is_some_and(|v| v == "true")
                })
                .collect();
            assert_eq!(
                replayed.iter().filter(|r| **r).count(),
                1,
                "{label}, pair {pair}: one stored, the other a retry ({replayed:?})"
            );
        }
    }
    assert_eq!(one.message_count().await, 80, "each id stored once");
    one.shutdown().await;
    two.shutdown().await;
}

// --- A retry of what an older version stored -------------------------------

/// Posts an older simplechat stored as it stored them (its id as `_id`, the
/// empty position the primary fills in), under rules since tightened: names
/// were not NFC before, and kept format characters at their ends; the lab's
/// app trimmed nothing. The same body retried through today's instance is
/// the same post under today's rules, on both sides, and is answered as a
/// retry: 201 with `Idempotent-Replayed` and the stored message as every
/// read shows it, nothing stored. Before, a stored name a read mends (the
/// NFD one, shown in NFC) made every retry of it a 409. Other content
/// under such an id is still the 409 it always was, with the same body; a
/// name today's rules refuse (a bidi control, which an older version took)
/// is a 400 sent as it was, and a 409 sent as it is shown, `U+FFFD` in its
/// place: that is not the stored name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_a_post_an_older_version_stored_is_answered_as_a_retry() {
    use mongodb::bson::{oid::ObjectId, DateTime, Timestamp};
    let cluster =
        TestCluster::start("a_retry_of_a_post_an_older_version_stored_is_answered_as_a_retry")
            .await;
    let older = cluster.lab_messages("messages").await;
    let at = DateTime::from_millis(1_764_000_000_000);
    let empty = Timestamp {
        time: 0,
        increment: 0,
    };
    let lab = ObjectId::new();
    let stored = [
        doc! { "_id": "older-nfd", "name": "Zoe\u{308}", "text": "bonjour", "datetime": at, "position": empty },
        doc! { "_id": "older-format", "name": "\u{feff}ann\u{200b}", "text": "hello", "datetime": at, "position": empty },
        doc! { "_id": "older-both", "name": "\u{200b}Zoe\u{308}", "text": "line one\nline two", "datetime": at, "position": empty },
        doc! { "_id": "older-bidi", "name": "eve\u{202e}x", "text": "hi", "datetime": at, "position": empty },
        doc! { "_id": lab, "name": " bob ", "text": "hi\r\nthere ", "datetime": at },
    ];
    for d in stored {
        older
            .insert_one(d)
            .await
            .expect("the older version's insert");
    }
    let app = start_app(&cluster, "messages", 20).await;

    // Each body as its client sent it the first time (the lab's, with its
    // message's id).
    let lab = lab.to_hex();
    let retries = [
        ("older-nfd", "Zoe\u{308}", "bonjour"),
        ("older-format", "\u{feff}ann\u{200b}", "hello"),
        ("older-both", "\u{200b}Zoe\u{308} ", "line one\r\nline two"),
        (lab.as_str(), " bob ", "hi\r\nthere "),
    ];
    for (id, name, text) in retries {
        let body = json!({ "id": id, "name": name, "text": text });
        let retry = app.post_json("/api/messages", &body).await;
        assert_eq!(retry.status(), 201, "{id}: {:?}", retry.text().await);
        assert_eq!(retry.headers()["idempotent-replayed"], "true", "{id}");
        let answered: serde_json::Value = retry.json().await.expect("json");
        assert_eq!(
            answered,
            app.get_json(&format!("/api/messages/{id}")).await,
            "{id}: the stored message, as every read shows it"
        );
    }

    let other = app
        .post_json(
            "/api/messages",
            &json!({ "id": "older-nfd", "name": "Zoe\u{308}", "text": "au revoir" }),
        )
        .await;
    assert_eq!(other.status(), 409);
    assert_eq!(
        other.json::<serde_json::Value>().await.expect("json"),
        json!({
            "error": "a different message already has id older-nfd: the same id must come with the same name and text",
            "field": "id"
        })
    );
    let as_sent = app
        .post_json(
            "/api/messages",
            &json!({ "id": "older-bidi", "name": "eve\u{202e}x", "text": "hi" }),
        )
        .await;
    assert_eq!(as_sent.status(), 400);
    assert_eq!(
        as_sent.json::<serde_json::Value>().await.expect("json")["field"],
        "name"
    );
    let shown = app.get_json("/api/messages/older-bidi").await;
    assert_eq!(shown["name"], "eve\u{FFFD}x");
    let as_shown = app
        .post_json(
            "/api/messages",
            &json!({ "id": "older-bidi", "name": "eve\u{FFFD}x", "text": "hi" }),
        )
        .await;
    assert_eq!(as_shown.status(), 409);

    assert_eq!(
        older.count_documents(doc! {}).await.expect("count"),
        5,
        "nothing new stored"
    );
    app.shutdown().await;
}
