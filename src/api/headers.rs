//! Security headers on every response the server sends, whatever answered
//! it: a route, the prepared page, a catcher, an event stream, or the front
//! door refusing a request it cannot parse or a connection over its bound.
//! The front door adds them to each response's head ([`add_security_headers`])
//! under one rule: a header a response already has is left as it is. The
//! Content-Security-Policy allows only the page's own script, stylesheet and
//! connections; the page has no inline script or style, so nothing it needs
//! is refused.
//!
//! Not Rocket's `Shield`: Rocket's header map hashes a header name with
//! SipHash one byte at a time (its names are `Uncased`), Shield looks each
//! of its headers up and then sets it on every response, and the front door
//! then copied all five into hyper's map: about 17,500 instructions a
//! response, a sixth of a listing's. hyper's map knows these names as
//! constants, and the values are made once.

use std::sync::LazyLock;

use hyper::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use rocket::shield::Shield;

/// The `Content-Security-Policy` every response carries (W3C Content
/// Security Policy Level 3): only same-origin script, style, connections,
/// images and form targets, no `<base>` and no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; \
base-uri 'none'; frame-ancestors 'none'";

/// The security headers, name and value: [`CONTENT_SECURITY_POLICY`],
/// `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`,
/// `Referrer-Policy: no-referrer`, and `Permissions-Policy:
/// interest-cohort=()` (Rocket's default Shield policy, kept).
pub const SECURITY_HEADERS: [(HeaderName, &str); 5] = [
    (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::REFERRER_POLICY, "no-referrer"),
    (
        HeaderName::from_static("permissions-policy"),
        "interest-cohort=()",
    ),
];

/// [`SECURITY_HEADERS`] as hyper's values, made once: `from_static` checks
/// every byte of a value each time it is called.
static SECURITY_HEADER_VALUES: LazyLock<[(HeaderName, HeaderValue); 5]> =
    LazyLock::new(|| SECURITY_HEADERS.map(|(name, value)| (name, HeaderValue::from_static(value))));

/// Adds each of [`SECURITY_HEADERS`] that `headers` does not have yet.
pub fn add_security_headers(headers: &mut HeaderMap) {
    for (name, value) in SECURITY_HEADER_VALUES.iter() {
        if let Entry::Vacant(entry) = headers.entry(name) {
            entry.insert(value.clone());
        }
    }
}

/// Rocket's Shield with no policy: Rocket attaches its default Shield
/// unless one is attached, and the front door sets these headers instead
/// (see the module docs).
pub fn shield() -> Shield {
    Shield::new()
}
