//! Starts a simulated replica set on loopback and prints a connection
//! string for it on standard output, for poking at it by hand (`mongosh`,
//! pymongo, the app, `replset init`). A test double, never a server to
//! keep data in: nothing is written to disk.

use std::time::Duration;

use clap::Parser;
use replset_sim::{Cluster, ClusterOptions};

/// A simulated MongoDB replica set on 127.0.0.1 (a test double).
///
/// Prints `mongodb://HOSTS/DATABASE?replicaSet=NAME` on standard output and
/// each member's address and state on standard error, then runs until
/// killed.
#[derive(Debug, Parser)]
#[command(name = "replset-sim", version)]
struct Args {
    /// The replica set's name (mongod's replSetName).
    #[arg(long, default_value = "rs")]
    name: String,
    /// How many members (each votes and holds data).
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Start with no replica-set configuration, as fresh mongods before
    /// `rs.initiate()` / `simplechat replset init`.
    #[arg(long)]
    uninitiated: bool,
    /// How long an election takes after the primary is lost, in ms.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    election_delay_ms: u64,
    /// How long secondaries trail the primary, in ms (majority writes wait
    /// for it).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    lag_ms: u64,
    /// The first member's port; the others take the next ones. Without
    /// --port or --ports the system picks free ports.
    #[arg(long, value_name = "PORT", conflicts_with = "ports")]
    port: Option<u16>,
    /// Every member's port, comma-separated, one per member.
    #[arg(long, value_name = "PORT,PORT,...", value_delimiter = ',')]
    ports: Vec<u16>,
    /// The database named in the printed connection string; `messages` is
    /// the lab's.
    #[arg(long, default_value = "simplechat")]
    database: String,
}

impl Args {
    fn options(&self) -> Result<ClusterOptions, String> {
        let ports = match self.port {
            Some(first) => (0..self.members)
                .map(|i| {
                    u16::try_from(usize::from(first) + i)
                        .map_err(|_| format!("--port {first}: not enough ports above it"))
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => self.ports.clone(),
        };
        Ok(ClusterOptions {
            set_name: self.name.clone(),
            members: self.members,
            initiated: !self.uninitiated,
            election_delay: Duration::from_millis(self.election_delay_ms),
            secondary_lag: Duration::from_millis(self.lag_ms),
            ports,
            ..ClusterOptions::default()
        })
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let cluster = match args.options() {
        Ok(options) => Cluster::start(options).await.map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let cluster = match cluster {
        Ok(c) => c,
        Err(e) => {
            eprintln!("replset-sim: cannot start: {e}");
            std::process::exit(1);
        }
    };
    println!("{}", cluster.uri(&args.database));
    for (i, h) in cluster.hosts().iter().enumerate() {
        eprintln!("member {i}: {h} ({})", cluster.member_state(i));
    }
    // Runs until the process is killed; the simulator keeps no state on disk.
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}
