//! The chat page (`GET /`) and the form post that works without JavaScript.

use std::sync::Arc;

use rocket::form::FromForm;
use rocket::http::{Cookie, CookieJar, SameSite, Status};
use rocket::response::Redirect;
use rocket::{get, post, State};
use rocket_dyn_templates::{context, Template};

use super::body::Form;
use super::error::ApiError;
use crate::chat::{Chat, DEFAULT_LIMIT};
use crate::live::LiveEvent;
use crate::message::{new_id, Message, NewMessage};
use crate::store::Page;

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
}

async fn render(chat: &Chat, draft: Draft<'_>) -> Template {
    // Shown even when the store is down: the page then says why it is empty.
    let (events, store_error) = match chat.list(Page::Latest, DEFAULT_LIMIT).await {
        Ok(events) => (events, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let messages: Vec<&Message> = events
        .iter()
        .map(|e: &Arc<LiveEvent>| &*e.message)
        .collect();
    Template::render(
        "index",
        context! {
            messages: &messages,
            last_id: messages.last().map(|m| m.id.as_str()),
            name: draft.name,
            text: draft.text,
            error: draft.error.map(str::to_owned).or(store_error),
            // A fresh idempotency key per rendered form: a double submit
            // stores the message once.
            form_id: new_id(),
        },
    )
}

#[get("/")]
pub async fn index(chat: &State<Chat>, cookies: &CookieJar<'_>) -> Template {
    let name = cookies
        .get(NAME_COOKIE)
        .map(|c| c.value().to_owned())
        .unwrap_or_default();
    render(
        chat,
        Draft {
            name: &name,
            text: "",
            error: None,
        },
    )
    .await
}

#[post("/messages", data = "<form>")]
pub async fn post_form(
    chat: &State<Chat>,
    cookies: &CookieJar<'_>,
    form: Result<Form<PostForm>, ApiError>,
) -> Result<Redirect, (Status, Template)> {
    let form = match form {
        Ok(Form(form)) => form,
        Err(e) => {
            let draft = Draft {
                name: "",
                text: "",
                error: Some(&e.error),
            };
            return Err((e.status, render(chat, draft).await));
        }
    };
    let outcome = match NewMessage::validate(&form.name, &form.text, form.id.as_deref()) {
        Ok(new) => chat.post(new).await.map_err(ApiError::from),
        Err(invalid) => Err(ApiError::from(invalid)),
    };
    match outcome {
        Ok(inserted) => {
            let name = inserted.message().name.clone();
            cookies.add(
                Cookie::build((NAME_COOKIE, name))
                    .path("/")
                    .same_site(SameSite::Lax)
                    .http_only(true)
                    .permanent(),
            );
            Ok(Redirect::to("/"))
        }
        Err(e) => {
            let draft = Draft {
                name: &form.name,
                text: &form.text,
                error: Some(&e.error),
            };
            Err((e.status, render(chat, draft).await))
        }
    }
}
