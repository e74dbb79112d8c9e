//! Checks every request passes before routing: no query field given twice,
//! and no write from another site. A request that fails one is answered by
//! a catcher with the refusal stored here (Rocket's fairings cannot
//! answer a request; they may rewrite it, so a refused request is routed
//! to a path no route has and never reaches a handler): in JSON, or for
//! the page's routes with the page, as the page answers its own errors.

use std::collections::HashSet;

use rocket::fairing::{Fairing, Info, Kind};
use rocket::http::uri::Origin;
use rocket::http::{Method, Status};
use rocket::{Data, Request};

use super::body::{field_key, known_field};
use super::echo::echo;
use super::error::{refuse, ApiError};
use super::page::{form_address_redirect, is_page_request};
use crate::hosts::split_port;

/// Where a refused request is routed: no route has this path.
const REFUSED_PATH: &str = "/.refused";

/// Where a refused request for the page is routed: no route has this path,
/// and the page's catcher is registered here ([`super::page::refused`]).
pub const REFUSED_PAGE_PATH: &str = "/.refused/page";

/// The fairing that runs both checks on every request.
pub struct RequestChecks;

#[rocket::async_trait]
impl Fairing for RequestChecks {
    fn info(&self) -> Info {
        Info {
            name: "request checks",
            kind: Kind::Request,
        }
    }

    async fn on_request(&self, req: &mut Request<'_>, _: &mut Data<'_>) {
        // Rocket took a form post whose first field is `_method=get` for a
        // GET (`preprocess_request`, before fairings run): the method sent
        // is the request's, as the front door names it.
        // Method names are case-sensitive (RFC 9110 §9.1) and Rocket's
        // parser is not: `post`, which Rocket was given as TRACE, stays so.
        if let Some(sent) = req
            .headers()
            .get_one(super::dispatch::ORIGINAL_METHOD)
            .and_then(|m| m.parse::<Method>().ok().filter(|p| p.as_str() == m))
        {
            if sent != req.method() {
                req.set_method(sent);
            }
        }
        // A browser's read of the form's address is sent to the page,
        // whatever its query, which nothing reads: a field given twice
        // there is no ambiguity, and a JSON error no answer for a page.
        let repeated = match form_address_redirect(req) {
            Some(_) => None,
            None => repeated_query_field(req),
        };
        let refusal = repeated.or_else(|| cross_site_write(req));
        if let Some(error) = refusal {
            let to = if is_page_request(req) {
                REFUSED_PAGE_PATH
            } else {
                REFUSED_PATH
            };
            refuse(req, error);
            req.set_uri(Origin::const_new(to, None));
        }
    }
}

/// A query field given twice (`?before=A&before=B`, or `before[]=B` or
/// `before.x=B` beside it, which Rocket reads as the same field) is
/// ambiguous: 400, naming it, instead of one of the values silently
/// winning or, as Rocket takes a field given twice, none.
fn repeated_query_field(req: &Request<'_>) -> Option<ApiError> {
    let query = req.uri().query()?;
    let mut seen = HashSet::new();
    for (name, _) in query.segments() {
        if !seen.insert(field_key(name)) {
            return Some(ApiError {
                field: known_field(field_key(name)),
                ..ApiError::new(
                    Status::BadRequest,
                    format!(
                        "query field {} is given more than once",
                        echo(field_key(name))
                    ),
                )
            });
        }
    }
    None
}

/// A browser write (any method but GET, HEAD, OPTIONS) started by another
/// site: refused with 403 so a page elsewhere cannot post in a user's name.
///
/// Browsers say where a request comes from in `Sec-Fetch-Site` (which a
/// page cannot set); only `same-origin` and `none` (the user's own action,
/// such as a bookmark) are let through. Browsers without it send `Origin`
/// on a POST, which must then name this host (the `Host` header, or the
/// authority of an absolute-form target, which replaces it: RFC 9112
/// §3.2.2, [`crate::api::dispatch`]). A request with neither is
/// not a browser's (curl, the lab's scripts) and is let through: it
/// carries no user's cookies to abuse.
fn cross_site_write(req: &Request<'_>) -> Option<ApiError> {
    if matches!(req.method(), Method::Get | Method::Head | Method::Options) {
        return None;
    }
    let refused = |why: String| {
        Some(ApiError::new(
            Status::Forbidden,
            format!("cross-site write refused: {why}"),
        ))
    };
    let headers = req.headers();
    // Each says one thing of one request: given twice, which one would
    // decide is arbitrary (no browser sends either twice).
    for name in ["Sec-Fetch-Site", "Origin"] {
        if headers.get(name).nth(1).is_some() {
            return Some(ApiError::new(
                Status::BadRequest,
                format!("header {name} is given more than once"),
            ));
        }
    }
    if let Some(site) = headers.get_one("Sec-Fetch-Site") {
        let site = site.trim().to_ascii_lowercase();
        return match site.as_str() {
            "same-origin" | "none" => None,
            _ => refused(format!(
                "the request comes from another site (Sec-Fetch-Site: {})",
                echo(&site)
            )),
        };
    }
    let origin = headers.get_one("Origin")?.trim();
    let host = req.host().map(|h| h.to_string());
    match origin_authority(origin) {
        Some(authority)
            if host
                .as_deref()
                .is_some_and(|h| same_authority(&authority, h)) =>
        {
            None
        }
        _ => refused(format!(
            "Origin {} is not this site ({})",
            echo(origin),
            host.as_deref().map_or_else(|| "no Host".to_owned(), echo)
        )),
    }
}

/// Whether `req` comes from a browser: browsers say where a request comes
/// from (`Sec-Fetch-Site`, or `Origin` on a POST); other clients (curl,
/// scripts) say neither.
pub fn from_a_browser(req: &Request<'_>) -> bool {
    let headers = req.headers();
    headers.contains("Sec-Fetch-Site") || headers.contains("Origin")
}

/// `http://chat.example:8000` → `chat.example:8000`, with the scheme's
/// default port made explicit so `Host: chat.example` compares equal.
fn origin_authority(origin: &str) -> Option<String> {
    let (scheme, rest) = origin.split_once("://")?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return None;
    }
    Some(with_port(authority, default_port(scheme)?))
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme.to_ascii_lowercase().as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

fn with_port(authority: &str, port: u16) -> String {
    let authority = authority.to_ascii_lowercase();
    if !split_port(&authority).1.is_empty() {
        authority
    } else {
        format!("{authority}:{port}")
    }
}

/// Whether an Origin's authority (port explicit) names the Host header's.
/// The Host header has no scheme, so a port-less Host matches an Origin on
/// either default port.
fn same_authority(origin: &str, host: &str) -> bool {
    [80, 443]
        .into_iter()
        .any(|port| with_port(host, port) == origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_with_default_ports() {
        let o = |s| origin_authority(s).unwrap();
        assert!(same_authority(&o("http://chat.example"), "chat.example"));
        assert!(same_authority(&o("https://chat.example"), "chat.example"));
        assert!(same_authority(
            &o("http://127.0.0.1:8000"),
            "127.0.0.1:8000"
        ));
        assert!(same_authority(&o("http://[::1]:8000"), "[::1]:8000"));
        assert!(!same_authority(&o("http://evil.example"), "chat.example"));
        assert!(!same_authority(
            &o("http://chat.example:8001"),
            "chat.example:8000"
        ));
        assert_eq!(origin_authority("null"), None);
    }
}
