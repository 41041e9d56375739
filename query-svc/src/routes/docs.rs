//! `GET /jobs/v1/openapi.json`: the whole service's OpenAPI document, generated from the code.
//!
//! It joins query-svc's routes with command-svc's (public and worker) and the development
//! login's, then adds what every route shares (`common::openapi::finish`). The reference page
//! that renders it (`/jobs/v1/docs`) is a static file the gateway serves.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::startup::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(openapi_json))
}

/// The whole service's document: every public, worker and development-login route.
pub fn document() -> OpenApi {
    let mut doc = super::documented().merge(router()).into_openapi();
    doc.merge(command_svc::routes::openapi());
    doc.merge(dev_auth::routes::openapi());
    common::openapi::finish(doc)
}

/// This document
///
/// The OpenAPI 3.1 document of the whole service, generated from the code that serves it.
#[utoipa::path(
    get,
    path = "/jobs/v1/openapi.json",
    tag = "operations",
    operation_id = "getOpenApiDocument",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object))
)]
async fn openapi_json() -> Response {
    static JSON: OnceLock<String> = OnceLock::new();
    let body = JSON.get_or_init(|| common::openapi::to_json(&document()).into_owned());
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=60"),
        ],
        body.as_str(),
    )
        .into_response()
}
