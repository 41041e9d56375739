//! The routes of command-svc: the public ones behind the route-to-roles table, and the worker
//! protocol, which only the mTLS listener serves.

mod admin;
mod dlq;
mod enqueue;
mod health;
mod jobs;
mod worker;

use axum::Router;

use crate::config::Config;
use crate::startup::AppState;

pub fn router(state: AppState, config: &Config) -> Router {
    // Layers run outside-in: authentication (and the roles table), then idempotency keys.
    let protected = Router::new()
        .merge(enqueue::router(config))
        .merge(jobs::router())
        .merge(dlq::router())
        .merge(admin::router())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::idempotency::layer,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.verifier.clone(),
            common::auth::authorize,
        ));
    Router::new()
        .merge(protected)
        .merge(health::router())
        .with_state(state)
}

/// The worker listener's routes (plus `/healthz`, `/readyz`).
pub fn worker_router(state: AppState) -> Router {
    Router::new()
        .merge(worker::router())
        .merge(health::router())
        .with_state(state)
}
