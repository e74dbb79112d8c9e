//! `simplechat replset init` and `replset status`, run as the real binary
//! against a replica set.

#[path = "support/cluster.rs"]
mod cluster;

use std::process::{Command, Output};

use cluster::{say, TestCluster, SET_NAME};

async fn simplechat(args: Vec<String>, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_simplechat"));
    command.args(&args);
    for (k, v) in env {
        command.env(k, v);
    }
    // No configuration from the environment running the tests.
    command
        .env_remove("MONGO_URI")
        .env_remove("SIMPLECHAT_MONGODB_URI");
    tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run simplechat")
}

fn init_args(members: &[String]) -> Vec<String> {
    let mut args = vec![
        "replset".into(),
        "init".into(),
        "--name".into(),
        SET_NAME.into(),
    ];
    for m in members {
        args.push("--member".into());
        args.push(m.clone());
    }
    args
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_on_every_member_at_once_initiates_once() {
    let cluster =
        TestCluster::start_uninitiated("init_on_every_member_at_once_initiates_once").await;
    let hosts = cluster.hosts();
    // As the deployment does it: every member runs the same command.
    let runs = (0..3).map(|_| simplechat(init_args(&hosts), &[]));
    let outputs = futures::future::join_all(runs).await;
    let mut initiated = 0;
    for o in &outputs {
        assert!(o.status.success(), "{}", text(o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("Primary: 127.0.0.1:"), "{}", text(o));
        if out.contains(" initiated with members") {
            initiated += 1;
        }
    }
    assert_eq!(initiated, 1, "exactly one run initiates");
    assert!(cluster
        .wait_for_primary(cluster.election_time())
        .await
        .is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_again_changes_nothing_and_other_members_are_refused() {
    let cluster =
        TestCluster::start("init_again_changes_nothing_and_other_members_are_refused").await;
    let hosts = cluster.hosts();
    let again = simplechat(init_args(&hosts), &[]).await;
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout)
            .contains("already initiated with these members; nothing changed"),
        "{}",
        text(&again)
    );

    let mut other = hosts.clone();
    other[2] = "127.0.0.1:1".into();
    let refused = simplechat(init_args(&other), &[]).await;
    assert!(!refused.status.success(), "{}", text(&refused));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("it lacks 127.0.0.1:1"), "{}", text(&refused));
    assert!(
        err.contains(&format!("it also has {}", hosts[2])),
        "{}",
        text(&refused)
    );
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_members_are_a_clear_error() {
    say("unreachable_members_are_a_clear_error: backend: none (nothing listens on the members)");
    let mut args = init_args(&["127.0.0.1:1".into(), "127.0.0.1:2".into()]);
    args.extend(["--wait-secs".to_string(), "2".to_string()]);
    let o = simplechat(args, &[]).await;
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("simplechat: member 127.0.0.1:1 did not answer within 2 s"),
        "{}",
        text(&o)
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_every_member() {
    let cluster = TestCluster::start("status_prints_every_member").await;
    let uri = cluster.uri("chat");
    let json = simplechat(
        vec![
            "replset".into(),
            "status".into(),
            "--uri".into(),
            uri.clone(),
            "--json".into(),
        ],
        &[],
    )
    .await;
    assert!(json.status.success(), "{}", text(&json));
    let status: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(status["name"], SET_NAME);
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3));
    let primary = cluster.hosts()[cluster.primary().await.expect("primary")].clone();
    assert_eq!(status["primary"], primary.as_str());

    let table = simplechat(
        vec!["replset".into(), "status".into(), "--uri".into(), uri],
        &[],
    )
    .await;
    assert!(table.status.success(), "{}", text(&table));
    let out = String::from_utf8_lossy(&table.stdout);
    assert!(
        out.contains("PRIMARY") && out.contains("SECONDARY"),
        "{out}"
    );
    assert!(
        out.starts_with(&format!("replica set {SET_NAME}  primary: {primary}")),
        "{out}"
    );
}
