//! `simplechat replset init` and `replset status`, run as the real binary
//! against a replica set.

#[path = "support/cluster.rs"]
mod cluster;

use std::process::{Command, Output};
use std::time::Duration;

use cluster::{closing_listener, http_listener, say, TestCluster, SET_NAME};

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

/// `replset init` with `hosts` initiates the set: what a refused request
/// left unchanged.
async fn initiates(hosts: &[String]) {
    let init = simplechat(init_args(hosts), &[]).await;
    assert!(init.status.success(), "{}", text(&init));
    assert!(
        String::from_utf8_lossy(&init.stdout).contains(" initiated with members"),
        "{}",
        text(&init)
    );
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

/// `init` follows `plan`/`apply`'s rules on the number of voting members,
/// so a set is never built in a shape `apply` would refuse to keep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_refuses_fewer_than_three_or_an_even_number_of_members() {
    let cluster = TestCluster::start_uninitiated(
        "init_refuses_fewer_than_three_or_an_even_number_of_members",
    )
    .await;
    let hosts = cluster.hosts();
    let mut four = hosts.clone();
    four.push("127.0.0.1:1".into());
    for (members, expect) in [
        (&hosts[..1], "--allow-fewer-than-three"),
        (&hosts[..2], "--allow-fewer-than-three"),
        (&four[..], "--allow-even-voters"),
    ] {
        let refused = simplechat(init_args(members), &[]).await;
        assert!(!refused.status.success(), "{}", text(&refused));
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(err.contains(expect), "{}", text(&refused));
        assert!(err.contains("nothing changed"), "{}", text(&refused));
        assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    }
    // Nothing was initiated: the three members still can be.
    initiates(&hosts).await;
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
    assert!(
        err.contains("run `simplechat replset apply --name"),
        "points to the command that changes members: {}",
        text(&refused)
    );
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_members_are_a_clear_error() {
    say("unreachable_members_are_a_clear_error: backend: none (nothing listens on the members)");
    let mut args = init_args(&[
        "127.0.0.1:1".into(),
        "127.0.0.1:2".into(),
        "127.0.0.1:3".into(),
    ]);
    args.extend(["--wait-secs".to_string(), "2".to_string()]);
    let started = std::time::Instant::now();
    let o = simplechat(args, &[]).await;
    let waited = started.elapsed();
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "a wait, then the error: {}", text(&o));
    assert!(
        lines[1].starts_with("simplechat: member 127.0.0.1:1 did not answer within 2 s"),
        "{}",
        text(&o)
    );
    // The cause, as `replset status` names it, not the driver's bare
    // "No available servers".
    assert!(lines[1].contains("Connection refused"), "{}", text(&o));
    assert!(
        lines[0].starts_with("waiting up to ") && lines[0].contains(" s for 127.0.0.1:1 to answer"),
        "one line says what it waits for: {}",
        text(&o)
    );
    // No result: stdout is for it alone.
    assert!(o.stdout.is_empty(), "{}", text(&o));
    // --wait-secs, not the driver's 5 s server selection.
    assert!(
        waited < std::time::Duration::from_millis(3500),
        "{waited:?}"
    );

    // The last run's driver gives up on each read before the wait ends: the
    // wait names the primary it waits for once, not the read that failed.
    for (command, uri) in [
        ("plan", None),
        ("apply", None),
        (
            "apply",
            Some("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300"),
        ),
    ] {
        let mut args: Vec<String> = [
            "replset",
            command,
            "--name",
            SET_NAME,
            "--member",
            "127.0.0.1:1",
            "--member",
            "127.0.0.1:2",
            "--member",
            "127.0.0.1:3",
            "--wait-secs",
            "2",
        ]
        .map(String::from)
        .to_vec();
        if let Some(uri) = uri {
            args.extend(["--uri".to_string(), uri.to_string()]);
        }
        let started = std::time::Instant::now();
        let o = simplechat(args, &[]).await;
        let waited = started.elapsed();
        assert!(!o.status.success(), "{}", text(&o));
        assert!(
            waited < std::time::Duration::from_millis(3500),
            "{command}: {waited:?}"
        );
        let out = text(&o);
        assert!(!out.contains("for cannot"), "{out}");
        assert!(!out.contains("No available servers"), "{out}");
        assert!(out.contains("Connection refused"), "names the cause: {out}");
        if command == "apply" {
            assert!(o.stdout.is_empty(), "{out}");
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.starts_with("  waiting up to 2 s for a primary to answer ("),
                "{out}"
            );
            assert!(
                err.contains("gave up after 2 s waiting for a primary to answer ("),
                "{out}"
            );
            // Said once, not wrapped around the read that failed.
            assert!(!out.contains("(cannot read"), "{out}");
            assert!(!out.contains("no primary answers"), "{out}");
        }
    }
}

/// A name with an empty label, the typo `storage2..local`: glibc's
/// resolver refuses it without asking a name server (it cannot be put in
/// a DNS query), so the lookup says "does not exist" at once, with or
/// without a network, as a misspelled name in /etc/hosts' domain does.
const TYPO: &str = "storage2..local";

/// `args` with a wait bound the test could never sit out: the command must
/// end on the resolution error, not on its wait (the harness's own timeout
/// is the guard).
fn with_long_wait(mut args: Vec<String>) -> Vec<String> {
    args.extend(["--wait-secs".to_string(), "3600".to_string()]);
    args
}

/// The member init connects to must resolve from here: a typo in its name
/// is said at once, naming the member as written, with what to check, and
/// nothing is initiated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_says_at_once_that_the_first_member_does_not_resolve() {
    let cluster =
        TestCluster::start_uninitiated("init_says_at_once_that_the_first_member_does_not_resolve")
            .await;
    let hosts = cluster.hosts();
    let port = hosts[0].rsplit_once(':').unwrap().1;
    let written = format!("Storage1..Local:{port}");
    let mut members = hosts.clone();
    members[0] = written.clone();
    let o = simplechat(with_long_wait(init_args(&members)), &[]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "simplechat: member {written} does not resolve from this machine ("
        )),
        "{}",
        text(&o)
    );
    assert!(
        err.contains("check its spelling, and /etc/hosts or DNS on this machine")
            && err.contains("Nothing changed"),
        "{}",
        text(&o)
    );
    assert!(!err.contains("did not answer within"), "{}", text(&o));
    assert!(o.stdout.is_empty(), "{}", text(&o));
    // Nothing was initiated: the right names still initiate the set.
    initiates(&hosts).await;
}

/// Another member is resolved by mongod, not by init: a name that does not
/// resolve here is a warning, at once, and mongod's own answer is relayed,
/// the member named with what to check. A set is initiated only when every
/// member answers the first (mongod's quorum check), so mongod refuses
/// this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_leaves_another_member_that_does_not_resolve_here_to_mongod() {
    let cluster = TestCluster::start_uninitiated(
        "init_leaves_another_member_that_does_not_resolve_here_to_mongod",
    )
    .await;
    let hosts = cluster.hosts();
    let mut members = hosts.clone();
    members[1] = TYPO.to_owned();
    let o = simplechat(with_long_wait(init_args(&members)), &[]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(o.stdout.is_empty(), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let (warning, err) = stderr.split_once('\n').expect("two lines");
    assert!(
        warning.starts_with(&format!(
            "warning: member {TYPO} does not resolve from this machine ("
        )) && warning.contains(&format!("mongod at {}", hosts[0])),
        "{}",
        text(&o)
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // mongod's answer: its quorum check names the member and its resolver's
    // error (`HostNotFound`, "Could not find address for ...").
    assert!(
        err.contains(&format!(
            "NodeNotFound (74): replSetInitiate quorum check failed because not all proposed set \
             members responded affirmatively: {TYPO}:27017 failed with Could not find address \
             for {TYPO}:27017"
        )),
        "{}",
        text(&o)
    );
    assert!(
        err.ends_with(&format!(
            "{TYPO} did not resolve from this machine either: check the spelling, and /etc/hosts \
             or DNS on the members\n"
        )),
        "{}",
        text(&o)
    );
    assert!(!err.contains("did not answer within"), "{}", text(&o));
    initiates(&hosts).await;
}

/// plan and apply check a new member from here before adding it (mongod
/// would add one nobody can reach): one whose name does not resolve is
/// refused at once, and a set none of whose declared members resolves is
/// not waited for; `status` likewise for a URI none of whose hosts does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_and_status_say_at_once_that_names_do_not_resolve() {
    let cluster =
        TestCluster::start("membership_and_status_say_at_once_that_names_do_not_resolve").await;
    let hosts = cluster.hosts();
    let members_args = |verb: &str, members: &[String]| {
        let mut args: Vec<String> = ["replset", verb, "--name", SET_NAME]
            .map(String::from)
            .to_vec();
        for m in members {
            args.extend(["--member".to_string(), m.clone()]);
        }
        args.push("--allow-even-voters".into());
        with_long_wait(args)
    };
    let mut grown = hosts.clone();
    grown.push(TYPO.to_owned());
    for verb in ["plan", "apply"] {
        let o = simplechat(members_args(verb, &grown), &[]).await;
        assert_eq!(o.status.code(), Some(1), "{verb}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.starts_with(&format!(
                "simplechat: cannot add {TYPO}:27017: its name does not resolve from this machine ("
            )) && err.contains("check its spelling, and /etc/hosts or DNS here"),
            "{verb}: {}",
            text(&o)
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    let typos: Vec<String> = (1..=3).map(|i| format!("storage{i}..local")).collect();
    let o = simplechat(members_args("apply", &typos), &[]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with(&format!(
            "simplechat: no --member resolves from this machine: {} (",
            typos.join(", ")
        )) && err.contains("nothing changed"),
        "{}",
        text(&o)
    );
    assert_eq!(
        err.lines().count(),
        1,
        "no wait was announced: {}",
        text(&o)
    );
    assert!(o.stdout.is_empty(), "{}", text(&o));

    let o = simplechat(
        status_args(format!(
            "mongodb://{TYPO},{TYPO}:27018/?replicaSet={SET_NAME}"
        )),
        &[],
    )
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with(&format!(
            "simplechat: no host in the connection string resolves from this machine: \
             {TYPO}:27017, {TYPO}:27018 ("
        )),
        "{}",
        text(&o)
    );
    // Nothing changed.
    let o = simplechat(members_args("plan", &hosts), &[]).await;
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("nothing to do"),
        "{}",
        text(&o)
    );
}

/// What an operator may give instead of HOST:PORT is refused before any
/// connection, with the member as it should be written: a connection
/// string's hosts (never its password), an IPv6 address in brackets, what a
/// port is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_written_otherwise_are_refused_with_how_to_write_them() {
    say("members_written_otherwise_are_refused_with_how_to_write_them: backend: none");
    for (member, says) in [
        (
            "mongodb://admin:hunter22@storage1.local:27017,storage2.local:27017/?replicaSet=rs",
            "not a connection string: give its hosts one each, --member storage1.local:27017 \
             --member storage2.local:27017, and its credentials and options with --uri",
        ),
        (
            "::1:28101",
            "is an IPv6 address without brackets, so where its port begins cannot be told: \
             write [::1]:28101",
        ),
        ("[::1", "has no closing ']'"),
        ("h:70000", "(a port is a number from 1 to 65535)"),
    ] {
        for verb in ["init", "plan", "apply"] {
            let args: Vec<String> = [
                "replset",
                verb,
                "--name",
                SET_NAME,
                "--member",
                member,
                "--member",
                "127.0.0.1:2",
                "--member",
                "127.0.0.1:3",
            ]
            .map(String::from)
            .to_vec();
            let o = simplechat(with_long_wait(args), &[]).await;
            assert_eq!(o.status.code(), Some(1), "{verb} {member}: {}", text(&o));
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains(says), "{verb} {member}: {}", text(&o));
            assert!(!err.contains("hunter22"), "{}", text(&o));
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }
}

/// Two names of one mongod (`localhost:PORT` and `127.0.0.1:PORT`) would
/// be two members of the configuration: init tells them apart by the
/// process id each mongod answers `hello` with, and initiates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_refuses_one_mongod_named_twice() {
    let cluster = TestCluster::start_uninitiated("init_refuses_one_mongod_named_twice").await;
    let hosts = cluster.hosts();
    let port = hosts[2].rsplit_once(':').unwrap().1;
    let mut members = hosts.clone();
    members[1] = format!("localhost:{port}");
    let o = simplechat(init_args(&members), &[]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with(&format!(
            "simplechat: members localhost:{port} and {} are one mongod (both answer with process id ",
            hosts[2]
        )) && err.contains("name each mongod once")
            && err.contains("nothing changed"),
        "{}",
        text(&o)
    );
    initiates(&hosts).await;
}

/// A member's port where another program answers (an HTTP server) ends
/// init at once, naming the member and what answered, with a wait bound
/// the test could never sit out; nothing is initiated. `status` names it
/// as soon as it answers and, as no other member could answer, ends there
/// rather than waiting out its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_where_another_program_answers_is_said_at_once() {
    let test = "a_port_where_another_program_answers_is_said_at_once";
    let cluster = TestCluster::start_uninitiated(test).await;
    let hosts = cluster.hosts();
    let web = format!("127.0.0.1:{}", http_listener());
    for which in [0, 1] {
        let mut members = hosts.clone();
        members[which] = web.clone();
        let o = simplechat(with_long_wait(init_args(&members)), &[]).await;
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(o.stdout.is_empty(), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(&format!(
                "simplechat: member {web} answered, but not as MongoDB (Invalid wire protocol \
                 opcode: "
            )) && last.contains("another program listens on that port")
                && last.ends_with("Nothing changed"),
            "{which}: {}",
            text(&o)
        );
    }
    initiates(&hosts).await;

    // Its longest wait (10 s) would show as the "no member answered
    // within" line.
    let o = simplechat(
        status_args(format!(
            "mongodb://{web}/?directConnection=true&serverSelectionTimeoutMS=3600000"
        )),
        &[],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with(&format!(
            "{web}: answered, but not as MongoDB (Invalid wire protocol opcode: "
        )) && err.contains("another program listens on that port"),
        "{}",
        text(&o)
    );
    assert!(!err.contains("no member answered within"), "{}", text(&o));
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(status["members"][0]["name"], web.as_str(), "{status}");
}

/// A member's port where a program accepts each connection and closes it
/// without a reply (what a client without TLS sees of a mongod that
/// requires TLS) ends init within seconds, with a wait bound the test
/// could never sit out, naming the member and asking whether TLS is
/// required, or, when --uri asks for TLS, whether it is off there; nothing
/// is initiated. `status` names it as soon as it is judged so and, as no
/// other member could answer, ends there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_closes_connections_unanswered_is_said_within_seconds() {
    let test = "a_port_that_closes_connections_unanswered_is_said_within_seconds";
    let cluster = TestCluster::start_uninitiated(test).await;
    let hosts = cluster.hosts();
    let closing = format!("127.0.0.1:{}", closing_listener());
    for (which, tls) in [(0, false), (1, false), (0, true)] {
        let mut members = hosts.clone();
        members[which] = closing.clone();
        let mut args = with_long_wait(init_args(&members));
        if tls {
            args.extend([
                "--uri".to_string(),
                "mongodb://ignored/?tls=true".to_string(),
            ]);
        }
        let o = simplechat(args, &[]).await;
        assert_eq!(o.status.code(), Some(1), "{which}: {}", text(&o));
        assert!(o.stdout.is_empty(), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        let last = err.lines().last().unwrap_or_default();
        let asks = if tls {
            "is TLS off on this member? --uri says tls=true"
        } else {
            "is TLS required on this member? simplechat connects without TLS unless --uri says \
             tls=true"
        };
        assert!(
            last.starts_with(&format!(
                "simplechat: member {closing}: connection closed by the peer without a reply, "
            )) && last.contains(" times in a row over ")
                && last.contains(asks)
                && last.ends_with("Nothing changed"),
            "{which}, tls {tls}: {}",
            text(&o)
        );
    }
    initiates(&hosts).await;

    let o = simplechat(
        status_args(format!(
            "mongodb://{closing}/?serverSelectionTimeoutMS=3600000"
        )),
        &[],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.lines().any(|l| l.starts_with(&format!(
            "{closing}: connection closed by the peer without a reply, "
        )) && l.contains("unless the connection string says tls=true")),
        "{}",
        text(&o)
    );
    assert!(!err.contains("no member answered within"), "{}", text(&o));
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(status["members"][0]["name"], closing.as_str(), "{status}");
}

/// plan and apply read the set through the declared members: when none of
/// them is a mongod (HTTP servers, a port that closes each connection
/// unanswered), they end within seconds, naming each and what it did,
/// with wait bounds the test could never sit out; nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_and_apply_through_members_that_are_no_mongod_end_within_seconds() {
    say("plan_and_apply_through_members_that_are_no_mongod_end_within_seconds: backend: none");
    let web = format!("127.0.0.1:{}", http_listener());
    let closing = format!("127.0.0.1:{}", closing_listener());
    let other_web = format!("127.0.0.1:{}", http_listener());
    for verb in ["plan", "apply"] {
        let mut args: Vec<String> = ["replset", verb, "--name", SET_NAME]
            .map(String::from)
            .to_vec();
        for m in [&web, &closing, &other_web] {
            args.extend(["--member".to_string(), m.clone()]);
        }
        // The driver's own server selection as long as the wait.
        args.extend([
            "--uri".to_string(),
            "mongodb://ignored/?serverSelectionTimeoutMS=3600000".to_string(),
        ]);
        let o = simplechat(with_long_wait(args), &[]).await;
        assert_eq!(o.status.code(), Some(1), "{verb}: {}", text(&o));
        assert!(o.stdout.is_empty(), "{verb}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("simplechat: no --member answers as MongoDB: ")
                && last.contains(&format!(
                    "{web}: answered, but not as MongoDB (Invalid wire protocol opcode: "
                ))
                && last.contains(&format!("{other_web}: answered, but not as MongoDB ("))
                && last.contains(&format!(
                    "{closing}: connection closed by the peer without a reply, "
                ))
                && last.ends_with("nothing changed"),
            "{verb}: {}",
            text(&o)
        );
    }
}

/// Ctrl-C while init waits for a member: one line saying it can be run
/// again, exit 130 (128 + SIGINT, as apply).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_init_says_it_can_be_run_again() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    say("ctrl_c_during_init_says_it_can_be_run_again: backend: none (nothing listens on the members)");
    let args = with_long_wait(init_args(&[
        "127.0.0.1:1".into(),
        "127.0.0.1:2".into(),
        "127.0.0.1:3".into(),
    ]));
    let mut child = Command::new(env!("CARGO_BIN_EXE_simplechat"))
        .args(&args)
        .env_remove("MONGO_URI")
        .env_remove("SIMPLECHAT_MONGODB_URI")
        .stdout(std::process::Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run simplechat");
    let stderr = child.stderr.take().expect("stderr");
    let pid = child.id().to_string();
    let (first, rest, output) = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stderr).lines();
        // The wait is under way once it is announced.
        let first = lines.next();
        let killed = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill");
        assert!(killed.success());
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        (first, rest, child.wait_with_output().expect("wait"))
    })
    .await
    .expect("join");
    let first = first.expect("a line").expect("stderr");
    assert!(
        first.starts_with("waiting up to 3600 s for 127.0.0.1:1 to answer"),
        "{first}"
    );
    assert_eq!(output.status.code(), Some(130), "{rest:?}");
    assert_eq!(
        rest,
        ["simplechat: replset init was interrupted. Run it again to go on: it initiates the set \
          only if it is not initiated yet, and checks the rest afresh"]
    );
    assert!(output.stdout.is_empty(), "{output:?}");
}

/// `status` with no member answering names each and why, and says so in
/// the header, not the driver's bare "No available servers".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_with_no_member_answering_says_why_of_each() {
    say("status_with_no_member_answering_says_why_of_each: backend: none");
    let o = simplechat(
        vec![
            "replset".into(),
            "status".into(),
            "--uri".into(),
            "mongodb://127.0.0.1:1,[::1]:2/?serverSelectionTimeoutMS=300".into(),
        ],
        &[],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!out.contains("No available servers"), "{}", text(&o));
    assert!(
        out.contains("(replSetGetStatus was not sent: no member answered)"),
        "{out}"
    );
    // An IPv6 member is shown as written, in brackets.
    assert!(
        out.contains("\n  [::1]:2 ") && out.contains("\n  127.0.0.1:1 "),
        "{out}"
    );
}

/// `status` with every member down says on stderr, at once, what it waits
/// for and for how long, and at the end why each member did not answer,
/// in words: a refused connection, a name that does not resolve, a
/// timeout (a listener here that accepts and never answers). stdout holds
/// the report alone, table or JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_with_every_member_down_says_what_it_waits_for_and_why_each() {
    say("status_with_every_member_down_says_what_it_waits_for_and_why_each: backend: none");
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("address").port();
    std::thread::spawn(move || {
        // Each connection is kept open, unanswered, until the test ends.
        let mut held = Vec::new();
        for connection in silent.incoming() {
            held.push(connection);
        }
    });
    let uri = format!(
        "mongodb://127.0.0.1:1,{TYPO},127.0.0.1:{port}/?replicaSet={SET_NAME}\
         &connectTimeoutMS=500&serverSelectionTimeoutMS=2000"
    );
    for json in [false, true] {
        let mut args = status_args(uri.clone());
        if !json {
            args.retain(|a| a != "--json");
        }
        let o = simplechat(args, &[]).await;
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 5, "{}", text(&o));
        assert_eq!(
            lines[0],
            format!(
                "waiting up to 2 s for a member to answer: 127.0.0.1:1, {TYPO}:27017, \
                 127.0.0.1:{port}"
            ),
            "{}",
            text(&o)
        );
        assert_eq!(lines[1], "no member answered within 2 s:", "{}", text(&o));
        for (member, why) in [
            (
                "127.0.0.1:1".to_owned(),
                "connection refused: nothing listens on that port",
            ),
            (
                format!("{TYPO}:27017"),
                "its name does not resolve from this machine (",
            ),
            (format!("127.0.0.1:{port}"), "timed out: no answer within"),
        ] {
            let said = format!("  {member}: {why}");
            assert!(
                lines[2..].iter().any(|l| l.starts_with(&said)),
                "{said}: {}",
                text(&o)
            );
        }
        if json {
            let status: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
            assert_eq!(
                status["members"].as_array().map(Vec::len),
                Some(3),
                "{status}"
            );
        } else {
            let out = String::from_utf8_lossy(&o.stdout);
            assert!(out.starts_with("replica set rs  primary: (none)"), "{out}");
        }
    }
}

/// Every mongod answers, none is initiated: `status` said the command
/// "was not sent: no member answered" beside members listed with health 1,
/// `plan` gave the driver's server selection timeout, and `apply` waited
/// ten minutes for a primary that no wait brings. Each now says the set is
/// not initiated and what to run, and ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_on_a_set_nobody_initiated_say_to_run_init() {
    let test = "commands_on_a_set_nobody_initiated_say_to_run_init";
    let cluster = TestCluster::start_uninitiated(test).await;
    let hosts = cluster.hosts();
    let mut plan = vec![
        "replset".into(),
        "plan".into(),
        "--name".into(),
        SET_NAME.into(),
    ];
    for h in &hosts {
        plan.push("--member".into());
        plan.push(h.clone());
    }
    let mut apply = plan.clone();
    apply[1] = "apply".into();
    let status = vec![
        "replset".into(),
        "status".into(),
        "--uri".into(),
        cluster.uri("chat"),
    ];
    for args in [status, plan, apply] {
        let verb = args[1].clone();
        let o = tokio::time::timeout(Duration::from_secs(120), simplechat(args, &[]))
            .await
            .unwrap_or_else(|_| panic!("`replset {verb}` still waiting after 120 s"));
        assert!(!o.status.success(), "{verb}: {}", text(&o));
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            all.contains("the replica set is not initiated")
                && all.contains("simplechat replset init"),
            "{verb}: {}",
            text(&o)
        );
    }
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
    assert_eq!(json.status.code(), Some(0), "{}", text(&json));
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

/// A connection string naming another set than the members' is the
/// operator's typo to point at, not a timeout: the driver drops every host
/// that answers as a member of another set, and the one line says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_a_replica_set_name_no_host_has() {
    let cluster = TestCluster::start("status_names_a_replica_set_name_no_host_has").await;
    let uri = format!(
        "mongodb://{}/chat?replicaSet=not-{SET_NAME}",
        cluster.hosts().join(",")
    );
    let o = simplechat(status_args(uri), &[]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(o.stdout.is_empty(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "simplechat: no host in the connection string is a member of replica set not-{SET_NAME}"
        )) && err.contains(&format!("check replicaSet=not-{SET_NAME}")),
        "{err}"
    );
}

/// `replset status` is the gate of a rolling restart: it exits 0 only for
/// a primary and every member healthy, 2 otherwise, the report printed
/// either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_exits_2_unless_there_is_a_primary_and_every_member_is_healthy() {
    let test = "status_exits_2_unless_there_is_a_primary_and_every_member_is_healthy";
    let nowhere = "mongodb://127.0.0.1:1/?replicaSet=rs&serverSelectionTimeoutMS=500".to_owned();
    let table = simplechat(
        vec![
            "replset".into(),
            "status".into(),
            "--uri".into(),
            nowhere.clone(),
        ],
        &[],
    )
    .await;
    assert_eq!(table.status.code(), Some(2), "{}", text(&table));
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("primary: (none)"),
        "{}",
        text(&table)
    );
    let json = simplechat(status_args(nowhere), &[]).await;
    assert_eq!(json.status.code(), Some(2), "{}", text(&json));
    let status: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert!(status["primary"].is_null(), "{status}");

    let cluster = TestCluster::start(test).await;
    let primary = cluster.primary().await.expect("primary");
    cluster.kill((primary + 1) % 3).await;
    let o = simplechat(status_args(cluster.uri("chat")), &[]).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert!(status["primary"].is_string(), "{status}");

    let help = simplechat(
        vec!["replset".into(), "status".into(), "--help".into()],
        &[],
    )
    .await;
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("Exit status: 0 when there is a primary"),
        "{}",
        text(&help)
    );
}

fn status_args(uri: String) -> Vec<String> {
    vec![
        "replset".into(),
        "status".into(),
        "--uri".into(),
        uri,
        "--json".into(),
    ]
}

/// `replset status` as the app user with `password`: where its figures
/// came from (`replSetGetStatus` needs the user's clusterMonitor role).
async fn status_source(cluster: &TestCluster, password: &str) -> String {
    let uri = simplechat::mongo::uri::with_password(&cluster.user_uri("chat"), password).unwrap();
    let o = simplechat(status_args(uri), &[]).await;
    // 2: the report of a set without a primary for the moment (just
    // started, or electing), printed all the same.
    assert!(matches!(o.status.code(), Some(0 | 2)), "{}", text(&o));
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    status["source"].as_str().unwrap_or_default().to_owned()
}

/// Credentials the set refuses are no member's health: `replset status`
/// says so in one line and exits 1, every time, instead of showing the
/// member the refused connection went to as down. A URI naming a user and
/// no password takes the password file's, as the app's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_with_refused_credentials_is_one_error_not_a_member_down() {
    use cluster::APP_PASSWORD;
    let test = "status_with_refused_credentials_is_one_error_not_a_member_down";
    let cluster = TestCluster::start_auth(test, &["chat"]).await;
    let no_password = cluster.user_uri("chat");
    let wrong = simplechat::mongo::uri::with_password(&no_password, "Wr0ngPass").expect("URI");
    for _ in 0..3 {
        for uri in [&no_password, &wrong] {
            for json in [false, true] {
                let mut args = status_args(uri.clone());
                if !json {
                    args.pop();
                }
                let o = simplechat(args, &[]).await;
                assert_eq!(o.status.code(), Some(1), "{}", text(&o));
                assert!(o.stdout.is_empty(), "no report: {}", text(&o));
                let err = one_line_failure(&o, &["Wr0ngPass", APP_PASSWORD]);
                assert!(
                    err.starts_with("simplechat: authentication failed")
                        && err.contains("check the user and password"),
                    "{err}"
                );
            }
        }
    }

    let password_file = cluster.auth().password_file.display().to_string();
    let env = [("SIMPLECHAT_MONGODB_PASSWORD_FILE", password_file.as_str())];
    let o = simplechat(status_args(no_password), &env).await;
    assert!(matches!(o.status.code(), Some(0 | 2)), "{}", text(&o));
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(status["source"], "replSetGetStatus", "{status}");
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3));
    // A URI with its own password is used as written.
    let o = simplechat(status_args(wrong), &env).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

fn one_line_failure(o: &Output, secrets: &[&str]) -> String {
    assert!(!o.status.success(), "{}", text(o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    for secret in secrets {
        assert!(!err.contains(secret), "leaks a secret: {err}");
        assert!(
            !String::from_utf8_lossy(&o.stdout).contains(secret),
            "{}",
            text(o)
        );
    }
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_creates_the_app_user_once_and_converges_on_a_changed_password() {
    use cluster::APP_PASSWORD;
    let test = "init_creates_the_app_user_once_and_converges_on_a_changed_password";
    let cluster = TestCluster::start_auth(test, &["chat"]).await;
    let auth = cluster.auth();
    let hosts = cluster.hosts();
    assert_eq!(
        status_source(&cluster, APP_PASSWORD).await,
        "replSetGetStatus"
    );

    let mut args = init_args(&hosts);
    args.extend(auth.init_args());
    let again = simplechat(args.clone(), &[]).await;
    assert!(again.status.success(), "{}", text(&again));
    let out = String::from_utf8_lossy(&again.stdout);
    assert!(
        out.contains("user app@admin exists with roles clusterMonitor@admin, readWrite@chat; nothing changed"),
        "{}",
        text(&again)
    );
    assert!(!out.contains(APP_PASSWORD), "{out}");
    assert!(again.stderr.is_empty(), "a private file: {}", text(&again));

    // A password file other users may read is warned about, as the app
    // warns about its own, and used all the same.
    let open = {
        use std::os::unix::fs::PermissionsExt;
        let open = auth.other_password_file(APP_PASSWORD);
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        open
    };
    let mut open_args = init_args(&hosts);
    let mut user_args = auth.init_args();
    user_args[3] = open.display().to_string();
    open_args.extend(user_args);
    let o = simplechat(open_args, &[]).await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("nothing changed"),
        "{}",
        text(&o)
    );
    let warning = cluster::open_file_warning("--password-file", &open, "644");
    assert!(
        cluster::has_line(&o.stderr, &warning),
        "{warning}: {}",
        text(&o)
    );
    assert!(!text(&o).contains(APP_PASSWORD), "{}", text(&o));

    // The password file changed: without the key, a clear refusal.
    let rotated = "n3w:pass@word";
    let new_file = auth.other_password_file(rotated);
    let mut changed = init_args(&hosts);
    let mut user_args = auth.init_args();
    user_args[3] = new_file.display().to_string();
    changed.extend(user_args.clone());
    let err = one_line_failure(
        &simplechat(changed.clone(), &[]).await,
        &[rotated, APP_PASSWORD],
    );
    assert!(
        err.contains("does not authenticate user app@admin") && err.contains("--key-file"),
        "{err}"
    );
    assert_eq!(
        status_source(&cluster, APP_PASSWORD).await,
        "replSetGetStatus",
        "unchanged"
    );

    // With the members' key file it converges, once.
    changed.extend([
        "--key-file".to_string(),
        auth.key_file.display().to_string(),
    ]);
    let set = simplechat(changed.clone(), &[]).await;
    assert!(set.status.success(), "{}", text(&set));
    assert!(
        String::from_utf8_lossy(&set.stdout).contains("set the password of user app@admin"),
        "{}",
        text(&set)
    );
    assert_eq!(status_source(&cluster, rotated).await, "replSetGetStatus");
    let uri = simplechat::mongo::uri::with_password(&cluster.user_uri("chat"), APP_PASSWORD)
        .expect("URI");
    let old = simplechat(status_args(uri), &[]).await;
    assert_eq!(old.status.code(), Some(1), "{}", text(&old));
    let err = one_line_failure(&old, &[APP_PASSWORD]);
    assert!(
        err.contains("authentication failed"),
        "the old password is refused: {err}"
    );
    let rerun = simplechat(changed.clone(), &[]).await;
    assert!(
        String::from_utf8_lossy(&rerun.stdout).contains("nothing changed"),
        "{}",
        text(&rerun)
    );

    // A key file other users may read is warned about too.
    let open_key = {
        use std::os::unix::fs::PermissionsExt;
        let open_key = new_file.with_file_name("open-keyfile");
        std::fs::copy(&auth.key_file, &open_key).expect("copy the key file");
        std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        open_key
    };
    let mut with_open_key = changed.clone();
    *with_open_key.last_mut().expect("the key file") = open_key.display().to_string();
    let o = simplechat(with_open_key, &[]).await;
    assert!(o.status.success(), "{}", text(&o));
    let warning = cluster::open_file_warning("--key-file", &open_key, "644");
    assert!(
        cluster::has_line(&o.stderr, &warning),
        "{warning}: {}",
        text(&o)
    );
    assert!(
        !String::from_utf8_lossy(&rerun.stderr).contains("warning:"),
        "a private key file: {}",
        text(&rerun)
    );

    // A user that exists with other roles is an error, and left alone.
    let mut other_roles = init_args(&hosts);
    other_roles.extend(user_args[..4].iter().cloned());
    other_roles.extend(["--role", "read@chat", "--role", "clusterMonitor@admin"].map(String::from));
    other_roles.extend([
        "--key-file".to_string(),
        auth.key_file.display().to_string(),
    ]);
    let err = one_line_failure(&simplechat(other_roles, &[]).await, &[rotated]);
    assert!(
        err.contains("user app@admin exists with roles clusterMonitor@admin, readWrite@chat, not clusterMonitor@admin, read@chat"),
        "{err}"
    );

    // A missing password file fails at once, before any connection.
    let mut missing = init_args(&hosts);
    missing.extend(
        [
            "--create-user",
            "app",
            "--password-file",
            "/nonexistent/pw",
            "--role",
            "readWrite@chat",
        ]
        .map(String::from),
    );
    let err = one_line_failure(&simplechat(missing, &[]).await, &[]);
    assert!(
        err.starts_with("simplechat: cannot read the password file /nonexistent/pw"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_initiates_a_keyed_set_and_creates_the_user_through_the_localhost_exception() {
    let test = "init_initiates_a_keyed_set_and_creates_the_user_through_the_localhost_exception";
    cluster::say(&format!(
        "SKIPPED: {test} on real mongod, because start_auth covers that path there; running it on replset-sim"
    ));
    let mut cluster = TestCluster::start_sim(replset_sim::ClusterOptions {
        key_file: Some(cluster::KEY.to_owned()),
        ..cluster::fast_sim(false)
    })
    .await;
    let (ok, out) = cluster::run_init(&cluster.hosts(), &[]).await;
    assert!(
        ok,
        "initiation alone works under the localhost exception: {out}"
    );
    let auth = cluster::Auth::new_for_test(&["chat"]);
    let (ok, out) = cluster::run_init(&cluster.hosts(), &auth.init_args()).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("created user app@admin with roles clusterMonitor@admin, readWrite@chat (through init's own connection)"),
        "{out}"
    );
    cluster.auth = Some(auth);
    assert_eq!(
        status_source(&cluster, cluster::APP_PASSWORD).await,
        "replSetGetStatus"
    );
}

/// Credentials the members refuse are not a member that does not answer
/// yet: init fails at once, says so, and never shows the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_with_refused_credentials_fails_at_once() {
    let test = "init_with_refused_credentials_fails_at_once";
    cluster::say(&format!(
        "SKIPPED: {test} on real mongod, because it needs a keyed set without users, which the simulator starts; running it on replset-sim"
    ));
    let cluster = TestCluster::start_sim(replset_sim::ClusterOptions {
        key_file: Some(cluster::KEY.to_owned()),
        ..cluster::fast_sim(false)
    })
    .await;
    let mut args = init_args(&cluster.hosts());
    args.extend(
        [
            "--uri",
            "mongodb://admin:not-the-password@ignored/?authSource=admin",
            "--wait-secs",
            "30",
        ]
        .map(String::from),
    );
    let started = std::time::Instant::now();
    let o = simplechat(args, &[]).await;
    let waited = started.elapsed();
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    say(&format!("{test}: in {waited:?}: {err}"));
    assert!(err.contains("refused the credentials"), "{}", text(&o));
    assert!(!err.contains("did not answer"), "{}", text(&o));
    assert!(!text(&o).contains("not-the-password"), "{}", text(&o));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(waited < std::time::Duration::from_secs(10), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_the_primary_the_key_file_creates_the_user() {
    let test = "off_the_primary_the_key_file_creates_the_user";
    cluster::say(&format!(
        "SKIPPED: {test} on real mongod, because it moves the primary with the simulator's step-down; running it on replset-sim"
    ));
    let cluster = TestCluster::start_sim(replset_sim::ClusterOptions {
        key_file: Some(cluster::KEY.to_owned()),
        ..cluster::fast_sim(true)
    })
    .await;
    let sim = cluster.sim().expect("simulator");
    sim.step_down().await;
    let deadline = std::time::Instant::now() + cluster.election_time();
    while !matches!(sim.primary(), Some(p) if p != 0) {
        assert!(std::time::Instant::now() < deadline, "no other primary");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let auth = cluster::Auth::new_for_test(&["chat"]);

    // The localhost exception only reaches member 0, which is no primary:
    // init waits out its bound for member 0 to become primary, so a short
    // one.
    let mut args = auth.init_args();
    args.extend(["--wait-secs".to_string(), "2".to_string()]);
    let (ok, out) = cluster::run_init(&cluster.hosts(), &args).await;
    assert!(!ok, "{out}");
    assert!(out.contains("creating the user needs the primary"), "{out}");

    // With the key file, init goes to it at once; the bound is for its
    // logins as the user and as `__system` (SCRAM, new connections to
    // each member), which took over 2 s on a loaded machine.
    let mut args = auth.init_args();
    args.extend([
        "--wait-secs".to_string(),
        "60".to_string(),
        "--key-file".to_string(),
        auth.key_file.display().to_string(),
    ]);
    let (ok, out) = cluster::run_init(&cluster.hosts(), &args).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("created user app@admin with roles clusterMonitor@admin, readWrite@chat (authenticated with the key file)"),
        "{out}"
    );
}

/// A user created in `admin` (as `--create-user` and most deployments do)
/// named by a URI whose path is another database and that has no
/// `authSource`: the driver looks the user up in that database, the set
/// refuses, and every command says where the user was looked up and what
/// to add. With `authSource=admin` the same credentials work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_looked_up_in_the_uris_database_is_named_with_the_fix() {
    use cluster::{APP_PASSWORD, APP_USER};
    let test = "a_user_looked_up_in_the_uris_database_is_named_with_the_fix";
    let cluster = TestCluster::start_auth(test, &["messages"]).await;
    let hosts = cluster.hosts();
    let password = simplechat::mongo::uri::encode_userinfo(APP_PASSWORD);
    let without = format!(
        "mongodb://{APP_USER}:{password}@{}/messages?replicaSet={SET_NAME}",
        hosts.join(",")
    );
    let hint = "(the user is looked up in database `messages`; if it was created in admin, \
                add authSource=admin)";
    let with_uri = |mut args: Vec<String>, uri: &str| {
        args.extend(["--uri".to_string(), uri.to_string()]);
        args.extend(["--wait-secs".to_string(), "5".to_string()]);
        args
    };
    let mut plan = vec!["replset".to_string(), "plan".into(), "--name".into()];
    plan.push(SET_NAME.into());
    for h in &hosts {
        plan.extend(["--member".to_string(), h.clone()]);
    }
    let mut apply = plan.clone();
    apply[1] = "apply".into();
    for args in [
        status_args(without.clone()),
        with_uri(init_args(&hosts), &without),
        with_uri(plan, &without),
        with_uri(apply, &without),
    ] {
        let o = simplechat(args.clone(), &[]).await;
        say(&format!("{test}: {}: {}", args[1], text(&o)));
        let err = one_line_failure(&o, &[APP_PASSWORD, &password]);
        assert!(
            err.contains("authentication failed") && err.contains(hint),
            "{}: {err}",
            args[1]
        );
    }
    // Named where it lives, the same user and password are accepted; a
    // wrong password there gets no such hint.
    let with_source = format!("{without}&authSource=admin");
    let o = simplechat(status_args(with_source.clone()), &[]).await;
    assert!(matches!(o.status.code(), Some(0 | 2)), "{}", text(&o));
    let wrong = with_source.replace(&password, "Wr0ngPass");
    let err = one_line_failure(&simplechat(status_args(wrong), &[]).await, &["Wr0ngPass"]);
    assert!(
        err.contains("check the user and password") && !err.contains("looked up"),
        "{err}"
    );
}
