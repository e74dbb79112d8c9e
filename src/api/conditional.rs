//! Conditional GET (RFC 9110 §13.1.2, §15.4.5): listings and the page carry
//! an `ETag`, and a request whose `If-None-Match` names it gets `304 Not
//! Modified` with no body, so a client that polls (the lab's page did)
//! costs almost nothing while nothing changed.
//!
//! A post to the listing may carry preconditions too ([`Preconditions`]):
//! `If-Match` and `If-None-Match` are held against the listing's current
//! `ETag`, and a post whose preconditions fail stores nothing and gets
//! `412 Precondition Failed` (RFC 9110 §13.1.1, §13.1.2).

use std::io::Cursor;

use rocket::http::{Header, Status};
use rocket::request::{FromRequest, Outcome, Request};
use rocket::response::{self, Responder, Response};

use super::error::ApiError;

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
        is_any(header) || header.split(',').any(|tag| opaque(tag) == wanted)
    }
}

/// Whether a precondition's value is `*`, any current representation. The
/// grammar is `"*" / #entity-tag` (RFC 9110 §13.1.1, §13.1.2): `*` is the
/// whole value or none of it, so in a list of tags (`W/"x", *`, which no
/// client means) it matches nothing, and a write's `If-Match` so written
/// fails rather than holds.
fn is_any(value: &str) -> bool {
    value.trim() == "*"
}

pub use crate::cache::content_tag as etag_of;

/// A header's field lines combined into one list (RFC 9110 §5.3), if sent.
fn list_header(req: &Request<'_>, name: &str) -> Option<String> {
    let lines: Vec<&str> = req.headers().get(name).collect();
    (!lines.is_empty()).then(|| lines.join(", "))
}

/// The opaque part of an entity tag (its quoted string), and whether it is
/// weak (`W/`), RFC 9110 §8.8.3.
fn parts(tag: &str) -> (&str, bool) {
    let tag = tag.trim();
    match tag.strip_prefix("W/") {
        Some(opaque) => (opaque, true),
        None => (tag, false),
    }
}

/// The preconditions of a request that would change a resource: its
/// `If-Match` and `If-None-Match` (RFC 9110 §13.1.1, §13.1.2), each with
/// its field lines combined.
pub struct Preconditions {
    if_match: Option<String>,
    if_none_match: Option<String>,
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for Preconditions {
    type Error = std::convert::Infallible;

    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        Outcome::Success(Preconditions {
            if_match: list_header(req, "If-Match"),
            if_none_match: list_header(req, "If-None-Match"),
        })
    }
}

impl Preconditions {
    /// Whether the request has any.
    pub fn any(&self) -> bool {
        self.if_match.is_some() || self.if_none_match.is_some()
    }

    /// Whether they hold for a resource that has a current representation,
    /// tagged `etag` (strong, quoted), in the order of RFC 9110 §13.2.2:
    /// `If-Match` holds for `*` or a tag equal to `etag` by the strong
    /// comparison (§8.8.3.2: neither weak); then `If-None-Match` holds for
    /// neither `*` nor a tag equal by the weak comparison.
    ///
    /// Errors: 412 naming the header that failed and the current tag.
    pub fn check(&self, etag: &str) -> Result<(), ApiError> {
        let failed = |header: &str| {
            Err(ApiError::new(
                Status::PreconditionFailed,
                format!(
                    "precondition failed: {header} does not hold for the listing, whose \
                     ETag is {etag}; nothing was stored"
                ),
            ))
        };
        let (current, _) = parts(etag);
        if let Some(tags) = &self.if_match {
            let strong_match = |tag: &str| match parts(tag) {
                (opaque, false) => opaque == current,
                (_, true) => false,
            };
            if !is_any(tags) && !tags.split(',').any(strong_match) {
                return failed("If-Match");
            }
        }
        if let Some(tags) = &self.if_none_match {
            if is_any(tags) || tags.split(',').any(|tag| parts(tag).0 == current) {
                return failed("If-None-Match");
            }
        }
        Ok(())
    }
}

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
        assert!(has(" * "));
        // `*` is a whole value, never one of a list.
        assert!(!has("\"other\", *"));
        assert!(!has("\"other\""));
        assert!(!IfNoneMatch(None).has(&tag));
        assert_ne!(etag_of(b"[1]"), tag);
    }

    #[test]
    fn if_match_is_strong_and_if_none_match_weak_on_a_change() {
        let tag = etag_of(b"[]");
        let check = |if_match: Option<&str>, if_none_match: Option<&str>| {
            Preconditions {
                if_match: if_match.map(str::to_owned),
                if_none_match: if_none_match.map(str::to_owned),
            }
            .check(&tag)
            .map_err(|e| (e.status.code, e.error))
        };
        assert!(check(None, None).is_ok());
        assert!(check(Some("*"), None).is_ok());
        assert!(check(Some(&tag), None).is_ok());
        assert!(check(Some(&format!("\"x\", {tag}")), None).is_ok());
        let weak = format!("W/{tag}");
        let (status, error) = check(Some(&weak), None).unwrap_err();
        assert_eq!(status, 412);
        assert!(
            error.contains("If-Match") && error.contains(&tag),
            "{error}"
        );
        assert!(check(Some("\"x\""), None).is_err());
        assert!(check(None, Some("\"x\"")).is_ok());
        for refused in ["*", tag.as_str(), weak.as_str()] {
            let (status, error) = check(None, Some(refused)).unwrap_err();
            assert_eq!(status, 412);
            assert!(error.contains("If-None-Match"), "{error}");
        }
        // `*` in a list of tags is none of them: the write's If-Match fails.
        assert!(check(Some("W/\"x\", *"), None).is_err());
        assert!(check(Some("*, *"), None).is_err());
        assert!(check(Some(&format!("*, {tag}")), None).is_ok());
        assert!(check(None, Some("\"x\", *")).is_ok());
        // If-Match is evaluated first.
        let (_, error) = check(Some("\"x\""), Some("*")).unwrap_err();
        assert!(error.contains("If-Match"), "{error}");
    }
}
