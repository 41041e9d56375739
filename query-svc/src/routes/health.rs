//! `/readyz`: ready when Postgres answers with the schema migrated and NATS is connected.

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use crate::startup::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/readyz", get(readyz))
}

async fn readyz(State(s): State<AppState>) -> Response {
    let mut problems = Vec::new();
    if let Err(e) = common::db::check_ready(&s.pool).await {
        problems.push(e);
    }
    if let Err(e) = common::nats::check_ready(&s.client, &s.js).await {
        problems.push(e);
    }
    common::health::readiness(problems)
}
