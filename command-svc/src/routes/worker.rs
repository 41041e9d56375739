//! The worker protocol, served only on the mTLS listener: lease, heartbeat, complete, fail.
//! The worker is who its certificate says ([`WorkerIdentity`]); a body cannot claim another.

use std::time::Duration;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use common::error::envelope;
use common::json::ApiJson;
use common::{ApiError, ApiResult};
use events::validate::{check_json, check_name, check_text, FieldError};
use events::{Actor, Command, ErrorInfo};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::startup::AppState;
use crate::tls::WorkerIdentity;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(lease))
        .routes(routes!(heartbeat))
        .routes(routes!(complete))
        .routes(routes!(fail))
}

/// The answer of lease: the jobs now held (empty when none came within `wait_seconds`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct Leased {
    jobs: Vec<events::Job>,
}

/// The answer of heartbeat.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct HeartbeatAnswer {
    expires_at: chrono::DateTime<chrono::Utc>,
    /// Stop and fail or complete the job: a person cancelled it.
    cancel_requested: bool,
}

fn range(
    field: &str,
    v: Option<i64>,
    lo: i64,
    hi: i64,
    default: i64,
    errors: &mut Vec<FieldError>,
) -> i64 {
    match v {
        None => default,
        Some(v) if (lo..=hi).contains(&v) => v,
        Some(_) => {
            errors.push(FieldError::new(
                field,
                format!("must be between {lo} and {hi}"),
            ));
            default
        }
    }
}

fn job_id(id: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(id).map_err(|_| ApiError::not_found())
}

fn ready(state: &AppState) -> ApiResult<()> {
    if !state.engine.is_caught_up() {
        return Err(ApiError::Unavailable(
            "the write model is still catching up with the event store".into(),
        ));
    }
    Ok(())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct LeaseRequest {
    types: Vec<String>,
    #[serde(default)]
    queues: Option<Vec<String>>,
    #[serde(default)]
    max_jobs: Option<i64>,
    #[serde(default)]
    lease_seconds: Option<i64>,
    #[serde(default)]
    wait_seconds: Option<i64>,
}

/// Lease jobs
///
/// Up to `max_jobs` ready jobs of the given types (priority, then tenants round-robin, then
/// FIFO), long-polling up to `wait_seconds` when none is ready.
#[utoipa::path(
    post,
    path = "/jobs/v1/worker/lease",
    tag = "worker",
    operation_id = "leaseJobs",
    request_body = LeaseRequest,
    responses((status = 200, description = "The jobs leased (maybe none)", body = common::openapi::Envelope<Leased>))
)]
async fn lease(
    State(state): State<AppState>,
    Extension(worker): Extension<WorkerIdentity>,
    ApiJson(req): ApiJson<LeaseRequest>,
) -> ApiResult<Response> {
    let mut errors = Vec::new();
    if req.types.is_empty() || req.types.len() > 50 {
        errors.push(FieldError::new("types", "must hold 1 to 50 job types"));
    }
    for (i, t) in req.types.iter().enumerate() {
        check_name(&format!("types[{i}]"), t, &mut errors);
    }
    if let Some(qs) = &req.queues {
        if qs.is_empty() || qs.len() > 50 {
            errors.push(FieldError::new(
                "queues",
                "must hold 1 to 50 queues when given",
            ));
        }
        for (i, q) in qs.iter().enumerate() {
            check_name(&format!("queues[{i}]"), q, &mut errors);
        }
    }
    let max_jobs = range("max_jobs", req.max_jobs, 1, 100, 1, &mut errors);
    let lease_seconds = range("lease_seconds", req.lease_seconds, 5, 3600, 30, &mut errors);
    let wait_seconds = range("wait_seconds", req.wait_seconds, 0, 30, 0, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    ready(&state)?;
    let jobs = state
        .engine
        .lease(
            &worker.0,
            &req.types,
            req.queues.as_deref(),
            max_jobs as usize,
            lease_seconds as u32,
            Duration::from_secs(wait_seconds as u64),
        )
        .await?;
    Ok(envelope(StatusCode::OK, json!({ "jobs": jobs })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct HeartbeatRequest {
    lease_id: u64,
    #[serde(default)]
    progress: Option<Value>,
    #[serde(default)]
    extend_seconds: Option<i64>,
}

/// Heartbeat
///
/// Extends the lease (by `extend_seconds`, else the lease's length) and records progress.
#[utoipa::path(
    post,
    path = "/jobs/v1/worker/jobs/{id}/heartbeat",
    tag = "worker",
    operation_id = "heartbeat",
    params(("id" = Uuid, Path, description = "The job's id")),
    request_body = HeartbeatRequest,
    responses(
        (status = 200, description = "The lease's new end", body = common::openapi::Envelope<HeartbeatAnswer>),
        (status = 409, description = "The lease expired, was cancelled, or belongs to another worker (`LEASE_LOST`); nothing was appended", body = common::openapi::ErrorEnvelope),
    )
)]
async fn heartbeat(
    State(state): State<AppState>,
    Extension(worker): Extension<WorkerIdentity>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<HeartbeatRequest>,
) -> ApiResult<Response> {
    let id = job_id(&id)?;
    let mut errors = Vec::new();
    let extend = req
        .extend_seconds
        .map(|e| range("extend_seconds", Some(e), 5, 3600, 30, &mut errors) as u32);
    if let Some(p) = &req.progress {
        check_json("progress", p, &mut errors);
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    ready(&state)?;
    let cmd = Command::Heartbeat {
        worker_id: worker.0.clone(),
        lease_id: req.lease_id,
        progress: req.progress,
        extend_seconds: extend,
    };
    let job = state
        .engine
        .act(None, id, &cmd, &Actor::worker(&worker.0), None)
        .await?;
    let expires_at = job.lease.as_ref().map(|l| l.expires_at);
    Ok(envelope(
        StatusCode::OK,
        json!({ "expires_at": expires_at, "cancel_requested": job.cancel_requested }),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CompleteRequest {
    lease_id: u64,
    #[serde(default)]
    result: Option<Value>,
}

/// Complete a job
#[utoipa::path(
    post,
    path = "/jobs/v1/worker/jobs/{id}/complete",
    tag = "worker",
    operation_id = "completeJob",
    params(("id" = Uuid, Path, description = "The job's id")),
    request_body = CompleteRequest,
    responses(
        (status = 200, description = "The job, completed", body = common::openapi::Envelope<events::Job>),
        (status = 409, description = "The lease expired, was cancelled, or belongs to another worker (`LEASE_LOST`); nothing was appended", body = common::openapi::ErrorEnvelope),
    )
)]
async fn complete(
    State(state): State<AppState>,
    Extension(worker): Extension<WorkerIdentity>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<CompleteRequest>,
) -> ApiResult<Response> {
    let id = job_id(&id)?;
    let mut errors = Vec::new();
    if let Some(r) = &req.result {
        check_json("result", r, &mut errors);
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    ready(&state)?;
    let cmd = Command::Complete {
        worker_id: worker.0.clone(),
        lease_id: req.lease_id,
        result: req.result,
    };
    let job = state
        .engine
        .act(None, id, &cmd, &Actor::worker(&worker.0), None)
        .await?;
    Ok(envelope(StatusCode::OK, job))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = FailError)]
struct ErrorBody {
    message: String,
    #[serde(default)]
    code: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct FailRequest {
    lease_id: u64,
    error: ErrorBody,
    #[serde(default)]
    retryable: Option<bool>,
    #[serde(default)]
    retry_after_seconds: Option<i64>,
}

/// Fail an attempt
///
/// Retried with backoff while attempts are left and `retryable` (default true), else
/// dead-lettered.
#[utoipa::path(
    post,
    path = "/jobs/v1/worker/jobs/{id}/fail",
    tag = "worker",
    operation_id = "failJob",
    params(("id" = Uuid, Path, description = "The job's id")),
    request_body = FailRequest,
    responses(
        (status = 200, description = "The job, scheduled for a retry or dead-lettered", body = common::openapi::Envelope<events::Job>),
        (status = 409, description = "The lease expired, was cancelled, or belongs to another worker (`LEASE_LOST`); nothing was appended", body = common::openapi::ErrorEnvelope),
    )
)]
async fn fail(
    State(state): State<AppState>,
    Extension(worker): Extension<WorkerIdentity>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<FailRequest>,
) -> ApiResult<Response> {
    let id = job_id(&id)?;
    let mut errors = Vec::new();
    if req.error.message.is_empty() || req.error.message.len() > 8192 {
        errors.push(FieldError::new("error.message", "must be 1 to 8192 bytes"));
    }
    check_text("error.message", &req.error.message, &mut errors);
    if let Some(c) = &req.error.code {
        check_name("error.code", c, &mut errors);
    }
    let retry_after = req
        .retry_after_seconds
        .map(|s| range("retry_after_seconds", Some(s), 0, 86_400, 0, &mut errors) as u32);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    ready(&state)?;
    let cmd = Command::Fail {
        worker_id: worker.0.clone(),
        lease_id: req.lease_id,
        error: ErrorInfo {
            message: req.error.message,
            code: req.error.code,
        },
        retryable: req.retryable.unwrap_or(true),
        retry_after_seconds: retry_after,
    };
    let job = state
        .engine
        .act(None, id, &cmd, &Actor::worker(&worker.0), None)
        .await?;
    Ok(envelope(StatusCode::OK, job))
}
