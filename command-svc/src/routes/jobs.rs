//! What a person does to a job after enqueueing it: `PATCH /jobs/v1/jobs/{id}`, `cancel`,
//! `retry`. The rules are `events::decide`'s; `If-Match` carries the version the caller saw.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use common::auth::AuthUser;
use common::error::envelope;
use common::json::{if_match, ApiJson, OptionalJson};
use common::{ApiError, ApiResult};
use events::validate::UpdateRequest;
use events::{Actor, Command, Job};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::startup::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(update))
        .routes(routes!(cancel))
        .routes(routes!(retry))
}

pub fn parse_id(id: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(id).map_err(|_| ApiError::not_found())
}

/// The answer to a job command: the job, its version as ETag, the last event's sequence.
pub fn job_response(job: &Job) -> Response {
    let mut res = envelope(StatusCode::OK, job);
    res.headers_mut()
        .insert("x-event-seq", HeaderValue::from(job.last_event_seq));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", job.version)) {
        res.headers_mut().insert(header::ETAG, v);
    }
    res
}

/// Runs `cmd` on the caller's job `id`.
pub async fn run(
    state: &AppState,
    user: &AuthUser,
    id: &str,
    headers: &HeaderMap,
    cmd: Command,
) -> ApiResult<Response> {
    let id = parse_id(id)?;
    let expected = if_match(headers)?;
    let job = state
        .engine
        .act(
            Some(user.tenant_id()),
            id,
            &cmd,
            &Actor::user(user.actor_id()),
            expected,
        )
        .await?;
    Ok(job_response(&job))
}

/// Change a job
///
/// Any of priority, run_at, payload, max_attempts, queue while the job is scheduled or
/// pending. `If-Match` (the job's `ETag`) makes it conditional.
#[utoipa::path(
    patch,
    path = "/jobs/v1/jobs/{id}",
    tag = "jobs",
    operation_id = "updateJob",
    params(("id" = Uuid, Path, description = "The job's id"), IfMatch, common::openapi::CommandHeaders),
    request_body = UpdateRequest,
    responses(
        (status = 200, description = "The job, changed", body = common::openapi::Envelope<Job>),
        (status = 409, description = "The job is no longer scheduled or pending (`INVALID_STATE`)", body = common::openapi::ErrorEnvelope),
        (status = 412, description = "`If-Match` names an older version (`PRECONDITION_FAILED`)", body = common::openapi::ErrorEnvelope),
    )
)]
async fn update(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<UpdateRequest>,
) -> ApiResult<Response> {
    let spec = req.validate().map_err(ApiError::Validation)?;
    if let Some(p) = &spec.payload {
        let overrides = state
            .engine
            .model()
            .overrides
            .get(&user.tenant_id())
            .cloned();
        let limits = state
            .engine
            .plans
            .effective(user.claims.plan_tier.as_deref(), overrides.as_ref());
        let max = (limits.max_payload_bytes as usize).min(state.max_payload_bytes);
        if serde_json::to_vec(p).map_or(0, |b| b.len()) > max {
            return Err(ApiError::PayloadTooLarge(format!(
                "a job payload may be at most {max} bytes"
            )));
        }
    }
    run(&state, &user, &id, &headers, Command::Update(spec)).await
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CancelRequest {
    #[serde(default)]
    reason: Option<String>,
}

/// Cancel a job
///
/// Scheduled or pending → cancelled; leased → `cancel_requested`, then cancelled when the
/// worker stops or its lease ends.
#[utoipa::path(
    post,
    path = "/jobs/v1/jobs/{id}/cancel",
    tag = "jobs",
    operation_id = "cancelJob",
    params(("id" = Uuid, Path, description = "The job's id"), IfMatch, common::openapi::CommandHeaders),
    request_body(content = Option<CancelRequest>, description = "Optional"),
    responses(
        (status = 200, description = "The job, cancelled or with cancel requested", body = common::openapi::Envelope<Job>),
        (status = 409, description = "The job is already finished (`INVALID_STATE`)", body = common::openapi::ErrorEnvelope),
        (status = 412, description = "`If-Match` names an older version", body = common::openapi::ErrorEnvelope),
    )
)]
async fn cancel(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    headers: HeaderMap,
    OptionalJson(req): OptionalJson<CancelRequest>,
) -> ApiResult<Response> {
    if req
        .reason
        .as_ref()
        .is_some_and(|r| r.len() > 1024 || r.contains('\0'))
    {
        return Err(ApiError::validation(
            "reason",
            "must be at most 1024 bytes, without NUL characters",
        ));
    }
    run(
        &state,
        &user,
        &id,
        &headers,
        Command::Cancel { reason: req.reason },
    )
    .await
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmptyBody {}

/// `If-Match`: the job's version as its `ETag` says (`"3"`); the command is refused with 412 if
/// the job has moved on.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct IfMatch {
    #[param(rename = "If-Match", pattern = "^(\\*|(W/)?\"?[0-9]+\"?)$")]
    if_match: Option<String>,
}

/// Retry a job
///
/// A dead-lettered or cancelled job runs again with its attempts reset.
#[utoipa::path(
    post,
    path = "/jobs/v1/jobs/{id}/retry",
    tag = "jobs",
    operation_id = "retryJob",
    params(("id" = Uuid, Path, description = "The job's id"), IfMatch, common::openapi::CommandHeaders),
    request_body(content = Option<EmptyBody>, description = "Optional, empty"),
    responses(
        (status = 200, description = "The job, pending again", body = common::openapi::Envelope<Job>),
        (status = 409, description = "The job is not dead-lettered or cancelled (`INVALID_STATE`)", body = common::openapi::ErrorEnvelope),
        (status = 412, description = "`If-Match` names an older version", body = common::openapi::ErrorEnvelope),
    )
)]
async fn retry(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    headers: HeaderMap,
    OptionalJson(_): OptionalJson<EmptyBody>,
) -> ApiResult<Response> {
    run(&state, &user, &id, &headers, Command::Retry).await
}
