//! The chat page (`GET /`, `GET /?before=<id>` for older history) and the
//! form post that works without JavaScript.

use std::borrow::Cow;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rocket::form::FromForm;
use rocket::http::{ContentType, Cookie, CookieJar, Method, Status};
use rocket::outcome::Outcome;
use rocket::request::FromRequest;
use rocket::response::{self, Body, Redirect, Responder, Response};
use rocket::serde::Serialize;
use rocket::{get, post, Request, State};
use rocket_dyn_templates::minijinja::{self, AutoEscape, Environment, HtmlEscape};
use rocket_dyn_templates::{context, Metadata, Template};

use super::body::FormBody;
use super::checks::from_a_browser;
use super::conditional::{IfNoneMatch, Tagged};
use super::cookies::{draft_cookie, name_cookie, Https, MAX_COOKIE_BYTES};
use super::error::{error_for, refusal, ApiError};
use crate::cache::{CachedMessage, Memo};
use crate::chat::{Chat, DEFAULT_LIMIT};
use crate::message::{new_id, validate_id, validate_name, Message, NewMessage};
use crate::store::{Cursor, StoreError};
use crate::text::escape_invisible;
use rocket::Either;

/// The cookie a no-JavaScript form post uses to remember the sender's name.
const NAME_COOKIE: &str = "simplechat_name";

/// The cookie that carries a browser's refused form post (the draft, its
/// key and the error) across the redirect to `/`; the next page view shows
/// it and clears it.
const DRAFT_COOKIE: &str = "simplechat_draft";

/// A refused form post's draft and error, as [`DRAFT_COOKIE`] keeps them:
/// JSON in unpadded base64url (every byte of it allowed in a cookie, a
/// third larger than the JSON; percent-encoding would take three bytes
/// for each byte of a non-ASCII letter).
///
/// Like the name cookie it is the client's to change, and what it holds
/// is only ever shown, escaped, to the client that sent it; a key or a
/// field that is not one the form could have is dropped, and the error's
/// invisible and reordering characters are shown as escapes.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct KeptDraft {
    #[serde(rename = "n")]
    name: String,
    #[serde(rename = "t")]
    text: String,
    #[serde(rename = "i", default)]
    form_id: Option<String>,
    #[serde(rename = "e")]
    error: String,
    #[serde(rename = "f", default)]
    field: Option<String>,
}

impl KeptDraft {
    /// The cookie that keeps this draft, or `None` when it would be larger
    /// than browsers keep (a long text in a script of several bytes a
    /// letter: a text may have 2,000 letters of up to four bytes).
    fn cookie(&self, https: Https) -> Option<Cookie<'static>> {
        let json = serde_json::to_vec(self).ok()?;
        let cookie = draft_cookie(DRAFT_COOKIE, URL_SAFE_NO_PAD.encode(json), https);
        (cookie.to_string().len() <= MAX_COOKIE_BYTES).then_some(cookie)
    }

    /// The draft the cookie keeps, when it is one. Its error is shown as
    /// the page's own words, so a character that hides or reorders text is
    /// shown as an escape ([`escape_invisible`]): the server writes none,
    /// and a forged one (U+202E) would make the error read otherwise than
    /// it is written. The name and text stay as typed: they go back into
    /// the form's fields, each its own isolated box, to be sent again.
    fn from_cookie(value: &str) -> Option<KeptDraft> {
        let json = URL_SAFE_NO_PAD.decode(value.trim()).ok()?;
        let mut kept: KeptDraft = serde_json::from_slice(&json).ok()?;
        if let Cow::Owned(shown) = escape_invisible(&kept.error) {
            kept.error = shown;
        }
        Some(kept)
    }

    /// This draft as the page shows it.
    fn draft(&self) -> Draft<'_> {
        Draft {
            name: &self.name,
            text: &self.text,
            error: Some(&self.error),
            field: match self.field.as_deref() {
                Some("name") => Some("name"),
                Some("text") => Some("text"),
                _ => None,
            },
            form_id: self.form_id.as_deref().filter(|id| validate_id(id).is_ok()),
        }
    }
}

/// The draft a refused form post left for this page view, if any; the
/// cookie is cleared either way, so it is shown once.
fn take_kept_draft(cookies: &CookieJar<'_>) -> Option<KeptDraft> {
    let value = cookies.get(DRAFT_COOKIE)?.value().to_owned();
    cookies.remove(Cookie::build(DRAFT_COOKIE).path("/"));
    KeptDraft::from_cookie(&value)
}

/// Whether the request comes from a browser ([`from_a_browser`]); a
/// request guard.
pub struct FromBrowser(bool);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for FromBrowser {
    type Error = std::convert::Infallible;

    async fn from_request(req: &'r Request<'_>) -> rocket::request::Outcome<Self, Self::Error> {
        Outcome::Success(FromBrowser(from_a_browser(req)))
    }
}

/// A browser's refused form post: `kept` in its cookie and a 303 to `/`
/// (Post/Redirect/Get), so that reloading the page it lands on does not
/// send the form again. `None`, and the page is answered at once as
/// before, for a client that is no browser (it reads the status), or a
/// draft too large for a cookie.
fn redirect_with(
    kept: &KeptDraft,
    browser: &FromBrowser,
    cookies: &CookieJar<'_>,
    https: Https,
) -> Option<Redirect> {
    if !browser.0 {
        return None;
    }
    cookies.add(kept.cookie(https)?);
    Some(Redirect::to("/"))
}

/// The name the form is filled in with: the one the last form post
/// remembered, or none. The cookie is the client's to change, so a value
/// that is not a valid name (a NUL, 7,000 characters) is ignored rather
/// than put back into the form.
fn remembered_name(cookies: &CookieJar<'_>) -> String {
    cookies
        .get(NAME_COOKIE)
        .and_then(|c| validate_name(c.value()).ok())
        .unwrap_or_default()
}

/// Whether `req` is for one of the page's routes (`GET /`, and `HEAD`,
/// which Rocket answers with it; `POST /messages`), whose errors are
/// answered with the page.
pub fn is_page_request(req: &Request<'_>) -> bool {
    let mut segments = req.uri().path().segments();
    match req.method() {
        Method::Get | Method::Head => segments.next().is_none(),
        Method::Post => segments.next() == Some("messages") && segments.next().is_none(),
        _ => false,
    }
}

/// The answer to a browser's `GET` or `HEAD` of the form's address
/// (`/messages`, which the address bar shows after a form post, and which a
/// user may reload or type): 303 See Other to the page, instead of the 405
/// the path's other methods and other clients get. `None` for any other
/// request. Asked by the catcher before it answers 405
/// ([`super::error::default_catcher`]), so the path keeps `POST` as its
/// one method in `Allow`.
pub fn form_address_redirect(req: &Request<'_>) -> Option<Redirect> {
    let mut segments = req.uri().path().segments();
    let form_address = segments.next() == Some("messages") && segments.next().is_none();
    let read = matches!(req.method(), Method::Get | Method::Head);
    (read && form_address && is_navigation(req)).then(|| Redirect::to("/"))
}

/// Whether `req` is a browser's navigation, whose answer it shows as a page:
/// it says `Sec-Fetch-Mode: navigate`, or its `Accept` ranks `text/html`
/// above `application/json` (every browser's address bar and reload send
/// `text/html,...,*/*;q=0.8`; curl's `*/*`, a script's `application/json`
/// or no `Accept` at all rank them alike or the other way).
pub fn is_navigation(req: &Request<'_>) -> bool {
    let navigate = req
        .headers()
        .get_one("Sec-Fetch-Mode")
        .is_some_and(|mode| mode.trim().eq_ignore_ascii_case("navigate"));
    navigate
        || req.accept().is_some_and(|accept| {
            quality(accept, "text", "html") > quality(accept, "application", "json")
        })
}

/// The weight `accept` gives `top/sub`: that of the most specific range
/// naming it (`top/sub`, then `top/*`, then `*/*`; the highest of equally
/// specific ones), 1 when it has no `q`; 0 when no range names it
/// (RFC 9110 §12.5.1).
fn quality(accept: &rocket::http::Accept, top: &str, sub: &str) -> f32 {
    let mut best: Option<(u8, f32)> = None;
    for range in accept.iter() {
        let media = range.media_type();
        let specificity = match (media.top().as_str(), media.sub().as_str()) {
            (t, s) if t.eq_ignore_ascii_case(top) && s.eq_ignore_ascii_case(sub) => 2,
            (t, "*") if t.eq_ignore_ascii_case(top) => 1,
            ("*", "*") => 0,
            _ => continue,
        };
        let weight = range.weight_or(1.0);
        best = match best {
            Some((s, w)) if s > specificity || (s == specificity && w >= weight) => Some((s, w)),
            _ => Some((specificity, weight)),
        };
    }
    best.map_or(0.0, |(_, weight)| weight)
}

/// The page's form (`application/x-www-form-urlencoded`), the no-JavaScript
/// way to post: the same rules as `POST /api/messages`; a field given twice
/// or not valid UTF-8 is a 400 naming it. A missing name or text is taken
/// as empty, as in a JSON post, so validation refuses it with its own
/// message and the page keeps the rest of the draft.
#[derive(Debug, FromForm)]
pub struct PostForm {
    /// The sender's name, at most 64 characters after trimming and NFC.
    #[field(default = "")]
    pub name: String,
    /// The message, at most 2,000 characters after trimming.
    #[field(default = "")]
    pub text: String,
    /// The idempotency key rendered into the form, so that a double submit
    /// stores one message.
    pub id: Option<String>,
}

#[derive(Clone, Copy)]
struct Draft<'a> {
    name: &'a str,
    text: &'a str,
    error: Option<&'a str>,
    /// The form field `error` is about (`name` or `text`): it gets the
    /// focus, marked invalid and described by the error.
    field: Option<&'a str>,
    /// The idempotency key to keep: after a failed send the same form may
    /// have been stored (a timeout), so sending it again must not store it
    /// twice. `None`: a fresh key.
    form_id: Option<&'a str>,
}

impl<'a> Draft<'a> {
    /// An empty form for a sender remembered as `name`, with a fresh key.
    fn blank(name: &'a str) -> Draft<'a> {
        Draft {
            name,
            text: "",
            error: None,
            field: None,
            form_id: None,
        }
    }
}

/// The templates the page renders (`<name>.html.j2` in `template_dir`).
pub const TEMPLATES: [&str; 2] = ["index", "messages"];

/// Sets up the template engine as the page needs it.
pub fn configure(engine: &mut Environment<'static>) {
    // Every template is HTML: escape everything a user typed, whatever
    // name a file has.
    engine.set_auto_escape_callback(|_| AutoEscape::Html);
    // A template's last newline is part of the page, as written.
    engine.set_keep_trailing_newline(true);
}

/// Parses every template the page renders, so a missing or broken one
/// stops the start instead of failing the first page view (MiniJinja reads
/// a template when it is first asked for).
///
/// Errors: a template is missing or does not parse: its file name, the
/// line, and MiniJinja's message (MiniJinja names a template as the app
/// asks for it, without the file's `.html.j2`, which would not tell a user
/// which file to open).
pub fn check(engine: &Environment<'static>) -> Result<(), String> {
    for name in TEMPLATES {
        engine
            .get_template(name)
            .map_err(|e| template_error(&format!("{name}.html.j2"), &e))?;
    }
    Ok(())
}

/// Parses the page's templates in `dir` as the server's engine will
/// ([`configure`]), before anything starts.
///
/// Errors: a template that cannot be read or does not parse, as
/// [`check`] names it.
pub fn check_dir(dir: &std::path::Path) -> Result<(), String> {
    let mut engine = Environment::new();
    configure(&mut engine);
    for name in TEMPLATES {
        let file = dir.join(format!("{name}.html.j2"));
        let source = std::fs::read_to_string(&file)
            .map_err(|e| format!("template {}: {e}", file.display()))?;
        engine
            .add_template_owned(name, source)
            .map_err(|e| template_error(&file.display().to_string(), &e))?;
    }
    Ok(())
}

/// `error` in the template `file`, as one line naming it.
fn template_error(file: &str, error: &minijinja::Error) -> String {
    let place = match error.line() {
        Some(line) => format!("{file}, line {line}"),
        None => file.to_owned(),
    };
    match error.detail() {
        Some(detail) => format!("template {place}: {}: {detail}", error.kind()),
        None => format!("template {place}: {}", error.kind()),
    }
}

/// `text` escaped as the template engine escapes a value in HTML, by the
/// engine's own escaper (`PreparedPage` splices values into a rendered page,
/// so the bytes must be the engine's). Escaping only lengthens a text, so
/// the same length means nothing was escaped.
fn escape_html(text: &str) -> Cow<'_, str> {
    let escaped = HtmlEscape(text).to_string();
    if escaped.len() == text.len() {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(escaped)
    }
}

/// The rendered message list, rebuilt only when the cache changes: the
/// page is mostly this list, and rendering it is most of a page view's work.
#[derive(Default)]
pub struct RenderedHistory(Memo<History>);

/// Names this process in the page's entity tags: the cache's version
/// counts changes of this process's cache only, so a tag from another
/// instance must never match.
struct PageTag {
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

    /// The tag of a page of history (`/?before=<id>`) that shows `history`
    /// to a sender named `name`. Weak, as the latest page's; by content,
    /// not by the cache's version: a page of history changes only when one
    /// of its messages does (a lab document corrected by hand) or older
    /// ones come or go (its "older messages" link).
    fn history(&self, history: &History, name: &str) -> String {
        let older_than = history.older_than.as_deref().unwrap_or("");
        let shown = [
            history.html.as_bytes(),
            older_than.as_bytes(),
            name.as_bytes(),
        ]
        .join(&0);
        let tag = crate::cache::content_tag(&shown);
        format!("W/\"{}-h{}\"", self.instance, tag.trim_matches('"'))
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
            StoreError::UnknownId(id) => {
                let unknown = ApiError::unknown_id(&id);
                ApiError {
                    field: Some("before"),
                    error: format!("before: {}", unknown.error),
                    ..unknown
                }
            }
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

/// What the page template is given.
#[derive(Serialize)]
#[serde(crate = "rocket::serde")]
struct PageContext<'a> {
    messages_html: &'a str,
    empty: bool,
    last_id: Option<&'a str>,
    older_than: Option<&'a str>,
    before: Option<&'a str>,
    name: &'a str,
    text: &'a str,
    error: Option<&'a str>,
    error_field: Option<&'a str>,
    form_id: &'a str,
    /// The assets' version, in their URLs ([`crate::api::assets::version`]).
    asset_version: &'static str,
}

impl<'a> PageContext<'a> {
    /// The latest page's context, but for the sender's name and form key.
    fn latest(history: &'a History, name: &'a str, form_id: &'a str) -> Self {
        PageContext {
            messages_html: &history.html,
            empty: history.count == 0,
            last_id: history.last_id.as_deref(),
            older_than: history.older_than.as_deref(),
            before: None,
            name,
            text: "",
            error: None,
            error_field: None,
            form_id,
            asset_version: crate::api::assets::version(),
        }
    }
}

/// A rendered page and what a failed history read gives it (the page is
/// shown even then, saying why it is empty): its status and, for a 503 or
/// 507, the seconds of its `Retry-After`.
struct Rendered {
    status: Option<Status>,
    retry_after: Option<u64>,
    page: Template,
    /// The history shown, when it was read (the page's status is then
    /// `None`): what a page of history is tagged by.
    history: Option<History>,
}

impl Rendered {
    /// The page with the history's status, else `status`.
    fn answer(self, status: Status) -> PageAnswer {
        PageAnswer {
            status: self.status.unwrap_or(status),
            retry_after: self.retry_after,
            accept_encoding: None,
            page: self.page,
        }
    }

    /// The page answering a refusal of the request: its `status` and
    /// `retry_after`, whatever the history read said.
    fn refusal(self, status: Status, retry_after: Option<u64>) -> PageAnswer {
        PageAnswer {
            status,
            retry_after,
            accept_encoding: None,
            page: self.page,
        }
    }
}

/// The page answered with a status of its own, and `Retry-After` (whole
/// seconds) when the status is a 503 or 507 that says when to try again,
/// as every 503 and 507 of the API does.
pub struct PageAnswer {
    status: Status,
    retry_after: Option<u64>,
    /// `Accept-Encoding`, on a 415 refusing a form's content coding only
    /// ([`ApiError::accept_encoding`]).
    accept_encoding: Option<&'static str>,
    page: Template,
}

impl<'r> Responder<'r, 'static> for PageAnswer {
    fn respond_to(self, req: &'r Request<'_>) -> response::Result<'static> {
        let mut response = (self.status, self.page).respond_to(req)?;
        if let Some(seconds) = self.retry_after {
            response.set_raw_header("Retry-After", seconds.to_string());
        }
        if let Some(codings) = self.accept_encoding {
            response.set_raw_header("Accept-Encoding", codings);
        }
        Ok(response)
    }
}

/// `typed` with each NUL as U+FFFD.
fn without_nul(typed: &str) -> Cow<'_, str> {
    if typed.contains('\0') {
        Cow::Owned(typed.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(typed)
    }
}

async fn render(
    chat: &Chat,
    rendered: &RenderedHistory,
    metadata: &Metadata<'_>,
    shown: &Shown,
    draft: Draft<'_>,
) -> Rendered {
    let (history, history_error, shown) = match history(chat, rendered, metadata, shown).await {
        Ok(h) => (Some(h), None, shown),
        // `before` names no message: nothing is older than it, so the
        // latest messages are shown with the error, as for an invalid id.
        Err(e) if e.status == Status::NotFound && *shown != Shown::Latest => {
            let latest = history(chat, rendered, metadata, &Shown::Latest).await;
            (latest.ok(), Some(e), &Shown::Latest)
        }
        Err(e) => (None, Some(e), shown),
    };
    let status = history_error.as_ref().map(|e| e.status);
    let retry_after = history_error.as_ref().and_then(ApiError::retry_after_secs);
    let error = draft
        .error
        .map(str::to_owned)
        .or(history_error.map(|e| e.error));
    // One idempotency key per rendered form: a double submit stores the
    // message once.
    let form_id = draft.form_id.map_or_else(new_id, str::to_owned);
    // A refused draft goes back into the form as typed, but for NUL, which
    // HTML may not hold (a parse error, and a browser shows U+FFFD in its
    // place: WHATWG HTML, "unexpected-null-character"): written as that.
    let (name, text) = (without_nul(draft.name), without_nul(draft.text));
    let template = Template::render(
        "index",
        PageContext {
            messages_html: history.as_ref().map_or("", |h| &*h.html),
            // A history that could not be read is not an empty one: the
            // error says why nothing is shown.
            empty: history.as_ref().is_some_and(|h| h.count == 0),
            last_id: history.as_ref().and_then(|h| h.last_id.as_deref()),
            older_than: history.as_ref().and_then(|h| h.older_than.as_deref()),
            before: match shown {
                Shown::Latest => None,
                Shown::Before(id) => Some(id.as_str()),
            },
            name: &name,
            text: &text,
            error: error.as_deref(),
            error_field: draft.field,
            form_id: &form_id,
            asset_version: crate::api::assets::version(),
        },
    );
    Rendered {
        status,
        retry_after,
        page: template,
        history: history.filter(|_| status.is_none()),
    }
}

/// The latest page, rendered once per cache version and kept as bytes: a
/// page view copies it and splices in the two parts that differ per
/// request, the sender's remembered name and the form's fresh idempotency
/// key, escaped as the template escapes them.
///
/// The template is rendered with stand-ins for those two values and the
/// result split where their escaped forms appear. A stand-in holds `&`,
/// which escaping changes, so a place that did not escape it shows up; and
/// a random token of this process, which no client knows. Messages cannot
/// forge one either: the page is only prepared when the rendered messages
/// contain no stand-in (ids cannot hold `&`), so every occurrence comes
/// from the template's own use of the two values. Any other use of them
/// (unescaped, or through a filter) leaves the page rendered per request,
/// as before.
pub struct PreparedPage {
    /// The page kept for a cache version; `None`: this template cannot be
    /// prepared, so it is rendered per request.
    kept: Memo<Option<Arc<Prepared>>>,
    /// The latest page's entity tags.
    tag: PageTag,
    name_stand_in: String,
    form_id_stand_in: String,
}

impl Default for PreparedPage {
    fn default() -> Self {
        let token = new_id();
        PreparedPage {
            kept: Memo::default(),
            tag: PageTag::default(),
            name_stand_in: format!("{token}&simplechat-name&{token}"),
            form_id_stand_in: format!("{token}&simplechat-form-id&{token}"),
        }
    }
}

/// A value the latest page shows that differs per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Name,
    FormId,
}

/// The latest page for one cache version, split where the per-request
/// parts go.
#[derive(Debug)]
struct Prepared {
    content_type: ContentType,
    /// The page without the stand-ins.
    html: String,
    /// Where in `html` each part goes, in order.
    cuts: Vec<(usize, Part)>,
}

impl Prepared {
    /// The page for a sender named `name` (from the cookie, not escaped)
    /// with the form key `form_id`.
    fn page(&self, name: &str, form_id: &str) -> Vec<u8> {
        use std::io::Write;
        let longest = name.len().max(form_id.len());
        let mut page = Vec::with_capacity(self.html.len() + self.cuts.len() * longest);
        let mut at = 0;
        for &(cut, part) in &self.cuts {
            page.extend_from_slice(&self.html.as_bytes()[at..cut]);
            let value = match part {
                Part::Name => name,
                Part::FormId => form_id,
            };
            // Escaped straight into the page; writing to a Vec cannot fail.
            let _ = write!(page, "{}", HtmlEscape(value));
            at = cut;
        }
        page.extend_from_slice(&self.html.as_bytes()[at..]);
        page
    }
}

impl PreparedPage {
    /// The latest page of `history` split for splicing, if `render` (the
    /// page template) uses the name and form key only where it escapes
    /// them and the history holds no stand-in. Errors: the template failed
    /// to render.
    fn prepare(
        &self,
        history: &History,
        render: impl FnOnce(&PageContext<'_>) -> Option<(ContentType, String)>,
    ) -> Result<Option<Prepared>, ApiError> {
        let stand_ins = [
            (Part::Name, &self.name_stand_in),
            (Part::FormId, &self.form_id_stand_in),
        ];
        let forged = stand_ins.iter().any(|(_, raw)| {
            history.html.contains(raw.as_str()) || history.html.contains(&*escape_html(raw))
        });
        if forged {
            return Ok(None);
        }
        let context = PageContext::latest(history, &self.name_stand_in, &self.form_id_stand_in);
        let (content_type, rendered) = render(&context).ok_or_else(|| {
            ApiError::new(
                Status::InternalServerError,
                "the page template failed to render",
            )
        })?;
        let mut found: Vec<(usize, usize, Part)> = Vec::new();
        for (part, raw) in stand_ins {
            let escaped = escape_html(raw);
            found.extend(
                rendered
                    .match_indices(&*escaped)
                    .map(|(at, _)| (at, escaped.len(), part)),
            );
        }
        found.sort_unstable_by_key(|&(start, _, _)| start);
        let mut html = String::with_capacity(rendered.len());
        let mut cuts = Vec::with_capacity(found.len());
        let mut at = 0;
        for (start, len, part) in found {
            if start < at {
                // Overlapping stand-ins: not what the template renders.
                return Ok(None);
            }
            html.push_str(&rendered[at..start]);
            cuts.push((html.len(), part));
            at = start + len;
        }
        html.push_str(&rendered[at..]);
        // Whatever is left of a token is a use the splicing would miss.
        let token = &self.name_stand_in[..self.name_stand_in.find('&').unwrap_or(0)];
        if token.is_empty()
            || html
                .to_ascii_lowercase()
                .contains(&token.to_ascii_lowercase())
        {
            return Ok(None);
        }
        Ok(Some(Prepared {
            content_type,
            html,
            cuts,
        }))
    }

    /// The latest page prepared for the cache version it reports, or
    /// `None` when the cache cannot answer or the template cannot be
    /// prepared (the caller renders it as before).
    fn latest(
        &self,
        chat: &Chat,
        rendered: &RenderedHistory,
        metadata: &Metadata<'_>,
    ) -> Option<(u64, Arc<Prepared>)> {
        // Templates that reload from disk (debug builds) may change under
        // a kept page, so it is prepared afresh for each request there.
        let keep = !metadata.reloading();
        if keep {
            let version = chat.cache_version();
            if let Some(kept) = self.kept.get(version) {
                return kept.map(|page| (version, page));
            }
        }
        let (version, cached) = chat.latest_cached(DEFAULT_LIMIT + 1)?;
        let history = match rendered.0.get(version) {
            Some(h) => h,
            None => {
                let h = render_history(metadata, &cached).ok()?;
                rendered.0.put(version, h.clone());
                h
            }
        };
        let prepared = self
            .prepare(&history, |context| metadata.render("index", context))
            .ok()?
            .map(Arc::new);
        if keep {
            self.kept.put(version, prepared.clone());
        }
        prepared.map(|page| (version, page))
    }
}

/// A page spliced from a prepared one (`Prepared`).
pub struct PageBytes {
    content_type: ContentType,
    body: Vec<u8>,
}

impl<'r> Responder<'r, 'static> for PageBytes {
    fn respond_to(self, _: &'r Request<'_>) -> response::Result<'static> {
        // Handed on as one chunk: Rocket passes a body to its HTTP server
        // in chunks of at most 4 KiB by default, each a channel send and a
        // task wake-up, several per page.
        let size = self.body.len();
        Response::build()
            .header(self.content_type)
            .max_chunk_size(size.max(Body::DEFAULT_MAX_CHUNK))
            .sized_body(size, std::io::Cursor::new(self.body))
            .ok()
    }
}

/// The latest page as bytes, or rendered by the template.
type LatestPage = Either<PageBytes, Template>;

/// A page view, which browsers must not keep: each view's form carries an
/// idempotency key of its own, and a kept copy (reused after a `304` on
/// revalidation, in another tab) would carry a key another tab also holds,
/// so whichever sent second would be refused as a conflict. Its `ETag` is
/// still sent and `If-None-Match` still honoured, for clients that poll.
pub struct NotStored<R>(R);

impl<'r, 'o: 'r, R: Responder<'r, 'o>> Responder<'r, 'o> for NotStored<R> {
    fn respond_to(self, req: &'r Request<'_>) -> response::Result<'o> {
        Response::build_from(self.0.respond_to(req)?)
            .header(rocket::http::Header::new("Cache-Control", "no-store"))
            .ok()
    }
}

/// The chat page: the latest messages, or with `before=<id>` the page of
/// history just older than that message (how "older messages" works
/// without JavaScript). An invalid id is a 400 page, an unknown one a 404
/// page, each with the latest messages, the form and the reason.
#[get("/?<before>")]
pub async fn index(
    chat: &State<Chat>,
    rendered: &State<RenderedHistory>,
    prepared: &State<PreparedPage>,
    metadata: Metadata<'_>,
    cookies: &CookieJar<'_>,
    if_none_match: IfNoneMatch,
    before: Option<&str>,
) -> NotStored<Either<Tagged<LatestPage>, PageAnswer>> {
    // Every view, however it returns, is not stored.
    NotStored(
        async {
            // The page a refused form post redirected to: its draft and error,
            // once.
            if before.is_none() {
                if let Some(kept) = take_kept_draft(cookies) {
                    let page =
                        render(chat, rendered, &metadata, &Shown::Latest, kept.draft()).await;
                    return Either::Right(page.answer(Status::Ok));
                }
            }
            let name = remembered_name(cookies);
            let draft = Draft::blank(&name);
            // The latest page from a complete cache is tagged, and not rendered at
            // all when the client already has it.
            if before.is_none() && chat.latest_cached(1).is_some() {
                let etag = prepared.tag.latest(chat.cache_version(), &name);
                if if_none_match.has(&etag) {
                    return Either::Left(Tagged::NotModified { etag });
                }
                if let Some((version, page)) = prepared.latest(chat, rendered, &metadata) {
                    // One idempotency key per page view: a double submit stores the
                    // message once.
                    let body = page.page(&name, &new_id());
                    return Either::Left(Tagged::Fresh {
                        etag: prepared.tag.latest(version, &name),
                        body: Either::Left(PageBytes {
                            content_type: page.content_type.clone(),
                            body,
                        }),
                    });
                }
                let page = render(chat, rendered, &metadata, &Shown::Latest, draft).await;
                return match page.status {
                    None => Either::Left(Tagged::Fresh {
                        etag,
                        body: Either::Right(page.page),
                    }),
                    Some(_) => Either::Right(page.answer(Status::Ok)),
                };
            }
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
                        let page = render(chat, rendered, &metadata, &Shown::Latest, draft).await;
                        return Either::Right(page.refusal(Status::BadRequest, None));
                    }
                },
            };
            let page = render(chat, rendered, &metadata, &shown, draft).await;
            // A page of history is tagged by what it shows, and not
            // rendered at all when the client already has it.
            match (&shown, &page.history) {
                (Shown::Before(_), Some(history)) => {
                    let etag = prepared.tag.history(history, &name);
                    if if_none_match.has(&etag) {
                        return Either::Left(Tagged::NotModified { etag });
                    }
                    Either::Left(Tagged::Fresh {
                        etag,
                        body: Either::Right(page.page),
                    })
                }
                _ => Either::Right(page.answer(Status::Ok)),
            }
        }
        .await,
    )
}

/// `POST /messages`, the page's form: 303 to `/` with the name remembered in
/// a cookie (one year, `Secure` over HTTPS). A refused message from a
/// browser is also a 303 to `/`, with the draft, its key and the error in
/// a cookie the page shows once ([`KeptDraft`]); from another client, or
/// when the draft is too large for a cookie, it answers the page itself
/// with the rule that failed and the draft kept (400, 409, 413, 503 or
/// 507, as the JSON route would).
#[post("/messages", data = "<form>")]
pub async fn post_form(
    chat: &State<Chat>,
    rendered: &State<RenderedHistory>,
    metadata: Metadata<'_>,
    cookies: &CookieJar<'_>,
    https: Https,
    browser: FromBrowser,
    form: Result<FormBody<PostForm>, ApiError>,
) -> Result<Redirect, PageAnswer> {
    let accept_encoding = form.as_ref().err().and_then(|e| e.accept_encoding);
    // What a refusal keeps of the form: the draft, its key and the error.
    let (kept, status, retry_after) = match form {
        Err(e) => {
            let retry_after = e.retry_after_secs();
            (
                KeptDraft {
                    name: String::new(),
                    text: String::new(),
                    form_id: None,
                    error: e.error,
                    field: e.field.map(str::to_owned),
                },
                e.status,
                retry_after,
            )
        }
        Ok(FormBody(form)) => {
            let outcome = match NewMessage::validate(&form.name, &form.text, form.id.as_deref()) {
                Ok(new) => chat.post(new).await.map_err(ApiError::from),
                Err(invalid) => Err(ApiError::from(invalid)),
            };
            match outcome {
                Ok(inserted) => {
                    let name = inserted.message().name.clone();
                    cookies.add(name_cookie(NAME_COOKIE, name, https));
                    return Ok(Redirect::to("/"));
                }
                Err(e) => {
                    // A conflict means the key is taken by another message.
                    let keep_id = e.status != Status::Conflict && e.field != Some("id");
                    let retry_after = e.retry_after_secs();
                    (
                        KeptDraft {
                            name: form.name,
                            text: form.text,
                            form_id: form.id.filter(|_| keep_id),
                            error: e.error,
                            field: e.field.map(str::to_owned),
                        },
                        e.status,
                        retry_after,
                    )
                }
            }
        }
    };
    if let Some(redirect) = redirect_with(&kept, &browser, cookies, https) {
        return Ok(redirect);
    }
    let page = render(chat, rendered, &metadata, &Shown::Latest, kept.draft()).await;
    Err(PageAnswer {
        accept_encoding,
        ..page.refusal(status, retry_after)
    })
}

/// A request for the page that the request checks refused
/// ([`super::checks`]) gets the page, with the refusal as its error and
/// status, as the page answers its own errors. Registered at
/// [`super::checks::REFUSED_PAGE_PATH`]; a request for that path itself is
/// answered as any unknown path is.
#[rocket::catch(default)]
pub async fn refused(status: Status, req: &Request<'_>) -> Either<NotStored<PageAnswer>, ApiError> {
    let state = req.rocket();
    let (Some(error), Some(chat), Some(rendered)) = (
        refusal(req),
        state.state::<Chat>(),
        state.state::<RenderedHistory>(),
    ) else {
        return Either::Right(error_for(status, req));
    };
    let Outcome::Success(metadata) = req.guard::<Metadata<'_>>().await else {
        return Either::Right(error);
    };
    let name = remembered_name(req.cookies());
    let draft = Draft {
        error: Some(&error.error),
        ..Draft::blank(&name)
    };
    let page = render(chat, rendered, &metadata, &Shown::Latest, draft).await;
    // A view of the page like any other: its form has a key of its own.
    Either::Left(NotStored(
        page.refusal(error.status, error.retry_after_secs()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page templates as the app's engine sets them up: named without
    /// extensions, everything escaped.
    fn engine(index: &str) -> Environment<'static> {
        let mut engine = Environment::new();
        // First: a template is compiled, and its escaping chosen, when added.
        configure(&mut engine);
        engine
            .add_template_owned("index", index.to_owned())
            .unwrap();
        engine
            .add_template("messages", include_str!("../../templates/messages.html.j2"))
            .unwrap();
        engine
    }

    const INDEX: &str = include_str!("../../templates/index.html.j2");

    fn render(
        engine: &Environment<'_>,
        context: &PageContext<'_>,
    ) -> Option<(ContentType, String)> {
        let page = engine.get_template("index").ok()?.render(context).ok()?;
        Some((ContentType::HTML, page))
    }

    fn history(engine: &Environment<'_>, texts: &[&str]) -> History {
        let messages: Vec<_> = texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                serde_json::json!({
                    "id": format!("id{i}"),
                    "name": "ann",
                    "text": text,
                    "datetime": "2026-12-05T10:00:00.000Z",
                })
            })
            .collect();
        let html = engine
            .get_template("messages")
            .unwrap()
            .render(serde_json::json!({ "messages": messages }))
            .unwrap();
        History {
            html: html.into(),
            older_than: Some("id0".into()),
            last_id: (!texts.is_empty()).then(|| format!("id{}", texts.len() - 1)),
            count: texts.len(),
        }
    }

    #[test]
    fn a_draft_with_the_longest_ascii_text_fits_its_cookie() {
        let kept = KeptDraft {
            name: "n".repeat(64),
            text: "a text, with words & signs. ".repeat(72)[..2000].to_owned(),
            form_id: Some("k".repeat(64)),
            error: format!("a different message already has id {}", "k".repeat(64)),
            field: Some("text".to_owned()),
        };
        let cookie = kept.cookie(Https(true)).expect("it fits");
        assert!(cookie.to_string().len() <= MAX_COOKIE_BYTES);
        let back = KeptDraft::from_cookie(cookie.value()).expect("it reads back");
        assert_eq!(back.name, kept.name);
        assert_eq!(back.text, kept.text);
        assert_eq!(back.form_id, kept.form_id);

        // 2,000 letters of three bytes each do not fit: the page is
        // answered at once instead.
        let kept = KeptDraft {
            text: "中".repeat(2000),
            ..kept
        };
        assert!(kept.cookie(Https(true)).is_none());
        assert!(KeptDraft::from_cookie("not base64 json!").is_none());
    }

    #[test]
    fn values_are_escaped_as_the_engine_escapes_them() {
        let mut engine = Environment::new();
        configure(&mut engine);
        engine.add_template("value", "{{ value }}").unwrap();
        let text: String = (1u8..128)
            .map(char::from)
            .chain("é עמית 🙂\u{2028}\u{feff}".chars())
            .collect();
        let rendered = engine
            .get_template("value")
            .unwrap()
            .render(serde_json::json!({ "value": text }))
            .unwrap();
        assert_eq!(rendered, escape_html(&text));
        assert_eq!(escape_html("plain"), Cow::Borrowed("plain"));
    }

    #[test]
    fn a_spliced_page_is_the_page_the_template_renders() {
        let engine = engine(INDEX);
        let prepared = PreparedPage::default();
        let token = &prepared.name_stand_in[..32];
        let names = [
            String::new(),
            "Zoe".to_owned(),
            r#"<b>"x" & 'y' / z</b>"#.to_owned(),
            "עמית 🙂".to_owned(),
            prepared.name_stand_in.clone(),
            escape_html(&prepared.form_id_stand_in).into_owned(),
            token.to_owned(),
        ];
        for texts in [&[][..], &["hello", "<script>alert(1)</script> & more"][..]] {
            let history = history(&engine, texts);
            let page = prepared
                .prepare(&history, |c| render(&engine, c))
                .unwrap()
                .expect("the built-in template can be prepared");
            assert_eq!(page.cuts.len(), 2, "the name and the form key");
            for name in &names {
                let form_id = new_id();
                let expected = render(&engine, &PageContext::latest(&history, name, &form_id))
                    .unwrap()
                    .1;
                assert_eq!(
                    String::from_utf8(page.page(name, &form_id)).unwrap(),
                    expected,
                    "name {name:?}"
                );
            }
        }
    }

    #[test]
    fn messages_holding_a_stand_in_leave_the_page_rendered_per_request() {
        let engine = engine(INDEX);
        let prepared = PreparedPage::default();
        for text in [
            prepared.name_stand_in.clone(),
            prepared.form_id_stand_in.clone(),
            escape_html(&prepared.name_stand_in).into_owned(),
        ] {
            let history = history(&engine, &["before", &text, "after"]);
            assert!(prepared
                .prepare(&history, |c| render(&engine, c))
                .unwrap()
                .is_none());
        }
        let history = history(&engine, &["simplechat-name", "&simplechat-form-id&"]);
        assert!(prepared
            .prepare(&history, |c| render(&engine, c))
            .unwrap()
            .is_some());
    }

    #[test]
    fn a_template_that_does_not_escape_the_name_is_rendered_per_request() {
        let prepared = PreparedPage::default();
        for changed in [
            r#"value="{{ name | safe }}""#,
            r#"value="{{ name | upper }}""#,
            r#"value="{{ name | replace("&", "+") }}""#,
        ] {
            let engine = engine(&INDEX.replace(r#"value="{{ name }}""#, changed));
            let history = history(&engine, &["hello"]);
            assert!(
                prepared
                    .prepare(&history, |c| render(&engine, c))
                    .unwrap()
                    .is_none(),
                "{changed}"
            );
        }
        // The name shown twice, escaped both times: both are spliced.
        let engine =
            engine(&INDEX.replace("<title>simplechat</title>", "<title>{{ name }}</title>"));
        let history = history(&engine, &["hello"]);
        let page = prepared
            .prepare(&history, |c| render(&engine, c))
            .unwrap()
            .unwrap();
        assert_eq!(page.cuts.len(), 3);
        let html = String::from_utf8(page.page("<Zoe>", "key")).unwrap();
        assert!(html.contains("<title>&lt;Zoe&gt;</title>"), "{html}");
        assert!(html.contains(r#"value="&lt;Zoe&gt;""#));
    }

    /// The weights an `Accept` gives HTML and JSON, which decide whether a
    /// request for the form's address is a browser's navigation.
    #[test]
    fn accept_weights_come_from_the_most_specific_range() {
        let weights = |header: &str| {
            let accept: rocket::http::Accept = header.parse().unwrap();
            (
                quality(&accept, "text", "html"),
                quality(&accept, "application", "json"),
            )
        };
        let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert_eq!(weights(browser), (1.0, 0.8));
        assert_eq!(weights("*/*"), (1.0, 1.0));
        assert_eq!(weights("application/json"), (0.0, 1.0));
        assert_eq!(weights("TEXT/HTML;q=0.5, application/*"), (0.5, 1.0));
        assert_eq!(weights("text/*;q=0.3, text/html;q=0.1, */*"), (0.1, 1.0));
        assert_eq!(weights("text/html;q=0.2, text/html;q=0.7"), (0.7, 0.0));
    }
}
