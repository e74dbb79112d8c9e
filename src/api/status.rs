//! Health, readiness and the store's status.

use rocket::http::Status;
use rocket::serde::json::{json, Json, Value};
use rocket::{get, State};

use super::error::ApiError;
use crate::chat::Chat;
use crate::store::StoreStatus;

/// 200 while the process runs.
#[get("/healthz")]
pub fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 when a write could be accepted now, else 503 with the reason.
#[get("/readyz")]
pub async fn readyz(chat: &State<Chat>) -> Result<Json<Value>, ApiError> {
    match chat.store.ready().await {
        Ok(()) => Ok(Json(json!({ "ready": true }))),
        Err(reason) => Err(ApiError::new(Status::ServiceUnavailable, reason)),
    }
}

#[get("/api/status")]
pub async fn status(chat: &State<Chat>) -> Json<StoreStatus> {
    Json(chat.store.status().await)
}
