//! Security headers on every response Rocket sends, catchers' included,
//! all set by Rocket's [`Shield`] under one rule: a header a response
//! already has is left as it is. The Content-Security-Policy allows only the
//! page's own script, stylesheet and connections; the page has no inline
//! script or style, so nothing it needs is refused.

use rocket::http::Header;
use rocket::shield::{Frame, NoSniff, Permission, Policy, Referrer, Shield};

/// The `Content-Security-Policy` every response carries (W3C Content
/// Security Policy Level 3): only same-origin script, style, connections,
/// images and form targets, no `<base>` and no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; \
base-uri 'none'; frame-ancestors 'none'";

/// [`CONTENT_SECURITY_POLICY`] as a Shield policy: Rocket 0.5 ships
/// policies for the other headers, not this one.
#[derive(Debug, Default, Clone, Copy)]
pub struct ContentSecurityPolicy;

impl Policy for ContentSecurityPolicy {
    const NAME: &'static str = "Content-Security-Policy";

    fn header(&self) -> Header<'static> {
        Header::new(Self::NAME, CONTENT_SECURITY_POLICY)
    }
}

/// Rocket's Shield with this service's policies, in place of its default
/// (Shield is a singleton fairing, so attaching this one replaces it):
/// [`ContentSecurityPolicy`], `X-Content-Type-Options: nosniff`,
/// `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer` and Rocket's
/// default `Permissions-Policy: interest-cohort=()`.
pub fn shield() -> Shield {
    Shield::new()
        .enable(ContentSecurityPolicy)
        .enable(NoSniff::Enable)
        .enable(Frame::Deny)
        .enable(Referrer::NoReferrer)
        .enable(Permission::default())
}
