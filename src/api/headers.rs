//! Security headers on every response. The Content-Security-Policy allows
//! only the page's own script, stylesheet and connections; the page has no
//! inline script or style, so nothing it needs is refused.
//!
//! Rocket's [`Shield`] sets the headers it has policies for, configured here
//! instead of its default (which set `X-Frame-Options: SAMEORIGIN` for a
//! fairing of ours to overwrite: two header writes where one does); Shield
//! has no Content-Security-Policy, which [`ContentSecurityPolicy`] sets.

use rocket::fairing::{Fairing, Info, Kind};
use rocket::http::Header;
use rocket::shield::{Frame, NoSniff, Permission, Referrer, Shield};
use rocket::{Request, Response};

/// The `Content-Security-Policy` every response carries (W3C Content
/// Security Policy Level 3): only same-origin script, style, connections,
/// images and form targets, no `<base>` and no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; \
base-uri 'none'; frame-ancestors 'none'";

/// Rocket's Shield with this service's policies, replacing the default one
/// (Shield is a singleton fairing): `X-Content-Type-Options: nosniff`,
/// `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer` and Rocket's
/// default `Permissions-Policy: interest-cohort=()`, on every response
/// Rocket sends, catchers' included.
pub fn shield() -> Shield {
    Shield::new()
        .enable(NoSniff::Enable)
        .enable(Frame::Deny)
        .enable(Referrer::NoReferrer)
        .enable(Permission::default())
}

/// The response fairing that sets [`CONTENT_SECURITY_POLICY`] on every
/// response Rocket sends, catchers' included.
pub struct ContentSecurityPolicy;

#[rocket::async_trait]
impl Fairing for ContentSecurityPolicy {
    fn info(&self) -> Info {
        Info {
            name: "Content-Security-Policy",
            kind: Kind::Response,
        }
    }

    async fn on_response<'r>(&self, _req: &'r Request<'_>, res: &mut Response<'r>) {
        res.set_header(Header::new(
            "Content-Security-Policy",
            CONTENT_SECURITY_POLICY,
        ));
    }
}
