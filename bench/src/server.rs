//! The server under test: the real release binary, started on a fresh
//! temporary data directory and a free loopback port, killed when dropped.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper::Method;
use tempfile::TempDir;

use crate::load::Conn;

/// How long the server may take to answer `/healthz` before the bench
/// gives up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Finds the server binary: `explicit` (from `--server` or
/// `SIMPLECHAT_BENCH_SERVER`) if given, else `simplechat` next to this
/// bench binary (both land in `target/release/` with `cargo build
/// --release --workspace`).
///
/// Errors: no such file; the message says how to build it.
pub fn locate(explicit: Option<PathBuf>) -> Result<PathBuf, String> {
    let path = match explicit {
        Some(path) => path,
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find the bench binary's own path: {e}"))?
            .with_file_name("simplechat"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no server binary at {}: build it first with `cargo build --release` \
             (or name one with --server / SIMPLECHAT_BENCH_SERVER)",
            path.display()
        ))
    }
}

/// A running server; killed (SIGKILL) and its data directory removed on drop.
pub struct Server {
    child: Child,
    /// Where it listens (127.0.0.1 and a port that was free).
    pub addr: SocketAddr,
    /// Its process id, for `/proc`.
    pub pid: u32,
    // Removed after `drop` has killed the child.
    data: TempDir,
}

impl Server {
    /// Starts `binary` with the embedded store in a new temporary directory
    /// and waits for the first 200 on `/healthz`. Returns the server and
    /// the cold start: from just before spawning to that first 200.
    ///
    /// Settings inherited from the environment (`SIMPLECHAT_*`, `ROCKET_*`,
    /// `MONGO_URI`) are removed, and the working directory is the empty
    /// data directory, so no `simplechat.toml` is read. The front door
    /// admits `max_connections` at once, all from one address.
    ///
    /// Errors: spawn failed, the process exited, or no 200 within 30 s; the
    /// message carries the end of the server's output.
    pub async fn start(
        binary: &Path,
        max_connections: usize,
    ) -> Result<(Server, Duration), String> {
        let data = tempfile::Builder::new()
            .prefix("simplechat-bench-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let port = free_port()?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let log_path = data.path().join("server.log");
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let mut command = Command::new(binary);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("SIMPLECHAT_") || key.starts_with("ROCKET_") || key == "MONGO_URI" {
                command.env_remove(&*key);
            }
        }
        command
            .arg("serve")
            .current_dir(data.path())
            .env("SIMPLECHAT_ADDRESS", "127.0.0.1")
            .env("SIMPLECHAT_PORT", port.to_string())
            .env("SIMPLECHAT_DATA_DIR", data.path().join("store"))
            // The front door's default bound (1,024 connections) would refuse
            // most of a large fan-out's subscribers.
            .env("SIMPLECHAT_MAX_CONNECTIONS", max_connections.to_string())
            // Every client of the bench has one address, loopback's.
            .env("SIMPLECHAT_MAX_CONNECTIONS_PER_CLIENT", "0")
            .env("ROCKET_LOG_LEVEL", "critical")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);

        let spawned = Instant::now();
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let pid = child.id();
        let mut server = Server {
            child,
            addr,
            pid,
            data,
        };
        let deadline = spawned + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "the server exited ({status}) before answering; its output:\n{}",
                    server.log_tail()
                ));
            }
            if healthz(addr).await {
                return Ok((server, spawned.elapsed()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no 200 on /healthz within {START_TIMEOUT:?}; the server's output:\n{}",
                    server.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The last lines the server printed.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.data.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The version line of `binary` (`simplechat --version`), or why not.
pub fn version(binary: &Path) -> String {
    match Command::new(binary).arg("--version").output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Err(e) => format!("unknown ({e})"),
    }
}

async fn healthz(addr: SocketAddr) -> bool {
    match Conn::open(addr).await {
        Ok(mut conn) => matches!(
            conn.request(Method::GET, "/healthz", None).await,
            Ok((200, _))
        ),
        Err(_) => false,
    }
}

/// A loopback port nobody listens on now. Another process could take it
/// before the server binds it; then the start fails and says so.
pub fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("cannot find a free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}
