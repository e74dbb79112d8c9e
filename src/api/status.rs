//! Health, readiness and the store's status.

use rocket::serde::json::{json, Json, Value};
use rocket::{get, State};
use serde::Serialize;

use super::error::{ApiError, READY_RETRY_AFTER};
use crate::chat::Chat;
use crate::store::StoreStatus;

/// 200 while the process runs.
#[get("/healthz")]
pub fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 when a write could be accepted now, else 503 with the reason and
/// `Retry-After`.
#[get("/readyz")]
pub async fn readyz(chat: &State<Chat>) -> Result<Json<Value>, ApiError> {
    match chat.ready().await {
        Ok(()) => Ok(Json(json!({ "ready": true }))),
        Err(reason) => Err(ApiError::unavailable(reason, READY_RETRY_AFTER)),
    }
}

/// `/api/status`: the store's status and the event streams' figures.
#[derive(Serialize)]
pub struct ServiceStatus {
    #[serde(flatten)]
    store: StoreStatus,
    events: EventFigures,
}

/// What the event streams did since the process started.
#[derive(Serialize)]
pub struct EventFigures {
    /// Times a subscriber fell behind the broadcast and caught up from the
    /// store.
    catch_ups: u64,
}

/// `GET /api/status`: always 200, with the store's status (`store`,
/// `ready`, `reason`?, and for MongoDB the replica set and change stream at
/// the top level) and `events: {catch_ups}`.
#[get("/api/status")]
pub async fn status(chat: &State<Chat>) -> Json<ServiceStatus> {
    Json(ServiceStatus {
        store: chat.status().await,
        events: EventFigures {
            catch_ups: chat.catch_ups(),
        },
    })
}
