//! The page's script, stylesheet and icons, compiled into the binary so it
//! serves them from any working directory.

use rocket::http::{ContentType, Header};
use rocket::response::{self, Responder, Response};
use rocket::{get, Request};

use super::error::ApiError;

const ASSETS: &[(&str, ContentType, &[u8])] = &[
    (
        "app.js",
        ContentType::JavaScript,
        include_bytes!("../../static/app.js"),
    ),
    (
        "app.css",
        ContentType::CSS,
        include_bytes!("../../static/app.css"),
    ),
    (
        "favicon.svg",
        ContentType::SVG,
        include_bytes!("../../static/favicon.svg"),
    ),
    (
        "favicon.ico",
        ContentType::Icon,
        include_bytes!("../../static/favicon.ico"),
    ),
    (
        "apple-touch-icon.png",
        ContentType::PNG,
        include_bytes!("../../static/apple-touch-icon.png"),
    ),
];

/// A compiled-in file with its media type, answered 200 with
/// `Cache-Control: public, max-age=3600` (one hour).
pub struct Asset(ContentType, &'static [u8]);

impl<'r> Responder<'r, 'static> for Asset {
    fn respond_to(self, req: &'r Request<'_>) -> response::Result<'static> {
        Response::build_from(self.1.respond_to(req)?)
            .header(self.0)
            // Assets change with the binary; an hour keeps reloads cheap.
            .header(Header::new("Cache-Control", "public, max-age=3600"))
            .ok()
    }
}

/// `GET /static/<file>`: the page's `app.js`, `app.css`, `favicon.svg`,
/// `favicon.ico` or `apple-touch-icon.png`; any other name is a 404.
#[get("/static/<file>")]
pub fn asset(file: &str) -> Result<Asset, ApiError> {
    ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .map(|(_, content_type, body)| Asset(content_type.clone(), body))
        .ok_or_else(|| ApiError::not_found(format!("no asset {file}")))
}

/// Browsers ask for `/favicon.ico` on every load, whatever the page links.
#[get("/favicon.ico")]
pub fn favicon() -> Result<Asset, ApiError> {
    asset("favicon.ico")
}

/// Safari asks for these at the root when the page is bookmarked or shown
/// among favourites.
#[get("/apple-touch-icon.png")]
pub fn apple_touch_icon() -> Result<Asset, ApiError> {
    asset("apple-touch-icon.png")
}

/// The same icon under the other name Safari looks for at the root when a
/// page links none (Apple's Safari Web Content Guide, "Configuring Web
/// Applications").
#[get("/apple-touch-icon-precomposed.png")]
pub fn apple_touch_icon_precomposed() -> Result<Asset, ApiError> {
    asset("apple-touch-icon.png")
}
