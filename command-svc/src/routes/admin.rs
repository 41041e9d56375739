//! Admin writes (role admin): a tenant's limit overrides and draining a worker. Each is an
//! event on its own subject, so the audit trail shows who changed what; every instance folds it
//! from the stream, and this one at once.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use common::auth::AuthUser;
use common::error::envelope;
use common::json::{ApiJson, OptionalJson};
use common::{ApiError, ApiResult};
use events::platform::{LimitOverrides, PlatformEnvelope, PlatformEvent};
use events::validate::FieldError;
use events::Actor;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::routes::jobs::EmptyBody;
use crate::startup::AppState;

/// The largest value an override may set.
const MAX_LIMIT: u64 = 1_000_000_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(set_overrides, clear_overrides))
        .routes(routes!(drain))
        .routes(routes!(undrain))
}

/// A tenant's overrides as set.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct OverridesSet {
    tenant_id: Uuid,
    overrides: LimitOverrides,
}

/// A worker's drain state.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct DrainState {
    worker_id: String,
    draining: bool,
}

pub(crate) async fn append(
    state: &AppState,
    user: &AuthUser,
    event: PlatformEvent,
) -> ApiResult<u64> {
    // The envelope names the tenant acted on (overrides) or the acting admin's (workers).
    let tenant = match &event {
        PlatformEvent::LimitsOverridden { tenant_id, .. }
        | PlatformEvent::OverridesCleared { tenant_id } => *tenant_id,
        _ => user.tenant_id(),
    };
    let env = PlatformEnvelope::new(tenant, common::now(), Actor::user(user.actor_id()), event);
    let traceparent = common::context::current().child_traceparent();
    let seq = state.store.append_platform(&env, &traceparent).await?;
    state.engine.model().fold_platform(&env.event);
    Ok(seq)
}

pub(crate) fn with_seq(mut res: Response, seq: u64) -> Response {
    res.headers_mut()
        .insert("x-event-seq", HeaderValue::from(seq));
    res
}

fn tenant(id: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(id).map_err(|_| ApiError::validation("tenant_id", "must be a UUID"))
}

/// Set a tenant's limit overrides
///
/// Replaces the tenant's overrides; a field left out keeps the plan tier's value.
#[utoipa::path(
    put,
    path = "/jobs/v1/admin/tenants/{tenant_id}/overrides",
    tag = "admin",
    operation_id = "setTenantOverrides",
    params(("tenant_id" = Uuid, Path, description = "Any tenant"), common::openapi::CommandHeaders),
    request_body = LimitOverrides,
    responses((status = 200, description = "The overrides now in force", body = common::openapi::Envelope<OverridesSet>))
)]
async fn set_overrides(
    State(state): State<AppState>,
    user: AuthUser,
    Path(tenant_id): Path<String>,
    ApiJson(overrides): ApiJson<LimitOverrides>,
) -> ApiResult<Response> {
    let tenant_id = tenant(&tenant_id)?;
    if overrides.is_empty() {
        return Err(ApiError::validation(
            "body",
            "give at least one of max_active_jobs, enqueue_per_second, max_payload_bytes, max_concurrent_leases",
        ));
    }
    let fields = [
        ("max_active_jobs", overrides.max_active_jobs),
        ("enqueue_per_second", overrides.enqueue_per_second),
        ("max_payload_bytes", overrides.max_payload_bytes),
        ("max_concurrent_leases", overrides.max_concurrent_leases),
    ];
    let errors: Vec<FieldError> = fields
        .iter()
        .filter(|(_, v)| v.is_some_and(|v| v == 0 || v > MAX_LIMIT))
        .map(|(f, _)| FieldError::new(*f, format!("must be between 1 and {MAX_LIMIT}")))
        .collect();
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let seq = append(
        &state,
        &user,
        PlatformEvent::LimitsOverridden {
            tenant_id,
            overrides: overrides.clone(),
        },
    )
    .await?;
    Ok(with_seq(
        envelope(
            StatusCode::OK,
            json!({ "tenant_id": tenant_id, "overrides": overrides }),
        ),
        seq,
    ))
}

/// Clear a tenant's limit overrides
#[utoipa::path(
    delete,
    path = "/jobs/v1/admin/tenants/{tenant_id}/overrides",
    tag = "admin",
    operation_id = "clearTenantOverrides",
    params(("tenant_id" = Uuid, Path, description = "Any tenant"), common::openapi::CommandHeaders),
    responses((status = 200, description = "The tenant is back to its plan tier's limits", body = common::openapi::Envelope<OverridesSet>))
)]
async fn clear_overrides(
    State(state): State<AppState>,
    user: AuthUser,
    Path(tenant_id): Path<String>,
) -> ApiResult<Response> {
    let tenant_id = tenant(&tenant_id)?;
    let seq = append(&state, &user, PlatformEvent::OverridesCleared { tenant_id }).await?;
    Ok(with_seq(
        envelope(
            StatusCode::OK,
            json!({ "tenant_id": tenant_id, "overrides": {} }),
        ),
        seq,
    ))
}

fn worker(id: &str) -> ApiResult<String> {
    if id.is_empty() || id.len() > 1024 || id.contains('\0') {
        return Err(ApiError::validation(
            "worker_id",
            "must be 1 to 1024 characters",
        ));
    }
    Ok(id.to_string())
}

/// Appends `WorkerDrained` or `WorkerUndrained`.
async fn set_draining(
    state: &AppState,
    user: &AuthUser,
    worker_id: &str,
    draining: bool,
) -> ApiResult<Response> {
    let worker_id = worker(worker_id)?;
    let event = if draining {
        PlatformEvent::WorkerDrained {
            worker_id: worker_id.clone(),
        }
    } else {
        PlatformEvent::WorkerUndrained {
            worker_id: worker_id.clone(),
        }
    };
    let seq = append(state, user, event).await?;
    Ok(with_seq(
        envelope(
            StatusCode::OK,
            json!({ "worker_id": worker_id, "draining": draining }),
        ),
        seq,
    ))
}

/// Drain a worker
///
/// It gets no new leases; the jobs it holds run to their end.
#[utoipa::path(
    post,
    path = "/jobs/v1/admin/workers/{worker_id}/drain",
    tag = "admin",
    operation_id = "drainWorker",
    params(("worker_id" = String, Path, description = "The worker's identity from its certificate"), common::openapi::CommandHeaders),
    request_body(content = Option<EmptyBody>, description = "Optional, empty"),
    responses((status = 200, description = "The worker is draining", body = common::openapi::Envelope<DrainState>))
)]
async fn drain(
    State(state): State<AppState>,
    user: AuthUser,
    Path(worker_id): Path<String>,
    OptionalJson(_): OptionalJson<EmptyBody>,
) -> ApiResult<Response> {
    set_draining(&state, &user, &worker_id, true).await
}

/// Undrain a worker
#[utoipa::path(
    post,
    path = "/jobs/v1/admin/workers/{worker_id}/undrain",
    tag = "admin",
    operation_id = "undrainWorker",
    params(("worker_id" = String, Path, description = "The worker's identity from its certificate"), common::openapi::CommandHeaders),
    request_body(content = Option<EmptyBody>, description = "Optional, empty"),
    responses((status = 200, description = "The worker gets leases again", body = common::openapi::Envelope<DrainState>))
)]
async fn undrain(
    State(state): State<AppState>,
    user: AuthUser,
    Path(worker_id): Path<String>,
    OptionalJson(_): OptionalJson<EmptyBody>,
) -> ApiResult<Response> {
    set_draining(&state, &user, &worker_id, false).await
}
