//! `simplechat-bench`: starts the real release binary on a fresh data
//! directory and a free loopback port, loads it, and prints a table.
//!
//! It builds nothing: build the server first (`cargo build --release`),
//! then `cargo run --release -p simplechat-bench` (`-- --quick` for a short
//! run, `-- --help` for the rest). The server binary is `simplechat` next
//! to this binary, or `--server PATH` / `SIMPLECHAT_BENCH_SERVER`.
//!
//! The phases, in order, on one server (plus a few extra starts for the
//! cold start): seed 100 messages and read the idle RSS; `GET
//! /api/messages`, `GET /`, then `POST /api/messages` under closed-loop
//! load ([`load`]); the memory phase (with its control: the same events
//! with no subscriber) and the fan-out phases ([`sse`]). The POST load runs
//! before the SSE phases so the cache (the latest 1000 messages) is full
//! and does not grow while memory is measured.
//!
//! With `--anchors` it runs instead the phases the performance targets
//! compare with anchors (a bare hyper server, a Rocket "hello", Rocket's
//! SSE chat example), against simplechat and each anchor in interleaved
//! rounds, and prints the ratios ([`compare`]).
//!
//! Modules: `load` (HTTP load), `sse` (the event-stream client and its
//! phases), `proc` (RSS and CPU from `/proc`), `server` (starting the
//! binary), `report` (the tables), `anchor` (the anchors, served by this
//! same binary run again), `compare` (the `--anchors` run).

mod anchor;
mod compare;
mod load;
mod proc;
mod report;
mod server;
mod sse;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

use anchor::AnchorKind;
use load::{LoadResult, Target};
use report::{bytes, count, micros, p50_p99, Table};
use server::Server;

/// Benchmark of the simplechat release binary: HTTP load, SSE fan-out,
/// memory per subscriber, cold start. Loopback only; Linux only (/proc).
#[derive(Debug, Parser)]
#[command(name = "simplechat-bench")]
struct Args {
    /// The server binary [default: `simplechat` next to this binary].
    #[arg(long, env = "SIMPLECHAT_BENCH_SERVER")]
    server: Option<PathBuf>,
    /// A short run (about 30 s): 3 s per HTTP phase, 500 memory events,
    /// 10 fan-out messages, 3 cold starts.
    #[arg(long)]
    quick: bool,
    /// Skip the 10k-subscriber fan-out (it needs about 10,500 open files in
    /// the bench and in the server: a socket per subscriber in each).
    #[arg(long)]
    skip_10k: bool,
    /// Subscribers of the large fan-out phase: fewer than 10,000 where the
    /// hard open-file limit is below the 10,500 that needs (servers before
    /// in-process dispatch used three sockets per subscriber: 30,500).
    #[arg(long, default_value_t = 10_000)]
    large_fanout: u64,
    /// Seconds per HTTP phase [default: 10, quick 3].
    #[arg(long)]
    duration: Option<u64>,
    /// Concurrent connections of the HTTP phases.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Messages posted in each fan-out phase [default: 30, quick 10].
    #[arg(long)]
    fanout_messages: Option<u64>,
    /// Messages per second in the fan-out phases.
    #[arg(long, default_value_t = 3.0)]
    fanout_rate: f64,
    /// Subscribers of the memory phase.
    #[arg(long, default_value_t = 200)]
    memory_subscribers: usize,
    /// Events of the memory phase, each read by every subscriber before
    /// the next [default: 4500, quick 500].
    #[arg(long)]
    memory_events: Option<u64>,
    /// How many times to start a server for the cold start [default: 5,
    /// quick 3].
    #[arg(long)]
    cold_starts: Option<usize>,
    /// Compare with the anchors of the performance targets instead: the
    /// HTTP phases against a bare hyper server and a Rocket "hello", the
    /// fan-out (at --fanout-rate) and an overload phase (at
    /// --overload-rate) against Rocket's SSE chat example, with
    /// --large-fanout subscribers; interleaved rounds, medians and ratios.
    #[arg(long)]
    anchors: bool,
    /// Rounds of the --anchors run.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Messages of the --anchors overload phase [default: 300, quick 60].
    #[arg(long)]
    overload_messages: Option<u64>,
    /// Messages per second of the --anchors overload phase.
    #[arg(long, default_value_t = 20.0)]
    overload_rate: f64,
    /// Serve an anchor on 127.0.0.1 instead of benchmarking (how the bench
    /// starts its anchors).
    #[arg(long, hide = true, requires = "port")]
    serve_anchor: Option<AnchorKind>,
    /// The port of --serve-anchor.
    #[arg(long, hide = true)]
    port: Option<u16>,
    /// The file whose bytes --serve-anchor serves as the listing.
    #[arg(long, hide = true)]
    body: Option<PathBuf>,
}

/// Open files a fan-out of `subscribers` needs in each process: one socket
/// per subscriber in the bench and one in the server (the front door
/// serves event streams itself), plus headroom for the store, the load
/// connections and stdio.
fn files_for(subscribers: u64) -> u64 {
    subscribers + 512
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let outcome = match args.serve_anchor {
        Some(kind) => anchor::serve(kind, args.port.unwrap_or_default(), args.body).await,
        None => run(args).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("simplechat-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let whole_run = Instant::now();
    let quick = args.quick;
    let duration = Duration::from_secs(args.duration.unwrap_or(if quick { 3 } else { 10 }));
    let fanout_messages = args.fanout_messages.unwrap_or(if quick { 10 } else { 30 });
    let memory_events = args.memory_events.unwrap_or(if quick { 500 } else { 4500 });
    let cold_starts = args.cold_starts.unwrap_or(if quick { 3 } else { 5 }).max(1);
    if args.fanout_rate <= 0.0 || args.overload_rate <= 0.0 || args.connections == 0 {
        return Err("--fanout-rate, --overload-rate and --connections must be positive".into());
    }
    let binary = server::locate(args.server)?;

    // Before any server starts, so each inherits the raised limit.
    let large = args.large_fanout;
    let wanted = files_for(large);
    let files = proc::raise_open_file_limit(wanted)
        .map_err(|e| format!("cannot read or raise the open-file limit: {e}"))?;
    let mut fanouts = vec![1_000];
    if args.skip_10k {
        eprintln!("skipping the large fan-out (--skip-10k)");
    } else if files < wanted {
        eprintln!(
            "SKIPPED: the fan-out to {large} subscribers, because the open-file limit is \
             {files} and cannot be raised to {wanted} (raise the hard limit: `ulimit -Hn`, \
             or LimitNOFILE; or pass a smaller --large-fanout)"
        );
    } else if large > 1_000 {
        fanouts.push(large as usize);
    }
    let max_connections = large as usize + 512;

    let size = std::fs::metadata(&binary).map(|m| m.len()).unwrap_or(0);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("# simplechat benchmark\n");
    println!(
        "- server: {} ({})",
        binary.display(),
        server::version(&binary)
    );
    println!("- binary size: {} ({})", count(size), bytes(size as f64));
    println!("- machine: {cores} cores, shared by the server and this client");
    println!("- load average before: {}", proc::load_average());
    println!(
        "- run: {}{} s per HTTP phase, {} connections; open-file limit {files}\n",
        if quick { "quick, " } else { "" },
        duration.as_secs(),
        args.connections
    );

    if args.anchors {
        if files < wanted {
            return Err(format!(
                "the open-file limit is {files} and cannot be raised to the {wanted} that \
                 {large} subscribers need: pass a smaller --large-fanout"
            ));
        }
        let settings = compare::Settings {
            rounds: args.rounds.max(1),
            duration,
            connections: args.connections,
            subscribers: large as usize,
            fanout_messages,
            fanout_rate: args.fanout_rate,
            overload_messages: args
                .overload_messages
                .unwrap_or(if quick { 60 } else { 300 }),
            overload_rate: args.overload_rate,
            max_connections,
        };
        return compare::run(&binary, &settings).await;
    }

    // Cold start: extra servers first, each on its own fresh directory.
    let mut starts = Vec::with_capacity(cold_starts);
    for _ in 1..cold_starts {
        let (_server, took) = Server::start(&binary, max_connections).await?;
        starts.push(took);
    }
    let (server, took) = Server::start(&binary, max_connections).await?;
    starts.push(took);

    let (listing, page) = load::seed(server.addr).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = proc::rss_bytes(server.pid).map_err(|e| e.to_string())?;

    let mut http = Table::new(&[
        "HTTP, closed loop",
        "req/s",
        "p50",
        "p99",
        "server CPU per request",
        "failed",
    ]);
    let phases = [
        (
            format!(
                "GET /api/messages (100 cached messages, {})",
                bytes(listing.len() as f64)
            ),
            Target::Get("/api/messages"),
        ),
        (
            format!("GET / (the page, {})", bytes(page.len() as f64)),
            Target::Get("/"),
        ),
        (
            "POST /api/messages (durable)".to_owned(),
            Target::PostMessage,
        ),
    ];
    for (label, target) in phases {
        progress(&format!("{label}: 1 s warm-up, {} s", duration.as_secs()));
        load::run(
            server.addr,
            server.pid,
            target,
            args.connections,
            Duration::from_secs(1),
        )
        .await?;
        let result = load::run(server.addr, server.pid, target, args.connections, duration).await?;
        http.row(http_row(&label, &result));
    }

    progress(&format!(
        "memory: {} subscribers, {memory_events} events, each read by all before the next",
        args.memory_subscribers
    ));
    let memory = sse::memory(&server, args.memory_subscribers, memory_events).await?;

    let mut fanout_table = Table::new(&[
        "SSE fan-out",
        "connected",
        "p50",
        "p99",
        "max",
        "delivered/expected",
        "RSS per subscriber at connect",
    ]);
    for n in fanouts {
        progress(&format!(
            "fan-out: {n} subscribers, {fanout_messages} messages at {}/s",
            args.fanout_rate
        ));
        let result = sse::fanout(
            server.addr,
            server.pid,
            sse::SseApi::Simplechat,
            n,
            fanout_messages,
            args.fanout_rate,
        )
        .await?;
        fanout_table.row(fanout_row(&result));
    }

    let mut memory_table = Table::new(&["memory and start", "value"]);
    memory_table.row(vec![
        "RSS idle (100 messages, nothing connected)".into(),
        bytes(rss_idle as f64),
    ]);
    let connected = memory.connected.max(1) as f64;
    memory_table.row(vec![
        format!(
            "RSS growth per subscriber after {} events ({}/{} subscribers connected{})",
            count(memory.events),
            memory.connected,
            memory.subscribers,
            match memory.stalled_at {
                Some(step) => format!(", STALLED at event {step}"),
                None => String::new(),
            }
        ),
        bytes((memory.rss_after as f64 - memory.rss_warm as f64) / connected),
    ]);
    memory_table.row(vec![
        format!(
            "control: server RSS growth over {} events with no subscriber (total)",
            count(memory.events)
        ),
        bytes(memory.control_after as f64 - memory.control_warm as f64),
    ]);
    memory_table.row(vec![
        "events delivered/expected in the memory phase".into(),
        format!("{}/{}", count(memory.delivered), count(memory.expected)),
    ]);
    starts.sort();
    memory_table.row(vec![
        format!(
            "cold start, spawn to first 200 on /healthz (median of {})",
            starts.len()
        ),
        format!(
            "{} (min {}, max {})",
            micros(starts[starts.len() / 2].as_micros() as u64),
            micros(starts[0].as_micros() as u64),
            micros(starts[starts.len() - 1].as_micros() as u64)
        ),
    ]);

    println!("{}", http.render());
    println!("{}", fanout_table.render());
    println!("{}", memory_table.render());
    println!(
        "SSE latency is from just before the POST is sent (so it includes the durable write) \
         to the arrival at the subscriber; fan-out posts {fanout_messages} messages at {}/s. \
         The whole run took {:.0} s; load average after: {}.",
        args.fanout_rate,
        whole_run.elapsed().as_secs_f64(),
        proc::load_average()
    );
    Ok(())
}

fn http_row(label: &str, result: &LoadResult) -> Vec<String> {
    let (p50, p99) = p50_p99(&result.latency);
    vec![
        label.to_owned(),
        count(result.rate().round() as u64),
        p50,
        p99,
        format!("{:.1} µs", result.cpu_us_per_request()),
        count(result.failed),
    ]
}

fn fanout_row(result: &sse::FanoutResult) -> Vec<String> {
    let (p50, p99) = p50_p99(&result.latency);
    let max = if result.latency.is_empty() {
        "-".into()
    } else {
        micros(result.latency.max())
    };
    let mut delivered = format!("{}/{}", count(result.delivered), count(result.expected));
    if result.out_of_order > 0 || result.closed_early > 0 {
        delivered.push_str(&format!(
            " ({} out of order, {} streams closed early)",
            result.out_of_order, result.closed_early
        ));
    }
    vec![
        format!(
            "{} subscribers, {} messages at {:.1}/s (connected in {:.1} s)",
            count(result.subscribers as u64),
            result.messages,
            result.post_rate,
            result.connect_time.as_secs_f64()
        ),
        format!(
            "{}/{}",
            count(result.connected as u64),
            count(result.subscribers as u64)
        ),
        p50,
        p99,
        max,
        delivered,
        bytes(
            (result.rss_connected as f64 - result.rss_before as f64)
                / result.connected.max(1) as f64,
        ),
    ]
}

fn progress(what: &str) {
    eprintln!("… {what}");
}
