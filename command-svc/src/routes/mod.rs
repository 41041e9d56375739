//! The routes of command-svc: the public ones behind the route-to-roles table, and the worker
//! protocol, which only the mTLS listener serves.

mod admin;
mod dlq;
mod enqueue;
mod health;
mod jobs;
mod queues;
mod schedules;
mod worker;

use axum::Router;
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::config::Config;
use crate::startup::AppState;

/// The public routes behind the route-to-roles table, each with its OpenAPI operation.
fn documented(config: Option<&Config>) -> OpenApiRouter<AppState> {
    // Body limits only shape the router; the document is the same for any.
    let (payload, batch) = config.map_or((0, 0), |c| (c.max_payload_bytes, c.max_batch_body_bytes));
    OpenApiRouter::new()
        .merge(enqueue::router(payload, batch))
        .merge(jobs::router())
        .merge(dlq::router())
        .merge(admin::router())
        .merge(queues::router())
        .merge(schedules::router())
}

/// The OpenAPI operations of command-svc: its public routes and the worker protocol.
pub fn openapi() -> OpenApi {
    let mut doc = documented(None).into_openapi();
    doc.merge(worker::router().into_openapi());
    doc
}

pub fn router(state: AppState, config: &Config) -> Router {
    // Layers run outside-in: authentication (and the roles table), then idempotency keys.
    public_routes(Some(config), |routes| {
        routes
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::idempotency::layer,
            ))
            .route_layer(axum::middleware::from_fn_with_state(
                state.verifier.clone(),
                common::auth::authorize,
            ))
    })
    .with_state(state)
}

/// Every route of the public listener (but `/healthz` and `/metrics`, which `common::server`
/// adds); `protect` layers the documented ones.
fn public_routes(
    config: Option<&Config>,
    protect: impl FnOnce(OpenApiRouter<AppState>) -> OpenApiRouter<AppState>,
) -> Router<AppState> {
    let (protected, _) = protect(documented(config)).split_for_parts();
    Router::new().merge(protected).merge(health::router())
}

/// The worker listener's routes (plus `/healthz`, `/readyz`).
pub fn worker_router(state: AppState) -> Router {
    worker_routes().with_state(state)
}

fn worker_routes() -> Router<AppState> {
    let (worker, _) = worker::router().split_for_parts();
    Router::new().merge(worker).merge(health::router())
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::openapi::{documented_operations, routed_operations};

    #[test]
    fn every_served_route_is_documented_and_every_documented_route_served() {
        let mut routed = routed_operations(&format!("{:?}", public_routes(None, |r| r)));
        routed.extend(routed_operations(&format!("{:?}", worker_routes())));
        // Operations, not API: readiness for the orchestrator (on both listeners).
        assert!(routed.remove(&("GET".into(), "/readyz".into())));
        let documented = documented_operations(&openapi());
        assert!(routed.len() >= 16, "too few routes parsed: {routed:?}");
        assert_eq!(routed, documented);
    }
}
