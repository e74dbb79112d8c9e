//! The page's script, stylesheet and icons, compiled into the binary so it
//! serves them from any working directory.

use std::sync::LazyLock;

use rocket::http::{ContentType, Header};
use rocket::response::{self, Responder, Response};
use rocket::{get, Request};
use sha2::{Digest, Sha256};

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

static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut hash = Sha256::new();
    for (name, _, body) in ASSETS {
        hash.update(name.as_bytes());
        hash.update((body.len() as u64).to_be_bytes());
        hash.update(body);
    }
    hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
});

/// The version of this binary's assets: 16 hex digits of a SHA-256 over
/// all of them. The page links each asset as `/static/<file>?v=<version>`,
/// so a browser never runs an older script with a newer page (or the
/// other way round) after an upgrade, and may keep what it fetched for good.
pub fn version() -> &'static str {
    &VERSION
}

/// How long a browser may keep an asset.
enum Keep {
    /// Asked for by this binary's version: the URL names these bytes.
    Forever,
    /// Asked for without a version (an icon a browser looks for by itself):
    /// an hour keeps reloads cheap.
    AnHour,
    /// Asked for by another version (a page from another instance of a
    /// different build, during an upgrade): these bytes are not what that
    /// URL names, so they must not be kept under it.
    Not,
}

/// A compiled-in file with its media type, answered 200 with a
/// `Cache-Control` for how it was asked for: `public, max-age=31536000,
/// immutable` by this binary's [`version`], `public, max-age=3600` without
/// one, `no-cache` by another.
pub struct Asset(ContentType, &'static [u8], Keep);

impl<'r> Responder<'r, 'static> for Asset {
    fn respond_to(self, req: &'r Request<'_>) -> response::Result<'static> {
        let cache_control = match self.2 {
            Keep::Forever => "public, max-age=31536000, immutable",
            Keep::AnHour => "public, max-age=3600",
            Keep::Not => "no-cache",
        };
        Response::build_from(self.1.respond_to(req)?)
            .header(self.0)
            .header(Header::new("Cache-Control", cache_control))
            .ok()
    }
}

/// `GET /static/<file>?v`: the page's `app.js`, `app.css`, `favicon.svg`,
/// `favicon.ico` or `apple-touch-icon.png`; any other name is a 404. `v`
/// is the [`version`] the page linked it with.
#[get("/static/<file>?<v>")]
pub fn asset(file: &str, v: Option<&str>) -> Result<Asset, ApiError> {
    let keep = match v {
        Some(v) if v == version() => Keep::Forever,
        Some(_) => Keep::Not,
        None => Keep::AnHour,
    };
    find(file, keep)
}

/// The path of [`asset`]'s route, as Rocket holds it.
pub const ASSET_ROUTE_PATH: &str = "/static/<file>";

/// Whether `/static/<file>` names one of the page's files.
pub fn is_asset(file: &str) -> bool {
    ASSETS.iter().any(|(name, _, _)| *name == file)
}

fn find(file: &str, keep: Keep) -> Result<Asset, ApiError> {
    ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .map(|(_, content_type, body)| Asset(content_type.clone(), body, keep))
        .ok_or_else(|| ApiError::not_found(format!("no asset {file}")))
}

/// Browsers ask for `/favicon.ico` on every load, whatever the page links.
#[get("/favicon.ico")]
pub fn favicon() -> Result<Asset, ApiError> {
    find("favicon.ico", Keep::AnHour)
}

/// Safari asks for these at the root when the page is bookmarked or shown
/// among favourites.
#[get("/apple-touch-icon.png")]
pub fn apple_touch_icon() -> Result<Asset, ApiError> {
    find("apple-touch-icon.png", Keep::AnHour)
}

/// The same icon under the other name Safari looks for at the root when a
/// page links none (Apple's Safari Web Content Guide, "Configuring Web
/// Applications").
#[get("/apple-touch-icon-precomposed.png")]
pub fn apple_touch_icon_precomposed() -> Result<Asset, ApiError> {
    find("apple-touch-icon.png", Keep::AnHour)
}
