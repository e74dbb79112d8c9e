use crate::support::app::spawn_app;

#[tokio::test]
async fn the_page_renders_history_escaped_with_a_strict_csp() {
    let app = spawn_app(&[]).await;
    app.post_message(
        "<img src=x onerror=alert(1)>",
        "<script>alert('x')</script> & more",
    )
    .await;
    let response = app.get("/").await;
    assert_eq!(response.status(), 200);
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let html = response.text().await.unwrap();
    assert!(html.contains("&lt;script&gt;alert("), "text escaped");
    assert!(
        html.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "name escaped"
    );
    assert!(!html.contains("<script>alert"));
    assert!(!html.contains("<img src=x"));
    // The page's own script is external, so the CSP allows it; nothing inline.
    assert!(html.contains(r#"<script src="/static/app.js" defer></script>"#));
    assert_eq!(html.matches("<script").count(), 1);
    assert!(
        !html.contains("style=") && !html.contains("<style"),
        "no inline style"
    );
    assert!(html.contains(r#"<form id="send" method="post" action="/messages">"#));
    assert!(html.contains(r#"name="viewport""#), "readable on a phone");

    // The rendered history follows new messages.
    let newer = app.post_message("bob", "a newer message").await;
    let html = app.get("/").await.text().await.unwrap();
    assert!(html.contains("a newer message"));
    assert!(html.contains(&format!(
        r#"data-last-id="{}""#,
        newer["id"].as_str().unwrap()
    )));
    app.shutdown().await;
}

#[tokio::test]
async fn an_empty_chat_says_so() {
    let app = spawn_app(&[]).await;
    let html = app.get("/").await.text().await.unwrap();
    assert!(html.contains("No messages yet"));
    assert!(html.contains(r#"data-last-id="""#));
    app.post_message("ann", "first").await;
    let html = app.get("/").await.text().await.unwrap();
    assert!(!html.contains("No messages yet"));
    app.shutdown().await;
}

#[tokio::test]
async fn assets_are_served_from_the_binary() {
    let app = spawn_app(&[]).await;
    let js = app.get("/static/app.js").await;
    assert_eq!(js.status(), 200);
    assert!(js.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("javascript"));
    assert!(js.text().await.unwrap().contains("EventSource"));
    let css = app.get("/static/app.css").await;
    assert!(css.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("css"));
    assert_eq!(app.get("/static/nope.js").await.status(), 404);
    assert_eq!(app.get("/static/..%2Fsrc%2Flib.rs").await.status(), 404);
    app.shutdown().await;
}

#[tokio::test]
async fn the_form_works_without_javascript() {
    let app = spawn_app(&[]).await;
    let form = |body: String| {
        app.client
            .post(app.url("/messages"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let response = form("name=Zoe&text=line+one%0D%0Aline+two&id=form-key-1".into())
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/");
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("simplechat_name=Zoe"), "{cookie}");

    // A double submit of the same rendered form stores the message once.
    assert_eq!(
        form("name=Zoe&text=line+one%0D%0Aline+two&id=form-key-1".into())
            .await
            .unwrap()
            .status(),
        303
    );
    let list = app.get_json("/api/messages").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(
        list[0]["text"], "line one\nline two",
        "CRLF from the browser stored as LF"
    );

    // The remembered name is filled in on the next visit.
    let page = app
        .client
        .get(app.url("/"))
        .header("cookie", "simplechat_name=Zoe")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(r#"value="Zoe""#));

    // Invalid input: the page again, with the error and what was typed.
    let bad = form("name=&text=keep+this+draft".into()).await.unwrap();
    assert_eq!(bad.status(), 400);
    let html = bad.text().await.unwrap();
    assert!(html.contains("name must not be empty"));
    assert!(html.contains("keep this draft"));
    assert_eq!(app.message_count().await, 1);
    app.shutdown().await;
}
