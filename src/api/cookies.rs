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

/// The cookie that remembers the sender's name: sent back only to this
/// site's own pages (`SameSite=Lax`), never readable by scripts, kept for
/// a year, and only over HTTPS when the page is served over HTTPS.
pub fn name_cookie(name: &'static str, value: String, https: Https) -> Cookie<'static> {
    Cookie::build((name, value))
        .path("/")
        .same_site(SameSite::Lax)
        .http_only(true)
        .secure(https.0)
        .max_age(NAME_COOKIE_LIFETIME)
        .build()
}
