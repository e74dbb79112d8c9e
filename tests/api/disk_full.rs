//! The embedded store on a full disk: 507 with `Retry-After`, `/readyz`
//! says why, and once space is freed writes succeed again without a
//! restart, with every acknowledged message kept.
//!
//! The disk is a real tmpfs (2 MiB, or 8 MiB for the nearly full one), so
//! the errors are the kernel's own ENOSPC. Mounting needs root; without it
//! the test skips loudly, unless `SIMPLECHAT_REQUIRE_TMPFS=1` (set by
//! `.ci/run` when it runs as root).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use simplechat::cache::Cache;
use simplechat::message::NewMessage;
use simplechat::store::embedded::EmbeddedStore;
use simplechat::store::Store;

use crate::first_run::Server;
use crate::support::app::spawn_app_in;

/// A tmpfs of `size` mounted on a fresh directory; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Walks the whole history back from the newest message: every id.
async fn all_ids(app: &crate::support::app::TestApp) -> Vec<String> {
    let mut ids = Vec::new();
    let mut path = "/api/messages?limit=1000".to_owned();
    loop {
        let page = app.get_json(&path).await;
        let page = page.as_array().unwrap();
        if page.is_empty() {
            break;
        }
        let mut older: Vec<String> = page
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect();
        path = format!("/api/messages?limit=1000&before={}", older[0]);
        older.append(&mut ids);
        ids = older;
    }
    ids
}

/// A tmpfs of `size`, or `None` (the test skips) where none can be mounted
/// and `SIMPLECHAT_REQUIRE_TMPFS` is not set.
fn tmpfs_or_skip(size: &str) -> Option<Tmpfs> {
    match Tmpfs::mount(size) {
        Ok(disk) => Some(disk),
        Err(why) if std::env::var_os("SIMPLECHAT_REQUIRE_TMPFS").is_none() => {
            eprintln!("SKIPPED: disk_full test because a tmpfs cannot be mounted: {why}");
            None
        }
        Err(why) => panic!("SIMPLECHAT_REQUIRE_TMPFS is set but: {why}"),
    }
}

#[tokio::test]
async fn a_full_disk_answers_507_and_clears_by_itself() {
    let Some(disk) = tmpfs_or_skip("2m") else {
        return;
    };
    // Space to give back later: the store gets the rest.
    let ballast: PathBuf = disk.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 512 * 1024]).unwrap();
    let data_dir = disk.path().join("data");
    let app = spawn_app_in(&data_dir, &[("write_timeout_secs", json!(30))]).await;

    let text = "x".repeat(1500);
    let mut acknowledged = Vec::new();
    let refusal = loop {
        let response = app
            .post_json("/api/messages", &json!({"name": "filler", "text": text}))
            .await;
        match response.status().as_u16() {
            201 => {
                let m: Value = response.json().await.unwrap();
                acknowledged.push(m["id"].as_str().unwrap().to_owned());
                assert!(acknowledged.len() < 10_000, "the disk never filled");
            }
            _ => break response,
        }
    };
    assert_eq!(refusal.status(), 507, "a full disk is 507, not 500");
    assert!(refusal.headers().contains_key("retry-after"));
    let body: Value = refusal.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("full"), "{body}");
    // Until space is freed: still refused, and not ready, with the reason.
    let again = app
        .post_json("/api/messages", &json!({"name": "filler", "text": "y"}))
        .await;
    assert_eq!(again.status(), 507);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    assert!(ready.headers().contains_key("retry-after"));
    let why: Value = ready.json().await.unwrap();
    assert!(why["error"].as_str().unwrap().contains("full"), "{why}");
    assert!(!acknowledged.is_empty());
    // A full disk refuses writes, not reads: what is stored stays readable
    // by its id and by paging (after a moment in which the store reopens,
    // answered 503, never 507).
    let oldest = &acknowledged[0];
    let newest = &acknowledged[acknowledged.len() - 1];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let read = app.get(&format!("/api/messages/{oldest}")).await;
        let status = read.status().as_u16();
        assert_ne!(status, 507, "a read refused as if it were a write");
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(read.headers().contains_key("retry-after"));
        assert!(
            tokio::time::Instant::now() < deadline,
            "stored messages never became readable on the full disk"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let older = app
        .get(&format!("/api/messages?limit=1000&before={newest}"))
        .await;
    assert_eq!(older.status(), 200);
    let older: Value = older.json().await.unwrap();
    assert_eq!(older.as_array().map(Vec::len), Some(acknowledged.len() - 1));
    let page = app.get(&format!("/?before={newest}")).await;
    assert_eq!(page.status(), 200);
    assert_eq!(
        app.post_json("/api/messages", &json!({"name": "f", "text": "still full"}))
            .await
            .status(),
        507,
        "writes are still refused"
    );
    // The form post, answered with the page (a client that is no browser):
    // the same 507, with its Retry-After as every 507 has.
    let form = app
        .post_body(
            "/messages",
            "application/x-www-form-urlencoded",
            "name=f&text=still+full",
        )
        .await
        .expect("form post");
    assert_eq!(form.status(), 507);
    assert!(form.headers().contains_key("retry-after"), "{form:?}");

    // Free space: the store reopens by itself and is ready again.
    std::fs::remove_file(&ballast).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while app.get("/readyz").await.status() != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the store never became ready after space was freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = app
        .post_json(
            "/api/messages",
            &json!({"name": "after", "text": "space freed"}),
        )
        .await;
    assert_eq!(after.status(), 201);
    let after: Value = after.json().await.unwrap();

    // Nothing acknowledged is lost, now and after a restart.
    let ids = all_ids(&app).await;
    for id in &acknowledged {
        assert!(ids.contains(id), "acknowledged {id} is listed");
    }
    assert_eq!(ids.last().unwrap(), after["id"].as_str().unwrap());
    app.shutdown().await;
    let app = spawn_app_in(&data_dir, &[]).await;
    let ids = all_ids(&app).await;
    for id in acknowledged
        .iter()
        .chain([after["id"].as_str().unwrap().to_owned()].iter())
    {
        assert!(ids.contains(id), "acknowledged {id} survives a restart");
    }
    app.shutdown().await;
}

/// Fills the disk under `path` with a file there, then frees `left` bytes
/// of it: the disk has exactly `left` bytes free.
fn fill_leaving(path: &Path, left: u64) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![1u8; 64 * 1024];
    let full = loop {
        if let Err(e) = file.write_all(&chunk) {
            break e;
        }
    };
    assert_eq!(full.kind(), std::io::ErrorKind::StorageFull, "{full}");
    let len = file.metadata().unwrap().len();
    file.set_len(len - left).unwrap();
}

/// A database whose next growth is far larger than the writer's 256 KiB
/// test write, on a disk with a little more than that free. redb grows its
/// file by setting its length (a sparse file), so the growth takes no space:
/// posts succeed until the pages they write have used what is free, then
/// the commit that fails uses up the rest, the test write fails from then
/// on, and the store is reopened once, not on every post. Seen from
/// outside: the server's own log (a process of its own, to read it).
#[tokio::test]
async fn a_nearly_full_disk_refuses_posts_without_reopening_the_store_on_each() {
    let Some(disk) = tmpfs_or_skip("8m") else {
        return;
    };
    let data_dir = disk.path().join("data");
    // Staged through the store itself, in batches: quicker than posting.
    let store = Arc::new(
        EmbeddedStore::open(&data_dir, Duration::from_secs(30), Cache::new())
            .await
            .unwrap(),
    );
    let text = "x".repeat(1500);
    let inserts = (0..1000).map(|i| {
        let store = store.clone();
        let new = NewMessage::validate("stager", &format!("{i} {text}"), None).unwrap();
        async move { store.insert(new).await.unwrap() }
    });
    futures::future::join_all(inserts).await;
    store.close().await;
    let db_file = data_dir.join("messages.redb");
    let db_len = std::fs::metadata(&db_file).unwrap().len();
    // redb at least doubles a database under one region (4 GiB) when it
    // grows: a growth of at least the file's length.
    assert!(db_len >= 1024 * 1024, "staged only {db_len} bytes");
    let ballast = disk.path().join("ballast");
    fill_leaving(&ballast, 320 * 1024);

    let server = Server::start(
        Path::new(env!("CARGO_BIN_EXE_simplechat")),
        disk.path(),
        &[
            ("SIMPLECHAT_DATA_DIR", data_dir.to_str().unwrap()),
            ("ROCKET_LOG_LEVEL", "normal"),
        ],
    );
    let client = reqwest::Client::new();
    let base = server.base.clone();
    let post = |text: &str| {
        client
            .post(format!("{base}/api/messages"))
            .json(&json!({"name": "poster", "text": text}))
            .send()
    };
    let mut newest = None;
    let refusal = loop {
        let response = post(&text).await.unwrap();
        if response.status() != 201 {
            break response;
        }
        let m: Value = response.json().await.unwrap();
        newest = Some(m["id"].as_str().unwrap().to_owned());
    };
    // Posts succeed while there is room for their pages, growth or not.
    let newest = newest.expect("no post succeeded on a disk with 320 KiB free");
    assert_eq!(refusal.status(), 507);
    assert!(refusal.headers().contains_key("retry-after"));

    let read_before = || async {
        client
            .get(format!("{base}/api/messages?limit=5&before={newest}"))
            .send()
            .await
            .unwrap()
    };
    // Reads with a cursor go to the store: 503 until its reopen, then 200.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while read_before().await.status() != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never readable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let latest = |limit| {
        client
            .get(format!("{base}/api/messages?limit={limit}"))
            .send()
    };
    let last_id = |page: Value| page[0]["id"].as_str().map(str::to_owned);
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut refused = 0;
    while tokio::time::Instant::now() < until {
        let response = post("still full").await.unwrap();
        assert_eq!(response.status(), 507, "a post on the full disk");
        assert!(response.headers().contains_key("retry-after"));
        refused += 1;
        let read = read_before().await;
        assert_eq!(read.status(), 200, "a read while posts are refused");
        let page: Value = latest(1).await.unwrap().json().await.unwrap();
        assert_eq!(
            last_id(page),
            Some(newest.clone()),
            "a refused post changed nothing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused >= 5, "only {refused} posts in 3 s");

    // Space freed: posts succeed again, no restart.
    std::fs::remove_file(&ballast).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        let response = post("space freed").await.unwrap();
        if response.status() == 201 {
            break response.json::<Value>().await.unwrap();
        }
        assert_eq!(response.status(), 507);
        assert!(
            tokio::time::Instant::now() < deadline,
            "posts never succeeded after space was freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let page: Value = latest(1).await.unwrap().json().await.unwrap();
    assert_eq!(last_id(page).as_deref(), after["id"].as_str());

    let (status, log) = server.stop();
    assert!(status.success(), "{status}: {}", log.join("\n"));
    let count = |what: &str| log.iter().filter(|l| l.contains(what)).count();
    // One each when the failed commit took what was free; a second if it
    // left a little and the probe after it passed. A store that flapped
    // would fault again at each of its probes (200 ms doubling) over the
    // seconds of refused posts.
    let (faults, reopens) = (count("is full"), count("reopened"));
    assert!(
        (1..=2).contains(&faults) && (1..=2).contains(&reopens),
        "{faults} faults and {reopens} reopens for {refused} refused posts:\n{}",
        log.join("\n")
    );
}

/// A very first start on a full disk: it fails (status 1, which a service
/// manager restarts on, the README's exit statuses) and leaves no data
/// file, so the start after space is freed makes the store and serves.
/// Before, it left a file without redb's header, which every later start
/// refused as damaged (65, not restarted on), with the disk long freed.
#[tokio::test]
async fn a_first_start_on_a_full_disk_leaves_nothing_that_stops_the_next() {
    let Some(disk) = tmpfs_or_skip("2m") else {
        return;
    };
    let data_dir = disk.path().join("data");
    let ballast = disk.path().join("ballast");
    fill_leaving(&ballast, 0);
    let exe = Path::new(env!("CARGO_BIN_EXE_simplechat"));
    let out = crate::cli_config::command(
        exe,
        disk.path(),
        &["serve"],
        &[
            ("SIMPLECHAT_DATA_DIR", data_dir.to_str().unwrap()),
            ("SIMPLECHAT_PORT", "0"),
        ],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(
        !data_dir.join("messages.redb").exists(),
        "a data file was left: {stderr}"
    );

    std::fs::remove_file(&ballast).unwrap();
    let server = Server::start(
        exe,
        disk.path(),
        &[("SIMPLECHAT_DATA_DIR", data_dir.to_str().unwrap())],
    );
    let posted = reqwest::Client::new()
        .post(format!("{}/api/messages", server.base))
        .json(&json!({"name": "ann", "text": "the disk has room now"}))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 201);
    let (status, log) = server.stop();
    assert!(status.success(), "{}", log.join("\n"));
}
