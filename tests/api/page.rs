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
    assert!(html.contains(r#"<script src="/static/app.js?v="#));
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

/// After an upgrade a browser must not run the old script with the new
/// page: the page links each asset by a version of this build's assets,
/// which may be kept for good; a version this build does not have (a page
/// from an instance of another build, mid-upgrade) must not be kept.
#[tokio::test]
async fn the_page_links_its_assets_by_version_and_only_that_version_is_kept() {
    let app = spawn_app(&[]).await;
    let html = app.get("/").await.text().await.unwrap();
    let linked: Vec<&str> = html
        .split(['"', '\''])
        .filter(|s| s.starts_with("/static/"))
        .collect();
    assert_eq!(linked.len(), 4, "{linked:?}");
    let version = linked[0].split_once("?v=").expect("a version").1;
    assert_eq!(version.len(), 16);
    for url in &linked {
        assert_eq!(
            url.split_once("?v=").map(|(_, v)| v),
            Some(version),
            "{url}"
        );
        let response = app.get(url).await;
        assert_eq!(response.status(), 200, "{url}");
        assert_eq!(
            response.headers()["cache-control"],
            "public, max-age=31536000, immutable",
            "{url}"
        );
    }
    let other = app.get("/static/app.js?v=0123456789abcdef").await;
    assert_eq!(other.status(), 200);
    assert_eq!(other.headers()["cache-control"], "no-cache");
    let unversioned = app.get("/static/app.js").await;
    assert_eq!(
        unversioned.headers()["cache-control"],
        "public, max-age=3600"
    );
    assert_eq!(
        app.get("/favicon.ico").await.headers()["cache-control"],
        "public, max-age=3600"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn the_form_works_without_javascript() {
    let app = spawn_app(&[]).await;
    let form = |body: String| app.post_body("/messages", "application/x-www-form-urlencoded", body);
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

/// A field left out of the form is refused as an empty one would be, with
/// the rule's own message and the rest of the draft kept.
#[tokio::test]
async fn a_form_missing_a_field_is_refused_like_an_empty_one() {
    let app = spawn_app(&[]).await;
    let form =
        |body: &'static str| app.post_body("/messages", "application/x-www-form-urlencoded", body);
    let no_name = form("text=keep+this+draft").await.unwrap();
    assert_eq!(no_name.status(), 400);
    let html = no_name.text().await.unwrap();
    assert!(html.contains("name must not be empty"), "{html}");
    assert!(!html.contains("malformed form"));
    assert!(
        html.contains(">\nkeep this draft</textarea>"),
        "the draft is kept"
    );
    // An HTML parser drops one line break right after `<textarea>`
    // (WHATWG HTML, "in body" insertion mode, a start tag "textarea"): the
    // page writes one there, so a draft's own first line break is kept.
    let leading = form("text=%0A%0Afirst").await.unwrap();
    assert_eq!(leading.status(), 400);
    let html = leading.text().await.unwrap();
    assert!(html.contains(">\n\n\nfirst</textarea>"), "{html}");

    let no_text = form("name=Zoe").await.unwrap();
    assert_eq!(no_text.status(), 400);
    let html = no_text.text().await.unwrap();
    assert!(html.contains("text must not be empty"), "{html}");
    assert_eq!(form_name(&html), "Zoe", "the name is kept");

    let nothing = form("").await.unwrap();
    assert_eq!(nothing.status(), 400);
    assert!(nothing
        .text()
        .await
        .unwrap()
        .contains("name must not be empty"));
    assert_eq!(app.message_count().await, 0, "nothing stored");
    app.shutdown().await;
}

/// A request for the page refused before routing (a query field given
/// twice) is answered with the page and the reason, as the page answers
/// its own errors; the JSON API keeps answering in JSON.
#[tokio::test]
async fn a_refused_request_for_the_page_gets_the_page() {
    let app = spawn_app(&[]).await;
    let m = app.post_message("ann", "hello").await;
    let id = m["id"].as_str().unwrap();
    let is_html = |response: &reqwest::Response| {
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    };
    let page = app
        .client
        .get(app.url(&format!("/?before={id}&before={id}")))
        .header("cookie", "simplechat_name=Zoe")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 400);
    assert!(is_html(&page));
    // Its form carries a key of its own, as every view of the page does.
    assert_eq!(page.headers()["cache-control"], "no-store");
    let html = page.text().await.unwrap();
    assert!(html.contains("query field before is given more than once"));
    assert!(html.contains(">hello</p>"), "the latest messages");
    assert_eq!(form_name(&html), "Zoe", "the remembered name");
    assert_eq!(form_key(&html).len(), 32, "a form to send with");

    let post = app
        .post_body(
            "/messages?id=a&id=b",
            "application/x-www-form-urlencoded",
            "name=ann&text=twice",
        )
        .await
        .unwrap();
    assert_eq!(post.status(), 400);
    assert!(is_html(&post));
    assert_eq!(post.headers()["cache-control"], "no-store");
    assert!(post
        .text()
        .await
        .unwrap()
        .contains("query field id is given more than once"));
    assert_eq!(app.message_count().await, 1, "nothing stored");

    let api = app.get("/api/messages?limit=1&limit=1").await;
    assert_eq!(api.status(), 400);
    assert_eq!(api.headers()["content-type"], "application/json");
    // The path refused page requests are routed to is no page of its own.
    let hidden = app.get("/.refused/page").await;
    assert_eq!(hidden.status(), 404);
    assert_eq!(hidden.headers()["content-type"], "application/json");
    app.shutdown().await;
}

/// The ids of the messages a page shows, in order.
fn shown_ids(html: &str) -> Vec<String> {
    html.split(r#"data-id=""#)
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect()
}

/// Fault 7: the page showed the latest 100 and stopped. "Older messages" is
/// a plain link to `/?before=<id>`, so it works without JavaScript; each
/// page of history links to the one before it and back to the latest.
#[tokio::test]
async fn older_messages_are_pages_of_links_that_work_without_javascript() {
    let app = spawn_app(&[]).await;
    let ids = app
        .post_texts("ann", (1..=250).map(|i| format!("message {i}")))
        .await;
    let latest = app.get("/").await.text().await.unwrap();
    assert_eq!(shown_ids(&latest), ids[150..]);
    assert!(latest.contains(&format!(r#"<a id="older" href="/?before={}""#, ids[150])));
    assert!(!latest.contains(r#"id="latest""#));

    let page = app.get(&format!("/?before={}", ids[150])).await;
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert_eq!(shown_ids(&page), ids[50..150]);
    assert!(page.contains(&format!(r#"href="/?before={}""#, ids[50])));
    assert!(page.contains(r#"<a id="latest" href="/">Latest messages</a>"#));
    assert!(page.contains(&format!(r#"data-before="{}""#, ids[150])));
    assert!(page.contains(r#"<form id="send" method="post" action="/messages">"#));

    let first = app
        .get(&format!("/?before={}", ids[50]))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(shown_ids(&first), ids[..50]);
    assert!(
        !first.contains(r#"id="older""#),
        "nothing older than the first"
    );
    let none = app
        .get(&format!("/?before={}", ids[0]))
        .await
        .text()
        .await
        .unwrap();
    assert!(shown_ids(&none).is_empty());
    assert!(none.contains("No older messages."));

    // A bad or unknown id: the page, with the reason and the right status.
    let bad = app.get("/?before=not%20an%20id").await;
    assert_eq!(bad.status(), 400);
    assert!(bad
        .text()
        .await
        .unwrap()
        .contains("before: id may contain only"));
    // An unknown id showed an empty page of history saying "No older
    // messages", though there are: it now shows the latest messages with
    // the reason, as an invalid id does.
    let unknown = app.get("/?before=nosuchmessage").await;
    assert_eq!(unknown.status(), 404);
    let unknown = unknown.text().await.unwrap();
    assert!(unknown.contains("before: no message has id nosuchmessage"));
    assert!(!unknown.contains("No older messages."));
    assert_eq!(
        shown_ids(&unknown),
        shown_ids(&app.get("/").await.text().await.unwrap())
    );
    app.shutdown().await;
}

#[tokio::test]
async fn the_older_link_appears_only_when_there_is_more_history() {
    let app = spawn_app(&[]).await;
    for i in 1..=100 {
        app.post_message("ann", &format!("message {i}")).await;
    }
    let html = app.get("/").await.text().await.unwrap();
    assert_eq!(shown_ids(&html).len(), 100);
    assert!(!html.contains(r#"id="older""#), "exactly one page: no link");
    app.post_message("ann", "message 101").await;
    let html = app.get("/").await.text().await.unwrap();
    assert_eq!(shown_ids(&html).len(), 100);
    assert!(html.contains(r#"id="older""#));
    app.shutdown().await;
}

#[tokio::test]
async fn names_and_texts_are_isolated_and_the_form_is_compact() {
    let app = spawn_app(&[]).await;
    app.post_message("עמית", "שלום").await;
    let html = app.get("/").await.text().await.unwrap();
    assert!(html.contains(r#"<bdi class="name">עמית</bdi>"#), "{html}");
    assert!(html.contains(r#"<p class="text" dir="auto">שלום</p>"#));
    // One row to start with; it grows as the user types (CSS or script).
    assert!(html.contains(r#"<textarea id="text" name="text" required rows="1""#));
    // No maxlength: browsers count it in UTF-16 units, so it would cut
    // legal names and texts of characters outside the BMP (emoji).
    assert!(!html.contains("maxlength"));
    let favicon = app.get("/favicon.ico").await;
    assert_eq!(favicon.status(), 200);
    app.shutdown().await;
}

/// The idempotency key of the page's form.
fn form_key(html: &str) -> String {
    let (_, rest) = html
        .split_once(r#"<input type="hidden" name="id" value=""#)
        .expect("the form has a key");
    rest.split('"').next().unwrap().to_owned()
}

/// The name the page's form is filled in with.
fn form_name(html: &str) -> String {
    let (_, rest) = html
        .split_once(r#"dir="auto" value=""#)
        .expect("the form has a name field");
    rest.split('"').next().unwrap().to_owned()
}

/// The page as a browser that sent the form before gets it.
async fn page_with_cookie(app: &crate::support::app::TestApp, cookie: &str) -> String {
    let response = app
        .client
        .get(app.url("/"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

#[tokio::test]
async fn each_page_view_gets_its_own_form_key_and_the_remembered_name_escaped() {
    let app = spawn_app(&[]).await;
    app.post_message("ann", "hello").await;
    let first = app.get("/").await.text().await.unwrap();
    let second = app.get("/").await.text().await.unwrap();
    let (k1, k2) = (form_key(&first), form_key(&second));
    assert!(!k1.is_empty() && k1 != k2, "{k1} {k2}");
    assert_eq!(form_name(&first), "");

    // A name with markup in it, remembered from the form.
    let sent = app
        .client
        .post(app.url("/messages"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "name=%3Cb%3E%22Zoe%22+%26+%27co%27%3C%2Fb%3E&text=hi&id={k1}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 303);
    let set_cookie = sent.headers()["set-cookie"].to_str().unwrap();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let page = page_with_cookie(&app, &cookie).await;
    assert_eq!(
        form_name(&page),
        "&lt;b&gt;&quot;Zoe&quot; &amp; &#x27;co&#x27;&lt;&#x2f;b&gt;"
    );
    assert!(!page.contains("<b>"), "the name is never markup");
    let again = page_with_cookie(&app, &cookie).await;
    assert_ne!(form_key(&page), form_key(&again));
    assert_ne!(form_key(&page), k1, "a used key is not served again");
    app.shutdown().await;
}

/// Every cookie of the host comes in one `Cookie` header, other apps' too.
/// One of them with a byte beyond ASCII (UTF-8, as browsers send a cookie
/// set so, or Latin-1) made the server drop the whole header: the
/// remembered name was gone, and so were a refused post's draft and error.
#[tokio::test]
async fn another_apps_cookie_beyond_ascii_does_not_hide_ours() {
    let app = spawn_app(&[]).await;
    for other in [&b"theme=d\xc3\xa9faut"[..], &b"latin=caf\xe9"[..]] {
        let mut header = other.to_vec();
        header.extend_from_slice(b"; simplechat_name=bob");
        let response = app
            .client
            .get(app.url("/"))
            .header(
                "cookie",
                reqwest::header::HeaderValue::from_bytes(&header).unwrap(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let page = response.text().await.unwrap();
        assert_eq!(
            form_name(&page),
            "bob",
            "{}",
            String::from_utf8_lossy(other)
        );
    }
    app.shutdown().await;
}

/// A refused form post's page puts the draft back into the form as typed,
/// but for NUL, which HTML may not hold: written as U+FFFD, as a browser
/// shows it. Before, the NUL went into the page raw.
#[tokio::test]
async fn a_refused_drafts_nul_is_not_written_into_the_page() {
    let app = spawn_app(&[]).await;
    let refused = app
        .post_body(
            "/messages",
            "application/x-www-form-urlencoded",
            "name=a%00b&text=x%00y",
        )
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let page = refused.text().await.unwrap();
    assert!(!page.contains('\0'), "{page}");
    assert_eq!(form_name(&page), "a\u{FFFD}b");
    assert!(page.contains(">\nx\u{FFFD}y</textarea>"), "{page}");
    assert_eq!(app.message_count().await, 0);
    app.shutdown().await;
}

/// The name cookie is the client's to change: a value the form would
/// refuse as a name is not put back into it.
#[tokio::test]
async fn a_remembered_name_that_is_not_a_valid_name_is_ignored() {
    let app = spawn_app(&[]).await;
    app.post_message("ann", "hello").await;
    for cookie in [
        format!("simplechat_name={}", "z".repeat(7000)),
        "simplechat_name=a%00".to_owned(),
        "simplechat_name=a%0Ab".to_owned(),
        "simplechat_name=ann%E2%80%AE".to_owned(),
        "simplechat_name=%E2%80%8B".to_owned(),
        "simplechat_name=%20".to_owned(),
    ] {
        let page = page_with_cookie(&app, &cookie).await;
        assert_eq!(form_name(&page), "", "{cookie:.40}");
        assert!(
            !page.contains('\0') && !page.contains("zzzz"),
            "{cookie:.40}"
        );
        // The page refused before routing fills in the name the same way.
        let refused = app
            .client
            .get(app.url("/?x=1&x=2"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(form_name(&refused), "", "{cookie:.40}");
    }
    // A valid name is filled in as it would be stored (NFC, trimmed).
    let page = page_with_cookie(&app, "simplechat_name=%20Zoe%CC%88%20").await;
    assert_eq!(form_name(&page), "Zo\u{eb}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_message_that_looks_like_the_pages_stand_ins_is_shown_as_text() {
    let app = spawn_app(&[]).await;
    let tricky = [
        "&simplechat-name&",
        "&simplechat-form-id&",
        "&amp;simplechat-name&amp;",
        "0123456789abcdef0123456789abcdef&simplechat-name&0123456789abcdef0123456789abcdef",
        r#"" value="forged"><input name="id" value="x"#,
    ];
    for text in tricky {
        app.post_message("ann", text).await;
    }
    let page = page_with_cookie(&app, "simplechat_name=Zoe").await;
    for text in tricky {
        let escaped = text
            .replace('&', "&amp;")
            .replace('"', "&quot;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        assert!(
            page.contains(&format!(r#"<p class="text" dir="auto">{escaped}</p>"#)),
            "{text}: {page}"
        );
    }
    // The page is whole: every message once, one form with its name and key.
    assert_eq!(shown_ids(&page).len(), tricky.len());
    assert_eq!(page.matches(r#"<input type="hidden" name="id""#).count(), 1);
    assert_eq!(form_name(&page), "Zoe");
    assert_eq!(form_key(&page).len(), 32);
    assert!(page.trim_end().ends_with("</html>"));
    app.shutdown().await;
}

#[tokio::test]
async fn the_next_page_view_shows_a_new_message() {
    let app = spawn_app(&[]).await;
    app.post_message("ann", "first").await;
    let page = page_with_cookie(&app, "simplechat_name=Zoe").await;
    assert!(page.contains("first") && !page.contains("second"));
    let second = app.post_message("bob", "second").await;
    let page = page_with_cookie(&app, "simplechat_name=Zoe").await;
    assert!(page.contains("second"));
    assert!(page.contains(&format!(
        r#"data-last-id="{}""#,
        second["id"].as_str().unwrap()
    )));
    assert_eq!(shown_ids(&page).len(), 2);
    assert_eq!(form_name(&page), "Zoe");
    app.shutdown().await;
}

/// Without JavaScript a message's time was its raw RFC 3339 stamp,
/// `2026-12-06T05:11:55.584Z`, which a phone broke across lines at a
/// hyphen. It now reads `2026-12-06 05:11:55 UTC`; the `datetime`
/// attribute keeps the exact stamp, which the script shows in the reader's
/// own time zone.
#[tokio::test]
async fn without_javascript_a_time_reads_as_a_date_and_a_utc_time() {
    let app = spawn_app(&[]).await;
    let m = app.post_message("ann", "hello").await;
    let stamp = m["datetime"].as_str().unwrap();
    let (date, rest) = stamp.split_once('T').unwrap();
    let html = app.get("/").await.text().await.unwrap();
    let expected = format!(
        r#"<time datetime="{stamp}">{date} {} UTC</time>"#,
        &rest[..8]
    );
    assert!(html.contains(&expected), "{expected} in {html}");
    app.shutdown().await;
}

/// A form post as a browser sends it: browsers say where a request comes
/// from (`Origin`, `Sec-Fetch-Site`).
fn browser_form_post(app: &crate::support::app::TestApp, body: String) -> reqwest::RequestBuilder {
    app.client
        .post(app.url("/messages"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", &app.base_url)
        .header("sec-fetch-site", "same-origin")
        .body(body)
}

/// Without JavaScript, a refused form post left the browser on the answer
/// to the POST, so reloading the page asked to send the form again. A
/// browser's refused post is now redirected to `/` (Post/Redirect/Get):
/// the draft, its key and the error come along in a short-lived cookie,
/// and the next view of the page shows them once and clears it.
#[tokio::test]
async fn a_browsers_refused_form_post_is_redirected_and_shown_once() {
    let app = spawn_app(&[]).await;
    let long_name = "n".repeat(65);
    let refused = browser_form_post(
        &app,
        format!("name={long_name}&text=keep+%3Cthis%3E+draft&id=form-key-7"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(refused.status(), 303);
    assert_eq!(refused.headers()["location"], "/");
    let set_cookie = refused.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.starts_with("simplechat_draft="), "{set_cookie}");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set_cookie.contains(attribute), "{attribute}: {set_cookie}");
    }
    assert!(
        set_cookie.len() <= 4096,
        "a browser keeps it: {}",
        set_cookie.len()
    );
    let cookie = set_cookie.split(';').next().unwrap().to_owned();

    let page = app
        .client
        .get(app.url("/"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let cleared = page.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cleared.starts_with("simplechat_draft=;") && cleared.contains("Max-Age=0"),
        "the cookie is used once: {cleared}"
    );
    let html = page.text().await.unwrap();
    assert!(
        html.contains("name must be at most 64 characters (got 65)"),
        "{html}"
    );
    assert_eq!(form_name(&html), long_name, "the name kept");
    assert!(
        html.contains(">\nkeep &lt;this&gt; draft</textarea>"),
        "the text kept, escaped"
    );
    assert_eq!(form_key(&html), "form-key-7", "the same key");
    assert!(html.contains(r#"autofocus aria-invalid="true" aria-describedby="error""#));

    // The browser has dropped the cookie: the next view is a fresh page.
    let again = app.get("/").await.text().await.unwrap();
    assert!(!again.contains("name must be at most"));
    assert!(!again.contains("keep &lt;this&gt; draft"));
    assert_ne!(form_key(&again), "form-key-7");
    assert_eq!(app.message_count().await, 0, "nothing stored");

    // A draft too large for a cookie (2,001 two-byte letters): the page
    // with the error and the draft at once, at the error's status.
    let too_long = "é".repeat(2001);
    let encoded = "%C3%A9".repeat(2001);
    let refused = browser_form_post(&app, format!("name=ann&text={encoded}&id=form-key-8"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    assert!(refused.headers().get("set-cookie").is_none());
    let html = refused.text().await.unwrap();
    assert!(
        html.contains("text must be at most 2000 characters"),
        "{html}"
    );
    assert!(html.contains(&format!(">\n{too_long}</textarea>")));
    assert_eq!(form_key(&html), "form-key-8");

    // A client that does not say where it comes from (curl, a script) is
    // answered as before: the page at the error's status.
    let curl = app
        .post_body(
            "/messages",
            "application/x-www-form-urlencoded",
            format!("name={long_name}&text=hi"),
        )
        .await
        .unwrap();
    assert_eq!(curl.status(), 400);
    assert!(curl
        .text()
        .await
        .unwrap()
        .contains("name must be at most 64 characters"));
    app.shutdown().await;
}

/// The draft cookie is the client's to change. A forged one's error was
/// shown HTML-escaped, but with its bidirectional controls and invisible
/// characters as they were: U+202E made the error read backwards from
/// where it was put, and a zero-width space hid in it. They are now shown
/// as escapes (`\u{202e}`), as everywhere the server repeats client
/// input; markup stays text, and the draft's name and text go back into
/// the form as typed.
#[tokio::test]
async fn a_forged_drafts_error_cannot_reorder_or_hide_what_it_says() {
    use base64::Engine;

    let app = spawn_app(&[]).await;
    let forged = serde_json::json!({
        "n": "ann",
        "t": "my \u{202e}draft",
        "e": "Sending failed: \u{202e}<b>gnorw</b>\u{202c} \u{200b}zero\u{2066}\u{feff}",
        "f": "text",
    });
    let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged.to_string());
    let page = page_with_cookie(&app, &format!("simplechat_draft={value}")).await;
    let error = page
        .split_once(r#"<p id="error" class="error" role="alert" dir="auto">"#)
        .and_then(|(_, rest)| rest.split_once("</p>"))
        .map(|(error, _)| error)
        .unwrap_or_else(|| panic!("the error is shown: {page}"));
    assert_eq!(
        error,
        r"Sending failed: \u{202e}&lt;b&gt;gnorw&lt;&#x2f;b&gt;\u{202c} \u{200b}zero\u{2066}\u{feff}"
    );
    assert!(
        ['\u{202e}', '\u{202c}', '\u{200b}', '\u{2066}', '\u{feff}']
            .iter()
            .all(|c| !page.replace("my \u{202e}draft", "").contains(*c)),
        "no such character anywhere on the page but in the draft's own text"
    );
    assert_eq!(form_name(&page), "ann");
    assert!(
        page.contains(">\nmy \u{202e}draft</textarea>"),
        "the draft as typed"
    );

    // The server's own error, kept in the cookie, reads as written.
    let refused = browser_form_post(&app, "name=a%E2%80%AEb&text=hi".to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 303);
    let cookie = refused.headers()["set-cookie"].to_str().unwrap();
    let page = page_with_cookie(&app, cookie.split(';').next().unwrap()).await;
    assert!(
        page.contains("name must not contain bidirectional control characters (found U+202E)"),
        "{page}"
    );
    app.shutdown().await;
}

/// A history the store cannot read is not an empty one: the page shows why
/// (503, `Retry-After`) and never "No messages yet", which would tell the
/// reader there is nothing to read.
#[tokio::test]
async fn a_history_that_cannot_be_read_is_not_shown_as_empty() {
    // Nothing listens there: every store read fails.
    let nowhere = "mongodb://127.0.0.1:1/chat?serverSelectionTimeoutMS=200&connectTimeoutMS=200";
    let app = spawn_app(&[("mongodb_uri", serde_json::json!(nowhere))]).await;
    for path in ["/", "/?before=0123456789abcdef0123456789abcdef"] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 503, "{path}");
        assert!(response.headers().contains_key("retry-after"), "{path}");
        let page = response.text().await.unwrap();
        let error = page
            .split(r#"<p id="error""#)
            .nth(1)
            .and_then(|rest| rest.split("</p>").next())
            .unwrap_or_else(|| panic!("{path}: no error element: {page}"));
        assert!(
            !error.contains("hidden") && error.split('>').nth(1).is_some_and(|e| !e.is_empty()),
            "{path}: the reason is shown: {error}"
        );
        assert!(
            !page.contains("No messages yet") && !page.contains("No older messages"),
            "{path}: {page}"
        );
        assert!(!page.contains(r#"id="empty""#), "{path}");
    }
    app.shutdown().await;
}

/// The form's action, `/messages`, is an address a browser user may type,
/// or reload after a refused send: a browser's `GET` or `HEAD` of it (it
/// prefers HTML, as every address bar and reload asks) is sent to the page
/// with a 303, whatever its query, which nothing reads (a field given
/// twice too: the page, not a JSON error). Other clients, and other
/// methods, get the JSON 405 naming the methods the path has.
#[tokio::test]
async fn a_browser_asking_for_the_forms_address_is_sent_to_the_page() {
    const NAVIGATION: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let app = spawn_app(&[]).await;
    let request =
        |method: &str, path: &str| app.client.request(method.parse().unwrap(), app.url(path));
    for (method, path, headers) in [
        ("GET", "/messages", vec![("accept", NAVIGATION)]),
        ("HEAD", "/messages", vec![("accept", NAVIGATION)]),
        ("GET", "/messages?before=x", vec![("accept", "text/html")]),
        // A query nothing reads: a field given twice is no matter.
        ("GET", "/messages?x=1&x=2", vec![("accept", NAVIGATION)]),
        (
            "HEAD",
            "/messages?before=a&before=b",
            vec![("accept", NAVIGATION)],
        ),
        (
            "GET",
            "/messages?limit=1&limit=2",
            vec![("accept", "*/*"), ("sec-fetch-mode", "navigate")],
        ),
        ("GET", "/messages/", vec![("accept", NAVIGATION)]),
        (
            "GET",
            "/messages",
            vec![("accept", "*/*"), ("sec-fetch-mode", "navigate")],
        ),
        (
            "GET",
            "/messages",
            vec![("accept", "application/json;q=0.5, text/html")],
        ),
    ] {
        let mut to_send = request(method, path);
        for (name, value) in &headers {
            to_send = to_send.header(*name, *value);
        }
        let response = to_send.send().await.unwrap();
        assert_eq!(response.status(), 303, "{method} {path} {headers:?}");
        assert_eq!(response.headers()["location"], "/", "{method} {path}");
    }
    for (method, path, headers) in [
        ("GET", "/messages", vec![]),
        ("GET", "/messages", vec![("accept", "*/*")]),
        ("GET", "/messages", vec![("accept", "application/json")]),
        (
            "GET",
            "/messages",
            vec![("accept", "text/html;q=0.5, application/json")],
        ),
        ("GET", "/messages", vec![("sec-fetch-mode", "cors")]),
        (
            "PUT",
            "/messages",
            vec![("accept", NAVIGATION), ("sec-fetch-site", "same-origin")],
        ),
        ("DELETE", "/messages", vec![("accept", NAVIGATION)]),
    ] {
        let mut to_send = request(method, path);
        for (name, value) in &headers {
            to_send = to_send.header(*name, *value);
        }
        let response = to_send.send().await.unwrap();
        assert_eq!(response.status(), 405, "{method} {path} {headers:?}");
        assert_eq!(
            response.headers()["allow"],
            "OPTIONS, POST",
            "{method} {path}"
        );
        assert_eq!(response.headers()["content-type"], "application/json");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("not allowed here")),
            "{body}"
        );
    }
    // Another client's read with a field given twice gets the 400 every
    // path gives it, naming the field.
    let response = request("GET", "/messages?limit=1&limit=2")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["field"], "limit", "{body}");
    app.shutdown().await;
}
