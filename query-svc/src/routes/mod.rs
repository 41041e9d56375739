//! The public routes of query-svc; `router` merges them behind the route-to-roles table.

mod admin;
mod dlq;
pub mod docs;
mod explain;
mod health;
mod jobs;
pub mod metrics;
mod queues;
pub mod quota;
mod schedules;

use axum::Router;
use utoipa_axum::router::OpenApiRouter;

use crate::startup::AppState;

/// The public routes behind the route-to-roles table, each with its OpenAPI operation.
fn documented() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(jobs::router())
        .merge(dlq::router())
        .merge(explain::router())
        .merge(quota::router())
        .merge(metrics::router())
        .merge(admin::router())
        .merge(queues::router())
        .merge(schedules::router())
}

pub fn router(state: AppState) -> Router {
    routes(state.verifier.clone()).with_state(state)
}

/// Every route query-svc serves (but `/healthz` and `/metrics`, which `common::server` adds).
fn routes(verifier: std::sync::Arc<common::auth::JwtVerifier>) -> Router<AppState> {
    let (protected, _) = documented()
        .route_layer(axum::middleware::from_fn_with_state(
            verifier,
            common::auth::authorize,
        ))
        .split_for_parts();
    let (docs, _) = docs::router().split_for_parts();
    Router::new()
        .merge(protected)
        .merge(docs)
        .merge(health::router())
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::openapi::{documented_operations, routed_operations};

    #[test]
    fn every_served_route_is_documented_and_every_documented_route_served() {
        let verifier = std::sync::Arc::new(common::auth::JwtVerifier::refusing_all());
        let mut routed = routed_operations(&format!("{:?}", routes(verifier)));
        // Operations, not API: readiness for the orchestrator.
        assert!(routed.remove(&("GET".into(), "/readyz".into())));
        let doc = docs::document();
        let mut documented = documented_operations(&doc);
        // Served by command-svc (public and worker listeners) and by the development login.
        let others = documented_operations(&command_svc::routes::openapi());
        documented.retain(|op| !others.contains(op) && !op.1.starts_with("/auth/v1/"));
        assert!(routed.len() >= 14, "too few routes parsed: {routed:?}");
        assert_eq!(routed, documented);
    }

    /// docs/openapi.json is the served document, kept for readers of the repository.
    #[test]
    fn committed_document_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        let current = format!("{}\n", common::openapi::to_json(&docs::document()));
        assert!(
            committed == current,
            "docs/openapi.json is stale: run `cargo run -p query-svc -- openapi > docs/openapi.json`"
        );
    }
}
