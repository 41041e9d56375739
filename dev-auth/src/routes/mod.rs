//! The routes of jobs-dev-auth (`/healthz` and `/metrics` come from `common::server::finish`).

mod auth;

use axum::Router;
use utoipa::openapi::OpenApi;

use crate::startup::AppState;

pub fn router(state: AppState) -> Router {
    let (routes, _) = auth::router().split_for_parts();
    Router::new().merge(routes).with_state(state)
}

/// The OpenAPI operations of the development login.
pub fn openapi() -> OpenApi {
    auth::router().into_openapi()
}
