//! `/api/messages`: the JSON API the lab's client spoke, plus ids and paging.

use bytes::Bytes;
use rocket::http::{ContentType, Header, Status};
use rocket::response::{self, Responder, Response};
use rocket::{get, post, Request, State};
use serde::Deserialize;

use super::body::JsonBody;
use super::budget;
use super::conditional::{etag_of, IfNoneMatch, Preconditions, Tagged};
use super::error::ApiError;
use crate::cache::json_array;
use crate::chat::{Chat, DEFAULT_LIMIT, MAX_LIMIT};
use crate::message::{
    validate_id, Invalid, Message, NewMessage, ID_MAX_CHARS, NAME_MAX_CHARS, TEXT_MAX_CHARS,
};
use crate::store::{Cursor, Inserted, StoreError};

/// A JSON body that is already serialized.
pub struct RawJson(pub Bytes);

impl<'r> Responder<'r, 'static> for RawJson {
    fn respond_to(self, _: &'r Request<'_>) -> response::Result<'static> {
        Response::build()
            .header(ContentType::JSON)
            .sized_body(self.0.len(), std::io::Cursor::new(self.0))
            .ok()
    }
}

/// `GET /api/messages?limit&before|after`: 200 with a JSON array of up to
/// `limit` messages (1 to [`MAX_LIMIT`], default [`DEFAULT_LIMIT`]), oldest
/// first: the latest, or those just before or after the message with that
/// id. Tagged with an `ETag`; 304 when `If-None-Match` names it. Errors: 400
/// (bad `limit` or id, both cursors), 404 (`before`/`after` names no
/// message), 503 (store unavailable).
#[get("/api/messages?<limit>&<before>&<after>")]
pub async fn list(
    chat: &State<Chat>,
    if_none_match: IfNoneMatch,
    limit: Option<&str>,
    before: Option<&str>,
    after: Option<&str>,
) -> Result<Tagged<RawJson>, ApiError> {
    let limit = parse_limit(limit)?;
    let cursor = match (before, after) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "before",
                "give at most one of before and after",
            ))
        }
        (Some(id), None) => Cursor::Before(cursor_id("before", id)?),
        (None, Some(id)) => Cursor::After(cursor_id("after", id)?),
        (None, None) => Cursor::Latest,
    };
    if cursor == Cursor::Latest {
        if let Some(listing) = chat.latest_json(limit) {
            let json = listing.json;
            return Ok(Tagged::new(&if_none_match, listing.tag.to_string(), || {
                RawJson(json)
            }));
        }
    }
    // Read before the answer's size is known: taken for the longest it
    // may be, settled once it is built.
    budget::reserve(limit * LONGEST_MESSAGE_JSON).await;
    let messages = chat.list(cursor, limit).await.map_err(|e| match e {
        StoreError::UnknownId(id) => ApiError {
            field: Some(if before.is_some() { "before" } else { "after" }),
            ..ApiError::unknown_id(&id)
        },
        other => other.into(),
    })?;
    let (json, etag) = listing_body(messages).await?;
    Ok(Tagged::new(&if_none_match, etag, || RawJson(json)))
}

/// The most bytes of JSON one message can be: every character of its
/// text and name four bytes in UTF-8 (control characters are refused, or
/// shown as U+FFFD in a lab message, so none is escaped longer), its id and
/// time, and the keys and quotes around them.
const LONGEST_MESSAGE_JSON: usize = 4 * (TEXT_MAX_CHARS + NAME_MAX_CHARS) + ID_MAX_CHARS + 128;

/// Large listings being built at once, as many as there are cores.
fn large_listings() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    })
}

/// The JSON array of `messages` and its `ETag`. The route took from the
/// budget of large responses in flight for the longest answer `limit` may
/// give ([`budget::reserve`]) before it read them; what this one does not
/// need is given back ([`budget::settle`]). A large one (past
/// [`budget::LARGE`]; 1,000 messages of 2,000 characters outside the BMP
/// are 8 MB) is copied together and hashed on a blocking thread, at most
/// one per core at once ([`large_listings`]); the rest wait their turn
/// without work or a copy of their own. Built where requests are served, a
/// burst of them (one client sent 200, each on a connection it closed at
/// once) kept every async worker busy for tens of seconds, every other
/// client's request (a post, `/healthz`) waited, and the copies grew the
/// process by gigabytes.
///
/// Errors: 503 if the blocking thread could not run it (the runtime is
/// shutting down).
async fn listing_body(
    messages: Vec<std::sync::Arc<crate::cache::CachedMessage>>,
) -> Result<(Bytes, String), ApiError> {
    let size: usize = messages.iter().map(|m| m.json.len()).sum();
    let build = move || {
        let json = json_array(&messages);
        let etag = etag_of(&json);
        (json, etag)
    };
    budget::settle(size);
    if size <= budget::LARGE {
        return Ok(build());
    }
    let unavailable = || {
        ApiError::unavailable(
            "the server is shutting down",
            std::time::Duration::from_secs(1),
        )
    };
    let _permit = large_listings()
        .acquire()
        .await
        .map_err(|_| unavailable())?;
    tokio::task::spawn_blocking(build)
        .await
        .map_err(|_| unavailable())
}

/// The `limit` query field: plain decimal digits (leading zeros allowed)
/// spelling 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when it is left out.
/// Only digits: Rust's integer parsing also takes a leading `+` (`%2B5`
/// would be 5), which the OpenAPI document's integer never is; a sign,
/// whitespace or any other character gets the 400 a word gets.
fn parse_limit(limit: Option<&str>) -> Result<usize, ApiError> {
    let Some(raw) = limit else {
        return Ok(DEFAULT_LIMIT);
    };
    match decimal_digits(raw) {
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(
            "limit",
            format!("limit must be a whole number from 1 to {MAX_LIMIT}, in decimal digits"),
        )),
    }
}

/// The number `raw` spells when it is one or more ASCII decimal digits and
/// nothing else (no sign, no whitespace); `None` otherwise or past `usize`.
fn decimal_digits(raw: &str) -> Option<usize> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok()
}

/// The id a cursor parameter names, checked like any id.
fn cursor_id(field: &'static str, id: &str) -> Result<String, ApiError> {
    validate_id(id).map_err(|e| ApiError::bad_request(field, e.message))?;
    Ok(id.to_owned())
}

/// The JSON body of a post, `{"name", "text", "id"?}`; unknown keys are
/// ignored, and a missing name or text is refused by validation as empty.
#[derive(Debug, Deserialize)]
pub struct PostBody {
    /// The author's name, as typed.
    #[serde(default)]
    pub name: String,
    /// The message text, as typed.
    #[serde(default)]
    pub text: String,
    /// The idempotency key, if the client sends one.
    #[serde(default)]
    pub id: Option<String>,
}

impl PostBody {
    /// The message this body asks to store. Errors: the field at fault.
    pub fn validate(&self) -> Result<NewMessage, Invalid> {
        NewMessage::validate(&self.name, &self.text, self.id.as_deref())
    }
}

/// 201 with the stored message and its `Location`; with
/// `Idempotent-Replayed: true` when a retry stored nothing new.
pub struct Created {
    message: Message,
    replayed: bool,
}

impl Created {
    /// The message as JSON, the response's body.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&self.message).unwrap_or_default()
    }

    /// The `Location` of the stored message: `/api/messages/<id>`.
    pub fn location(&self) -> String {
        format!("/api/messages/{}", self.message.id)
    }

    /// Whether this answers a retry with the same idempotency key, which
    /// stored nothing new.
    pub fn replayed(&self) -> bool {
        self.replayed
    }
}

impl<'r> Responder<'r, 'static> for Created {
    fn respond_to(self, _: &'r Request<'_>) -> response::Result<'static> {
        let body = self.body();
        let mut response = Response::build();
        response
            .status(Status::Created)
            .header(ContentType::JSON)
            .header(Header::new("Location", self.location()))
            .sized_body(body.len(), std::io::Cursor::new(body));
        if self.replayed {
            response.header(Header::new("Idempotent-Replayed", "true"));
        }
        response.ok()
    }
}

/// Stores `new`: what `POST /api/messages` answers once its body is
/// valid, whichever way the request came (see [`crate::api::plain_post`]).
/// Errors: 409 (the id is taken by other content), 503, 507, 500.
pub async fn store(chat: &Chat, new: NewMessage) -> Result<Created, ApiError> {
    Ok(match chat.post(new).await? {
        Inserted::Created(message) => Created {
            message,
            replayed: false,
        },
        Inserted::Existing(message) => Created {
            message,
            replayed: true,
        },
    })
}

/// `POST /api/messages` with a JSON [`PostBody`]: 201 with the stored
/// message and `Location`; a retry with the same `id` and content gives 201
/// with `Idempotent-Replayed: true` and stores nothing. Errors: 400 (invalid
/// field, malformed JSON), 403 (a write from another site), 409 (the id is
/// taken by other content), 412 (`If-Match` or `If-None-Match` does not
/// hold for the listing: [`Preconditions`]; 400 when either is not `*` or a
/// list of entity tags), 413, 415 (not JSON), 503 (the
/// store cannot take it now, e.g. no primary within the write deadline),
/// 507 (disk full).
///
/// Preconditions are held against the `ETag` a `GET /api/messages` would
/// have now, just before the message is stored (not atomically with it: a
/// post from another client may come between). A retry whose first try was
/// stored, named by its `id`, is answered as a retry is (201, or 409)
/// whatever its preconditions: RFC 9110 §13.1.1 lets a server answer 2xx
/// when the change asked for has already been made.
#[post("/api/messages", data = "<body>")]
pub async fn create(
    chat: &State<Chat>,
    preconditions: Preconditions,
    body: Result<JsonBody<PostBody>, ApiError>,
) -> Result<Created, ApiError> {
    let JsonBody(body) = body?;
    let new = body.validate()?;
    if preconditions.any() {
        if let Err(failed) = preconditions.check(&latest_tag(chat).await?)? {
            let stored_before = match &body.id {
                Some(id) => chat.get(id).await?.is_some(),
                None => false,
            };
            if !stored_before {
                return Err(failed);
            }
        }
    }
    store(chat, new).await
}

/// The `ETag` of `GET /api/messages` as it would be answered now.
async fn latest_tag(chat: &Chat) -> Result<String, ApiError> {
    if let Some(listing) = chat.latest_json(DEFAULT_LIMIT) {
        return Ok(listing.tag.to_string());
    }
    let messages = chat.list(Cursor::Latest, DEFAULT_LIMIT).await?;
    Ok(etag_of(&json_array(&messages)))
}

/// `GET /api/messages/<id>`: 200 with that message as JSON. Errors: 404 (no
/// such message, or not a valid id), 503 (store unavailable).
#[get("/api/messages/<id>")]
pub async fn one(
    chat: &State<Chat>,
    id: &str,
) -> Result<rocket::serde::json::Json<Message>, ApiError> {
    if validate_id(id).is_err() {
        return Err(ApiError::unknown_id(id));
    }
    match chat.get(id).await? {
        Some(m) => Ok(rocket::serde::json::Json(m)),
        None => Err(ApiError::unknown_id(id)),
    }
}

#[cfg(test)]
mod tests {
    use super::decimal_digits;

    #[test]
    fn only_plain_decimal_digits_are_a_number() {
        assert_eq!(decimal_digits("5"), Some(5));
        assert_eq!(decimal_digits("0005"), Some(5));
        assert_eq!(decimal_digits("1000"), Some(1000));
        for not_digits in ["", "+5", "-5", " 5", "5 ", "5\n", "5.0", "0x5", "\u{ff15}"] {
            assert_eq!(decimal_digits(not_digits), None, "{not_digits:?}");
        }
        assert_eq!(decimal_digits(&"9".repeat(40)), None, "past usize");
    }
}
