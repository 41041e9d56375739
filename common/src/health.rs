//! `/healthz` (alive) and the answer of `/readyz` (every dependency checked, or 503 naming
//! what failed). Each service decides what it depends on; this renders the verdict.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::{envelope, ApiError};

pub async fn healthz() -> Response {
    envelope(StatusCode::OK, json!({ "status": "ok" }))
}

/// 200 when `problems` is empty, else 503 listing them.
pub fn readiness(problems: Vec<String>) -> Response {
    if problems.is_empty() {
        envelope(StatusCode::OK, json!({ "status": "ready" }))
    } else {
        ApiError::Unavailable(format!("not ready: {}", problems.join("; "))).into_response()
    }
}
