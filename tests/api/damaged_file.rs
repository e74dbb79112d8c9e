//! A damaged data file, as an operator meets one: the real binary started
//! on a copy of a real data file that was damaged, refuses to start with
//! one line naming the file and what to do, never a panic.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::cli_config::command;
use crate::first_run::Server;

/// Posts messages `from..from + n` to the server at `base`, 16 at a time
/// (below the per-client connection bound), as busy clients do; the
/// statuses answered.
async fn post_many(base: &str, from: usize, n: usize) -> Vec<u16> {
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for chunk in (from..from + n).collect::<Vec<_>>().chunks(16) {
        let posts = chunk.iter().map(|i| {
            let body = json!({"name": "ann", "text": format!("message {i} {}", "x".repeat(200))});
            client
                .post(format!("{base}/api/messages"))
                .json(&body)
                .send()
        });
        for answer in futures::future::join_all(posts).await {
            statuses.push(answer.expect("an answer").status().as_u16());
        }
    }
    statuses
}

/// A data file in `dir/simplechat-data` written by the server itself,
/// holding `n` messages.
async fn store_with(dir: &Path, n: usize) {
    let server = Server::start(Path::new(env!("CARGO_BIN_EXE_simplechat")), dir, &[]);
    assert!(post_many(&server.base, 0, n)
        .await
        .iter()
        .all(|s| *s == 201));
    let (status, log) = server.stop();
    assert!(status.success(), "{}", log.join("\n"));
}

/// The server running in `dir` on a store of its own holding 300
/// messages, and its data file.
async fn serving_300(dir: &Path) -> (Server, std::path::PathBuf) {
    let server = Server::start(Path::new(env!("CARGO_BIN_EXE_simplechat")), dir, &[]);
    assert!(post_many(&server.base, 0, 300)
        .await
        .iter()
        .all(|s| *s == 201));
    (server, dir.join("simplechat-data/messages.redb"))
}

/// Pages of the file overwritten with bytes that are no page, as `dd
/// if=/dev/urandom of=messages.redb bs=4096 seek=2 count=16 conv=notrunc`
/// does (a fixed pattern, so every run damages alike). Sixteen pages, not
/// one: which pages are free depends on how posts fell into commits, and
/// a free page overwritten is no damage to anything stored.
fn garbage_pages(file: &Path) {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let pages: Vec<u8> = (0..16 * 4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.write_all_at(&pages, 2 * 4096).unwrap();
}

/// `simplechat serve` in `dir`, which must refuse to start: its exit code
/// and what it wrote on stderr. One still running after a minute started
/// on the damaged file, which fails the test.
fn refused_start(dir: &Path) -> (Option<i32>, String) {
    let exe = Path::new(env!("CARGO_BIN_EXE_simplechat"));
    let mut child = command(exe, dir, &["serve"], &[("SIMPLECHAT_PORT", "0")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run simplechat");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait for simplechat").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("simplechat's output");
            panic!(
                "started on a damaged file:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("simplechat's output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// The exit status of a start refused for damaged data (sysexits.h
/// `EX_DATAERR`), which the NixOS unit does not restart on.
const EX_DATAERR: i32 = 65;

/// What an operator must read: one line, naming the file, saying it is
/// damaged and what to do; no panic, no backtrace; and the status a
/// service manager does not restart on.
fn assert_told_damaged(code: Option<i32>, stderr: &str) {
    assert_eq!(code, Some(EX_DATAERR), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let line = lines[0];
    for words in [
        "simplechat-data/messages.redb is damaged",
        "restore a backup",
        "move the file aside",
    ] {
        assert!(line.contains(words), "{words:?} missing: {line}");
    }
    assert!(!line.contains("panicked"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_pages_stop_the_start_with_one_line_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), 1604).await;
    let file = dir.path().join("simplechat-data/messages.redb");
    garbage_pages(&file);

    let (code, stderr) = refused_start(dir.path());
    assert_told_damaged(code, &stderr);
    // Refused again on the next start: a restart loop says the same.
    let (code, again) = refused_start(dir.path());
    assert_told_damaged(code, &again);
}

/// The file's first bytes (redb's header, its magic number first)
/// overwritten, or a file that is no database at all in its place: told as
/// damage, with status 65, like a damaged page. Before, redb's "Not a redb
/// database" came as a failure to open the file for reading and writing,
/// with status 1, which a service manager restarts on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_whose_header_is_overwritten_is_told_as_damage() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), 3).await;
    let file = dir.path().join("simplechat-data/messages.redb");
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.write_all_at(&[0xaa; 16], 0).unwrap();
    let (code, stderr) = refused_start(dir.path());
    assert_told_damaged(code, &stderr);

    std::fs::write(&file, b"these bytes are no database at all\n".repeat(200)).unwrap();
    let (code, stderr) = refused_start(dir.path());
    assert_told_damaged(code, &stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_copied_over_the_live_file_is_damage_or_the_backup_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (server, file) = serving_300(dir.path()).await;
    let backup = dir.path().join("bk.redb");
    std::fs::copy(&file, &backup).unwrap();
    assert!(post_many(&server.base, 300, 700)
        .await
        .iter()
        .all(|s| *s == 201));
    // `cp bk.redb messages.redb` while the server runs: the same inode,
    // the backup's pages under the server's own.
    std::fs::copy(&backup, &file).unwrap();
    // Taken, or refused as damage once the server meets it; never a 500.
    let statuses = post_many(&server.base, 1000, 50).await;
    assert!(
        statuses.iter().all(|s| [201, 503].contains(s)),
        "{statuses:?}"
    );
    let (status, log) = server.stop();
    assert!(status.success(), "{}", log.join("\n"));

    // A backup shorter than the live file is a cut the server notices
    // before its next write: it writes nothing more, so the file is the
    // backup, whole, and the next start serves it. Otherwise the server's
    // later commits mixed their pages with the backup's, and the next
    // start refuses the file.
    if std::fs::read(&file).unwrap() == std::fs::read(&backup).unwrap() {
        let server = Server::start(Path::new(env!("CARGO_BIN_EXE_simplechat")), dir.path(), &[]);
        let listed: serde_json::Value =
            reqwest::get(format!("{}/api/messages?limit=1000", server.base))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        assert_eq!(
            listed.as_array().map(Vec::len),
            Some(300),
            "the backup's messages"
        );
        let (status, log) = server.stop();
        assert!(status.success(), "{}", log.join("\n"));
    } else {
        let (code, stderr) = refused_start(dir.path());
        assert_told_damaged(code, &stderr);
    }
}

/// The live data file emptied (`truncate -s 0 messages.redb`, a restore
/// gone wrong) or cut short (a copy over it that stopped): the server
/// tells it as damage at its next write, acknowledges nothing more and
/// writes nothing more to the file (not even as it closes at the stop),
/// and the next start refuses it. Before,
/// posts went on being answered 201 into the cut file (the page cache
/// answering for what was gone), which the next start refused, and an
/// emptied file, reopened after an I/O error, was taken for a new store:
/// the next start served an empty history, the loss unsaid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_file_emptied_or_cut_is_told_as_damage_and_acknowledges_nothing_more() {
    for (cut_to, told) in [
        (0, "it was emptied (0 bytes) while the server ran"),
        (16 * 1024, "bytes while the server ran"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (server, file) = serving_300(dir.path()).await;
        let before = std::fs::metadata(&file).unwrap().len();
        assert!(before > cut_to, "{before}");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(cut_to)
            .unwrap();
        let statuses = post_many(&server.base, 300, 16).await;
        assert!(
            statuses.iter().all(|s| *s == 503),
            "cut to {cut_to}: {statuses:?}"
        );
        let ready = reqwest::get(format!("{}/readyz", server.base))
            .await
            .unwrap();
        assert_eq!(ready.status(), 503);
        let why = ready.text().await.unwrap();
        assert!(
            why.contains("messages.redb is damaged (") && why.contains(told),
            "cut to {cut_to}: {why}"
        );
        let (status, log) = server.stop();
        assert!(status.success(), "{}", log.join("\n"));
        assert_eq!(
            std::fs::metadata(&file).unwrap().len(),
            cut_to,
            "nothing written to the file since, its close at the stop neither"
        );

        let (code, stderr) = refused_start(dir.path());
        assert_eq!(code, Some(EX_DATAERR), "cut to {cut_to}: {stderr}");
        assert!(
            stderr.contains("simplechat-data/messages.redb is")
                && stderr.contains("restore a backup"),
            "{stderr}"
        );
    }
}

/// What a failed copy leaves: no store simplechat wrote is empty, so an
/// empty file is refused, naming it, and left as it is.
#[test]
fn an_empty_data_file_is_refused_not_taken_for_a_new_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("simplechat-data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("messages.redb"), b"").unwrap();
    let mut child = command(
        Path::new(env!("CARGO_BIN_EXE_simplechat")),
        dir.path(),
        &["serve"],
        &[("SIMPLECHAT_PORT", "0")],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "started on an empty data file:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EX_DATAERR), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("simplechat-data/messages.redb is empty (0 bytes)")
            && stderr.contains("restore a backup"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::metadata(data.join("messages.redb")).unwrap().len(),
        0
    );
}
