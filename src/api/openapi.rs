//! `/api/openapi.json`: the API described for clients; a test keeps it true
//! to the mounted routes and to real responses.

use rocket::get;
use rocket::http::ContentType;

/// The OpenAPI 3.1 document (`src/api/openapi.json`), compiled in.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// `GET /api/openapi.json`: 200 with [`DOCUMENT`] as `application/json`.
#[get("/api/openapi.json")]
pub fn openapi() -> (ContentType, &'static str) {
    (ContentType::JSON, DOCUMENT)
}
