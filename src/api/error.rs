//! Every error the HTTP surface answers, as JSON `{"error", "field"?}`.
//!
//! Handlers return [`ApiError`]; guards and fairings that refuse a request
//! before its handler runs store theirs with [`refuse`], and the catcher
//! answers it, so a refusal carries its own message and field whichever
//! path it took.

use std::io::Cursor;
use std::sync::OnceLock;
use std::time::Duration;

use rocket::http::{ContentType, Header, Method, Status};
use rocket::request::Request;
use rocket::response::{self, Redirect, Responder, Response};
use serde::Serialize;

use super::body::BODY_LIMIT_BYTES;
use super::echo::echo;
use crate::message::Invalid;
use crate::store::StoreError;

/// An error response: `status`, the JSON body `{"error", "field"?}`, and
/// `Retry-After` (whole seconds, at least 1) when `retry_after` is set.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status answered.
    pub status: Status,
    /// One line for the user, without secrets.
    pub error: String,
    /// The input field at fault (`name`, `text`, `id`, `limit`, `before`,
    /// `after`), if one is.
    pub field: Option<&'static str>,
    /// When a retry may succeed, sent as `Retry-After` (RFC 9110 §10.2.3).
    pub retry_after: Option<Duration>,
    /// The methods the path answers, sent as `Allow` (405 only).
    pub allow: Option<String>,
    /// The content codings a body may have, sent as `Accept-Encoding`: set
    /// on the 415 refusing a content coding only, since RFC 9110 §12.5.3
    /// says a 415 for any other reason MUST NOT carry it.
    pub accept_encoding: Option<&'static str>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

/// `Retry-After` of a `/readyz` 503: readiness is polled, so soon.
pub const READY_RETRY_AFTER: Duration = Duration::from_secs(1);

impl ApiError {
    /// `status` with `error` and no field or headers.
    pub fn new(status: Status, error: impl Into<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
            field: None,
            retry_after: None,
            allow: None,
            accept_encoding: None,
        }
    }

    /// 400 naming the input `field` at fault.
    pub fn bad_request(field: &'static str, error: impl Into<String>) -> Self {
        ApiError {
            field: Some(field),
            ..ApiError::new(Status::BadRequest, error)
        }
    }

    /// 404 without a field.
    pub fn not_found(error: impl Into<String>) -> Self {
        ApiError::new(Status::NotFound, error)
    }

    /// 404 for an id no message has, the id shown as [`echo`] shows
    /// client input.
    pub fn unknown_id(id: &str) -> Self {
        ApiError::not_found(format!("no message has id {}", echo(id)))
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(error: impl Into<String>, retry_after: Duration) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(Status::ServiceUnavailable, error)
        }
    }

    /// The JSON body, `{"error", "field"?}`.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&Body {
            error: &self.error,
            field: self.field,
        })
        .unwrap_or_default()
    }

    /// `Retry-After` in whole seconds, at least 1, when set.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(|after| after.as_secs().max(1))
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
            StoreError::UnknownId(id) => ApiError::unknown_id(&id),
            StoreError::Unavailable {
                reason,
                retry_after,
            } => ApiError::unavailable(reason, retry_after),
            StoreError::Full {
                reason,
                retry_after,
            } => ApiError {
                retry_after: Some(retry_after),
                ..ApiError::new(Status::InsufficientStorage, reason)
            },
            // Refused is met only at start, before any request.
            StoreError::Internal(_) | StoreError::Refused { .. } => {
                rocket::error!("{e}");
                ApiError::new(Status::InternalServerError, "internal error")
            }
        }
    }
}

impl<'r> Responder<'r, 'static> for ApiError {
    fn respond_to(self, _: &'r Request<'_>) -> response::Result<'static> {
        let body = self.body();
        let mut response = Response::build();
        response
            .status(self.status)
            .header(ContentType::JSON)
            .sized_body(body.len(), Cursor::new(body));
        if let Some(after) = self.retry_after_secs() {
            response.header(Header::new("Retry-After", after.to_string()));
        }
        if let Some(allow) = self.allow {
            response.header(Header::new("Allow", allow));
        }
        if let Some(codings) = self.accept_encoding {
            response.header(Header::new("Accept-Encoding", codings));
        }
        response.ok()
    }
}

/// The refusal a guard or fairing decided for this request, answered by the
/// catcher. The first refusal stored wins.
pub fn refuse(req: &Request<'_>, error: ApiError) -> Status {
    let status = error.status;
    let _ = req.local_cache(OnceLock::<ApiError>::new).set(error);
    status
}

/// The refusal stored for this request with [`refuse`], if any.
pub fn refusal(req: &Request<'_>) -> Option<ApiError> {
    req.local_cache(OnceLock::<ApiError>::new).get().cloned()
}

/// Every status without a handler's own error in the same JSON shape
/// ([`error_for`]), except that a browser's `GET` or `HEAD` of the form's
/// address, which has only `POST`, is sent to the page with a 303
/// ([`super::page::form_address_redirect`]).
#[rocket::catch(default)]
pub fn default_catcher(status: Status, req: &Request<'_>) -> Result<Redirect, ApiError> {
    if refusal(req).is_none() && status == Status::NotFound {
        if let Some(redirect) = super::page::form_address_redirect(req) {
            return Ok(redirect);
        }
    }
    Err(error_for(status, req))
}

/// The error for a status without a handler's own error: a refusal stored
/// by a guard or fairing, else Rocket's own (no route, body too large,
/// malformed request), with 405 and `Allow` for a path that exists under
/// other methods.
pub fn error_for(status: Status, req: &Request<'_>) -> ApiError {
    if let Some(error) = refusal(req) {
        return error;
    }
    match status.code {
        404 => match allowed_methods(req) {
            Some(allow) => ApiError {
                allow: Some(allow.clone()),
                ..ApiError::new(
                    Status::MethodNotAllowed,
                    format!(
                        "{} is not allowed here; allowed: {allow}",
                        echo(
                            req.headers()
                                .get_one(super::dispatch::ORIGINAL_METHOD)
                                .unwrap_or(req.method().as_str())
                        )
                    ),
                )
            },
            None => ApiError::not_found("not found"),
        },
        413 => ApiError::new(
            status,
            format!("request body is larger than {BODY_LIMIT_BYTES} bytes"),
        ),
        _ => ApiError::new(status, status.reason_lossy().to_lowercase()),
    }
}

/// The methods the mounted routes answer on the request's path, if any,
/// as [`allow_list`] lists them. The `OPTIONS` route, which takes every
/// path ([`super::options`]), does not make a path one that exists.
pub fn allowed_methods(req: &Request<'_>) -> Option<String> {
    let path: Vec<&str> = req.uri().path().segments().collect();
    let methods: Vec<Method> = req
        .rocket()
        .routes()
        .filter(|route| route.method != Method::Options && path_matches(route.uri.path(), &path))
        // `/static/<file>` has a route for every name and a resource for
        // the page's few files only: another name exists for no method.
        .filter(|route| {
            route.uri.path() != super::assets::ASSET_ROUTE_PATH
                || path
                    .get(1)
                    .is_some_and(|file| super::assets::is_asset(file))
        })
        .map(|route| route.method)
        .collect();
    (!methods.is_empty()).then(|| allow_list(methods))
}

/// `methods` as an `Allow` value (RFC 9110 §10.2.1): with HEAD where there
/// is GET, as Rocket answers it, and OPTIONS, which every path that exists
/// answers ([`super::options`]); sorted, each once.
pub fn allow_list(mut methods: Vec<Method>) -> String {
    if methods.contains(&Method::Get) {
        methods.push(Method::Head);
    }
    methods.push(Method::Options);
    methods.sort_by_key(|m| m.as_str());
    methods.dedup();
    methods
        .iter()
        .map(|m| m.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a route path (`/api/messages/<id>`, `/assets/<file..>`) takes
/// these decoded path segments.
fn path_matches(route: &str, path: &[&str]) -> bool {
    let pattern: Vec<&str> = route.split('/').filter(|s| !s.is_empty()).collect();
    for (i, part) in pattern.iter().enumerate() {
        if part.starts_with('<') && part.ends_with("..>") {
            return true;
        }
        match path.get(i) {
            Some(segment) if part.starts_with('<') || part == segment => {}
            _ => return false,
        }
    }
    pattern.len() == path.len()
}

#[cfg(test)]
mod tests {
    use super::path_matches;

    #[test]
    fn route_paths_match_like_rocket_segments() {
        assert!(path_matches("/", &[]));
        assert!(path_matches("/api/messages", &["api", "messages"]));
        assert!(path_matches(
            "/api/messages/<id>",
            &["api", "messages", "x"]
        ));
        assert!(!path_matches("/api/messages/<id>", &["api", "messages"]));
        assert!(path_matches("/assets/<file..>", &["assets", "a", "b"]));
        assert!(!path_matches("/api/messages", &["api"]));
    }
}
