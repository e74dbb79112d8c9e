//! `--anchors`: simplechat against the anchors of the performance targets
//! ([`crate::anchor`]), in interleaved rounds, as ratios.
//!
//! Each round measures every comparable phase once for simplechat and once
//! for its anchor, the order reversed every other round so neither side
//! always runs first (on a shared machine the load drifts). The tables
//! give the median over the rounds of each figure, and the ratio of the
//! medians.
//!
//! The HTTP phases run on long-lived processes: a simplechat server seeded
//! with 100 messages for the GETs (so its listing stays the bytes the
//! anchors serve), a second one for the durable POSTs, the hyper and the
//! Rocket hello anchors. Each SSE phase gets a fresh process (a simplechat
//! server on an empty store, or a chat anchor), so its RSS at connect is
//! not memory an earlier phase freed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use hyper::Method;

use crate::anchor::{Anchor, AnchorKind};
use crate::load::{self, Conn, Target};
use crate::report::{bytes, count, micros, Table};
use crate::server::Server;
use crate::sse::{self, FanoutResult, SseApi};
use crate::{proc, progress};

/// What an `--anchors` run does.
pub struct Settings {
    /// Rounds; each figure is the median over them.
    pub rounds: usize,
    /// Measured seconds per HTTP phase (after a 1 s warm-up).
    pub duration: Duration,
    /// Connections of the HTTP phases.
    pub connections: usize,
    /// Subscribers of both SSE phases.
    pub subscribers: usize,
    /// Messages and rate of the fan-out phase (latency).
    pub fanout_messages: u64,
    pub fanout_rate: f64,
    /// Messages and rate of the overload phase (delivery rate).
    pub overload_messages: u64,
    pub overload_rate: f64,
    /// What simplechat's front door must admit.
    pub max_connections: usize,
}

/// One figure of one round, by name: simplechat's and the anchor's.
#[derive(Default)]
struct Figures(BTreeMap<String, Vec<f64>>);

impl Figures {
    fn add(&mut self, name: impl Into<String>, value: f64) {
        self.0.entry(name.into()).or_default().push(value);
    }

    /// The median over the rounds, NaN when never measured.
    fn median(&self, name: &str) -> f64 {
        self.0.get(name).map_or(f64::NAN, |values| median(values))
    }

    /// The median over the rounds of `ours ÷ anchor` within each round:
    /// both ran minutes apart at most, so the machine's drift between
    /// rounds cancels out more than in the ratio of the medians.
    fn median_ratio(&self, ours: &str, anchor: &str) -> f64 {
        match (self.0.get(ours), self.0.get(anchor)) {
            (Some(a), Some(b)) => {
                let ratios: Vec<f64> = a.iter().zip(b).map(|(a, b)| a / b).collect();
                median(&ratios)
            }
            _ => f64::NAN,
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count);
/// NaN for none.
fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// Who serves an HTTP phase.
#[derive(Clone, Copy)]
enum Side {
    Reads,
    Writes,
    Hello,
    Hyper,
}

/// The HTTP phases of a round: who, what, and the name of its req/s figure
/// (its CPU per request is the same name and ` cpu`).
const HTTP_PHASES: [(Side, Target, &str); 6] = [
    (
        Side::Reads,
        Target::Get("/api/messages"),
        "simplechat GET /api/messages",
    ),
    (
        Side::Hello,
        Target::Get("/api/messages"),
        "hello GET /api/messages",
    ),
    (Side::Hyper, Target::Get("/api/messages"), "hyper GET"),
    (Side::Reads, Target::Get("/"), "simplechat GET /"),
    (Side::Writes, Target::PostMessage, "simplechat POST"),
    (Side::Hello, Target::PostMessage, "hello POST"),
];

/// Runs the comparison and prints its tables.
///
/// Errors: a server or an anchor did not start, a connection could not be
/// opened, or a POST of an SSE phase failed.
pub async fn run(binary: &Path, settings: &Settings) -> Result<(), String> {
    let whole_run = Instant::now();
    let (reads, _) = Server::start(binary, settings.max_connections).await?;
    let (writes, _) = Server::start(binary, settings.max_connections).await?;

    let (listing, page) = load::seed(reads.addr).await?;

    // The anchors serve simplechat's own listing, byte for byte.
    let mut listing_file = tempfile::NamedTempFile::new()
        .map_err(|e| format!("cannot create a temporary file: {e}"))?;
    listing_file
        .write_all(&listing)
        .and_then(|()| listing_file.flush())
        .map_err(|e| format!("cannot write the listing: {e}"))?;
    let hello = Anchor::start(AnchorKind::RocketHello, Some(listing_file.path())).await?;
    let hyper = Anchor::start(AnchorKind::Hyper, Some(listing_file.path())).await?;
    for anchor in [&hello, &hyper] {
        let mut conn = Conn::open(anchor.addr).await?;
        let (status, body) = conn.request(Method::GET, "/api/messages", None).await?;
        if status != 200 || body != listing {
            return Err(format!(
                "an anchor answered {status} with {} bytes, not the {} of the listing",
                body.len(),
                listing.len()
            ));
        }
    }

    println!(
        "- anchors: {} rounds, each figure the median; {} s per HTTP phase, {} \
         connections; {} subscribers per SSE phase; listing {}, page {}\n",
        settings.rounds,
        settings.duration.as_secs(),
        settings.connections,
        count(settings.subscribers as u64),
        bytes(listing.len() as f64),
        bytes(page.len() as f64)
    );

    let mut figures = Figures::default();
    let mut delivered = BTreeMap::<String, (u64, u64)>::new();
    for round in 1..=settings.rounds {
        let mut phases = HTTP_PHASES.to_vec();
        if round % 2 == 0 {
            phases.reverse();
        }
        for (side, target, rate_name) in phases {
            let (addr, pid) = match side {
                Side::Reads => (reads.addr, reads.pid),
                Side::Writes => (writes.addr, writes.pid),
                Side::Hello => (hello.addr, hello.pid),
                Side::Hyper => (hyper.addr, hyper.pid),
            };
            progress(&format!(
                "round {round}/{}: {rate_name}: 1 s warm-up, {} s",
                settings.rounds,
                settings.duration.as_secs()
            ));
            load::run(
                addr,
                pid,
                target,
                settings.connections,
                Duration::from_secs(1),
            )
            .await?;
            let result =
                load::run(addr, pid, target, settings.connections, settings.duration).await?;
            figures.add(rate_name, result.rate());
            figures.add(format!("{rate_name} cpu"), result.cpu_us_per_request());
        }

        let mut sse_phases = vec![
            (SseApi::Simplechat, false),
            (SseApi::Chat, false),
            (SseApi::Simplechat, true),
            (SseApi::Chat, true),
        ];
        if round % 2 == 0 {
            sse_phases.reverse();
        }
        for (api, overload) in sse_phases {
            let (messages, rate) = if overload {
                (settings.overload_messages, settings.overload_rate)
            } else {
                (settings.fanout_messages, settings.fanout_rate)
            };
            let who = match api {
                SseApi::Simplechat => "simplechat",
                SseApi::Chat => "chat",
            };
            let phase = if overload { "overload" } else { "fan-out" };
            progress(&format!(
                "round {round}/{}: {who} {phase}: {} subscribers, {messages} messages at {rate}/s",
                settings.rounds, settings.subscribers
            ));
            let result = sse_phase(binary, settings, api, messages, rate).await?;
            figures.add(format!("{who} {phase} cpu"), result.cpu_us_per_delivery());
            if overload {
                figures.add(format!("{who} overload rate"), result.delivery_rate);
            } else {
                figures.add(
                    format!("{who} p99"),
                    if result.latency.is_empty() {
                        f64::NAN
                    } else {
                        result.latency.value_at_quantile(0.99) as f64
                    },
                );
                figures.add(
                    format!("{who} rss"),
                    (result.rss_connected as f64 - result.rss_before as f64)
                        / result.connected.max(1) as f64,
                );
            }
            let counts = delivered.entry(format!("{who} {phase}")).or_default();
            counts.0 += result.delivered;
            counts.1 += result.expected;
            if result.connected < result.subscribers {
                eprintln!(
                    "warning: only {}/{} subscribers connected to {who}",
                    result.connected, result.subscribers
                );
            }
        }
    }

    println!("{}", ratio_table(&figures, &delivered, settings).render());
    println!("{}", rounds_table(&figures, settings.rounds).render());
    println!(
        "Ratios are simplechat ÷ anchor: of the medians, and the median of the ratios \
         within each round; a target is met when the ratio of the medians meets it. The anchors: `hyper`, a bare hyper 1 \
         server answering every GET with the listing's bytes; `hello`, Rocket 0.5 serving \
         the same bytes on GET /api/messages and answering a JSON POST with 201 and a small \
         JSON body, storing nothing; `chat`, Rocket's SSE chat example (a broadcast channel \
         of 1024, a form POST /message, GET /events). SSE latency is from just before the \
         POST to the arrival; the overload rate is events delivered per second from the \
         first POST to the last arrival; server CPU per delivered event is the server's \
         (user and system) over the same span, its POSTs included. The whole run took {:.0} s; load average after: {}.",
        whole_run.elapsed().as_secs_f64(),
        proc::load_average()
    );
    Ok(())
}

/// One SSE phase on a fresh process: simplechat on an empty store, or the
/// chat anchor.
async fn sse_phase(
    binary: &Path,
    settings: &Settings,
    api: SseApi,
    messages: u64,
    rate: f64,
) -> Result<FanoutResult, String> {
    match api {
        SseApi::Simplechat => {
            let (server, _) = Server::start(binary, settings.max_connections).await?;
            sse::fanout(
                server.addr,
                server.pid,
                api,
                settings.subscribers,
                messages,
                rate,
            )
            .await
        }
        SseApi::Chat => {
            let anchor = Anchor::start(AnchorKind::RocketChat, None).await?;
            sse::fanout(
                anchor.addr,
                anchor.pid,
                api,
                settings.subscribers,
                messages,
                rate,
            )
            .await
        }
    }
}

/// A ratio and whether it meets a bound.
#[derive(Clone, Copy)]
enum Bound {
    AtLeast(f64),
    AtMost(f64),
    None,
}

fn ratio_table(
    figures: &Figures,
    delivered: &BTreeMap<String, (u64, u64)>,
    settings: &Settings,
) -> Table {
    let mut table = Table::new(&[
        "figure (median of the rounds)",
        "simplechat",
        "anchor",
        "anchor figure",
        "ratio",
        "ratio in each round, median",
        "target",
        "met",
    ]);
    let rate = |v: f64| format!("{} req/s", count_f(v));
    let cpu = |v: f64| format!("{v:.1} µs");
    let mut row = |label: String,
                   ours: &str,
                   anchor: &str,
                   anchor_name: &str,
                   show: &dyn Fn(f64) -> String,
                   bound: Bound| {
        let (a, b) = (figures.median(ours), figures.median(anchor));
        let ratio = a / b;
        let per_round = figures.median_ratio(ours, anchor);
        let (target, met) = match bound {
            Bound::AtLeast(x) => (format!("≥ {x}"), ratio >= x),
            Bound::AtMost(x) => (format!("≤ {x}"), ratio <= x),
            Bound::None => ("-".to_owned(), true),
        };
        table.row(vec![
            label,
            show(a),
            show(b),
            anchor_name.to_owned(),
            two_places(ratio),
            two_places(per_round),
            target,
            match bound {
                Bound::None => "-".into(),
                _ if !ratio.is_finite() => "?".into(),
                _ if met => "yes".into(),
                _ => "NO".into(),
            },
        ]);
    };
    row(
        "GET /api/messages, req/s".into(),
        "simplechat GET /api/messages",
        "hello GET /api/messages",
        "Rocket hello GET",
        &rate,
        Bound::AtLeast(0.95),
    );
    row(
        "GET /api/messages, req/s, against the ceiling".into(),
        "simplechat GET /api/messages",
        "hyper GET",
        "bare hyper GET",
        &rate,
        Bound::None,
    );
    row(
        "POST /api/messages (durable), req/s".into(),
        "simplechat POST",
        "hello POST",
        "Rocket hello POST (no store)",
        &rate,
        Bound::AtLeast(0.5),
    );
    row(
        "GET / (the page), req/s".into(),
        "simplechat GET /",
        "hello GET /api/messages",
        "Rocket hello GET",
        &rate,
        Bound::AtLeast(0.8),
    );
    row(
        "… server CPU per request, GET /api/messages".into(),
        "simplechat GET /api/messages cpu",
        "hello GET /api/messages cpu",
        "Rocket hello GET",
        &cpu,
        Bound::None,
    );
    row(
        "… server CPU per request, GET /api/messages, against the ceiling".into(),
        "simplechat GET /api/messages cpu",
        "hyper GET cpu",
        "bare hyper GET",
        &cpu,
        Bound::None,
    );
    row(
        "… server CPU per request, POST".into(),
        "simplechat POST cpu",
        "hello POST cpu",
        "Rocket hello POST (no store)",
        &cpu,
        Bound::None,
    );
    row(
        "… server CPU per request, GET / against hello's GET".into(),
        "simplechat GET / cpu",
        "hello GET /api/messages cpu",
        "Rocket hello GET",
        &cpu,
        Bound::None,
    );
    row(
        format!(
            "SSE {} subscribers at {}/s, p99",
            count(settings.subscribers as u64),
            settings.fanout_rate
        ),
        "simplechat p99",
        "chat p99",
        "Rocket chat",
        &|v| {
            if v.is_finite() {
                micros(v as u64)
            } else {
                "-".into()
            }
        },
        Bound::AtMost(0.5),
    );
    row(
        format!(
            "SSE overload, {} subscribers at {}/s, events/s delivered",
            count(settings.subscribers as u64),
            settings.overload_rate
        ),
        "simplechat overload rate",
        "chat overload rate",
        "Rocket chat",
        &|v| format!("{} ev/s", count_f(v)),
        Bound::AtLeast(1.5),
    );
    row(
        "… server CPU per delivered event, fan-out".into(),
        "simplechat fan-out cpu",
        "chat fan-out cpu",
        "Rocket chat",
        &cpu,
        Bound::None,
    );
    row(
        "… server CPU per delivered event, overload".into(),
        "simplechat overload cpu",
        "chat overload cpu",
        "Rocket chat",
        &cpu,
        Bound::None,
    );
    row(
        "RSS per SSE subscriber at connect".into(),
        "simplechat rss",
        "chat rss",
        "Rocket chat",
        &|v| bytes(v),
        Bound::None,
    );
    let counts = |name: &str| {
        delivered
            .get(name)
            .map_or("-".into(), |(d, e)| format!("{}/{}", count(*d), count(*e)))
    };
    let all = |name: &str| delivered.get(name).is_some_and(|(d, e)| d == e);
    for (label, ours, anchor) in [
        (
            "SSE fan-out: delivered/expected, all rounds",
            "simplechat fan-out",
            "chat fan-out",
        ),
        (
            "SSE overload: delivered/expected, all rounds",
            "simplechat overload",
            "chat overload",
        ),
    ] {
        table.row(vec![
            label.into(),
            counts(ours),
            counts(anchor),
            "Rocket chat".into(),
            "-".into(),
            "-".into(),
            "every event (simplechat)".into(),
            if all(ours) { "yes" } else { "NO" }.into(),
        ]);
    }
    let rss = figures.median("simplechat rss");
    table.row(vec![
        "RSS per SSE subscriber at connect, absolute".into(),
        bytes(rss),
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
        "≤ 24 KB (24,000 B)".into(),
        if rss <= 24_000.0 { "yes" } else { "NO" }.into(),
    ]);
    table
}

/// Every figure of every round, to judge the noise.
fn rounds_table(figures: &Figures, rounds: usize) -> Table {
    let mut header = vec!["figure, each round".to_owned()];
    header.extend((1..=rounds).map(|r| format!("round {r}")));
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut table = Table::new(&header);
    for (name, values) in &figures.0 {
        let mut cells = vec![name.to_string()];
        cells.extend(values.iter().map(|&v| {
            if name.ends_with("cpu") {
                format!("{v:.1} µs")
            } else if name.ends_with("p99") {
                if v.is_finite() {
                    micros(v as u64)
                } else {
                    "-".into()
                }
            } else if name.ends_with("rss") {
                bytes(v)
            } else {
                count_f(v)
            }
        }));
        table.row(cells);
    }
    table
}

/// A ratio to two decimals; `-` if not finite.
fn two_places(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}")
    } else {
        "-".into()
    }
}

/// A rate rounded to a whole number, with separators; `-` if not finite.
fn count_f(v: f64) -> String {
    if v.is_finite() && v >= 0.0 {
        count(v.round() as u64)
    } else {
        "-".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
        assert_eq!(median(&[f64::NAN, 5.0]), 5.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn ratios_within_rounds() {
        let mut figures = Figures::default();
        for (ours, anchor) in [(10.0, 20.0), (30.0, 40.0), (5.0, 4.0)] {
            figures.add("ours", ours);
            figures.add("anchor", anchor);
        }
        assert_eq!(figures.median("ours") / figures.median("anchor"), 0.5);
        assert_eq!(figures.median_ratio("ours", "anchor"), 0.75);
        assert!(figures.median_ratio("ours", "missing").is_nan());
    }
}
