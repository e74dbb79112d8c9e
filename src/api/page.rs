//! The chat page (`GET /`, `GET /?before=<id>` for older history) and the
//! form post that works without JavaScript.

use std::sync::Arc;

use rocket::form::FromForm;
use rocket::http::{CookieJar, Status};
use rocket::response::Redirect;
use rocket::{get, post, State};
use rocket_dyn_templates::{context, Metadata, Template};

use super::body::FormBody;
use super::conditional::{IfNoneMatch, Tagged};
use super::cookies::{name_cookie, Https};
use super::error::ApiError;
use crate::cache::{CachedMessage, Memo};
use crate::chat::{Chat, DEFAULT_LIMIT};
use crate::message::{new_id, validate_id, Message, NewMessage};
use crate::store::{Cursor, StoreError};
use rocket::Either;

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

/// Names this process in the page's entity tags: the cache's version
/// counts changes of this process's cache only, so a tag from another
/// instance must never match.
pub struct PageTag {
    instance: String,
}

impl Default for PageTag {
    fn default() -> Self {
        PageTag { instance: new_id() }
    }
}

impl PageTag {
    /// The latest page's tag for this cache version and sender name. Weak:
    /// each render carries a fresh form key, but a page with the same
    /// messages and name is equivalent. A post that stores anything changes
    /// the version, so a page whose form key was used is never reused.
    fn latest(&self, version: u64, name: &str) -> String {
        let name_tag = crate::cache::content_tag(name.as_bytes());
        format!(
            "W/\"{}-{version}-{}\"",
            self.instance,
            name_tag.trim_matches('"')
        )
    }
}

#[derive(Clone)]
struct History {
    html: Arc<str>,
    /// The oldest message shown, when older ones exist: where the
    /// "older messages" link continues (`/?before=<id>`).
    older_than: Option<String>,
    last_id: Option<String>,
    count: usize,
}

/// Renders one page of `fetched`, which holds up to `DEFAULT_LIMIT + 1`
/// messages: the one more says whether older messages exist.
fn render_history(
    metadata: &Metadata<'_>,
    fetched: &[Arc<CachedMessage>],
) -> Result<History, ApiError> {
    let shown = &fetched[fetched.len().saturating_sub(DEFAULT_LIMIT)..];
    let messages: Vec<&Message> = shown.iter().map(|c| &*c.message).collect();
    let (_, html) = metadata
        .render("messages", context! { messages: &messages })
        .ok_or_else(|| {
            ApiError::new(
                Status::InternalServerError,
                "the messages template failed to render",
            )
        })?;
    Ok(History {
        html: html.into(),
        older_than: (fetched.len() > shown.len())
            .then(|| messages.first().map(|m| m.id.clone()))
            .flatten(),
        last_id: messages.last().map(|m| m.id.clone()),
        count: messages.len(),
    })
}

async fn history(
    chat: &Chat,
    rendered: &RenderedHistory,
    metadata: &Metadata<'_>,
    shown: &Shown,
) -> Result<History, ApiError> {
    let cursor = match shown {
        Shown::Latest => {
            if let Some(h) = rendered.0.get(chat.cache_version()) {
                return Ok(h);
            }
            if let Some((version, cached)) = chat.latest_cached(DEFAULT_LIMIT + 1) {
                let h = render_history(metadata, &cached)?;
                rendered.0.put(version, h.clone());
                return Ok(h);
            }
            // Not from memory, so not kept: the cache's version does not
            // follow the store.
            Cursor::Latest
        }
        Shown::Before(id) => Cursor::Before(id.clone()),
    };
    let messages = chat
        .list(cursor, DEFAULT_LIMIT + 1)
        .await
        .map_err(|e| match e {
            StoreError::UnknownId(id) => ApiError {
                field: Some("before"),
                ..ApiError::not_found(format!("no message has id {id}"))
            },
            other => other.into(),
        })?;
    render_history(metadata, &messages)
}

/// Which part of the history a page shows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shown {
    /// The latest messages, followed live.
    Latest,
    /// The messages just older than this id (`/?before=<id>`): a page of
    /// history, not followed live, with a link back to the latest.
    Before(String),
}

/// The page, and the status a failed history read gives it (the page is
/// shown even then, saying why it is empty).
async fn render(
    chat: &Chat,
    rendered: &RenderedHistory,
    metadata: &Metadata<'_>,
    shown: &Shown,
    draft: Draft<'_>,
) -> (Option<Status>, Template) {
    let (history, history_error) = match history(chat, rendered, metadata, shown).await {
        Ok(h) => (Some(h), None),
        Err(e) => (None, Some(e)),
    };
    let status = history_error.as_ref().map(|e| e.status);
    let template = Template::render(
        "index",
        context! {
            messages_html: history.as_ref().map_or("", |h| &*h.html),
            empty: history.as_ref().is_none_or(|h| h.count == 0),
            last_id: history.as_ref().and_then(|h| h.last_id.as_deref()),
            older_than: history.as_ref().and_then(|h| h.older_than.as_deref()),
            before: match shown {
                Shown::Latest => None,
                Shown::Before(id) => Some(id.as_str()),
            },
            name: draft.name,
            text: draft.text,
            error: draft.error.map(str::to_owned).or(history_error.map(|e| e.error)),
            // One idempotency key per rendered form: a double submit stores
            // the message once.
            form_id: draft.form_id.map_or_else(new_id, str::to_owned),
        },
    );
    (status, template)
}

/// The chat page: the latest messages, or with `before=<id>` the page of
/// history just older than that message (how "older messages" works
/// without JavaScript). An invalid id is a 400 page, an unknown one a 404
/// page, each with the form and the reason.
#[get("/?<before>")]
pub async fn index(
    chat: &State<Chat>,
    rendered: &State<RenderedHistory>,
    page_tag: &State<PageTag>,
    metadata: Metadata<'_>,
    cookies: &CookieJar<'_>,
    if_none_match: IfNoneMatch,
    before: Option<&str>,
) -> Either<Tagged<Template>, (Status, Template)> {
    let name = cookies
        .get(NAME_COOKIE)
        .map(|c| c.value().to_owned())
        .unwrap_or_default();
    // The latest page from a complete cache is tagged, and not rendered at
    // all when the client already has it.
    if before.is_none() && chat.latest_cached(1).is_some() {
        let etag = page_tag.latest(chat.cache_version(), &name);
        if if_none_match.has(&etag) {
            return Either::Left(Tagged::NotModified { etag });
        }
        let draft = Draft {
            name: &name,
            text: "",
            error: None,
            form_id: None,
        };
        let (status, page) = render(chat, rendered, &metadata, &Shown::Latest, draft).await;
        return match status {
            None => Either::Left(Tagged::Fresh { etag, body: page }),
            Some(status) => Either::Right((status, page)),
        };
    }
    let draft = Draft {
        name: &name,
        text: "",
        error: None,
        form_id: None,
    };
    let shown = match before {
        None => Shown::Latest,
        Some(id) => match validate_id(id) {
            Ok(()) => Shown::Before(id.to_owned()),
            Err(e) => {
                let error = format!("before: {}", e.message);
                let draft = Draft {
                    error: Some(&error),
                    ..draft
                };
                let (_, page) = render(chat, rendered, &metadata, &Shown::Latest, draft).await;
                return Either::Right((Status::BadRequest, page));
            }
        },
    };
    let (status, page) = render(chat, rendered, &metadata, &shown, draft).await;
    Either::Right((status.unwrap_or(Status::Ok), page))
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
            let (_, page) = render(chat, rendered, &metadata, &Shown::Latest, draft).await;
            return Err((e.status, page));
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
            let (_, page) = render(chat, rendered, &metadata, &Shown::Latest, draft).await;
            Err((e.status, page))
        }
    }
}
