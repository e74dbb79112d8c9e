//! `/api/openapi.json`: the API described for clients; a test keeps it true
//! to the mounted routes and to real responses.

use rocket::get;
use rocket::http::ContentType;

pub const DOCUMENT: &str = include_str!("openapi.json");

#[get("/api/openapi.json")]
pub fn openapi() -> (ContentType, &'static str) {
    (ContentType::JSON, DOCUMENT)
}
