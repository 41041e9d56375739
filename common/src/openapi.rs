//! What every part of the OpenAPI document shares: the envelope and error schemas, the security
//! schemes, and the error answers every route can give.
//!
//! The document is generated from the code: each service builds its routes with
//! `utoipa_axum::routes!` from handlers annotated with `#[utoipa::path]`, so a route cannot be
//! served without being documented. [`finish`] then adds what is the same for every route, by
//! rule rather than by hand: who may call it, and the errors its shape allows (a path parameter
//! can be not found, a body can fail validation, every public route can answer 401/403/503).

use std::borrow::Cow;

use serde_json::{json, Value};
use utoipa::openapi::path::{HttpMethod, Operation, ParameterIn};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, InfoBuilder, OpenApi, Ref, RefOr, ResponseBuilder, ServerBuilder, Tag,
};
use utoipa::{PartialSchema, ToSchema};
use uuid::Uuid;

use crate::error::{ApiError, Page};

/// The prose at the top of the document: envelope, auth, tenancy, gateway.
const OVERVIEW: &str = include_str!("../../docs/api-overview.md");

/// The `meta` object of every answer.
#[derive(ToSchema)]
pub struct Meta {
    /// The request's correlation id (the client's `x-request-id` when acceptable, else generated).
    pub request_id: String,
    /// The W3C trace id of the request (32 lowercase hex).
    pub trace_id: String,
    /// The caller's tenant; null before authentication (a 401, `/healthz`) and for workers.
    pub tenant_id: Option<Uuid>,
}

/// An error: a stable machine code, a message for people, and details for some codes.
#[derive(ToSchema)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// `VALIDATION_FAILED`: `{fields: [{field, message}]}`; `INVALID_STATE`: `{status}`;
    /// `PRECONDITION_FAILED`: `{version}`; `QUOTA_EXCEEDED`/`RATE_LIMITED`:
    /// `{retry_after_seconds}`.
    pub details: Option<Value>,
}

/// Every error code the service answers with.
pub struct ErrorCode;

impl PartialSchema for ErrorCode {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(ApiError::CODES.iter().copied()))
            .into()
    }
}

impl ToSchema for ErrorCode {}

/// A success: `data` holds the answer, `error` is null.
#[derive(ToSchema)]
pub struct Envelope<T: ToSchema> {
    pub data: T,
    /// Always null on success.
    pub error: Option<ErrorBody>,
    pub meta: Meta,
}

/// A page of a list: `data` holds the items, `page` how to continue.
#[derive(ToSchema)]
pub struct ListEnvelope<T: ToSchema> {
    pub data: Vec<T>,
    /// Always null on success.
    pub error: Option<ErrorBody>,
    pub page: Page,
    pub meta: Meta,
}

/// A failure: `data` is null, `error` says what went wrong.
#[derive(ToSchema)]
pub struct ErrorEnvelope {
    /// Always null on error.
    pub data: Option<Value>,
    pub error: ErrorBody,
    pub meta: Meta,
}

/// Headers every read route honours.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct ReadHeaders {
    /// Read your writes: wait (up to 5 s) until the read model has applied this stream sequence
    /// (a command's `x-event-seq`). The answer's `x-projection-seq` says what it reflects.
    #[param(rename = "x-min-event-seq", minimum = 0)]
    pub x_min_event_seq: Option<u64>,
    /// When sent, must equal the token's tenant (`403 TENANT_MISMATCH` otherwise).
    #[param(rename = "x-tenant-id")]
    pub x_tenant_id: Option<Uuid>,
}

/// Headers every command route honours.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct CommandHeaders {
    /// Makes a retried command safe: the first answer is stored for 24 h and replayed
    /// (`idempotent-replayed: true`); the same key with another body answers 422.
    #[param(rename = "Idempotency-Key", max_length = 255)]
    pub idempotency_key: Option<String>,
    /// When sent, must equal the token's tenant (`403 TENANT_MISMATCH` otherwise).
    #[param(rename = "x-tenant-id")]
    pub x_tenant_id: Option<Uuid>,
}

/// The error answers [`finish`] attaches by rule: (status, component name, description, code).
const STANDARD_RESPONSES: &[(&str, &str, &str, &str)] = &[
    (
        "400",
        "ValidationFailed",
        "The request is malformed or a field is out of range; `details.fields` names each problem.",
        "VALIDATION_FAILED",
    ),
    (
        "401",
        "Unauthenticated",
        "The bearer token is missing, malformed, expired or badly signed (`WWW-Authenticate: Bearer`).",
        "UNAUTHENTICATED",
    ),
    (
        "403",
        "Forbidden",
        "The token lacks a role this route needs (`FORBIDDEN`), or `x-tenant-id` names another tenant (`TENANT_MISMATCH`).",
        "FORBIDDEN",
    ),
    (
        "404",
        "NotFound",
        "No such job (another tenant's job answers the same), or no such route.",
        "NOT_FOUND",
    ),
    (
        "409",
        "IdempotencyInProgress",
        "A request with this `Idempotency-Key` is still in flight (`IDEMPOTENCY_IN_PROGRESS`); retry shortly.",
        "IDEMPOTENCY_IN_PROGRESS",
    ),
    (
        "422",
        "IdempotencyKeyReused",
        "This `Idempotency-Key` was used for a different request (`IDEMPOTENCY_KEY_REUSED`).",
        "IDEMPOTENCY_KEY_REUSED",
    ),
    (
        "413",
        "PayloadTooLarge",
        "The body or the job's payload is larger than the tenant's plan allows.",
        "PAYLOAD_TOO_LARGE",
    ),
    (
        "415",
        "UnsupportedMediaType",
        "The body is not sent as `application/json`.",
        "UNSUPPORTED_MEDIA_TYPE",
    ),
    (
        "500",
        "Internal",
        "A bug: logged with its cause; the body says nothing more.",
        "INTERNAL",
    ),
    (
        "503",
        "Unavailable",
        "The event store or the read model's database is unreachable; nothing was written. Retry.",
        "SERVICE_UNAVAILABLE",
    ),
];

fn error_example(code: &str, message: &str) -> Value {
    json!({
        "data": null,
        "error": {"code": code, "message": message},
        "meta": {
            "request_id": "0b5c7a3e-6a1f-4c43-9d0e-3f1d1c2b4a5e",
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "tenant_id": null
        }
    })
}

fn error_response(description: &str, example: Value) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorEnvelope")))
                .example(Some(example))
                .build(),
        )
        .build()
}

/// Is this a route of the worker protocol (mTLS, no bearer token)?
pub fn is_worker_route(path: &str) -> bool {
    path.starts_with("/jobs/v1/worker/")
}

/// Is this a route that takes no credentials at all?
pub fn is_open_route(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/metrics" | "/jobs/v1/openapi.json"
    ) || path.starts_with("/auth/v1/")
}

fn add_response(op: &mut Operation, status: &str, name: &str) {
    op.responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
}

/// Adds what every route shares to a document built from the routers: metadata, security,
/// schemas of the envelope and the errors each route's shape allows.
pub fn finish(mut doc: OpenApi) -> OpenApi {
    doc.info = InfoBuilder::new()
        .title("Jobs Service API")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(OVERVIEW))
        .build();
    doc.servers = Some(vec![ServerBuilder::new()
        .url("/")
        .description(Some(
            "the gateway this document was served from (deploy/up: http://127.0.0.1:8000; \
             the worker routes are on command-svc's mTLS listener, https://127.0.0.1:8443)",
        ))
        .build()]);
    doc.tags = Some(
        [
            ("jobs", "Enqueue jobs, read them and their event history, change, cancel or retry them, and ask why one is not running."),
            ("dead-letter queue", "Jobs that failed for good (`dead_lettered`): list and read them, retry one, redrive many, purge one."),
            ("metrics", "The caller's tenant at a glance: jobs by status and type, throughput and latency percentiles."),
            ("quota", "The caller's plan tier, effective limits and usage."),
            ("queues", "The caller's queues and job types: depth, and pausing and resuming them."),
            ("schedules", "Periodic jobs: a cron expression (in a time zone) or a fixed interval, and the job each firing enqueues; pause, resume, change, delete."),
            ("admin", "Role `admin` only, across tenants: per-tenant limit overrides, the workers registry, draining workers."),
            ("worker", "The worker protocol (lease, heartbeat, complete, fail), served only on the mTLS worker listener."),
            ("auth", "Development login (only when `deploy/up` enables it): tokens signed by the dev key for the seed's test users."),
            ("operations", "The OpenAPI document and its reference page."),
        ]
        .into_iter()
        .map(|(name, description)| {
            let mut tag = Tag::new(name);
            tag.description = Some(description.to_string());
            tag
        })
        .collect(),
    );

    let components = doc.components.get_or_insert_with(Default::default);
    let schemas: [(&str, RefOr<utoipa::openapi::schema::Schema>); 7] = [
        // What an auditor replays from the stream (see docs/events.md).
        ("JobEvent", events::JobEvent::schema()),
        ("EventEnvelope", events::Envelope::schema()),
        ("Meta", Meta::schema()),
        ("ErrorBody", ErrorBody::schema()),
        ("ErrorCode", ErrorCode::schema()),
        ("ErrorEnvelope", ErrorEnvelope::schema()),
        ("Page", Page::schema()),
    ];
    for (name, schema) in schemas {
        components.schemas.insert(name.to_string(), schema);
    }
    for (_, name, description, code) in STANDARD_RESPONSES {
        let message = match *code {
            "VALIDATION_FAILED" => "validation failed",
            "NOT_FOUND" => "job not found",
            _ => description,
        };
        components.responses.insert(
            name.to_string(),
            RefOr::T(error_response(description, error_example(code, message))),
        );
    }
    let mut bearer = Http::new(HttpAuthScheme::Bearer);
    bearer.bearer_format = Some("JWT".into());
    bearer.description = Some(
        "A JWT signed with RS256 or ES256 by the configured key, carrying `tenantId`, `exp` and \
         `roles` (`admin`, `manager`, `member`, `viewer`). Locally, `POST /auth/v1/login` or \
         `jobsctl token` gives one."
            .into(),
    );
    components.add_security_scheme("bearerAuth", SecurityScheme::Http(bearer));
    components.add_security_scheme(
        "workerMutualTLS",
        SecurityScheme::MutualTls {
            description: Some(
                "A client certificate chaining to `JOBS_WORKER_CLIENT_CA`; the worker is who the \
                 certificate names (first URI SAN, else DNS SAN, else CN)."
                    .into(),
            ),
            deprecated: None,
            extensions: None,
        },
    );

    for (path, item) in doc.paths.paths.iter_mut() {
        let worker = is_worker_route(path);
        let open = is_open_route(path);
        for method in [
            HttpMethod::Get,
            HttpMethod::Post,
            HttpMethod::Put,
            HttpMethod::Patch,
            HttpMethod::Delete,
        ] {
            let op = match method {
                HttpMethod::Get => item.get.as_mut(),
                HttpMethod::Post => item.post.as_mut(),
                HttpMethod::Put => item.put.as_mut(),
                HttpMethod::Patch => item.patch.as_mut(),
                HttpMethod::Delete => item.delete.as_mut(),
                _ => None,
            };
            let Some(op) = op else { continue };
            if path.starts_with("/jobs/v1/") && !worker && !open {
                op.security = Some(vec![SecurityRequirement::new(
                    "bearerAuth",
                    Vec::<String>::new(),
                )]);
                add_response(op, "401", "Unauthenticated");
                add_response(op, "403", "Forbidden");
            } else if worker {
                op.security = Some(vec![SecurityRequirement::new(
                    "workerMutualTLS",
                    Vec::<String>::new(),
                )]);
            }
            if path.contains('{') {
                add_response(op, "404", "NotFound");
            }
            let takes_idempotency_key = op.parameters.as_ref().is_some_and(|ps| {
                ps.iter()
                    .any(|p| matches!(p, RefOr::T(p) if p.name == "Idempotency-Key"))
            });
            if takes_idempotency_key {
                add_response(op, "409", "IdempotencyInProgress");
                add_response(op, "422", "IdempotencyKeyReused");
            }
            // A query or header parameter can be malformed (`x-min-event-seq: -1`).
            let has_params = op.parameters.as_ref().is_some_and(|ps| {
                ps.iter().any(|p| {
                    matches!(p, RefOr::T(p)
                        if matches!(p.parameter_in, ParameterIn::Query | ParameterIn::Header))
                })
            });
            if op.request_body.is_some() {
                add_response(op, "400", "ValidationFailed");
                add_response(op, "413", "PayloadTooLarge");
                add_response(op, "415", "UnsupportedMediaType");
            } else if has_params || path.contains('{') {
                add_response(op, "400", "ValidationFailed");
            }
            if path.starts_with("/jobs/v1/") {
                add_response(op, "500", "Internal");
                add_response(op, "503", "Unavailable");
            }
        }
    }
    doc
}

/// The (METHOD, path) pairs an axum router serves, read from its `Debug` form (axum has no
/// other way to list routes); HEAD, which axum answers on every GET route, is left out. For
/// tests that check every served route is documented.
pub fn routed_operations(router_debug: &str) -> std::collections::BTreeSet<(String, String)> {
    // `routes: {RouteId(3): MethodRouter(... allow_header: Bytes(b"GET,HEAD") }), ...}` and
    // `node: Node { paths: {RouteId(3): "/jobs/v1/jobs", ...} }`, for the path router first.
    let path_router = router_debug
        .split("fallback_router")
        .next()
        .unwrap_or_default();
    let mut methods = std::collections::HashMap::new();
    for chunk in path_router.split("RouteId(").skip(1) {
        let Some((id, rest)) = chunk.split_once(')') else {
            continue;
        };
        if let Some(allow) = rest.split("allow_header: Bytes(b\"").nth(1) {
            let allow = allow.split('"').next().unwrap_or_default();
            methods.insert(id.to_string(), allow.to_string());
        } else if let Some(path) = rest.strip_prefix(": \"") {
            let path = path.split('"').next().unwrap_or_default();
            methods
                .entry(format!("path:{id}"))
                .or_insert_with(|| path.to_string());
        }
    }
    let mut ops = std::collections::BTreeSet::new();
    for (key, path) in &methods {
        let Some(id) = key.strip_prefix("path:") else {
            continue;
        };
        for method in methods.get(id).map(String::as_str).unwrap_or("").split(',') {
            if !method.is_empty() && method != "HEAD" {
                ops.insert((method.to_string(), path.clone()));
            }
        }
    }
    ops
}

/// The (METHOD, path) pairs a document describes.
pub fn documented_operations(doc: &OpenApi) -> std::collections::BTreeSet<(String, String)> {
    let mut ops = std::collections::BTreeSet::new();
    for (path, item) in &doc.paths.paths {
        for (method, op) in [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("PATCH", &item.patch),
            ("DELETE", &item.delete),
        ] {
            if op.is_some() {
                ops.insert((method.to_string(), path.clone()));
            }
        }
    }
    ops
}

/// The document as JSON, for serving.
pub fn to_json(doc: &OpenApi) -> Cow<'static, str> {
    Cow::Owned(
        doc.to_pretty_json()
            .expect("an OpenAPI document serializes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::validate::FieldError;

    #[test]
    fn every_error_code_is_documented() {
        let errors = [
            ApiError::Validation(vec![FieldError::new("f", "m")]),
            ApiError::Unauthenticated("x".into()),
            ApiError::Forbidden("x".into()),
            ApiError::TenantMismatch,
            ApiError::not_found(),
            ApiError::MethodNotAllowed,
            ApiError::InvalidState("completed".into()),
            ApiError::LeaseLost,
            ApiError::IdempotencyInProgress,
            ApiError::IdempotencyKeyReused,
            ApiError::PreconditionFailed(1),
            ApiError::PayloadTooLarge("x".into()),
            ApiError::HeadersTooLarge(1),
            ApiError::UnsupportedMediaType,
            ApiError::QuotaExceeded {
                message: "x".into(),
                retry_after: 1,
            },
            ApiError::RateLimited {
                message: "x".into(),
                retry_after: 1,
            },
            ApiError::Unavailable("x".into()),
            ApiError::Internal(anyhow::anyhow!("x")),
        ];
        for e in &errors {
            let (_, code) = e.status_and_code();
            assert!(ApiError::CODES.contains(&code), "{code} is not in CODES");
        }
    }

    #[test]
    fn finish_adds_the_errors_a_route_shape_allows() {
        let doc: OpenApi = serde_json::from_value(json!({
            "openapi": "3.1.0",
            "info": {"title": "t", "version": "1"},
            "paths": {
                "/jobs/v1/jobs/{id}": {"get": {"responses": {"200": {"description": "ok"}}}},
                "/jobs/v1/worker/lease": {"post": {
                    "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
                    "responses": {"200": {"description": "ok"}}
                }}
            }
        }))
        .unwrap();
        let doc = serde_json::to_value(finish(doc)).unwrap();
        let get = &doc["paths"]["/jobs/v1/jobs/{id}"]["get"];
        for status in ["200", "401", "403", "404", "500", "503"] {
            assert!(
                get["responses"][status].is_object(),
                "GET job lacks {status}"
            );
        }
        assert_eq!(get["security"][0]["bearerAuth"], json!([]));
        let lease = &doc["paths"]["/jobs/v1/worker/lease"]["post"];
        assert!(lease["responses"]["401"].is_null(), "workers send no token");
        assert!(lease["responses"]["400"].is_object());
        assert_eq!(lease["security"][0]["workerMutualTLS"], json!([]));
    }
}
