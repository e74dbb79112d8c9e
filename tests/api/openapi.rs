//! Keeps `/api/openapi.json` true: every JSON route is documented with its
//! methods, nothing undocumented is mounted, and real responses carry the
//! documented fields.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::app::spawn_app;

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

/// Rocket's `/api/messages/<id>` becomes OpenAPI's `/api/messages/{id}`.
fn mounted_json_routes() -> BTreeSet<(String, String)> {
    simplechat::api::routes()
        .iter()
        .map(|r| {
            let path = r.uri.path().to_string().replace('<', "{").replace('>', "}");
            (r.method.as_str().to_owned(), path)
        })
        .filter(|(_, path)| path.starts_with("/api/") || path == "/healthz" || path == "/readyz")
        .collect()
}

#[tokio::test]
async fn the_document_lists_exactly_the_json_routes() {
    let app = spawn_app(&[]).await;
    let doc = app.get_json("/api/openapi.json").await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(documented(&doc), mounted_json_routes());
    // Every path says what OPTIONS answers there, and the server agrees.
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let declared = &item["options"]["responses"]["204"]["$ref"];
        assert_eq!(declared, "#/components/responses/Options", "{path}");
        let response = app
            .client
            .request(
                reqwest::Method::OPTIONS,
                app.url(&path.replace("{id}", "x")),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204, "{path}");
        assert!(response.headers().contains_key("allow"), "{path}");
    }
    app.shutdown().await;
}

/// What the issue found the document getting wrong: empty values allowed,
/// `before` with `after` not said to be exclusive, no 405, no
/// `Retry-After` on `/readyz`'s 503.
#[tokio::test]
async fn the_document_states_the_rules_the_server_enforces() {
    let app = spawn_app(&[]).await;
    let doc = app.get_json("/api/openapi.json").await;
    let new = &doc["components"]["schemas"]["NewMessage"];
    assert_eq!(new["required"], serde_json::json!(["name", "text"]));
    for (field, max) in [("name", 64), ("text", 2000)] {
        let schema = &new["properties"][field];
        assert_eq!(schema["minLength"], 1, "{field}");
        assert_eq!(schema["maxLength"], max, "{field}");
        let pattern = schema["pattern"].as_str().unwrap();
        assert!(pattern.contains("\\s"), "{field}: not only whitespace");
        // The server agrees: whitespace only is refused.
        let mut body = serde_json::json!({"name": "a", "text": "b"});
        body[field] = "   ".into();
        let refused = app.post_json("/api/messages", &body).await;
        assert_eq!(refused.status(), 400);
    }
    let list = &doc["paths"]["/api/messages"]["get"];
    assert!(list["description"]
        .as_str()
        .unwrap()
        .contains("mutually exclusive"));
    assert!(doc["info"]["description"].as_str().unwrap().contains("405"));
    assert!(
        doc["paths"]["/readyz"]["get"]["responses"]["503"]["headers"]
            .get("Retry-After")
            .is_some()
    );
    app.shutdown().await;
}

fn required_fields(doc: &Value, schema: &str) -> Vec<String> {
    doc["components"]["schemas"][schema]["required"]
        .as_array()
        .unwrap_or_else(|| panic!("schema {schema} has required fields"))
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn responses_carry_the_documented_fields() {
    let app = spawn_app(&[]).await;
    let doc = app.get_json("/api/openapi.json").await;
    let message = app.post_message("doc", "check").await;
    for field in required_fields(&doc, "Message") {
        assert!(message[&field].is_string(), "Message.{field}");
    }
    let error: Value = app.get("/api/messages?limit=0").await.json().await.unwrap();
    for field in required_fields(&doc, "Error") {
        assert!(error[&field].is_string(), "Error.{field}");
    }
    let status = app.get_json("/api/status").await;
    for field in required_fields(&doc, "Status") {
        assert!(status.get(&field).is_some(), "Status.{field}");
    }
    // Every status code a route answers in these tests is documented for it.
    for (path, method, code) in [
        ("/api/messages", "post", "201"),
        ("/api/messages", "post", "400"),
        ("/api/messages", "post", "403"),
        ("/api/messages", "post", "507"),
        ("/api/messages", "post", "409"),
        ("/api/messages", "post", "413"),
        ("/api/messages", "post", "415"),
        ("/api/messages", "post", "501"),
        ("/api/messages", "post", "503"),
        ("/api/messages", "get", "200"),
        ("/api/messages", "get", "400"),
        ("/api/messages", "get", "404"),
        ("/api/messages/{id}", "get", "404"),
        ("/readyz", "get", "503"),
    ] {
        assert!(
            doc["paths"][path][method]["responses"].get(code).is_some(),
            "{method} {path} documents {code}"
        );
    }
    app.shutdown().await;
}
