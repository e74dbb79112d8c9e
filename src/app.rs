//! Builds the Rocket application from a configuration: the same code runs
//! the server and the tests.

use rocket::fairing::AdHoc;
use rocket::{Build, Rocket};
use rocket_dyn_templates::Template;

use crate::api;
use crate::chat::Chat;
use crate::config::Config;

/// The application for `config`, with its store open.
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
        .mount("/", api::routes())
        .register("/", api::catchers())
        .attach(Template::custom(|engines| {
            // Every template is HTML: escape everything a user typed, whatever
            // name the template engine gives a file.
            engines.tera.autoescape_on(vec![""]);
        }))
        .attach(api::headers::SecurityHeaders)
        .attach(AdHoc::on_shutdown("close the store", move |_| {
            Box::pin(async move { closing.close().await })
        })))
}

/// Runs the server until SIGTERM or Ctrl-C; in-flight requests finish, event
/// streams end, then the store closes.
pub async fn serve(config: Config) -> Result<(), String> {
    let address = format!("{}:{}", config.address, config.port);
    let store = crate::config::describe_store(&config.store);
    let rocket = build(config)
        .await?
        .attach(AdHoc::on_liftoff("startup line", |rocket| {
            Box::pin(async move {
                // On stdout, beside Rocket's own launch line: Rocket's default
                // log level in release builds hides `info!`. A closed stdout
                // must not stop the server, so no `println!`.
                use std::io::Write;
                let config = rocket.config();
                let listening = std::net::SocketAddr::new(config.address, config.port);
                let _ = writeln!(
                    std::io::stdout(),
                    "simplechat listening on http://{listening}; store: {store}"
                );
            })
        }));
    match rocket.launch().await {
        Ok(_) => Ok(()),
        Err(e) => Err(match e.kind() {
            rocket::error::ErrorKind::Bind(io) => format!("cannot listen on {address}: {io}"),
            kind => format!("cannot start: {kind}"),
        }),
    }
}
