//! The public routes of query-svc; `router` merges them behind the route-to-roles table.

mod admin;
mod dlq;
mod explain;
mod health;
mod jobs;
pub mod metrics;
pub mod quota;

use axum::Router;

use crate::startup::AppState;

pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .merge(jobs::router())
        .merge(dlq::router())
        .merge(explain::router())
        .merge(quota::router())
        .merge(metrics::router())
        .merge(admin::router())
        .route_layer(axum::middleware::from_fn_with_state(
            state.verifier.clone(),
            common::auth::authorize,
        ));
    Router::new()
        .merge(protected)
        .merge(health::router())
        .with_state(state)
}
