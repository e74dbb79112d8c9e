//! Builds the Rocket application from a configuration, and runs it behind
//! the front door ([`crate::api::front`]): the same code runs the server
//! and the tests.

use std::net::{Ipv4Addr, SocketAddr};

use figment::providers::Serialized;
use figment::Profile;
use rocket::fairing::AdHoc;
use rocket::{Build, Rocket};
use rocket_dyn_templates::Template;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api;
use crate::api::front::FrontConfig;
use crate::chat::Chat;
use crate::config::Config;

/// The application for `config`, with its store open. It listens where
/// `config` says; [`start`] moves it behind the front door.
///
/// Errors: the store cannot be opened (one line).
pub async fn build(config: Config) -> Result<Rocket<Build>, String> {
    let (figment, built_in_templates) = config.rocket_figment().map_err(|e| e.to_string())?;
    let chat = Chat::open(&config).await.map_err(|e| e.to_string())?;
    let closing = chat.clone();
    Ok(rocket::custom(figment)
        // Built-in templates are read from this directory while Rocket runs.
        .manage(built_in_templates)
        .manage(chat)
        .manage(api::events::Heartbeat(config.heartbeat))
        .manage(api::page::RenderedHistory::default())
        .manage(api::page::PreparedPage::default())
        .manage(api::cookies::CookieSettings {
            always_secure: config.settings.secure_cookie,
            trust_forwarded_proto: config.settings.trust_proxy_headers,
        })
        .mount("/", api::routes())
        .register("/", api::catchers())
        .attach(Template::custom(|engines| {
            api::page::configure(&mut engines.minijinja)
        }))
        .attach(api::checks::RequestChecks)
        .attach(api::headers::SecurityHeaders)
        .attach(AdHoc::on_shutdown("close the store", move |_| {
            Box::pin(async move { closing.close().await })
        })))
}

/// A running server: clients connect to `address` (the front door), which
/// forwards to Rocket on a loopback port.
pub struct Server {
    /// Where clients connect.
    pub address: SocketAddr,
    shutdown: rocket::Shutdown,
    rocket: JoinHandle<Result<(), String>>,
    front: JoinHandle<()>,
}

impl Server {
    /// Triggers the graceful shutdown SIGTERM triggers.
    pub fn shutdown_handle(&self) -> rocket::Shutdown {
        self.shutdown.clone()
    }

    /// Waits until Rocket has shut down (SIGTERM, Ctrl-C or the handle):
    /// in-flight requests finished, event streams ended, the store closed.
    pub async fn wait(self) -> Result<(), String> {
        let result = self
            .rocket
            .await
            .unwrap_or_else(|e| Err(format!("the server task failed: {e}")));
        self.front.abort();
        result
    }
}

/// Binds the configured address, starts Rocket on a loopback port and the
/// front door in front of it, and returns once both listen.
///
/// Errors: the address cannot be bound, the store cannot be opened,
/// Rocket cannot start (one line each).
pub async fn start(config: Config) -> Result<Server, String> {
    let address = SocketAddr::new(config.address, config.port);
    let listener = TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot listen on {address}: {e}"))?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("cannot listen on {address}: {e}"))?;
    let front = FrontConfig {
        header_timeout: config.header_timeout,
        max_connections: config.max_connections,
    };
    let (port_tx, port_rx) = oneshot::channel();
    let rocket = build(config).await?;
    // Only the front door reaches Rocket.
    let figment = rocket
        .figment()
        .clone()
        .merge(Serialized::default("address", Ipv4Addr::LOCALHOST).profile(Profile::Global))
        .merge(Serialized::default("port", 0).profile(Profile::Global));
    let rocket = rocket.configure(figment);
    let rocket = rocket
        .attach(AdHoc::on_liftoff("report port", move |rocket| {
            Box::pin(async move {
                let _ = port_tx.send(rocket.config().port);
            })
        }))
        .ignite()
        .await
        .map_err(|e| format!("cannot start: {e}"))?;
    let shutdown = rocket.shutdown();
    let running = tokio::spawn(async move {
        rocket
            .launch()
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot start: {}", e.kind()))
    });
    let port = match port_rx.await {
        Ok(port) => port,
        Err(_) => {
            return Err(running
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
                .err()
                .unwrap_or_else(|| "the server did not start".into()))
        }
    };
    let upstream = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
    let front = tokio::spawn(api::front::serve(
        listener,
        upstream,
        front,
        shutdown.clone(),
    ));
    Ok(Server {
        address,
        shutdown,
        rocket: running,
        front,
    })
}

/// Runs the server until SIGTERM or Ctrl-C; in-flight requests finish, event
/// streams end, then the store closes.
pub async fn serve(config: Config) -> Result<(), String> {
    // A bad log_level is reported by Rocket itself when it starts.
    let log_level = config
        .figment
        .extract::<rocket::Config>()
        .map_or(rocket::config::LogLevel::Normal, |c| c.log_level);
    crate::logging::install(log_level);
    let store = crate::config::describe_store(&config.store);
    let server = start(config).await?;
    // On stdout, beside Rocket's own launch line: Rocket's default log level
    // in release builds hides `info!`. A closed stdout must not stop the
    // server, so no `println!`.
    {
        use std::io::Write;
        let _ = writeln!(
            std::io::stdout(),
            "simplechat listening on http://{}; store: {store}",
            server.address
        );
    }
    server.wait().await
}
