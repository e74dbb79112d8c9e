//! The name cookie's attributes: `Secure` when the page is served over
//! HTTPS, and a lifetime of a year.

use rocket::http::{Cookie, SameSite};
use rocket::request::{FromRequest, Outcome, Request};
use rocket::time::Duration;

/// How the request reached the server, as the settings let it be known
/// (Rocket state).
#[derive(Debug, Clone, Copy, Default)]
pub struct CookieSettings {
    /// `secure_cookie`: every request came over HTTPS (a TLS proxy in front).
    pub always_secure: bool,
    /// `trust_proxy_headers`: a proxy in front sets `X-Forwarded-Proto`,
    /// and its word on the scheme is taken.
    pub trust_forwarded_proto: bool,
}

/// Whether this request came over HTTPS; a request guard.
#[derive(Debug, Clone, Copy)]
pub struct Https(pub bool);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for Https {
    type Error = std::convert::Infallible;

    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        let settings = req
            .rocket()
            .state::<CookieSettings>()
            .copied()
            .unwrap_or_default();
        let forwarded_https = settings.trust_forwarded_proto
            && req
                .headers()
                .get_one("X-Forwarded-Proto")
                .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
        Outcome::Success(Https(settings.always_secure || forwarded_https))
    }
}

/// How long the browser keeps the sender's name.
pub const NAME_COOKIE_LIFETIME: Duration = Duration::days(365);

/// How long the browser keeps a refused form post's draft: it is read by
/// the page the post redirects to, at once.
pub const DRAFT_COOKIE_LIFETIME: Duration = Duration::seconds(60);

/// The most a cookie may take, `Set-Cookie` attributes included: browsers
/// keep cookies of at least 4,096 bytes (RFC 6265, section 6.1), and drop
/// larger ones.
pub const MAX_COOKIE_BYTES: usize = 4096;

/// The cookie that carries a refused form post's draft to the page it
/// redirects to: sent only with this site's own requests started on this
/// site (`SameSite=Strict`: the redirect after the form's post is one),
/// never readable by scripts, and gone after a minute if no page reads it.
pub fn draft_cookie(name: &'static str, value: String, https: Https) -> Cookie<'static> {
    site_cookie(name, value, https, SameSite::Strict, DRAFT_COOKIE_LIFETIME)
}

/// The cookie that remembers the sender's name: sent back only to this
/// site's own pages (`SameSite=Lax`), never readable by scripts, kept for
/// a year, and only over HTTPS when the page is served over HTTPS.
pub fn name_cookie(name: &'static str, value: String, https: Https) -> Cookie<'static> {
    site_cookie(name, value, https, SameSite::Lax, NAME_COOKIE_LIFETIME)
}

/// A cookie for the whole site that scripts cannot read, `Secure` when the
/// page is served over HTTPS.
fn site_cookie(
    name: &'static str,
    value: String,
    https: Https,
    same_site: SameSite,
    max_age: Duration,
) -> Cookie<'static> {
    Cookie::build((name, value))
        .path("/")
        .same_site(same_site)
        .http_only(true)
        .secure(https.0)
        .max_age(max_age)
        .build()
}
