//! `/readyz`: ready when NATS is connected, the stream answers, and the write model has caught
//! up with the stream.

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use crate::startup::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/readyz", get(readyz))
}

async fn readyz(State(s): State<AppState>) -> Response {
    let mut problems: Vec<String> = common::nats::check_ready(&s.client, &s.js)
        .await
        .err()
        .into_iter()
        .collect();
    if !s.engine.is_caught_up() {
        problems.push("write model: still catching up with the event store".into());
    }
    common::health::readiness(problems)
}
