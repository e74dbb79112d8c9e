//! Builds the Rocket application from a configuration, and runs it behind
//! the front door ([`crate::api::front`]): the same code runs the server
//! and the tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rocket::config::Shutdown as ShutdownConfig;
use rocket::local::asynchronous::Client;
use rocket::{Build, Rocket};
use rocket_dyn_templates::Template;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::api;
use crate::api::dispatch::{Dispatch, EventSource};
use crate::api::front::FrontConfig;
use crate::api::shutdown::ShutdownSignal;
use crate::chat::Chat;
use crate::config::Config;
use crate::store::{Refusal, StoreError};

/// Why the server did not start: one line, and whether starting it again
/// as it is could help ([`Cause`]), for the exit status.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StartError {
    /// What went wrong, for an operator: one line.
    pub message: String,
    /// Which kind of failure.
    pub cause: Cause,
}

/// The kinds of failure a start tells apart: those that starting again
/// cannot mend, as the process's exit status says to a service manager
/// (`simplechat::cli`), and the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The configuration cannot be used as it is: a setting, a file it
    /// names, Rocket's settings, a template, the open files limit, a port
    /// the process may not bind.
    Configuration,
    /// The stored data is damaged ([`Refusal::Damaged`]).
    Damaged,
    /// The data directory or file cannot be created or opened for writing
    /// ([`Refusal::Unwritable`]).
    Unwritable,
    /// Anything else, which may pass by itself (a port in use, a full
    /// disk, an I/O error): starting again may succeed.
    Other,
}

impl StartError {
    /// A failure of kind `cause`.
    pub fn new(cause: Cause, message: impl Into<String>) -> StartError {
        StartError {
            message: message.into(),
            cause,
        }
    }
}

impl From<String> for StartError {
    fn from(message: String) -> StartError {
        StartError::new(Cause::Other, message)
    }
}

impl From<&str> for StartError {
    fn from(message: &str) -> StartError {
        StartError::new(Cause::Other, message)
    }
}

impl From<StartError> for String {
    fn from(e: StartError) -> String {
        e.message
    }
}

impl From<StoreError> for StartError {
    fn from(e: StoreError) -> StartError {
        let cause = match &e {
            StoreError::Refused { fault, .. } => match fault {
                Refusal::Configuration => Cause::Configuration,
                Refusal::Damaged => Cause::Damaged,
                Refusal::Unwritable => Cause::Unwritable,
            },
            _ => Cause::Other,
        };
        StartError::new(cause, e.to_string())
    }
}

/// Rocket's refusal to ignite: its configuration, or a fairing (the
/// templates' check), is a [`Cause::Configuration`].
fn ignition(e: rocket::Error) -> StartError {
    use rocket::error::ErrorKind;
    let cause = match e.kind() {
        ErrorKind::Config(_) | ErrorKind::FailedFairings(_) => Cause::Configuration,
        _ => Cause::Other,
    };
    StartError::new(cause, format!("cannot start: {e}"))
}

/// The application for `config`, with its store open; [`start`] serves it
/// behind the front door and closes the store when it stops.
///
/// Errors: the store cannot be opened, or the built-in templates cannot
/// be written (one line).
pub async fn build(config: Config) -> Result<Rocket<Build>, StartError> {
    // A temporary directory that takes no files may be full for a moment.
    let (figment, built_in_templates) = config.rocket_figment().map_err(|e| e.to_string())?;
    let chat = Chat::open(&config).await?;
    Ok(rocket::custom(figment)
        // Built-in templates are read from this directory while Rocket runs.
        .manage(built_in_templates)
        .manage(chat)
        .manage(api::page::RenderedHistory::default())
        .manage(api::page::PreparedPage::default())
        .manage(api::cookies::CookieSettings {
            always_secure: config.settings.secure_cookie,
            trust_forwarded_proto: config.settings.trust_proxy_headers,
        })
        .mount("/", api::routes())
        .register("/", api::catchers())
        .register(api::checks::REFUSED_PAGE_PATH, api::page_catchers())
        .attach(Template::try_custom(|engines| {
            api::page::configure(&mut engines.minijinja);
            Ok(api::page::check(&engines.minijinja)?)
        }))
        .attach(api::checks::RequestChecks)
        .attach(api::headers::shield()))
}

/// A running server: clients connect to `address` (the front door), which
/// hands each request to Rocket in this process.
pub struct Server {
    /// Where clients connect.
    pub address: SocketAddr,
    shutdown: rocket::Shutdown,
    chat: Chat,
    front: JoinHandle<()>,
}

impl Server {
    /// Triggers the graceful shutdown SIGTERM triggers.
    pub fn shutdown_handle(&self) -> rocket::Shutdown {
        self.shutdown.clone()
    }

    /// Waits until the server has shut down (a signal in Rocket's
    /// `shutdown` settings, by default SIGTERM and Ctrl-C, or the handle):
    /// in-flight requests finished, event streams ended, then the store
    /// closed.
    pub async fn wait(self) -> Result<(), String> {
        let served = self
            .front
            .await
            .map_err(|e| format!("the server task failed: {e}"));
        self.chat.close().await;
        served
    }
}

/// Binds the configured address, launches the application and starts the
/// front door in front of it, and returns once it listens.
///
/// The soft open files limit is raised to the hard one first, and
/// `max_connections` lowered (with a warning) to what it fits
/// ([`crate::open_files`]).
///
/// Errors: the open files limit fits no connection, the address cannot be
/// bound, the store cannot be opened, Rocket cannot start (one line each).
pub async fn start(config: Config) -> Result<Server, StartError> {
    // The connection bound is what the open files limit leaves once
    // raised; a start it cannot fit stops before anything is opened.
    let fit = crate::open_files::fit(config.max_connections, crate::open_files::raise())
        .map_err(|e| StartError::new(Cause::Configuration, e))?;
    if let Some(warning) = &fit.warning {
        log::warn!("{warning}");
    }
    let address = SocketAddr::new(config.address, config.port);
    let listener = TcpListener::bind(address).await.map_err(|e| {
        // A port in use may be freed (an old instance still closing); a
        // port below 1024 without the capability to bind it is not.
        let cause = match e.kind() {
            std::io::ErrorKind::PermissionDenied => Cause::Configuration,
            _ => Cause::Other,
        };
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                "; another program listens there (another simplechat?): stop it, or choose \
                 another port (port, SIMPLECHAT_PORT)"
            }
            std::io::ErrorKind::PermissionDenied if config.port < 1024 => {
                "; ports below 1024 need root or CAP_NET_BIND_SERVICE: choose another port \
                 (port, SIMPLECHAT_PORT)"
            }
            std::io::ErrorKind::AddrNotAvailable => {
                "; no interface of this machine has that address (address, SIMPLECHAT_ADDRESS)"
            }
            _ => "",
        };
        StartError::new(cause, format!("cannot listen on {address}: {e}{hint}"))
    })?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("cannot listen on {address}: {e}"))?;
    let front = FrontConfig {
        header_timeout: config.header_timeout,
        max_connections: fit.max_connections,
        max_connections_per_client: config.max_connections_per_client,
    };
    let heartbeat = config.heartbeat;
    let hosts = config.allowed_hosts.clone();
    let rocket = build(config).await?;
    let chat = rocket
        .state::<Chat>()
        .cloned()
        .ok_or("cannot start: the application has no chat")?;
    // Ignites Rocket (configuration, routes, fairings) and runs its liftoff
    // fairings; no listener of its own (see `api::dispatch`).
    let client = Client::untracked(rocket).await.map_err(ignition)?;
    let shutdown = client.rocket().shutdown();
    let settings = client.rocket().config().shutdown.clone();
    watch_signals(&settings, shutdown.clone())?;
    let grace = Duration::from_secs(u64::from(settings.grace) + u64::from(settings.mercy));
    let events = EventSource {
        chat: chat.clone(),
        heartbeat,
    };
    // What the front door's connections and event streams watch, instead
    // of Rocket's `Shutdown` itself (see `api::shutdown`).
    let signal = ShutdownSignal::after(shutdown.clone());
    let by_address = front.max_connections_per_client.is_some();
    let dispatch = Dispatch::new(
        client,
        hosts,
        events,
        front.header_timeout,
        by_address,
        signal.clone(),
    )
    .await
    .map_err(|e| format!("cannot start: {e}"))?;
    let front = tokio::spawn(api::front::serve(
        listener,
        Arc::new(dispatch),
        front,
        grace,
        signal,
    ));
    Ok(Server {
        address,
        shutdown,
        chat,
        front,
    })
}

/// Asks for a graceful shutdown on each signal Rocket's `shutdown`
/// settings name (`signals`, and SIGINT when `ctrlc`), as Rocket's own
/// server does, and on SIGHUP ([`watch_hangup`]).
///
/// Errors: a signal handler cannot be installed (one line).
fn watch_signals(settings: &ShutdownConfig, shutdown: rocket::Shutdown) -> Result<(), String> {
    use rocket::config::Sig;
    use tokio::signal::unix::{signal, SignalKind};
    let mut kinds: Vec<(SignalKind, String)> = settings
        .signals
        .iter()
        .map(|sig| {
            let kind = match sig {
                Sig::Alrm => SignalKind::alarm(),
                Sig::Chld => SignalKind::child(),
                Sig::Hup => SignalKind::hangup(),
                Sig::Int => SignalKind::interrupt(),
                Sig::Io => SignalKind::io(),
                Sig::Pipe => SignalKind::pipe(),
                Sig::Quit => SignalKind::quit(),
                Sig::Term => SignalKind::terminate(),
                Sig::Usr1 => SignalKind::user_defined1(),
                Sig::Usr2 => SignalKind::user_defined2(),
            };
            (kind, sig.to_string())
        })
        .collect();
    if settings.ctrlc && !settings.signals.contains(&Sig::Int) {
        kinds.push((SignalKind::interrupt(), "SIGINT".to_owned()));
    }
    for (kind, name) in kinds {
        let mut signals = signal(kind).map_err(|e| format!("cannot watch {name}: {e}"))?;
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            while signals.recv().await.is_some() {
                log::info!("received {name}; shutting down");
                shutdown.clone().notify();
            }
        });
    }
    if !settings.signals.contains(&Sig::Hup) && !hangup_ignored() {
        watch_hangup(shutdown)?;
    }
    Ok(())
}

/// Shuts down gracefully on SIGHUP, whatever Rocket's `shutdown` settings
/// say, with one line saying why.
///
/// Left to its default action, SIGHUP ended the process at once (status
/// 129), cutting event streams mid-body and logging nothing: a server
/// started by hand died so when its SSH session closed. Daemons often read
/// their configuration again on SIGHUP; this one reads it only at start
/// (the store, the listener and the bounds are fixed then), so a reload
/// asked that way is a restart's first half, and the line says so.
///
/// Not called when SIGHUP is ignored already (`nohup`): a handler would
/// undo what was asked.
///
/// Errors: the handler cannot be installed (one line).
fn watch_hangup(shutdown: rocket::Shutdown) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups =
        signal(SignalKind::hangup()).map_err(|e| format!("cannot watch SIGHUP: {e}"))?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            // A warning: shown at every log level but `off`, as the
            // process goes away, which may not be what was meant.
            log::warn!(
                "received SIGHUP (the terminal or session closed, or a reload was asked); \
                 shutting down gracefully as on SIGTERM. The configuration is read only at \
                 start: start the server again to apply a change, and run it under a service \
                 manager or with nohup to outlive a session"
            );
            shutdown.clone().notify();
        }
    });
    Ok(())
}

/// Whether this process ignores SIGHUP, as `nohup` or `trap '' HUP` leave
/// it: the `SigIgn` mask of `/proc/self/status` (proc(5)), whose lowest
/// bit is signal 1, SIGHUP. Where there is no such file, not ignored.
fn hangup_ignored() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("SigIgn:"))
                .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        })
        .is_some_and(|mask| mask & 1 != 0)
}

/// Runs the server until SIGTERM, SIGHUP or Ctrl-C; in-flight requests
/// finish, event streams end, then the store closes.
pub async fn serve(config: Config) -> Result<(), StartError> {
    crate::logging::install(config.rocket.log_level);
    let store = crate::config::describe_store(&config.store);
    let server = start(config).await?;
    // Written, not logged: Rocket's default log level in release builds
    // hides `info!`. On stderr with the log lines (`crate::logging`); a
    // closed stderr must not stop the server, so no `eprintln!`.
    {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "simplechat listening on http://{}; store: {store}",
            server.address
        );
    }
    Ok(server.wait().await?)
}
