//! The public routes of command-svc; `router` merges them behind the route-to-roles table.

mod enqueue;
mod health;

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
