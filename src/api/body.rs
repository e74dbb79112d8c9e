//! Request bodies: size cap, media type and parsing, each with its own error.

use rocket::data::{Data, ToByteUnit};
use rocket::http::{ContentType, Status};
use rocket::Request;

use super::error::ApiError;

/// Larger bodies get 413.
pub const BODY_LIMIT_BYTES: u64 = 16 * 1024;

/// Reads the whole body, refusing it if it is larger than the limit.
pub async fn read_capped(data: Data<'_>) -> Result<Vec<u8>, ApiError> {
    let capped = data
        .open(BODY_LIMIT_BYTES.bytes())
        .into_bytes()
        .await
        .map_err(|e| ApiError::new(Status::BadRequest, format!("cannot read body: {e}")))?;
    if !capped.is_complete() {
        return Err(ApiError::new(
            Status::PayloadTooLarge,
            "request body is larger than 16 KiB",
        ));
    }
    Ok(capped.into_inner())
}

/// A JSON body. A missing Content-Type is tolerated (some clients omit it);
/// any other type than JSON gets 415.
pub async fn json<T: serde::de::DeserializeOwned>(
    req: &Request<'_>,
    data: Data<'_>,
) -> Result<T, ApiError> {
    if let Some(ct) = req.content_type() {
        let is_json = ct.is_json() || ct.sub().as_str().ends_with("+json");
        if !is_json {
            return Err(ApiError::new(
                Status::UnsupportedMediaType,
                format!("expected a JSON body (Content-Type: application/json), got {ct}"),
            ));
        }
    }
    let bytes = read_capped(data).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(Status::BadRequest, format!("malformed JSON body: {e}")))
}

pub fn is_form(req: &Request<'_>) -> bool {
    req.content_type() == Some(&ContentType::Form)
}

/// A JSON request body as a data guard; take it as
/// `Result<JsonBody<T>, ApiError>` so the handler answers refusals in the
/// API's error shape. Not Rocket's `Json`: that one tolerates no missing
/// Content-Type and its refusals carry no `field` or JSON body.
pub struct JsonBody<T>(pub T);

#[rocket::async_trait]
impl<'r, T: serde::de::DeserializeOwned> rocket::data::FromData<'r> for JsonBody<T> {
    type Error = ApiError;

    async fn from_data(req: &'r Request<'_>, data: Data<'r>) -> rocket::data::Outcome<'r, Self> {
        match json(req, data).await {
            Ok(value) => rocket::data::Outcome::Success(JsonBody(value)),
            Err(e) => rocket::data::Outcome::Error((e.status, e)),
        }
    }
}

/// An `application/x-www-form-urlencoded` body, parsed leniently (unknown
/// fields ignored) into `T`. Not Rocket's `Form`: its refusals would not
/// re-render the page with the error.
pub struct FormBody<T>(pub T);

#[rocket::async_trait]
impl<'r, T: for<'a> rocket::form::FromForm<'a> + Send + 'static> rocket::data::FromData<'r>
    for FormBody<T>
{
    type Error = ApiError;

    async fn from_data(req: &'r Request<'_>, data: Data<'r>) -> rocket::data::Outcome<'r, Self> {
        let parsed = async {
            if !is_form(req) {
                return Err(ApiError::new(
                    Status::UnsupportedMediaType,
                    "expected a form body (application/x-www-form-urlencoded)",
                ));
            }
            let bytes = read_capped(data).await?;
            let text = String::from_utf8(bytes)
                .map_err(|_| ApiError::new(Status::BadRequest, "form body is not UTF-8"))?;
            rocket::form::Form::<T>::parse_encoded(rocket::http::RawStr::new(&text))
                .map_err(|e| ApiError::new(Status::BadRequest, format!("malformed form: {e}")))
        }
        .await;
        match parsed {
            Ok(value) => rocket::data::Outcome::Success(FormBody(value)),
            Err(e) => rocket::data::Outcome::Error((e.status, e)),
        }
    }
}
