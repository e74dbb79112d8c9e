//! The HTTP surface: the page, the JSON API, live events and health.

pub mod assets;
pub mod body;
pub mod budget;
pub mod checks;
pub mod conditional;
pub mod cookies;
pub mod dispatch;
pub mod echo;
pub mod error;
pub mod events;
pub mod front;
pub mod headers;
pub mod message_head;
pub mod messages;
pub mod openapi;
pub mod options;
pub mod page;
pub mod plain_post;
pub mod shutdown;
pub mod socket;
pub mod stall;
pub mod status;

use rocket::{catchers, routes, Catcher, Route};

/// Every route of the HTTP surface, to mount at `/`.
pub fn routes() -> Vec<Route> {
    routes![
        page::index,
        page::post_form,
        assets::asset,
        assets::favicon,
        assets::apple_touch_icon,
        assets::apple_touch_icon_precomposed,
        messages::list,
        messages::create,
        messages::one,
        events::events,
        status::status,
        status::healthz,
        status::readyz,
        openapi::openapi,
        options::options,
    ]
}

/// The catcher that answers every error status in the JSON error shape, to
/// register at `/`.
pub fn catchers() -> Vec<Catcher> {
    catchers![error::default_catcher]
}

/// The catcher that answers a refused request for the page with the page,
/// to register at [`checks::REFUSED_PAGE_PATH`].
pub fn page_catchers() -> Vec<Catcher> {
    catchers![page::refused]
}
