//! Conditional GET (RFC 9110 §13.1.2, §15.4.5): listings and the page carry
//! an `ETag`, and a request whose `If-None-Match` names it gets `304 Not
//! Modified` with no body, so a client that polls (the lab's page did)
//! costs almost nothing while nothing changed.

use std::io::Cursor;

use rocket::http::{Header, Status};
use rocket::request::{FromRequest, Outcome, Request};
use rocket::response::{self, Responder, Response};

/// The `If-None-Match` request header, if sent: its field lines combined
/// into one list, as RFC 9110 §5.3 reads several lines of a list field.
pub struct IfNoneMatch(Option<String>);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for IfNoneMatch {
    type Error = std::convert::Infallible;

    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        let lines: Vec<&str> = req.headers().get("If-None-Match").collect();
        Outcome::Success(IfNoneMatch((!lines.is_empty()).then(|| lines.join(", "))))
    }
}

impl IfNoneMatch {
    /// Whether the client already has the representation tagged `etag`:
    /// `*`, or any listed tag equal to it by the weak comparison GET uses
    /// (a `W/` prefix is ignored on both sides).
    pub fn has(&self, etag: &str) -> bool {
        let Some(header) = &self.0 else {
            return false;
        };
        let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
        let wanted = opaque(etag);
        header
            .split(',')
            .any(|tag| tag.trim() == "*" || opaque(tag) == wanted)
    }
}

pub use crate::cache::content_tag as etag_of;

/// A body tagged with its `ETag`, or `304 Not Modified` when the client has
/// it already. Either way the response says `Cache-Control: no-cache`, so
/// clients revalidate instead of reusing it unseen.
pub enum Tagged<R> {
    /// The body, with its tag.
    Fresh {
        /// The entity tag, quoted (and `W/`-prefixed when weak), RFC 9110 §8.8.3.
        etag: String,
        /// What answers the request in full.
        body: R,
    },
    /// The client's copy is current.
    NotModified {
        /// The tag the client already holds.
        etag: String,
    },
}

impl<R> Tagged<R> {
    /// `body` tagged `etag`, or 304 when `if_none_match` names it.
    pub fn new(if_none_match: &IfNoneMatch, etag: String, body: impl FnOnce() -> R) -> Tagged<R> {
        if if_none_match.has(&etag) {
            Tagged::NotModified { etag }
        } else {
            Tagged::Fresh { etag, body: body() }
        }
    }
}

impl<'r, 'o: 'r, R: Responder<'r, 'o>> Responder<'r, 'o> for Tagged<R> {
    fn respond_to(self, req: &'r Request<'_>) -> response::Result<'o> {
        match self {
            Tagged::Fresh { etag, body } => Response::build_from(body.respond_to(req)?)
                .header(Header::new("ETag", etag))
                .header(Header::new("Cache-Control", "no-cache"))
                .ok(),
            Tagged::NotModified { etag } => Response::build()
                .status(Status::NotModified)
                .header(Header::new("ETag", etag))
                .header(Header::new("Cache-Control", "no-cache"))
                .sized_body(0, Cursor::new(Vec::new()))
                .ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_uses_the_weak_comparison() {
        let tag = etag_of(b"[]");
        assert!(tag.starts_with('"') && tag.ends_with('"') && tag.len() == 34);
        let has = |h: &str| IfNoneMatch(Some(h.to_owned())).has(&tag);
        assert!(has(&tag));
        assert!(has(&format!("W/{tag}")));
        assert!(has(&format!("\"other\", {tag}")));
        assert!(has("*"));
        assert!(!has("\"other\""));
        assert!(!IfNoneMatch(None).has(&tag));
        assert_ne!(etag_of(b"[1]"), tag);
    }
}
