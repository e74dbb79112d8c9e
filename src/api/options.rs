//! `OPTIONS`: which methods a resource, or the server as a whole, answers.
//!
//! RFC 9110 §9.3.7: an `OPTIONS` request asks what a resource supports
//! without acting on it, and a successful answer should say so in `Allow`;
//! with the target `*` (asterisk-form, RFC 9112 §3.2.4) it asks about the
//! server in general. A path some route has is answered `204` with the
//! methods its routes take (`HEAD` with `GET`, as Rocket answers it, and
//! `OPTIONS` itself); `*` with every method any route takes, by the front
//! door ([`crate::api::dispatch`]), since `*` is no path Rocket routes. A
//! path no route has is a 404, as for any other method.
//!
//! There is no cross-origin resource sharing here: the answer carries no
//! `Access-Control-Allow-*` header, so a browser's preflight from another
//! site still fails, as it must (the page and its API are one origin).

use rocket::http::{Header, Status};
use rocket::request::Request;
use rocket::response::{self, Responder, Response};

use super::error::{allowed_methods, refusal, ApiError};

/// The answer to `OPTIONS` of the request's path: `204 No Content` with
/// `Allow`, or the error the path gets. Made when responding, where the
/// request (its path, a refusal stored for it) is at hand.
pub struct Options;

impl<'r> Responder<'r, 'static> for Options {
    fn respond_to(self, req: &'r Request<'_>) -> response::Result<'static> {
        if let Some(refused) = refusal(req) {
            return refused.respond_to(req);
        }
        match allowed_methods(req) {
            Some(allow) => Response::build()
                .status(Status::NoContent)
                .header(Header::new("Allow", allow))
                .ok(),
            None => ApiError::not_found("not found").respond_to(req),
        }
    }
}

/// `OPTIONS` of any path: 204 with the methods the path's routes take in
/// `Allow` ([`allowed_methods`]); a path no route has is 404. A request
/// the request checks refused ([`super::checks`]) is routed to a path no
/// other route has, and this route takes it too: it answers that refusal.
#[rocket::options("/<_..>")]
pub fn options() -> Options {
    Options
}

/// The `Allow` of `OPTIONS *`: every method a route in `routes` takes, with
/// `HEAD` where there is `GET` and `OPTIONS`, in the order of
/// [`allowed_methods`].
pub fn server_methods<'a>(routes: impl Iterator<Item = &'a rocket::Route>) -> String {
    super::error::allow_list(routes.map(|route| route.method).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_answers_the_methods_of_its_routes() {
        let routes = crate::api::routes();
        assert_eq!(server_methods(routes.iter()), "GET, HEAD, OPTIONS, POST");
        let none: Vec<rocket::Route> = Vec::new();
        assert_eq!(server_methods(none.iter()), "OPTIONS");
    }
}
