//! The command line: what each subcommand does, and how failures end.

use std::process::ExitCode;
use std::sync::LazyLock;

use clap::{Parser, Subcommand};

use crate::app::{Cause, StartError};
use crate::config::{self, Config, StoreConfig};
use crate::replset;

/// How a newcomer finds the settings, shown by `--help`: the layers, then
/// [`keys_help`].
const LAYERS: &str = "\
Configuration (later wins):
  built-in defaults, then Rocket's own Rocket.toml and ROCKET_* variables;
  a TOML file: the path in SIMPLECHAT_CONFIG, else ./simplechat.toml if any;
  MONGO_URI: a MongoDB connection string (the lab's name for mongodb_uri);
  SIMPLECHAT_<KEY> variables, e.g. SIMPLECHAT_PORT=8080.";

/// The widest line of the configuration summary: clap prints `after_help`
/// as written, and the summary keeps to a terminal of 80 columns.
const HELP_WIDTH: usize = 79;

/// The layers and every key, the list made from [`config::KEYS`] so that
/// it cannot fall behind the settings; made once, though three commands
/// show it.
static CONFIGURATION_HELP: LazyLock<String> = LazyLock::new(configuration_help);

fn configuration_help() -> String {
    format!("{LAYERS}\n{}", keys_help())
}

/// `Keys: ...` with what else a newcomer needs, wrapped at [`HELP_WIDTH`].
fn keys_help() -> String {
    let text = format!(
        "Keys: {}. The TOML file may also set Rocket's log_level, ident and \
         shutdown (but shutdown.force; the others have no effect); any other key \
         there, or in Rocket.toml, is an error. Without a MongoDB URI \
         messages are kept in an embedded store in ./simplechat-data. \
         `simplechat{KEEP}config` prints each value and where it came from.",
        config::KEYS.join(", ")
    );
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split(' ') {
        let width = |s: &str| s.chars().count();
        if !line.is_empty() && width(&line) + 1 + width(word) > HELP_WIDTH {
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    (out + &line).replace(KEEP, " ")
}

/// A space the wrapping keeps: a command stays on one line.
const KEEP: char = '\u{a0}';

/// `replset status`'s exit status when the report shows a set that is not
/// wholly healthy (see [`STATUS_EXIT`]); 1 stays "could not run".
pub const EXIT_UNHEALTHY: u8 = 2;

/// How `replset status` ends, for scripts that gate on it.
const STATUS_EXIT: &str = "\
Exit status: 0 when there is a primary and every member is healthy (PRIMARY or
SECONDARY); 2 when not, after printing the report all the same; 1, with one
line on stderr, when no report could be made (no URI, a bad one, a
replicaSet= no host belongs to, or credentials the set refuses).";

/// `serve`'s and `config`'s exit status when the configuration cannot be
/// used (sysexits.h `EX_CONFIG`, "something was found in an unconfigured
/// or misconfigured state"): a setting, a file one names, the open files
/// limit. Starting again as it is cannot help.
pub const EX_CONFIG: u8 = 78;

/// `serve`'s exit status when the embedded store's data file is damaged,
/// or empty (sysexits.h `EX_DATAERR`, "the input data was incorrect in
/// some way"): an operator restores a backup or moves the file aside.
pub const EX_DATAERR: u8 = 65;

/// `serve`'s exit status when the data directory or file cannot be
/// created or opened for writing: permission denied, a read-only file
/// system, a file where the directory should be, another process holding
/// the file (sysexits.h `EX_CANTCREAT`, "a (user specified) output file
/// cannot be created", which `EX_NOPERM` there points file system problems
/// to).
pub const EX_CANTCREAT: u8 = 73;

/// The exit status of a start that failed for `cause`: a failure that
/// starting again cannot mend has its own ([`EX_CONFIG`], [`EX_DATAERR`],
/// [`EX_CANTCREAT`]), which a service manager can be told not to restart
/// on; anything else is 1, which may pass.
pub fn exit_status(cause: Cause) -> u8 {
    match cause {
        Cause::Configuration => EX_CONFIG,
        Cause::Damaged => EX_DATAERR,
        Cause::Unwritable => EX_CANTCREAT,
        Cause::Other => 1,
    }
}

/// The parsed command line. `--help` shows `about` and the configuration
/// summary, not this comment.
#[derive(Debug, Parser)]
#[command(
    name = "simplechat",
    version,
    about = "A chat service on a MongoDB replica set, or an embedded store",
    long_about = None,
    after_help = CONFIGURATION_HELP.as_str()
)]
pub struct Cli {
    /// The subcommand; none means `serve`.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// A subcommand of `simplechat`; each variant's comment is its `--help` text.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the web server (the default).
    #[command(after_help = CONFIGURATION_HELP.as_str())]
    Serve,
    /// Print the effective configuration, where each value came from,
    /// secrets redacted.
    #[command(after_help = CONFIGURATION_HELP.as_str())]
    Config,
    /// Administer the MongoDB replica set.
    Replset {
        /// Which administration step to take.
        #[command(subcommand)]
        command: ReplsetCommand,
    },
}

/// A subcommand of `simplechat replset`; each variant's comment, and each
/// field's, is its `--help` text.
#[derive(Debug, Subcommand)]
pub enum ReplsetCommand {
    /// Initiate the replica set (if it is not yet) and wait for a primary.
    Init {
        /// The replica set's name, as mongod's replSetName.
        #[arg(long)]
        name: String,
        /// A member; repeat --member for each, the first is contacted.
        #[arg(long = "member", value_name = "HOST:PORT", required = true)]
        members: Vec<String>,
        /// Connection string for credentials and options (hosts ignored).
        #[arg(long)]
        uri: Option<String>,
        /// Give up when the members have not all answered, or no primary
        /// is elected, within this many seconds (each).
        #[arg(long, default_value_t = 120)]
        wait_secs: u64,
        /// Accept an even number of voting members.
        #[arg(long)]
        allow_even_voters: bool,
        /// Accept one or two voting members: such a set has no primary, so
        /// no writes, while any one member is down.
        #[arg(long)]
        allow_fewer_than_three: bool,
        /// Then create the app's database user (SCRAM-SHA-256, in admin),
        /// or set its password when the password file changed; on a fresh
        /// set through MongoDB's localhost exception.
        #[arg(long, value_name = "NAME", requires_all = ["password_file", "roles"])]
        create_user: Option<String>,
        /// The user's password: the whole file but one final line break.
        #[arg(long, value_name = "FILE", requires = "create_user")]
        password_file: Option<std::path::PathBuf>,
        /// A role of the user, ROLE@DATABASE (e.g. readWrite@simplechat,
        /// clusterMonitor@admin); repeat for each. A user that exists with
        /// other roles is an error, never changed.
        #[arg(long = "role", value_name = "ROLE@DB", requires = "create_user")]
        roles: Vec<String>,
        /// The members' key file (security.keyFile): authenticates as
        /// __system to set a changed password once a user exists.
        #[arg(long, value_name = "FILE", requires = "create_user")]
        key_file: Option<std::path::PathBuf>,
    },
    /// Print the safe reconfiguration steps from the running members to
    /// the declared ones, changing nothing.
    Plan(MembersArgs),
    /// Take those steps, one voting member at a time, waiting after each
    /// until the configuration is committed; idempotent.
    Apply(MembersArgs),
    /// Show every member's state, health and replication lag, the
    /// configuration version and the term.
    #[command(after_help = STATUS_EXIT)]
    Status {
        /// Connection string (default: the configured mongodb_uri). One
        /// that names a user and no password takes the password from
        /// mongodb_password_file, as the app does.
        #[arg(long)]
        uri: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// The declared members, for `replset plan` and `apply`.
#[derive(Debug, clap::Args)]
pub struct MembersArgs {
    /// The replica set's name; it must be the running set's.
    #[arg(long)]
    name: String,
    /// A member; repeat --member for each. The running set's members not
    /// listed are removed, listed ones it lacks are added.
    #[arg(long = "member", value_name = "HOST:PORT", required = true)]
    members: Vec<String>,
    /// Connection string for credentials and options (hosts ignored).
    #[arg(long)]
    uri: Option<String>,
    /// The members' key file: authenticate as __system@local with it
    /// (needed once access control is on and no --uri user may reconfigure).
    #[arg(long, value_name = "FILE")]
    key_file: Option<std::path::PathBuf>,
    /// Accept an even number of voting members.
    #[arg(long)]
    allow_even_voters: bool,
    /// Accept one or two voting members: such a set has no primary, so no
    /// writes, while any one member is down.
    #[arg(long)]
    allow_fewer_than_three: bool,
    /// Give up when a wait (a new member's initial sync, a configuration's
    /// commitment, an election) takes longer than this many seconds.
    #[arg(long, default_value_t = 600)]
    wait_secs: u64,
}

impl From<MembersArgs> for replset::reconfig::MembersRequest {
    fn from(a: MembersArgs) -> Self {
        replset::reconfig::MembersRequest {
            name: a.name,
            members: a.members,
            uri: a.uri,
            key_file: a.key_file,
            allow_even: a.allow_even_voters,
            allow_fewer: a.allow_fewer_than_three,
            wait_secs: a.wait_secs,
        }
    }
}

/// Parses the command line, as `Cli::parse` does, and when the error is a
/// setting given as a flag (`serve --port 9000`) says where settings go:
/// they come from the environment or the TOML file, never from flags.
pub fn parse() -> Cli {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let error = match Cli::try_parse() {
        Ok(cli) => return cli,
        Err(e) => e,
    };
    let setting = match (error.kind(), error.get(ContextKind::InvalidArg)) {
        (ErrorKind::UnknownArgument, Some(ContextValue::String(arg))) => {
            let key = arg
                .trim_start_matches('-')
                .split('=')
                .next()
                .unwrap_or_default()
                .replace('-', "_");
            (key == "config" || crate::config::KEYS.contains(&key.as_str())).then_some(key)
        }
        _ => None,
    };
    let Some(key) = setting else { error.exit() };
    if key == "config" {
        eprintln!(
            "error: the configuration file is not a flag: name it with SIMPLECHAT_CONFIG in the \
             environment (by default ./simplechat.toml is read; see `simplechat --help`)"
        );
        std::process::exit(error.exit_code())
    }
    // Not clap's message: it quotes the whole argument, and the value of
    // `--mongodb-uri=...` may hold a password.
    eprintln!(
        "error: settings are not flags: set {key} with SIMPLECHAT_{} in the environment, or \
         in simplechat.toml (see `simplechat --help`)",
        key.to_ascii_uppercase()
    );
    std::process::exit(error.exit_code())
}

/// Runs the subcommand on a new multi-threaded Tokio runtime. Failure is
/// one line on stderr, `simplechat: <why>`, and exit status 1, or for
/// `serve` and `config` the one [`exit_status`] gives.
pub fn run(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Work woken from outside the runtime (the embedded store's writer
        // thread handing over a commit) waits in the runtime's shared
        // queue. Left to itself, a busy worker looks there about every
        // 200 µs (tokio 1.x, `runtime::scheduler::multi_thread::stats`),
        // which every durable post would wait for; here it looks after at
        // most 8 polls of other tasks (tokio `Builder::global_queue_interval`:
        // fairer, for a little more synchronization).
        .global_queue_interval(8)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the async runtime: {e}").into()),
    };
    let command = cli.command.unwrap_or(Command::Serve);
    if matches!(command, Command::Serve | Command::Config) {
        for warning in config::unknown_variables() {
            eprintln!("simplechat: warning: {warning}");
        }
    }
    let result = runtime.block_on(async {
        match command {
            Command::Serve => serve().await.map(|()| ExitCode::SUCCESS),
            Command::Config => load()
                .map(|c| print!("{}", config::describe(&c)))
                .map(|()| ExitCode::SUCCESS),
            // Status 1 when a command cannot run (see STATUS_EXIT).
            Command::Replset { command } => {
                replset_command(command).await.map_err(StartError::from)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => fail(e),
    }
}

/// How a command that Ctrl-C stopped ends: 128 + SIGINT, as a shell
/// reports a process that SIGINT ended.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Prints a line of progress: on stderr, so that stdout carries only the
/// command's result (`replset plan > plan.txt` holds the plan alone,
/// whatever the command waited for on the way).
fn progress(line: &dyn std::fmt::Display) {
    eprintln!("{line}");
}

/// A line on stderr when `--key-file` is open to other users, as `replset
/// init` says of its secret files; the key is used all the same (mongod
/// itself refuses such a key file, but this may be a copy of it).
fn warn_of_an_open_key_file(args: &MembersArgs) {
    if let Some(open) = args
        .key_file
        .as_deref()
        .and_then(|path| crate::mongo::uri::open_to_others("--key-file", path))
    {
        progress(&format!("warning: {open}"));
    }
}

/// `replset apply`, stopped by Ctrl-C (SIGINT) with one line that says
/// during which step, and that plan and apply can be run again: every
/// step is planned afresh from what the primary reports, so a second
/// apply continues from wherever the first one stopped. Each step and
/// wait is progress ([`progress`]); the summary is the result.
async fn apply(request: replset::reconfig::MembersRequest) -> Result<ExitCode, String> {
    // The step under way: its number and what it does.
    let step: std::cell::RefCell<Option<(usize, String)>> = std::cell::RefCell::new(None);
    let mut progress = |report: replset::reconfig::Progress<'_>| {
        if let replset::reconfig::Progress::Step { number, step: s } = report {
            *step.borrow_mut() = Some((number, s.action()));
        }
        progress(&report);
    };
    interruptible(replset::reconfig::apply(&request, &mut progress), || {
        let during = match step.borrow().as_ref() {
            Some((number, action)) => {
                format!("during step {number} ({action}); the set may be in the middle of it")
            }
            None => "before its first step; nothing was changed".to_owned(),
        };
        format!(
            "replset apply was interrupted {during}. Run `simplechat replset plan` to see where \
             the set stands and `simplechat replset apply` again to go on: apply is idempotent, \
             each step planned afresh from the set as it is"
        )
    })
    .await
}

/// `replset init`, stopped by Ctrl-C (SIGINT) with one line that says it
/// can be run again (what it waited for is the progress line above it): it
/// initiates a set only when the first member says it is not yet, checks
/// one that is against the request, and converges the user afresh, so a
/// second run goes on from wherever the first one stopped.
async fn init(request: replset::InitRequest) -> Result<ExitCode, String> {
    interruptible(replset::init(&request, &|line| progress(&line)), || {
        "replset init was interrupted. Run it again to go on: it initiates the set only if it \
         is not initiated yet, and checks the rest afresh"
            .to_owned()
    })
    .await
}

/// Runs `work`, a command that ends in a one-line summary, printed; or,
/// when Ctrl-C (SIGINT) comes first, prints `interrupted`'s line and ends
/// the process ([`exit_interrupted`]). tokio's handler replaces the
/// default action (ending the process at once, silently) from the first
/// poll on (<https://docs.rs/tokio/1/tokio/signal/fn.ctrl_c.html>).
async fn interruptible(
    work: impl std::future::Future<Output = Result<String, String>>,
    interrupted: impl FnOnce() -> String,
) -> Result<ExitCode, String> {
    let summary = tokio::select! {
        summary = work => summary?,
        signal = tokio::signal::ctrl_c() => {
            signal.map_err(|e| format!("cannot listen for Ctrl-C: {e}"))?;
            eprintln!("simplechat: {}", interrupted());
            exit_interrupted()
        }
    };
    println!("{summary}");
    Ok(ExitCode::SUCCESS)
}

/// Ends the process at once with [`EXIT_INTERRUPTED`], after the line
/// that says what was interrupted, as SIGINT's default action would, but
/// with that line. Not by returning: the interrupted command's driver
/// client is dropped mid-operation, and the runtime's shutdown that a
/// return leads to can then panic in the driver (its connection requester
/// unwraps a send to a pool worker the shutdown already dropped, mongodb
/// 3.9 `cmap/connection_requester.rs`), printing a backtrace after the
/// line. Nothing is left to clean up: the connections close with the
/// process, and every line printed so far ended in a newline, which
/// flushes standard output.
fn exit_interrupted() -> ! {
    std::process::exit(i32::from(EXIT_INTERRUPTED))
}

fn fail(error: StartError) -> ExitCode {
    eprintln!("simplechat: {}", error.message);
    ExitCode::from(exit_status(error.cause))
}

async fn serve() -> Result<(), StartError> {
    let config = load()?;
    crate::app::serve(config).await
}

/// [`Config::load`], then its warnings on stderr, one line each. The page
/// templates of a template directory (or the bundle's) are parsed too: one
/// that does not parse is a configuration error, named before Rocket
/// starts (whose own check at launch says only that a fairing failed), and
/// by `simplechat config` as well.
fn load() -> Result<Config, StartError> {
    let config =
        Config::load().map_err(|e| StartError::new(Cause::Configuration, e.to_string()))?;
    if let config::Templates::Configured(dir) | config::Templates::Bundle(dir) = &config.templates {
        crate::api::page::check_dir(&config::absolute(dir))
            .map_err(|why| StartError::new(Cause::Configuration, why))?;
    }
    for warning in &config.warnings {
        eprintln!("simplechat: warning: {warning}");
    }
    Ok(config)
}

/// Runs a `replset` subcommand; success is exit status 0, except for a
/// `status` that is not wholly healthy ([`EXIT_UNHEALTHY`]).
async fn replset_command(command: ReplsetCommand) -> Result<ExitCode, String> {
    match command {
        ReplsetCommand::Init {
            name,
            members,
            uri,
            wait_secs,
            allow_even_voters,
            allow_fewer_than_three,
            create_user,
            password_file,
            roles,
            key_file,
        } => {
            let user = match (create_user, password_file) {
                (Some(name), Some(password_file)) => Some(replset::UserRequest {
                    name,
                    db: "admin".to_owned(),
                    password_file,
                    roles,
                    key_file,
                }),
                _ => None,
            };
            let request = replset::InitRequest {
                name,
                members,
                uri,
                wait_secs,
                allow_even: allow_even_voters,
                allow_fewer: allow_fewer_than_three,
                user,
            };
            init(request).await
        }
        ReplsetCommand::Plan(args) => {
            warn_of_an_open_key_file(&args);
            let planned = replset::reconfig::plan(&args.into(), &mut |p| progress(&p)).await?;
            println!(
                "replica set {} has {}",
                planned.running.name,
                replset::reconfig::describe(&planned.running)
            );
            if planned.steps.is_empty() {
                println!("nothing to do: it has the declared members");
            }
            for (i, step) in planned.steps.iter().enumerate() {
                println!("{}. {step}", i + 1);
            }
            Ok(ExitCode::SUCCESS)
        }
        ReplsetCommand::Apply(args) => {
            warn_of_an_open_key_file(&args);
            apply(args.into()).await
        }
        ReplsetCommand::Status { uri, json } => {
            let uri = match uri {
                // As the app would connect: the password file completes a
                // URI that names a user and no password.
                // Only such a URI reads the configuration: one that needs
                // nothing of it works beside a broken simplechat.toml.
                Some(uri) if crate::mongo::uri::names_user_without_password(&uri) => {
                    let file = config::password_file().map_err(|e| e.to_string())?;
                    config::with_password_file(&uri, file.as_deref()).map_err(|e| e.to_string())?
                }
                Some(uri) => uri,
                None => match load().map_err(String::from)?.store {
                    StoreConfig::MongoDb { uri, .. } => uri,
                    StoreConfig::Embedded { .. } => {
                        return Err(
                            "replset status needs a MongoDB URI (--uri or mongodb_uri)".into()
                        )
                    }
                },
            };
            let status = replset::status(&uri, &|line| progress(&line)).await?;
            if json {
                let text = serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?;
                println!("{text}");
            } else {
                print!("{}", replset::render_report(&status));
            }
            // Scripts (a rolling restart) wait for this before the next
            // member, with or without --json.
            Ok(if status.healthy() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_UNHEALTHY)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_help_lists_every_key_within_its_width() {
        let help = configuration_help();
        for line in help.lines() {
            assert!(line.len() <= HELP_WIDTH, "{line:?}");
        }
        // The list's last key may end a line.
        let help = help.replace('\n', " ");
        let listed = help
            .split("Keys: ")
            .nth(1)
            .unwrap()
            .split(". ")
            .next()
            .unwrap();
        let listed: Vec<&str> = listed
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|k| !k.is_empty())
            .collect();
        assert_eq!(listed, config::KEYS);
    }
}
