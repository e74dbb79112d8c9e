//! `simplechat replset plan` / `apply`, run as the real binary against the
//! simulator while a writer posts through the MongoDB store: a set grows
//! from three members to five and back, a dead member is replaced, and
//! unsafe requests are refused with nothing changed.
//!
//! Simulator only: the members that join later must exist before they are
//! added, which the test's mongod backend does not provide.

#[path = "support/cluster.rs"]
mod cluster;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{closing_listener, http_listener, say, SET_NAME};
use mongodb::bson::doc;
use mongodb::Client;
use replset_sim::{Cluster, ClusterOptions};
use simplechat::cache::Cache;
use simplechat::message::NewMessage;
use simplechat::store::mongo::MongoStore;
use simplechat::store::{Inserted, Store};

const DB: &str = "members";
/// The simulator elects `ELECTION` after a primary is lost; a period
/// without a primary longer than this bound is more than one election.
const ELECTION: Duration = Duration::from_millis(500);
const GAP_BOUND: Duration = Duration::from_secs(3);

fn sim_only(test: &str) {
    say(&format!(
        "SKIPPED: {test} on real mongod, because it adds members that only the simulator starts empty beside the set; running it on replset-sim"
    ));
}

async fn start(members: usize, in_config: usize) -> Cluster {
    Cluster::start(ClusterOptions {
        set_name: SET_NAME.to_owned(),
        members,
        initial_config: Some(in_config),
        initial_sync: Duration::from_millis(300),
        election_delay: ELECTION,
        ..Default::default()
    })
    .await
    .expect("start replset-sim")
}

async fn simplechat(args: Vec<String>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_simplechat"));
    command
        .args(&args)
        .env_remove("MONGO_URI")
        .env_remove("SIMPLECHAT_MONGODB_URI");
    tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run simplechat")
}

fn members_args(verb: &str, name: &str, members: &[String], extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec!["replset".into(), verb.into(), "--name".into(), name.into()];
    for m in members {
        args.push("--member".into());
        args.push(m.clone());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
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

/// `stderr` without the lines announcing a wait for a member to answer:
/// one comes whenever the answer takes over half a second (a loaded
/// machine), before what the test asserts.
fn past_answer_waits(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| !(l.starts_with("  waiting up to ") && l.contains(" to answer")))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn pick(hosts: &[String], which: &[usize]) -> Vec<String> {
    which.iter().map(|i| hosts[*i].clone()).collect()
}

/// A writer posting through the store until stopped, and an observer
/// asking every member `hello` to measure the longest stretch in which no
/// member said it was a writable primary.
struct Traffic {
    stop: Arc<AtomicBool>,
    writer: tokio::task::JoinHandle<(Vec<String>, Vec<String>)>,
    observer: tokio::task::JoinHandle<Duration>,
}

impl Traffic {
    async fn start(cluster: &Cluster) -> Traffic {
        let store = MongoStore::open(&cluster.uri(DB), DB, Duration::from_secs(30), Cache::new())
            .await
            .expect("open store");
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(why) = store.ready().await {
            assert!(Instant::now() < deadline, "store never ready: {why}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let writing = stop.clone();
        let writer = tokio::spawn(async move {
            let (mut acked, mut failed) = (Vec::new(), Vec::new());
            let mut i = 0;
            while !writing.load(Ordering::SeqCst) {
                i += 1;
                let id = format!("w{i}");
                let m = NewMessage::validate("writer", &format!("message {i}"), Some(&id))
                    .expect("valid");
                match store.insert(m).await {
                    Ok(Inserted::Created(_)) => acked.push(id),
                    Ok(other) => failed.push(format!("{id}: {other:?}")),
                    Err(e) => failed.push(format!("{id}: {e:?}")),
                }
            }
            store.close().await;
            (acked, failed)
        });
        let mut clients = Vec::new();
        for host in cluster.hosts() {
            let uri = format!(
                "mongodb://{host}/?directConnection=true&serverSelectionTimeoutMS=300&connectTimeoutMS=300"
            );
            clients.push(Client::with_uri_str(&uri).await.expect("client"));
        }
        let watching = stop.clone();
        let observer = tokio::spawn(async move {
            let mut last_primary = Instant::now();
            let mut longest = Duration::ZERO;
            while !watching.load(Ordering::SeqCst) {
                let asks = clients.iter().map(|c| async move {
                    let admin = c.database("admin");
                    let hello = admin.run_command(doc! {"hello": 1});
                    matches!(
                        tokio::time::timeout(Duration::from_millis(400), hello).await,
                        Ok(Ok(h)) if h.get_bool("isWritablePrimary") == Ok(true)
                    )
                });
                let seen = futures::future::join_all(asks).await.into_iter().any(|p| p);
                let now = Instant::now();
                if seen {
                    longest = longest.max(now - last_primary);
                    last_primary = now;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            longest.max(Instant::now() - last_primary)
        });
        Traffic {
            stop,
            writer,
            observer,
        }
    }

    /// Stops both; checks that every acknowledged message is stored and
    /// that no period without a primary outlasted an election.
    async fn finish(self, test: &str, cluster: &Cluster) {
        // Keep writing a little after the last change.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.stop.store(true, Ordering::SeqCst);
        let (acked, failed) = self.writer.await.expect("writer");
        let longest = self.observer.await.expect("observer");
        assert!(failed.is_empty(), "{test}: writes failed: {failed:?}");
        assert!(
            acked.len() > 10,
            "{test}: the writer kept writing: {}",
            acked.len()
        );
        let stored: std::collections::BTreeSet<String> = cluster
            .documents(DB, "messages")
            .iter()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_owned))
            .collect();
        let lost: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
        assert!(lost.is_empty(), "{test}: acknowledged but lost: {lost:?}");
        assert!(
            longest < GAP_BOUND,
            "{test}: no primary for {longest:?}, longer than an election (bound {GAP_BOUND:?})"
        );
        say(&format!(
            "{test}: {} writes acknowledged, none lost; longest time without a primary seen by hello polling: {longest:?} (election delay {ELECTION:?})",
            acked.len()
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_to_five_to_three_while_writing() {
    let test = "three_to_five_to_three_while_writing";
    sim_only(test);
    let cluster = start(5, 3).await;
    let hosts = cluster.hosts();
    let traffic = Traffic::start(&cluster).await;

    let five = hosts.clone();
    let plan = simplechat(members_args("plan", SET_NAME, &five, &[])).await;
    assert!(plan.status.success(), "{}", text(&plan));
    let out = String::from_utf8_lossy(&plan.stdout);
    assert!(
        out.contains(&format!("1. add {}", hosts[3])),
        "{}",
        text(&plan)
    );
    assert!(
        out.contains(&format!("2. add {}", hosts[4])),
        "{}",
        text(&plan)
    );
    assert!(out.contains("configuration version 1"), "{out}");
    assert_eq!(cluster.config_version(), Some(1), "plan changes nothing");

    let grow = simplechat(members_args("apply", SET_NAME, &five, &[])).await;
    assert!(grow.status.success(), "{}", text(&grow));
    let out = String::from_utf8_lossy(&grow.stderr);
    assert!(out.contains(&format!("step 1: add {}", hosts[3])), "{out}");
    assert!(out.contains("to copy the data and vote"), "{out}");
    assert_eq!(cluster.config_hosts(), five);
    assert_eq!(cluster.voting_hosts(), five, "every new member votes");
    let version = cluster.config_version();

    let again = simplechat(members_args("apply", SET_NAME, &five, &[])).await;
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("nothing changed"),
        "{}",
        text(&again)
    );
    assert_eq!(cluster.config_version(), version, "idempotent");

    // Back to three, dropping the primary (member 0) and member 1.
    assert_eq!(cluster.primary(), Some(0));
    let three = pick(&hosts, &[2, 3, 4]);
    let plan = simplechat(members_args("plan", SET_NAME, &three, &[])).await;
    let out = String::from_utf8_lossy(&plan.stdout);
    assert!(
        out.contains(&format!("1. remove {}", hosts[1])),
        "{}",
        text(&plan)
    );
    assert!(
        out.contains(&format!("2. step down the primary {}", hosts[0])),
        "{out}"
    );
    assert!(out.contains(&format!("3. remove {}", hosts[0])), "{out}");
    let shrink = simplechat(members_args("apply", SET_NAME, &three, &[])).await;
    assert!(shrink.status.success(), "{}", text(&shrink));
    assert_eq!(cluster.config_hosts(), three);
    assert!(
        matches!(cluster.primary(), Some(2..=4)),
        "{:?}",
        cluster.primary()
    );
    assert_eq!(cluster.member_state(0), "REMOVED");

    traffic.finish(test, &cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_member_is_replaced_while_writing() {
    let test = "a_dead_member_is_replaced_while_writing";
    sim_only(test);
    let cluster = start(4, 3).await;
    let hosts = cluster.hosts();
    let traffic = Traffic::start(&cluster).await;
    cluster.kill(2).await;

    let declared = pick(&hosts, &[0, 1, 3]);
    let apply = simplechat(members_args("apply", SET_NAME, &declared, &[])).await;
    assert!(apply.status.success(), "{}", text(&apply));
    let out = String::from_utf8_lossy(&apply.stderr);
    let add = out.find(&format!("step 1: add {}", hosts[3]));
    let remove = out.find(&format!("step 2: remove {}", hosts[2]));
    assert!(
        add.is_some() && remove.is_some(),
        "added, then removed: {out}"
    );
    assert_eq!(cluster.config_hosts(), declared);
    assert_eq!(cluster.voting_hosts(), declared);

    let status = simplechat(vec![
        "replset".into(),
        "status".into(),
        "--uri".into(),
        cluster.uri(DB),
    ])
    .await;
    assert!(status.status.success(), "{}", text(&status));
    let out = String::from_utf8_lossy(&status.stdout);
    let version = cluster.config_version().expect("a config");
    assert!(
        out.contains(&format!(
            "configuration version {version}, term {}",
            cluster.term()
        )),
        "{out}"
    );

    traffic.finish(test, &cluster).await;
}

/// Two applies of the same declaration at once (two operators, or a unit
/// restarted by hand while it ran): the one whose reconfiguration loses
/// the race re-reads the set and succeeds when it has the declared
/// members; when it does not yet, it says another reconfiguration ran and
/// to run apply again; never mongod's bare version conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_applies_at_once_end_with_the_declared_members() {
    let test = "two_applies_at_once_end_with_the_declared_members";
    sim_only(test);
    // One step (four to five): both end with the declared members.
    let cluster = start(5, 4).await;
    let five = cluster.hosts();
    let (a, b) = tokio::join!(
        simplechat(members_args("apply", SET_NAME, &five, &[])),
        simplechat(members_args("apply", SET_NAME, &five, &[])),
    );
    for o in [&a, &b] {
        say(&format!("{test}: one step: {}", text(o)));
        assert!(o.status.success(), "{}", text(o));
    }
    assert_eq!(cluster.config_hosts(), five);

    // Two steps (three to five): a loser may find the set half-way.
    let cluster = start(5, 3).await;
    let five = cluster.hosts();
    let (a, b) = tokio::join!(
        simplechat(members_args("apply", SET_NAME, &five, &[])),
        simplechat(members_args("apply", SET_NAME, &five, &[])),
    );
    for o in [&a, &b] {
        say(&format!("{test}: two steps: {}", text(o)));
        let out = text(o);
        assert!(!out.contains("is not greater than"), "{out}");
        assert!(!out.contains("same host field"), "{out}");
        if !o.status.success() {
            // The steps and waits it took, then the error in one line.
            let stderr = String::from_utf8_lossy(&o.stderr);
            let err = stderr.lines().last().unwrap_or_default();
            assert!(
                err.starts_with("simplechat: ")
                    && err.contains("another reconfiguration ran at the same time")
                    && err.contains("run apply again"),
                "{out}"
            );
        }
    }
    assert!(a.status.success() || b.status.success());
    let again = simplechat(members_args("apply", SET_NAME, &five, &[])).await;
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(cluster.config_hosts(), five);
}

/// Two of three members replaced while one of them is down: a majority
/// (the primary and the kept member) answers, so the set gets there one
/// voting member at a time: both new members join, then the dead one and
/// the primary leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_majority_is_replaced_in_steps_while_a_member_is_down() {
    let test = "a_majority_is_replaced_in_steps_while_a_member_is_down";
    sim_only(test);
    let cluster = start(5, 3).await;
    let hosts = cluster.hosts();
    cluster.kill(1).await;

    let declared = pick(&hosts, &[3, 2, 4]);
    let apply = simplechat(members_args("apply", SET_NAME, &declared, &[])).await;
    assert!(apply.status.success(), "{}", text(&apply));
    let out = String::from_utf8_lossy(&apply.stderr);
    say(&format!("{test}: {out}"));
    for (i, step) in [
        format!("add {}", hosts[3]),
        format!("add {}", hosts[4]),
        format!("remove {}", hosts[1]),
        format!("step down the primary {}", hosts[0]),
        format!("remove {}", hosts[0]),
    ]
    .iter()
    .enumerate()
    {
        assert!(
            out.contains(&format!("step {}: {step}", i + 1)),
            "step {}: {step}: {out}",
            i + 1
        );
    }
    let mut have = cluster.config_hosts();
    have.sort();
    let mut want = declared.clone();
    want.sort();
    assert_eq!(have, want);
}

/// The primary installs the configuration but its reply is lost (a dropped
/// connection, or maxTimeMS while it commits): apply reads its own
/// configuration back and goes on; it is not another reconfiguration's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reconfig_reply_is_our_own_change() {
    let test = "a_lost_reconfig_reply_is_our_own_change";
    sim_only(test);
    let cluster = start(4, 4).await;
    assert!(cluster.wait_for_primary(GAP_BOUND).await.is_some());
    let hosts = cluster.hosts();
    let three = hosts[..3].to_vec();
    cluster.drop_replies("replSetReconfig", 1);
    let o = simplechat(members_args(
        "apply",
        SET_NAME,
        &three,
        &["--allow-even-voters"],
    ))
    .await;
    cluster.drop_replies("replSetReconfig", 0);
    let out = text(&o);
    say(&format!("{test}: {out}"));
    assert!(o.status.success(), "{out}");
    assert!(!out.contains("another reconfiguration"), "{out}");
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains(&format!("replica set {SET_NAME} now has members")),
        "{out}"
    );
    assert_eq!(cluster.config_hosts(), three);
    assert_eq!(cluster.config_version(), Some(2));
}

/// A one- or two-member set built before the member-count rules (or with
/// their flags) is left as it is: run again with the same members, plan,
/// apply and init exit 0 without the flags and change nothing; a change
/// to one member still needs the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_set_that_has_the_declared_members_needs_no_flag() {
    let test = "a_small_set_that_has_the_declared_members_needs_no_flag";
    sim_only(test);
    for size in [1, 2] {
        let cluster = start(size, size).await;
        assert!(cluster.wait_for_primary(GAP_BOUND).await.is_some());
        let hosts = cluster.hosts();
        for (verb, expect) in [
            ("plan", "nothing to do: it has the declared members"),
            ("apply", "already has the declared members"),
            (
                "init",
                "already initiated with these members; nothing changed",
            ),
        ] {
            let o = simplechat(members_args(verb, SET_NAME, &hosts, &[])).await;
            say(&format!("{test}: {size} member(s), {verb}: {}", text(&o)));
            assert!(o.status.success(), "{size}: {verb}: {}", text(&o));
            assert!(
                String::from_utf8_lossy(&o.stdout).contains(expect),
                "{size}: {verb}: {}",
                text(&o)
            );
        }
        if size == 2 {
            for verb in ["plan", "apply"] {
                let o = simplechat(members_args(verb, SET_NAME, &hosts[..1], &[])).await;
                assert!(!o.status.success(), "{verb}: {}", text(&o));
                let err = String::from_utf8_lossy(&o.stderr);
                assert!(err.contains("--allow-fewer-than-three"), "{}", text(&o));
                if verb == "apply" {
                    assert!(err.contains("nothing changed"), "{}", text(&o));
                }
            }
        }
        assert_eq!(cluster.config_version(), Some(1), "nothing changed");
        assert_eq!(cluster.config_hosts(), hosts);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_requests_are_refused_and_change_nothing() {
    let test = "unsafe_requests_are_refused_and_change_nothing";
    sim_only(test);
    let cluster = start(5, 5).await;
    let hosts = cluster.hosts();
    let refused = |args: Vec<String>, expect: &'static str| async move {
        let o = simplechat(args).await;
        assert!(!o.status.success(), "{}", text(&o));
        // What it waited for, if anything, then the error in one line.
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        let err = stderr.lines().last().unwrap_or_default().to_owned();
        assert!(err.starts_with("simplechat: "), "{}", text(&o));
        assert!(err.contains(expect), "expected {expect:?}: {}", text(&o));
        err
    };
    let err = refused(
        members_args("apply", "other", &hosts, &[]),
        "cannot be renamed",
    )
    .await;
    assert!(err.contains("nothing changed"), "{err}");
    refused(
        members_args("apply", SET_NAME, &pick(&hosts, &[0, 1, 2, 3]), &[]),
        "--allow-even-voters",
    )
    .await;
    refused(
        members_args("apply", SET_NAME, &pick(&hosts, &[0, 1, 1]), &[]),
        "listed twice",
    )
    .await;
    let mut silent = hosts.clone();
    silent.extend(["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()]);
    refused(
        members_args("apply", SET_NAME, &silent, &["--wait-secs", "1"]),
        "cannot add 127.0.0.1:1: it does not answer",
    )
    .await;
    // One or two voting members survive no failure: a member list that
    // shrank by mistake (a script's variable) must not shrink the set.
    for verb in ["plan", "apply"] {
        for which in [&[0][..], &[0, 1][..]] {
            let err = refused(
                members_args(verb, SET_NAME, &pick(&hosts, which), &[]),
                "--allow-fewer-than-three",
            )
            .await;
            // plan never changes anything; apply says so.
            if verb == "apply" {
                assert!(err.contains("nothing changed"), "{err}");
            }
            assert!(err.contains("no majority"), "{err}");
        }
    }
    // Two of five down, and live members are the ones to go: the first
    // removal would leave two of four up.
    cluster.kill(3).await;
    cluster.kill(4).await;
    let err = refused(
        members_args("apply", SET_NAME, &pick(&hosts, &[0, 3, 4]), &[]),
        "would leave 2 of 4 voting members up, not a majority",
    )
    .await;
    assert!(err.contains("nothing changed"), "{err}");
    assert_eq!(cluster.config_version(), Some(1));
    assert_eq!(cluster.config_hosts(), hosts);
}

/// With access control on, `apply` changes the members with the members'
/// key file (as `__system`), as the initiating member's unit runs it;
/// without credentials the set refuses and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_access_control_apply_uses_the_key_file() {
    let test = "with_access_control_apply_uses_the_key_file";
    sim_only(test);
    let cluster = Cluster::start(ClusterOptions {
        set_name: SET_NAME.to_owned(),
        members: 4,
        initial_config: Some(4),
        initial_sync: Duration::from_millis(300),
        election_delay: ELECTION,
        key_file: Some(cluster::KEY.to_owned()),
        // No localhost exception: as on a set whose users exist.
        remote_clients: true,
        ..Default::default()
    })
    .await
    .expect("start replset-sim");
    // Declare three of the four: apply removes the last one.
    let hosts = cluster.hosts()[..3].to_vec();
    let started = Instant::now();
    let refused = simplechat(members_args("apply", SET_NAME, &hosts, &[])).await;
    say(&format!("{test}: refused in {:?}", started.elapsed()));
    assert!(!refused.status.success(), "{}", text(&refused));
    let refusal = String::from_utf8_lossy(&refused.stderr);
    assert!(
        refusal.contains("authenticat"),
        "says why: {}",
        text(&refused)
    );
    assert_eq!(cluster.config_version(), Some(1), "nothing changed");

    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("keyfile");
    std::fs::write(&key_file, cluster::KEY).unwrap();
    let mode = |mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    mode(0o600);
    let key_arg = key_file.to_str().unwrap();
    let warning = cluster::open_file_warning("--key-file", &key_file, "640");
    let applied = simplechat(members_args(
        "apply",
        SET_NAME,
        &hosts,
        &["--key-file", key_arg],
    ))
    .await;
    assert!(applied.status.success(), "{}", text(&applied));
    assert_eq!(cluster.config_hosts(), hosts);
    let output = text(&applied);
    assert!(
        !output.contains("bWVtYmVyIGtleQ"),
        "the key never shows: {output}"
    );
    assert!(!output.contains("warning:"), "a private key file: {output}");

    // A key file its group may read is warned about, and used all the same.
    mode(0o640);
    for command in ["plan", "apply"] {
        let run = simplechat(members_args(
            command,
            SET_NAME,
            &hosts,
            &["--key-file", key_arg],
        ))
        .await;
        assert!(run.status.success(), "{}", text(&run));
        assert!(
            cluster::has_line(&run.stderr, &warning),
            "{command}: {warning}: {}",
            text(&run)
        );
        assert!(!text(&run).contains("bWVtYmVyIGtleQ"), "{}", text(&run));
    }
}

/// Ctrl-C while `apply` waits on a step (a new member's initial sync, made
/// slow here): one line says that the apply was interrupted, during which
/// step, and that plan and apply can be run again; exit status 130. Run
/// again, apply continues from where the set is and finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_apply_says_which_step_and_how_to_go_on() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let test = "ctrl_c_during_apply_says_which_step_and_how_to_go_on";
    sim_only(test);
    let cluster = Cluster::start(ClusterOptions {
        set_name: SET_NAME.to_owned(),
        members: 5,
        initial_config: Some(3),
        initial_sync: Duration::from_secs(3),
        election_delay: ELECTION,
        ..Default::default()
    })
    .await
    .expect("start replset-sim");
    assert!(cluster.wait_for_primary(GAP_BOUND).await.is_some());
    let hosts = cluster.hosts();
    let args = members_args("apply", SET_NAME, &hosts, &[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_simplechat"))
        .args(&args)
        .env_remove("MONGO_URI")
        .env_remove("SIMPLECHAT_MONGODB_URI")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run simplechat");
    let stderr = child.stderr.take().expect("stderr");
    let pid = child.id().to_string();
    let (mut seen, output) = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        // The first step is under way once apply waits for its member.
        for line in lines.by_ref() {
            let line = line.expect("stderr");
            let waiting = line.contains("to copy the data and vote");
            seen.push(line);
            if waiting {
                break;
            }
        }
        let killed = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill");
        assert!(killed.success());
        seen.extend(lines.map_while(Result::ok));
        (seen, child.wait_with_output().expect("wait"))
    })
    .await
    .expect("join");
    say(&format!(
        "{test}: exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        seen.join("\n")
    ));
    // The progress lines, then the one that says what was interrupted.
    let stderr = seen.pop().unwrap_or_default();
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(output.stdout.is_empty(), "no result: {output:?}");
    assert!(
        stderr.starts_with("simplechat: replset apply was interrupted during step 1 (add ")
            && stderr.contains("simplechat replset plan")
            && stderr.contains("simplechat replset apply")
            && stderr.contains("idempotent"),
        "{stderr}"
    );
    // Run again, it goes on from where the set is.
    let again = simplechat(args).await;
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(cluster.config_hosts(), hosts);
}

/// A set initiated with `localhost:PORT` members: `LOCALHOST:PORT` is the
/// same member (host names are case-insensitive), while `127.0.0.1:PORT`,
/// the same mongod under another name, is refused by init, plan and apply
/// with the configured names, nothing changed; never planned as an add and
/// a removal of the same process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_named_otherwise_than_the_configuration_is_explained() {
    let test = "a_member_named_otherwise_than_the_configuration_is_explained";
    sim_only(test);
    let cluster = Cluster::start(ClusterOptions {
        set_name: SET_NAME.to_owned(),
        members: 3,
        initiated: false,
        election_delay: ELECTION,
        ..Default::default()
    })
    .await
    .expect("start replset-sim");
    let numeric = cluster.hosts();
    let named: Vec<String> = numeric
        .iter()
        .map(|h| h.replace("127.0.0.1", "localhost"))
        .collect();
    let init = simplechat(members_args("init", SET_NAME, &named, &[])).await;
    assert!(init.status.success(), "{}", text(&init));
    let version = cluster.config_version();
    assert_eq!(cluster.config_hosts(), named);

    let mut shouted = named.clone();
    shouted[0] = shouted[0].to_uppercase();
    for verb in ["plan", "apply"] {
        let o = simplechat(members_args(verb, SET_NAME, &shouted, &[])).await;
        say(&format!("{test}: {verb} {shouted:?}: {}", text(&o)));
        assert!(o.status.success(), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains("nothing to do") || out.contains("already has the declared members"),
            "{}",
            text(&o)
        );
    }

    let configured = named.join(", ");
    let o = simplechat(members_args("init", SET_NAME, &numeric, &[])).await;
    say(&format!("{test}: init {numeric:?}: {}", text(&o)));
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("another spelling than its configuration uses")
            && err.contains(&format!(
                "{} is the member it names {}",
                numeric[0], named[0]
            ))
            && err.contains(&format!("as the configuration does: {configured}")),
        "{err}"
    );
    let mut mixed = named.clone();
    mixed[0] = numeric[0].clone();
    for verb in ["plan", "apply"] {
        let o = simplechat(members_args(verb, SET_NAME, &mixed, &[])).await;
        say(&format!("{test}: {verb} {mixed:?}: {}", text(&o)));
        assert!(!o.status.success(), "{}", text(&o));
        let err = past_answer_waits(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!(
                "cannot add {}: it is the member the configuration names {}",
                numeric[0], named[0]
            )) && err.contains(&configured),
            "{err}"
        );
        assert!(!text(&o).contains("remove"), "{}", text(&o));
    }
    assert_eq!(cluster.config_version(), version, "nothing changed");
    assert_eq!(cluster.config_hosts(), named);
}

/// stdout carries the command's result alone, for a script that captures
/// it (`replset plan > plan.txt`): what `plan` waits for, and each step and
/// wait of `apply`, go to stderr. The plan waits here for a new member
/// that starts only once the wait was announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_holds_the_result_and_waits_go_to_stderr() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let test = "stdout_holds_the_result_and_waits_go_to_stderr";
    sim_only(test);
    let cluster = start(4, 3).await;
    assert!(cluster.wait_for_primary(GAP_BOUND).await.is_some());
    let hosts = cluster.hosts();
    cluster.kill(3).await;
    let args = members_args("plan", SET_NAME, &hosts, &["--allow-even-voters"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_simplechat"))
        .args(&args)
        .env_remove("MONGO_URI")
        .env_remove("SIMPLECHAT_MONGODB_URI")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run simplechat");
    let stderr = child.stderr.take().expect("stderr");
    let (first, lines) = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stderr).lines();
        (lines.next(), lines)
    })
    .await
    .expect("join");
    let first = first.expect("a line").expect("stderr");
    assert!(
        first.starts_with(&format!("  waiting up to 5 s for {} to answer", hosts[3])),
        "{first}"
    );
    cluster.restart(3).await.expect("restart member 3");
    let (rest, plan) = tokio::task::spawn_blocking(move || {
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        (rest, child.wait_with_output().expect("wait"))
    })
    .await
    .expect("join");
    let out = String::from_utf8_lossy(&plan.stdout);
    say(&format!(
        "{test}: plan: stdout: {out}stderr: {first} {rest:?}"
    ));
    assert!(plan.status.success(), "{out} {rest:?}");
    assert!(rest.is_empty(), "{rest:?}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "the plan alone: {out}");
    assert!(
        lines[0].starts_with(&format!("replica set {SET_NAME} has members ")),
        "{out}"
    );
    assert!(
        lines[1].starts_with(&format!("1. add {}: ", hosts[3])),
        "{out}"
    );

    let apply = simplechat(members_args(
        "apply",
        SET_NAME,
        &hosts,
        &["--allow-even-voters"],
    ))
    .await;
    assert!(apply.status.success(), "{}", text(&apply));
    let out = String::from_utf8_lossy(&apply.stdout);
    assert_eq!(
        out.lines().count(),
        1,
        "the summary alone: {}",
        text(&apply)
    );
    assert!(
        out.starts_with(&format!(
            "replica set {SET_NAME} now has members {}",
            hosts.join(", ")
        )),
        "{}",
        text(&apply)
    );
    let err = past_answer_waits(&apply.stderr);
    assert!(
        err.starts_with(&format!("step 1: add {}: ", hosts[3]))
            && err.contains(&format!("s for {} to copy the data and vote", hosts[3])),
        "{}",
        text(&apply)
    );
    assert_eq!(cluster.config_hosts(), hosts);
}

/// A new member's port where another program answers (an HTTP server)
/// ends `apply` at once, with a wait bound the test could never sit out,
/// naming the member and what answered; nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_where_another_program_answers_is_refused_at_once() {
    let test = "a_new_member_where_another_program_answers_is_refused_at_once";
    sim_only(test);
    let cluster = start(3, 3).await;
    assert!(cluster.wait_for_primary(GAP_BOUND).await.is_some());
    let web = format!("127.0.0.1:{}", http_listener());
    let mut declared = cluster.hosts();
    declared.push(web.clone());
    let o = simplechat(members_args(
        "apply",
        SET_NAME,
        &declared,
        &["--allow-even-voters", "--wait-secs", "3600"],
    ))
    .await;
    say(&format!("{test}: {}", text(&o)));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(o.stdout.is_empty(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "simplechat: cannot add {web}: it answered, but not as MongoDB (Invalid wire \
             protocol opcode: "
        )) && last.contains("another program listens on that port")
            && last.ends_with("nothing changed"),
        "{}",
        text(&o)
    );
    assert_eq!(cluster.config_version(), Some(1), "nothing changed");
}

/// A new member's port where a program accepts each connection and closes
/// it without a reply (a mongod that requires TLS, to a client without it)
/// is refused by `plan` and `apply` within seconds, with a wait bound the
/// test could never sit out, asking whether TLS is required there; nothing
/// changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_that_closes_connections_unanswered_is_refused_within_seconds() {
    let test = "a_new_member_that_closes_connections_unanswered_is_refused_within_seconds";
    sim_only(test);
    let cluster = start(3, 3).await;
    assert!(cluster.wait_for_primary(GAP_BOUND).await.is_some());
    let closing = format!("127.0.0.1:{}", closing_listener());
    let mut declared = cluster.hosts();
    declared.push(closing.clone());
    for verb in ["plan", "apply"] {
        let o = simplechat(members_args(
            verb,
            SET_NAME,
            &declared,
            &["--allow-even-voters", "--wait-secs", "3600"],
        ))
        .await;
        say(&format!("{test}: {verb}: {}", text(&o)));
        assert_eq!(o.status.code(), Some(1), "{verb}: {}", text(&o));
        assert!(o.stdout.is_empty(), "{verb}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(&format!(
                "simplechat: cannot add {closing}: connection closed by the peer without a \
                 reply, "
            )) && last.contains(
                "is TLS required on this member? simplechat connects without TLS unless --uri \
                 says tls=true"
            ),
            "{verb}: {}",
            text(&o)
        );
        if verb == "apply" {
            assert!(last.ends_with("nothing changed"), "{}", text(&o));
        }
    }
    assert_eq!(cluster.config_version(), Some(1), "nothing changed");
}

/// A member removed from the set answers as a mongod in no set's
/// configuration, as one never initiated does. Asked directly, `status`
/// says it was removed and where to ask instead, and `init` refuses to
/// initiate it, changing nothing. Before, status said the set was not
/// initiated and to run `init`, and init then failed saying a
/// "concurrent initiation never took effect".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_asked_directly_says_it_was_removed() {
    let test = "a_removed_member_asked_directly_says_it_was_removed";
    sim_only(test);
    let cluster = start(4, 4).await;
    let hosts = cluster.hosts();
    let kept = pick(&hosts, &[0, 1, 2]);
    let apply = simplechat(members_args("apply", SET_NAME, &kept, &[])).await;
    assert!(apply.status.success(), "{}", text(&apply));
    assert_eq!(cluster.config_hosts(), kept);

    let removed = &hosts[3];
    let status = simplechat(vec![
        "replset".into(),
        "status".into(),
        "--uri".into(),
        format!("mongodb://{removed}/?replicaSet={SET_NAME}"),
    ])
    .await;
    assert!(!status.status.success(), "{}", text(&status));
    let said = text(&status);
    assert!(
        said.contains(&format!(
            "{removed} answers as removed from the replica set"
        )) && said.contains("simplechat replset apply")
            && !said.contains("not initiated"),
        "{said}"
    );

    let init = simplechat(members_args(
        "init",
        SET_NAME,
        &[removed.clone(), hosts[0].clone(), hosts[1].clone()],
        &["--wait-secs", "10"],
    ))
    .await;
    assert!(!init.status.success(), "{}", text(&init));
    let said = text(&init);
    assert!(
        said.contains("removed from the replica set") && said.contains("nothing changed"),
        "{said}"
    );
    assert_eq!(cluster.config_hosts(), kept, "nothing changed");
}
