//! The page's script and stylesheet, compiled into the binary so it serves
//! them from any working directory.

use rocket::http::{ContentType, Header};
use rocket::response::{self, Responder, Response};
use rocket::{get, Request};

use super::error::ApiError;

const ASSETS: &[(&str, ContentType, &str)] = &[
    (
        "app.js",
        ContentType::JavaScript,
        include_str!("../../static/app.js"),
    ),
    (
        "app.css",
        ContentType::CSS,
        include_str!("../../static/app.css"),
    ),
];

pub struct Asset(ContentType, &'static str);

impl<'r> Responder<'r, 'static> for Asset {
    fn respond_to(self, req: &'r Request<'_>) -> response::Result<'static> {
        Response::build_from(self.1.respond_to(req)?)
            .header(self.0)
            // Assets change with the binary; an hour keeps reloads cheap.
            .header(Header::new("Cache-Control", "public, max-age=3600"))
            .ok()
    }
}

#[get("/static/<file>")]
pub fn asset(file: &str) -> Result<Asset, ApiError> {
    ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .map(|(_, content_type, body)| Asset(content_type.clone(), body))
        .ok_or_else(|| ApiError::not_found(format!("no asset {file}")))
}
