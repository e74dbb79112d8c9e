use crate::support::app::spawn_app;
use serde_json::json;

/// The headers every response of the application carries, whatever answered
/// it: a route, the prepared page, a catcher, or a request refused by a
/// handler. (The front door's own answers to unparsable requests and to
/// connections over its bound carry only `nosniff`.)
const EXPECTED: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
         img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("permissions-policy", "interest-cohort=()"),
];

#[tokio::test]
async fn every_kind_of_response_carries_the_security_headers_once() {
    let app = spawn_app(&[]).await;
    app.post_message("ann", "hello").await;
    let responses = [
        ("GET /api/messages", app.get("/api/messages").await),
        ("GET /", app.get("/").await),
        ("GET /no/such/page", app.get("/no/such/page").await),
        (
            "POST /api/messages with an empty name",
            app.post_json("/api/messages", &json!({"name": "", "text": "x"}))
                .await,
        ),
        ("GET /healthz", app.get("/healthz").await),
    ];
    let statuses: Vec<u16> = responses.iter().map(|(_, r)| r.status().as_u16()).collect();
    assert_eq!(statuses, [200, 200, 404, 400, 200]);
    for (what, response) in &responses {
        for (name, value) in EXPECTED {
            let values: Vec<_> = response.headers().get_all(name).iter().collect();
            assert_eq!(values.len(), 1, "{what}: one {name}, got {values:?}");
            assert_eq!(values[0], value, "{what}: {name}");
        }
    }
    app.shutdown().await;
}
