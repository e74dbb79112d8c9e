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
    let chat = Chat::open(&config).await.map_err(|e| e.to_string())?;
    let closing = chat.clone();
    Ok(rocket::custom(config.figment.clone())
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
    let rocket = build(config).await?;
    match rocket.launch().await {
        Ok(_) => Ok(()),
        Err(e) => Err(match e.kind() {
            rocket::error::ErrorKind::Bind(io) => format!("cannot listen on {address}: {io}"),
            kind => format!("cannot start: {kind}"),
        }),
    }
}
