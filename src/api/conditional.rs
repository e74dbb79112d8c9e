//! Conditional GET (RFC 9110 §13.1.2, §15.4.5): listings and the page carry
//! an `ETag`, and a request whose `If-None-Match` names it gets `304 Not
//! Modified` with no body, so a client that polls (the lab's page did)
//! costs almost nothing while nothing changed.
//!
//! A post to the listing may carry preconditions too ([`Preconditions`]):
//! `If-Match` and `If-None-Match` are held against the listing's current
//! `ETag`, and a post whose preconditions fail stores nothing and gets
//! `412 Precondition Failed` (RFC 9110 §13.1.1, §13.1.2).
//!
//! The values are read by hand ([`Condition::parse`]): the `headers`
//! crate's typed `If-Match` and `If-None-Match` (0.4) skip a tag of a list
//! they cannot read and match on the others, where a write's condition
//! that cannot be read must be refused, not half taken.

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
    /// (a `W/` prefix is ignored on both sides). A value that is not `*` or
    /// a list of entity tags names nothing, so the body is sent in full: a
    /// read changes nothing, and the client gets what it asked for without
    /// the condition.
    pub fn has(&self, etag: &str) -> bool {
        let Some(Ok(condition)) = self.0.as_deref().map(Condition::parse) else {
            return false;
        };
        let (wanted, _) = parts(etag);
        match condition {
            Condition::Any => true,
            Condition::Tags(tags) => tags.iter().any(|tag| tag.opaque == wanted),
        }
    }
}

/// A precondition's value, by RFC 9110's grammar `"*" / #entity-tag`
/// (§13.1.1, §13.1.2).
#[derive(Debug, PartialEq)]
enum Condition<'a> {
    /// `*`: any current representation. It is the whole value or none of
    /// it, so in a list of tags (`W/"x", *`, which no client means) it is
    /// an invalid value, not a tag.
    Any,
    /// The entity tags listed, in order (possibly none).
    Tags(Vec<EntityTag<'a>>),
}

/// One entity tag of a list (RFC 9110 §8.8.3).
#[derive(Debug, PartialEq)]
struct EntityTag<'a> {
    /// The opaque tag with its quotes, as the `ETag` field writes it.
    opaque: &'a str,
    /// Whether it was marked weak (`W/`).
    weak: bool,
}

impl<'a> Condition<'a> {
    /// Parses a header's value (its field lines joined by `, `).
    ///
    /// A list may hold empty elements (RFC 9110 §5.6.1 has recipients
    /// ignore them); a tag's quoted string holds any visible character but
    /// `"` (`etagc`: `%x21 / %x23-7E / obs-text`), a comma too, so the list
    /// is split by the grammar, never at every comma. A header line that was
    /// not UTF-8 is read with U+FFFD in the place of each bad byte, which
    /// counts as `obs-text` and matches no tag of ours.
    ///
    /// Errors: what is wrong, in words for the client.
    fn parse(value: &'a str) -> Result<Condition<'a>, String> {
        let value = value.trim_matches(is_ows);
        if value == "*" {
            return Ok(Condition::Any);
        }
        let mut tags = Vec::new();
        let mut rest = value;
        loop {
            rest = rest.trim_start_matches(|c| c == ',' || is_ows(c));
            if rest.is_empty() {
                return Ok(Condition::Tags(tags));
            }
            let (weak, quoted) = match rest.strip_prefix("W/") {
                Some(quoted) => (true, quoted),
                None => (false, rest),
            };
            let Some(inside) = quoted.strip_prefix('"') else {
                return Err(if rest.starts_with('*') {
                    "`*` is only valid as the whole value, not in a list".to_owned()
                } else {
                    format!(
                        "an entity tag begins with `\"` or `W/\"`, not {}",
                        shown(quoted)
                    )
                });
            };
            let Some(end) = inside.find('"') else {
                return Err("an entity tag's closing `\"` is missing".to_owned());
            };
            if let Some(at) = inside[..end].find(|c: char| c == ' ' || c.is_ascii_control()) {
                return Err(format!(
                    "an entity tag holds visible characters only, not {}",
                    shown(&inside[at..])
                ));
            }
            tags.push(EntityTag {
                opaque: &quoted[..end + 2],
                weak,
            });
            rest = inside[end + 1..].trim_start_matches(is_ows);
            if !rest.is_empty() && !rest.starts_with(',') {
                return Err(format!(
                    "entity tags are separated by `,`, not {}",
                    shown(rest)
                ));
            }
        }
    }
}

/// Optional white space in a field value: space or horizontal tab (RFC 9110 §5.6.3).
fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// The first character of `rest`, for an error message: a space or a
/// control character as an escape, any other quoted.
fn shown(rest: &str) -> String {
    match rest.chars().next() {
        Some(c) if c == ' ' || c.is_control() => crate::text::escape(c),
        Some(c) => format!("`{c}`"),
        None => "the end".to_owned(),
    }
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
    /// Errors: the outer one, 400 naming the header, when either value is
    /// not `*` or a list of entity tags: a condition the server cannot read
    /// is taken neither for one that holds nor for one that fails. The inner
    /// one, 412 naming the header that failed and the current tag.
    pub fn check(&self, etag: &str) -> Result<Result<(), ApiError>, ApiError> {
        fn parse<'v>(
            header: &str,
            value: &'v Option<String>,
        ) -> Result<Option<Condition<'v>>, ApiError> {
            let Some(value) = value else {
                return Ok(None);
            };
            Condition::parse(value).map(Some).map_err(|why| {
                ApiError::new(
                    Status::BadRequest,
                    format!(
                        "{header} is not `*` or a list of entity tags (RFC 9110 §13.1): \
                         {why}; nothing was stored"
                    ),
                )
            })
        }
        let if_match = parse("If-Match", &self.if_match)?;
        let if_none_match = parse("If-None-Match", &self.if_none_match)?;
        let failed = |header: &str| {
            Ok(Err(ApiError::new(
                Status::PreconditionFailed,
                format!(
                    "precondition failed: {header} does not hold for the listing, whose \
                     ETag is {etag}; nothing was stored"
                ),
            )))
        };
        let (current, _) = parts(etag);
        if let Some(Condition::Tags(tags)) = &if_match {
            if !tags.iter().any(|tag| !tag.weak && tag.opaque == current) {
                return failed("If-Match");
            }
        }
        match &if_none_match {
            Some(Condition::Any) => return failed("If-None-Match"),
            Some(Condition::Tags(tags)) if tags.iter().any(|tag| tag.opaque == current) => {
                return failed("If-None-Match")
            }
            _ => {}
        }
        Ok(Ok(()))
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

    fn tag(opaque: &str, weak: bool) -> EntityTag<'_> {
        EntityTag { opaque, weak }
    }

    #[test]
    fn a_condition_is_star_or_a_list_of_entity_tags() {
        assert_eq!(Condition::parse(" * "), Ok(Condition::Any));
        assert_eq!(Condition::parse(""), Ok(Condition::Tags(vec![])));
        assert_eq!(
            Condition::parse("\"a\", W/\"b\""),
            Ok(Condition::Tags(vec![
                tag("\"a\"", false),
                tag("\"b\"", true)
            ]))
        );
        // A comma inside a tag is part of it; empty list elements are none.
        assert_eq!(
            Condition::parse(" ,\t\"a,b\" ,, W/\"\"\t,"),
            Ok(Condition::Tags(vec![
                tag("\"a,b\"", false),
                tag("\"\"", true)
            ]))
        );
        // A byte that was not UTF-8, read as U+FFFD, is obs-text.
        assert_eq!(
            Condition::parse("\"x\u{fffd}\""),
            Ok(Condition::Tags(vec![tag("\"x\u{fffd}\"", false)]))
        );
        for (value, why) in [
            ("*, *", "`*` is only valid as the whole value"),
            ("W/\"x\", *", "`*` is only valid as the whole value"),
            ("junk", "begins with `\"` or `W/\"`, not `j`"),
            ("w/\"x\"", "not `w`"),
            ("W/ \"x\"", "not \\u{20}"),
            ("\"x", "closing `\"` is missing"),
            ("\"a b\"", "visible characters only, not \\u{20}"),
            ("\"a\tb\"", "visible characters only, not \\u{9}"),
            ("\"a\"\"b\"", "separated by `,`, not `\"`"),
            ("\"a\" \"b\"", "separated by `,`, not `\"`"),
        ] {
            let error = Condition::parse(value).unwrap_err();
            assert!(error.contains(why), "{value:?}: {error}");
        }
    }

    #[test]
    fn if_none_match_uses_the_weak_comparison() {
        let tag = etag_of(b"[]");
        assert!(tag.starts_with('"') && tag.ends_with('"') && tag.len() == 34);
        let has = |h: &str| IfNoneMatch(Some(h.to_owned())).has(&tag);
        assert!(has(&tag));
        assert!(has(&format!("W/{tag}")));
        assert!(has(&format!("\"other\", {tag}")));
        assert!(has(&format!("\"a,b\",{tag}")));
        assert!(has("*"));
        assert!(has(" * "));
        // A weak tag of ours (the page's) is had by its strong form too.
        assert!(IfNoneMatch(Some("\"p\"".to_owned())).has("W/\"p\""));
        // `*` is a whole value, never one of a list; a value that is not a
        // list of tags names nothing, not even the tags in it.
        assert!(!has("\"other\", *"));
        assert!(!has(&format!("junk, {tag}")));
        assert!(!has("\"other\""));
        assert!(!IfNoneMatch(None).has(&tag));
        assert_ne!(etag_of(b"[1]"), tag);
    }

    #[test]
    fn if_match_is_strong_and_if_none_match_weak_on_a_change() {
        let tag = etag_of(b"[]");
        let check = |if_match: Option<&str>, if_none_match: Option<&str>| {
            let outcome = Preconditions {
                if_match: if_match.map(str::to_owned),
                if_none_match: if_none_match.map(str::to_owned),
            }
            .check(&tag);
            match outcome {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) | Err(e) => Err((e.status.code, e.error)),
            }
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
        assert_eq!(check(Some("\"x\""), None).unwrap_err().0, 412);
        assert_eq!(check(Some(""), None).unwrap_err().0, 412);
        assert!(check(None, Some("\"x\"")).is_ok());
        for refused in ["*", tag.as_str(), weak.as_str()] {
            let (status, error) = check(None, Some(refused)).unwrap_err();
            assert_eq!(status, 412);
            assert!(error.contains("If-None-Match"), "{error}");
        }
        // A value that is not `*` or a list of tags is a 400 naming its
        // header, whether a tag in it would match or not.
        for (if_match, if_none_match, header) in [
            (Some("W/\"x\", *"), None, "If-Match"),
            (Some("*, *"), None, "If-Match"),
            (Some(&*format!("*, {tag}")), None, "If-Match"),
            (None, Some("\"x\", *"), "If-None-Match"),
            (None, Some("*,*"), "If-None-Match"),
            (None, Some("junk"), "If-None-Match"),
            (Some(tag.as_str()), Some("junk"), "If-None-Match"),
            (Some("junk"), Some("*"), "If-Match"),
        ] {
            let (status, error) = check(if_match, if_none_match).unwrap_err();
            assert_eq!(status, 400, "{error}");
            assert!(
                error.starts_with(&format!("{header} is not `*` or a list of entity tags")),
                "{error}"
            );
        }
        // If-Match is evaluated first.
        let (_, error) = check(Some("\"x\""), Some("*")).unwrap_err();
        assert!(error.contains("If-Match"), "{error}");
    }
}
