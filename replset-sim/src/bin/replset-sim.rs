//! Starts a simulated replica set on loopback and prints how to reach it,
//! for poking at it by hand (`mongosh`, the app, `replset init`).
//!
//! Usage: replset-sim [--name rs] [--members 3] [--uninitiated]
//!                    [--election-delay-ms 500] [--lag-ms 0]

use std::time::Duration;

use replset_sim::{Cluster, ClusterOptions};

fn parse_args() -> Result<ClusterOptions, String> {
    let mut opts = ClusterOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--name" => opts.set_name = value("--name")?,
            "--members" => {
                opts.members = value("--members")?
                    .parse()
                    .map_err(|e| format!("--members: {e}"))?
            }
            "--uninitiated" => opts.initiated = false,
            "--election-delay-ms" => {
                opts.election_delay = Duration::from_millis(
                    value("--election-delay-ms")?
                        .parse()
                        .map_err(|e| format!("--election-delay-ms: {e}"))?,
                )
            }
            "--lag-ms" => {
                opts.secondary_lag = Duration::from_millis(
                    value("--lag-ms")?
                        .parse()
                        .map_err(|e| format!("--lag-ms: {e}"))?,
                )
            }
            "-h" | "--help" => {
                println!(
                    "replset-sim [--name rs] [--members 3] [--uninitiated] \
                     [--election-delay-ms 500] [--lag-ms 0]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(opts)
}

#[tokio::main]
async fn main() {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("replset-sim: {e}");
            std::process::exit(2);
        }
    };
    let cluster = match Cluster::start(opts).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("replset-sim: cannot listen: {e}");
            std::process::exit(1);
        }
    };
    println!("{}", cluster.uri("simplechat"));
    for (i, h) in cluster.hosts().iter().enumerate() {
        eprintln!("member {i}: {h} ({})", cluster.member_state(i));
    }
    // Runs until the process is killed; the simulator keeps no state on disk.
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}
