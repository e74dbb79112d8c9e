//! The chat page (`GET /`) and the form post that works without JavaScript.

use std::sync::Arc;

use rocket::form::FromForm;
use rocket::http::{CookieJar, Status};
use rocket::response::Redirect;
use rocket::{get, post, State};
use rocket_dyn_templates::{context, Metadata, Template};

use super::body::FormBody;
use super::cookies::{name_cookie, Https};
use super::error::ApiError;
use crate::cache::{CachedMessage, Memo};
use crate::chat::{Chat, DEFAULT_LIMIT};
use crate::message::{new_id, Message, NewMessage};
use crate::store::Cursor;

/// The cookie a no-JavaScript form post uses to remember the sender's name.
const NAME_COOKIE: &str = "simplechat_name";

#[derive(Debug, FromForm)]
pub struct PostForm {
    pub name: String,
    pub text: String,
    pub id: Option<String>,
}

struct Draft<'a> {
    name: &'a str,
    text: &'a str,
    error: Option<&'a str>,
    /// The idempotency key to keep: after a failed send the same form may
    /// have been stored (a timeout), so sending it again must not store it
    /// twice. `None`: a fresh key.
    form_id: Option<&'a str>,
}

/// The rendered message list, rebuilt only when the cache changes: the
/// page is mostly this list, and rendering it is most of a page view's work.
#[derive(Default)]
pub struct RenderedHistory(Memo<History>);

#[derive(Clone)]
struct History {
    html: Arc<str>,
    last_id: Option<String>,
    count: usize,
}

fn render_history(
    metadata: &Metadata<'_>,
    cached: &[Arc<CachedMessage>],
) -> Result<History, String> {
    let messages: Vec<&Message> = cached.iter().map(|c| &*c.message).collect();
    let (_, html) = metadata
        .render("messages", context! { messages: &messages })
        .ok_or("the messages template failed to render")?;
    Ok(History {
        html: html.into(),
        last_id: messages.last().map(|m| m.id.clone()),
        count: messages.len(),
    })
}

async fn history(
    chat: &Chat,
    rendered: &RenderedHistory,
    metadata: &Metadata<'_>,
) -> Result<History, String> {
    if let Some(h) = rendered.0.get(chat.cache_version()) {
        return Ok(h);
    }
    match chat.latest_cached(DEFAULT_LIMIT) {
        Some((version, cached)) => {
            let h = render_history(metadata, &cached)?;
            rendered.0.put(version, h.clone());
            Ok(h)
        }
        // Not from memory, so not kept: the cache's version does not
        // follow the store.
        None => {
            let messages = chat
                .list(Cursor::Latest, DEFAULT_LIMIT)
                .await
                .map_err(|e| e.to_string())?;
            render_history(metadata, &messages)
        }
    }
}

async fn render(
    chat: &Chat,
    rendered: &RenderedHistory,
    metadata: &Metadata<'_>,
    draft: Draft<'_>,
) -> Template {
    // Shown even when the store is down: the page then says why it is empty.
    let (history, store_error) = match history(chat, rendered, metadata).await {
        Ok(h) => (Some(h), None),
        Err(e) => (None, Some(e)),
    };
    Template::render(
        "index",
        context! {
            messages_html: history.as_ref().map_or("", |h| &*h.html),
            empty: history.as_ref().is_none_or(|h| h.count == 0),
            last_id: history.as_ref().and_then(|h| h.last_id.as_deref()),
            name: draft.name,
            text: draft.text,
            error: draft.error.map(str::to_owned).or(store_error),
            // One idempotency key per rendered form: a double submit stores
            // the message once.
            form_id: draft.form_id.map_or_else(new_id, str::to_owned),
        },
    )
}

#[get("/")]
pub async fn index(
    chat: &State<Chat>,
    rendered: &State<RenderedHistory>,
    metadata: Metadata<'_>,
    cookies: &CookieJar<'_>,
) -> Template {
    let name = cookies
        .get(NAME_COOKIE)
        .map(|c| c.value().to_owned())
        .unwrap_or_default();
    render(
        chat,
        rendered,
        &metadata,
        Draft {
            name: &name,
            text: "",
            error: None,
            form_id: None,
        },
    )
    .await
}

#[post("/messages", data = "<form>")]
pub async fn post_form(
    chat: &State<Chat>,
    rendered: &State<RenderedHistory>,
    metadata: Metadata<'_>,
    cookies: &CookieJar<'_>,
    https: Https,
    form: Result<FormBody<PostForm>, ApiError>,
) -> Result<Redirect, (Status, Template)> {
    let form = match form {
        Ok(FormBody(form)) => form,
        Err(e) => {
            let draft = Draft {
                name: "",
                text: "",
                error: Some(&e.error),
                form_id: None,
            };
            return Err((e.status, render(chat, rendered, &metadata, draft).await));
        }
    };
    let outcome = match NewMessage::validate(&form.name, &form.text, form.id.as_deref()) {
        Ok(new) => chat.post(new).await.map_err(ApiError::from),
        Err(invalid) => Err(ApiError::from(invalid)),
    };
    match outcome {
        Ok(inserted) => {
            let name = inserted.message().name.clone();
            cookies.add(name_cookie(NAME_COOKIE, name, https));
            Ok(Redirect::to("/"))
        }
        Err(e) => {
            // A conflict means the key is taken by another message.
            let keep_id = e.status != Status::Conflict && e.field != Some("id");
            let draft = Draft {
                name: &form.name,
                text: &form.text,
                error: Some(&e.error),
                form_id: form.id.as_deref().filter(|_| keep_id),
            };
            Err((e.status, render(chat, rendered, &metadata, draft).await))
        }
    }
}
