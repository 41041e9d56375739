//! `/readyz`: ready when NATS is connected and the stream answers.

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use crate::startup::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/readyz", get(readyz))
}

async fn readyz(State(s): State<AppState>) -> Response {
    let problems = common::nats::check_ready(&s.client, &s.js)
        .await
        .err()
        .into_iter()
        .collect();
    common::health::readiness(problems)
}
