//! The routes of command-svc: the public ones behind the route-to-roles table, and the worker
//! protocol, which only the mTLS listener serves.

mod enqueue;
mod health;
mod worker;

use axum::Router;

use crate::config::Config;
use crate::startup::AppState;

pub fn router(state: AppState, config: &Config) -> Router {
    let protected = Router::new().merge(enqueue::router(config)).route_layer(
        axum::middleware::from_fn_with_state(state.verifier.clone(), common::auth::authorize),
    );
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
