//! Security headers on every response. The Content-Security-Policy allows
//! only the page's own script, stylesheet and connections; the page has no
//! inline script or style, so nothing it needs is refused.

use rocket::fairing::{Fairing, Info, Kind};
use rocket::http::Header;
use rocket::{Request, Response};

/// The `Content-Security-Policy` every response carries (W3C Content
/// Security Policy Level 3): only same-origin script, style, connections,
/// images and form targets, no `<base>` and no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; \
base-uri 'none'; frame-ancestors 'none'";

/// The response fairing that sets the policy above, `X-Content-Type-Options:
/// nosniff`, `Referrer-Policy: no-referrer` and `X-Frame-Options: DENY` on
/// every response Rocket sends, catchers' included.
pub struct SecurityHeaders;

#[rocket::async_trait]
impl Fairing for SecurityHeaders {
    fn info(&self) -> Info {
        Info {
            name: "security headers",
            kind: Kind::Response,
        }
    }

    async fn on_response<'r>(&self, _req: &'r Request<'_>, res: &mut Response<'r>) {
        res.set_header(Header::new(
            "Content-Security-Policy",
            CONTENT_SECURITY_POLICY,
        ));
        res.set_header(Header::new("X-Content-Type-Options", "nosniff"));
        res.set_header(Header::new("Referrer-Policy", "no-referrer"));
        res.set_header(Header::new("X-Frame-Options", "DENY"));
    }
}
