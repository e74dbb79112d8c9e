//! One replica set for the MongoDB tests, on one of two backends:
//! - real `mongod` processes, when `SIMPLECHAT_TEST_MONGOD` names a mongod
//!   binary or `mongod` is on PATH: three members on loopback ports with
//!   temporary dbpaths, initiated by `simplechat replset init`, killed with
//!   SIGKILL;
//! - otherwise the wire-level simulator (`replset-sim`).
//!
//! Every test says on stderr which backend it ran on, and when the real
//! backend could not run, one `SKIPPED:` line saying why. Those lines are
//! written past the test harness's output capture, so they show in CI logs.
//!
//! [`TestCluster::start_auth`] gives either backend a member key (access
//! control on) and the app's user, created by the real
//! `simplechat replset init --create-user` through the localhost exception.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mongodb::bson::doc;
use mongodb::Client;

pub const SET_NAME: &str = "rs";

/// A listener on loopback that answers every connection as an HTTP server
/// answers a request it cannot read, then closes it: what a web server on a
/// port given by mistake does. Returns its port.
pub fn http_listener() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for mut connection in listener.incoming().map_while(Result::ok) {
            let mut request = [0u8; 1024];
            let _ = connection.read(&mut request);
            let _ = connection.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    port
}

/// A listener on loopback that accepts every connection, reads what the
/// client sends first, and closes it without a word: what a client
/// without TLS sees of a mongod that requires TLS (mongod reads the first
/// message, finds no TLS handshake and ends the session), or of one at its
/// connection limit. Returns its port.
pub fn closing_listener() -> u16 {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for mut connection in listener.incoming().map_while(Result::ok) {
            let mut first = [0u8; 1024];
            let _ = connection.read(&mut first);
        }
    });
    port
}

/// A line in the test log that output capture does not swallow.
/// The line `replset` commands print on stderr for a secret file given
/// with `setting` that other users may read (mode `mode`, octal digits).
pub fn open_file_warning(setting: &str, path: &Path, mode: &str) -> String {
    format!(
        "warning: {setting} {0} is open to other users (mode {mode}) and holds a secret: \
         chmod 600 {0}",
        path.display()
    )
}

/// Whether `stderr` has `line` as one of its lines.
pub fn has_line(stderr: &[u8], line: &str) -> bool {
    String::from_utf8_lossy(stderr).lines().any(|l| l == line)
}

pub fn say(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// The mongod binary to use, or why there is none.
pub fn mongod_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("SIMPLECHAT_TEST_MONGOD").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "SIMPLECHAT_TEST_MONGOD={} is not a file",
                path.display()
            ))
        };
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("mongod"))
            .find(|candidate| candidate.is_file())
    });
    on_path.ok_or_else(|| {
        "no mongod binary (set SIMPLECHAT_TEST_MONGOD to one, or put mongod on PATH)".to_owned()
    })
}

pub enum Backend {
    Sim(replset_sim::Cluster),
    Mongod(MongodSet),
}

pub struct TestCluster {
    pub backend: Backend,
    /// Set by [`TestCluster::start_auth`].
    pub auth: Option<Auth>,
}

/// The member key file (`security.keyFile`) of an authenticated cluster.
pub const KEY: &str = "c2ltcGxlY2hhdCB0ZXN0\nbWVtYmVyIGtleQ==\n";
/// The app user's name and password: every character class a connection
/// string must escape, so the app's percent-encoding is exercised.
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "pa%ss@w:rd/?# é";

/// The secrets of an authenticated cluster, as files (mode 0400), the way
/// the deployment hands them over.
pub struct Auth {
    dir: tempfile::TempDir,
    pub key_file: PathBuf,
    pub password_file: PathBuf,
    /// The app user's roles, `ROLE@DB`.
    pub roles: Vec<String>,
}

impl Auth {
    /// Fresh secrets for a cluster started another way.
    pub fn new_for_test(databases: &[&str]) -> Auth {
        Auth::new(databases)
    }

    fn new(databases: &[&str]) -> Auth {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let key_file = dir.path().join("keyfile");
        let password_file = dir.path().join("app-password");
        for (path, content) in [(&key_file, KEY), (&password_file, APP_PASSWORD)] {
            std::fs::write(path, format!("{content}\n")).expect("write secret");
            // mongod refuses a key file others may read.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o400))
                .expect("chmod secret");
        }
        let mut roles: Vec<String> = databases.iter().map(|d| format!("readWrite@{d}")).collect();
        roles.push("clusterMonitor@admin".to_owned());
        Auth {
            dir,
            key_file,
            password_file,
            roles,
        }
    }

    /// A password file with other content, for wrong-password tests.
    pub fn other_password_file(&self, password: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join(format!("other-{}", password.len()));
        std::fs::write(&path, format!("{password}\n")).expect("write password");
        // Private, as a deployment keeps it: a file others may read is
        // warned about.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .expect("chmod password");
        path
    }

    /// `simplechat replset init` arguments that create the app user.
    pub fn init_args(&self) -> Vec<String> {
        let mut args = vec![
            "--create-user".to_owned(),
            APP_USER.to_owned(),
            "--password-file".to_owned(),
            self.password_file.display().to_string(),
        ];
        for role in &self.roles {
            args.push("--role".to_owned());
            args.push(role.clone());
        }
        args
    }
}

impl TestCluster {
    /// The real backend when there is a mongod, else the simulator. Prints
    /// the backend line (and the SKIPPED line for the real one) for `test`.
    pub async fn start(test: &str) -> TestCluster {
        TestCluster::start_with(test, true).await
    }

    /// Like `start`, but the members are left uninitiated.
    pub async fn start_uninitiated(test: &str) -> TestCluster {
        TestCluster::start_with(test, false).await
    }

    async fn start_with(test: &str, initiated: bool) -> TestCluster {
        match mongod_binary() {
            Ok(bin) => {
                say(&format!("{test}: backend: mongod ({})", bin.display()));
                let set = MongodSet::start(&bin, initiated, None)
                    .await
                    .unwrap_or_else(|e| panic!("{test}: cannot start mongod replica set: {e}"));
                TestCluster {
                    backend: Backend::Mongod(set),
                    auth: None,
                }
            }
            Err(why) => {
                say(&format!(
                    "SKIPPED: {test} on real mongod, because {why}; running it on replset-sim only"
                ));
                say(&format!("{test}: backend: replset-sim"));
                TestCluster::start_sim(fast_sim(initiated)).await
            }
        }
    }

    /// Always the simulator (fault injection the real backend cannot do).
    pub async fn start_sim(options: replset_sim::ClusterOptions) -> TestCluster {
        let cluster = replset_sim::Cluster::start(options)
            .await
            .expect("start replset-sim");
        TestCluster {
            backend: Backend::Sim(cluster),
            auth: None,
        }
    }

    /// An initiated set with access control (a member key) and the app
    /// user, `readWrite` on each of `databases` and `clusterMonitor`,
    /// created by `simplechat replset init --create-user`: on real mongod
    /// when there is one, else on the simulator.
    pub async fn start_auth(test: &str, databases: &[&str]) -> TestCluster {
        let auth = Auth::new(databases);
        let mut cluster = match mongod_binary() {
            Ok(bin) => {
                say(&format!(
                    "{test}: backend: mongod with keyFile ({})",
                    bin.display()
                ));
                let set = MongodSet::start(&bin, false, Some(&auth.key_file))
                    .await
                    .unwrap_or_else(|e| panic!("{test}: cannot start mongod replica set: {e}"));
                TestCluster {
                    backend: Backend::Mongod(set),
                    auth: None,
                }
            }
            Err(why) => {
                say(&format!(
                    "SKIPPED: {test} on real mongod, because {why}; running it on replset-sim only"
                ));
                say(&format!("{test}: backend: replset-sim with a key"));
                TestCluster::start_sim(replset_sim::ClusterOptions {
                    key_file: Some(KEY.to_owned()),
                    ..fast_sim(true)
                })
                .await
            }
        };
        let out = run_init(&cluster.hosts(), &auth.init_args()).await;
        assert!(
            out.0,
            "{test}: replset init --create-user failed: {}",
            out.1
        );
        say(&format!("{test}: {}", out.1.trim()));
        cluster.auth = Some(auth);
        cluster
    }

    pub fn name(&self) -> &'static str {
        match self.backend {
            Backend::Sim(_) => "replset-sim",
            Backend::Mongod(_) => "mongod",
        }
    }

    pub fn sim(&self) -> Option<&replset_sim::Cluster> {
        match &self.backend {
            Backend::Sim(c) => Some(c),
            Backend::Mongod(_) => None,
        }
    }

    pub fn hosts(&self) -> Vec<String> {
        match &self.backend {
            Backend::Sim(c) => c.hosts(),
            Backend::Mongod(m) => m.hosts(),
        }
    }

    pub fn uri(&self, database: &str) -> String {
        format!(
            "mongodb://{}/{database}?replicaSet={SET_NAME}",
            self.hosts().join(",")
        )
    }

    /// The `messages` collection of `database` through a driver client of
    /// its own, as another app (the lab's) reaches it.
    pub async fn lab_messages(
        &self,
        database: &str,
    ) -> mongodb::Collection<mongodb::bson::Document> {
        Client::with_uri_str(self.uri(database))
            .await
            .expect("a client of the lab's own")
            .database(database)
            .collection("messages")
    }

    /// The app's connection string without its password (which comes from
    /// `mongodb_password_file`), as the deployment writes it.
    pub fn user_uri(&self, database: &str) -> String {
        format!(
            "mongodb://{APP_USER}@{}/{database}?replicaSet={SET_NAME}&authSource=admin&authMechanism=SCRAM-SHA-256",
            self.hosts().join(",")
        )
    }

    /// The secrets of a cluster from [`TestCluster::start_auth`].
    pub fn auth(&self) -> &Auth {
        self.auth.as_ref().expect("an authenticated cluster")
    }

    /// How long an election may take on this backend: mongod's default
    /// election timeout is 10 s.
    pub fn election_time(&self) -> Duration {
        match self.backend {
            Backend::Sim(_) => Duration::from_secs(3),
            Backend::Mongod(_) => Duration::from_secs(30),
        }
    }

    pub async fn primary(&self) -> Option<usize> {
        match &self.backend {
            Backend::Sim(c) => c.primary(),
            Backend::Mongod(m) => m.primary().await,
        }
    }

    pub async fn wait_for_primary(&self, timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.primary().await {
                return Some(p);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Crashes a member (SIGKILL for mongod).
    pub async fn kill(&self, member: usize) {
        match &self.backend {
            Backend::Sim(c) => c.kill(member).await,
            Backend::Mongod(m) => m.kill(member),
        }
    }

    pub async fn restart(&self, member: usize) {
        match &self.backend {
            Backend::Sim(c) => c.restart(member).await.expect("restart member"),
            Backend::Mongod(m) => m.restart(member).expect("restart mongod"),
        }
    }

    /// PRIMARY, SECONDARY, ... as the member itself says.
    pub async fn member_state(&self, member: usize) -> String {
        match &self.backend {
            Backend::Sim(c) => c.member_state(member).to_owned(),
            Backend::Mongod(m) => m.member_state(member).await,
        }
    }
}

/// A simulator shaped for quick tests.
pub fn fast_sim(initiated: bool) -> replset_sim::ClusterOptions {
    replset_sim::ClusterOptions {
        set_name: SET_NAME.to_owned(),
        members: 3,
        initiated,
        election_delay: Duration::from_millis(500),
        // Zero: with a lag, the simulator's majority wait on the primary
        // is not woken when a secondary catches up, and writes run into
        // their wtimeout.
        secondary_lag: Duration::ZERO,
        ..Default::default()
    }
}

/// Runs `simplechat replset init --name rs --member ...` plus `extra`;
/// returns whether it succeeded and its stdout and stderr.
pub async fn run_init(hosts: &[String], extra: &[String]) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_simplechat"));
    command.args(["replset", "init", "--name", SET_NAME]);
    for host in hosts {
        command.args(["--member", host]);
    }
    command.args(extra);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run simplechat replset init");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// Three mongod processes on loopback, each with its own temporary dbpath.
pub struct MongodSet {
    bin: PathBuf,
    dir: tempfile::TempDir,
    ports: Vec<u16>,
    children: Mutex<Vec<Option<Child>>>,
    /// `security.keyFile`, when access control is on; the harness's own
    /// status queries then authenticate as `__system` with the key.
    key_file: Option<PathBuf>,
}

fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

impl MongodSet {
    pub async fn start(
        bin: &Path,
        initiated: bool,
        key_file: Option<&Path>,
    ) -> Result<MongodSet, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut ports = Vec::new();
        for _ in 0..3 {
            ports.push(free_port().map_err(|e| e.to_string())?);
        }
        let set = MongodSet {
            bin: bin.to_path_buf(),
            dir,
            ports,
            children: Mutex::new(Vec::new()),
            key_file: key_file.map(Path::to_path_buf),
        };
        for i in 0..3 {
            std::fs::create_dir_all(set.dbpath(i)).map_err(|e| e.to_string())?;
            let child = set
                .spawn(i)
                .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
            set.children.lock().unwrap().push(Some(child));
        }
        if initiated {
            set.initiate().await?;
        }
        Ok(set)
    }

    fn dbpath(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("member{i}"))
    }

    fn spawn(&self, i: usize) -> std::io::Result<Child> {
        let log = self.dir.path().join(format!("member{i}.log"));
        let mut command = Command::new(&self.bin);
        if let Some(key) = &self.key_file {
            command.arg("--keyFile").arg(key);
        }
        command
            .arg("--replSet")
            .arg(SET_NAME)
            .arg("--port")
            .arg(self.ports[i].to_string())
            .arg("--bind_ip")
            .arg("127.0.0.1")
            .arg("--dbpath")
            .arg(self.dbpath(i))
            .arg("--logpath")
            .arg(log)
            .arg("--wiredTigerCacheSizeGB")
            .arg("0.25")
            .arg("--oplogSize")
            .arg("64")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    }

    /// Runs the real `simplechat replset init` command against the members.
    async fn initiate(&self) -> Result<(), String> {
        let (ok, out) = run_init(&self.hosts(), &[]).await;
        if !ok {
            return Err(format!("simplechat replset init failed: {out}"));
        }
        say(&format!("mongod: {}", out.trim()));
        Ok(())
    }

    pub fn hosts(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    pub fn kill(&self, i: usize) {
        let mut children = self.children.lock().unwrap();
        if let Some(mut child) = children[i].take() {
            // std's kill is SIGKILL on Unix: a crash, not a shutdown.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&self, i: usize) -> std::io::Result<()> {
        self.kill(i);
        let child = self.spawn(i)?;
        self.children.lock().unwrap()[i] = Some(child);
        Ok(())
    }

    async fn direct(&self, i: usize) -> Option<Client> {
        let credentials = match &self.key_file {
            Some(path) => {
                let key: String = std::fs::read_to_string(path)
                    .ok()?
                    .split_whitespace()
                    .collect();
                format!("__system:{key}@")
            }
            None => String::new(),
        };
        let auth_source = if self.key_file.is_some() {
            "&authSource=local&authMechanism=SCRAM-SHA-256"
        } else {
            ""
        };
        let uri = format!(
            "mongodb://{credentials}{}/?directConnection=true&serverSelectionTimeoutMS=1000&connectTimeoutMS=1000{auth_source}",
            self.hosts()[i]
        );
        Client::with_uri_str(uri).await.ok()
    }

    pub async fn primary(&self) -> Option<usize> {
        for i in 0..self.ports.len() {
            if self.children.lock().unwrap()[i].is_none() {
                continue;
            }
            let Some(client) = self.direct(i).await else {
                continue;
            };
            let hello = client
                .database("admin")
                .run_command(doc! { "hello": 1 })
                .await;
            if let Ok(hello) = hello {
                if hello.get_bool("isWritablePrimary").unwrap_or(false) {
                    return Some(i);
                }
            }
        }
        None
    }

    pub async fn member_state(&self, i: usize) -> String {
        if self.children.lock().unwrap()[i].is_none() {
            return "DOWN".into();
        }
        let Some(client) = self.direct(i).await else {
            return "UNREACHABLE".into();
        };
        match client
            .database("admin")
            .run_command(doc! { "replSetGetStatus": 1 })
            .await
        {
            Ok(status) => status
                .get_array("members")
                .ok()
                .and_then(|members| {
                    members
                        .iter()
                        .filter_map(|m| m.as_document())
                        .find(|m| m.get_bool("self").unwrap_or(false))
                        .and_then(|m| m.get_str("stateStr").ok().map(str::to_owned))
                })
                .unwrap_or_else(|| "UNKNOWN".into()),
            Err(e) => format!("UNREACHABLE ({e})"),
        }
    }
}

impl Drop for MongodSet {
    fn drop(&mut self) {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        for child in children.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
