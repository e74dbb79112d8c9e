//! Every error the HTTP surface answers, as JSON `{"error", "field"?}`.

use std::io::Cursor;
use std::time::Duration;

use rocket::http::{ContentType, Header, Status};
use rocket::request::Request;
use rocket::response::{self, Responder, Response};
use serde::Serialize;

use crate::message::Invalid;
use crate::store::StoreError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: Status,
    pub error: String,
    pub field: Option<&'static str>,
    pub retry_after: Option<Duration>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: Status, error: impl Into<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn bad_request(field: &'static str, error: impl Into<String>) -> Self {
        ApiError {
            field: Some(field),
            ..ApiError::new(Status::BadRequest, error)
        }
    }

    pub fn not_found(error: impl Into<String>) -> Self {
        ApiError::new(Status::NotFound, error)
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::bad_request(e.field, e.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(_) => ApiError {
                field: Some("id"),
                ..ApiError::new(
                    Status::Conflict,
                    format!("{e}: the same id must come with the same name and text"),
                )
            },
            StoreError::UnknownId(_) => ApiError::not_found(e.to_string()),
            StoreError::Unavailable {
                ref reason,
                retry_after,
            } => ApiError {
                retry_after: Some(retry_after),
                ..ApiError::new(Status::ServiceUnavailable, reason.clone())
            },
            StoreError::Internal(_) => {
                rocket::error!("{e}");
                ApiError::new(Status::InternalServerError, "internal error")
            }
        }
    }
}

impl<'r> Responder<'r, 'static> for ApiError {
    fn respond_to(self, _: &'r Request<'_>) -> response::Result<'static> {
        let body = serde_json::to_vec(&Body {
            error: &self.error,
            field: self.field,
        })
        .unwrap_or_default();
        let mut response = Response::build();
        response
            .status(self.status)
            .header(ContentType::JSON)
            .sized_body(body.len(), Cursor::new(body));
        if let Some(after) = self.retry_after {
            response.header(Header::new(
                "Retry-After",
                after.as_secs().max(1).to_string(),
            ));
        }
        response.ok()
    }
}

/// Rocket's own refusals (no route, body too large, ...) in the same JSON shape.
#[rocket::catch(default)]
pub fn default_catcher(status: Status, _req: &Request<'_>) -> ApiError {
    let error = match status.code {
        404 => "not found".to_string(),
        413 => "request body is larger than 16 KiB".to_string(),
        _ => status.reason_lossy().to_lowercase(),
    };
    ApiError::new(status, error)
}
