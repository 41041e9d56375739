//! The dead-letter queue's write side: retry one job, redrive many (with a dry run), purge.
//! Each job is requeued exactly once: every requeue is a conditional append, so a retried
//! request or two overlapping redrives find the job no longer dead-lettered.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use common::auth::AuthUser;
use common::error::envelope;
use common::json::{ApiJson, OptionalJson};
use common::{ApiError, ApiResult};
use events::validate::{check_name, FieldError};
use events::{Actor, Command, Job};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::routes::jobs::{run, EmptyBody};
use crate::startup::AppState;

pub const MAX_IDS: usize = 1000;
const SAMPLE: usize = 10;
const CONCURRENCY: usize = 32;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(redrive))
        .routes(routes!(retry_one))
        .routes(routes!(purge))
}

/// Retry one dead-lettered job
#[utoipa::path(
    post,
    path = "/jobs/v1/dlq/{id}/retry",
    tag = "dead-letter queue",
    operation_id = "retryDeadLetter",
    params(("id" = Uuid, Path, description = "The job's id"), crate::routes::jobs::IfMatch, common::openapi::CommandHeaders),
    request_body(content = Option<EmptyBody>, description = "Optional, empty"),
    responses(
        (status = 200, description = "The job, pending again", body = common::openapi::Envelope<Job>),
        (status = 409, description = "The job is not dead-lettered (`INVALID_STATE`)", body = common::openapi::ErrorEnvelope),
        (status = 412, description = "`If-Match` names an older version", body = common::openapi::ErrorEnvelope),
    )
)]
async fn retry_one(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    headers: HeaderMap,
    OptionalJson(_): OptionalJson<EmptyBody>,
) -> ApiResult<Response> {
    run(&state, &user, &id, &headers, Command::Redrive).await
}

/// The answer of purge.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct Purged {
    id: Uuid,
    purged: bool,
}

/// Purge a dead-lettered job
///
/// Its payload is dropped from the read model; its history stays (a `JobPurged` event).
#[utoipa::path(
    delete,
    path = "/jobs/v1/dlq/{id}",
    tag = "dead-letter queue",
    operation_id = "purgeDeadLetter",
    params(("id" = Uuid, Path, description = "The job's id"), crate::routes::jobs::IfMatch, common::openapi::CommandHeaders),
    responses(
        (status = 200, description = "Purged", body = common::openapi::Envelope<Purged>),
        (status = 409, description = "The job is not dead-lettered (`INVALID_STATE`)", body = common::openapi::ErrorEnvelope),
        (status = 412, description = "`If-Match` names an older version", body = common::openapi::ErrorEnvelope),
    )
)]
async fn purge(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let res = run(&state, &user, &id, &headers, Command::Purge).await?;
    let seq = res.headers().get("x-event-seq").cloned();
    let mut out = envelope(StatusCode::OK, json!({ "id": id, "purged": true }));
    if let Some(seq) = seq {
        out.headers_mut().insert("x-event-seq", seq);
    }
    Ok(out)
}

/// Which dead-lettered jobs to requeue: all of the caller's that match every filter given.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RedriveRequest {
    #[serde(default, rename = "type")]
    job_type: Option<String>,
    #[serde(default)]
    queue: Option<String>,
    #[serde(default)]
    ids: Option<Vec<Uuid>>,
    #[serde(default)]
    error_code: Option<String>,
    #[serde(default)]
    dead_lettered_after: Option<DateTime<Utc>>,
    #[serde(default)]
    dead_lettered_before: Option<DateTime<Utc>>,
    #[serde(default)]
    dry_run: bool,
}

impl RedriveRequest {
    fn matches(&self, j: &Job) -> bool {
        self.job_type.as_ref().is_none_or(|t| *t == j.job_type)
            && self.queue.as_ref().is_none_or(|q| *q == j.queue)
            && self.ids.as_ref().is_none_or(|ids| ids.contains(&j.id))
            && self.error_code.as_ref().is_none_or(|c| {
                j.extras().last_error.as_ref().and_then(|e| e.code.as_ref()) == Some(c)
            })
            && self
                .dead_lettered_after
                .is_none_or(|t| j.extras().dead_lettered_at.is_some_and(|d| d > t))
            && self
                .dead_lettered_before
                .is_none_or(|t| j.extras().dead_lettered_at.is_some_and(|d| d < t))
    }
}

/// What a redrive did (or, with `dry_run`, would do).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct RedriveResult {
    /// How many jobs were requeued (absent on a dry run).
    requeued: Option<u64>,
    /// Dry run: how many jobs would be requeued.
    would_requeue: Option<u64>,
    /// Dry run: up to 10 of them.
    sample: Option<Vec<Job>>,
}

/// Redrive dead-lettered jobs
///
/// Requeues every dead-lettered job of the caller that matches the filters (at most 1000 ids);
/// each exactly once, even when two redrives overlap.
#[utoipa::path(
    post,
    path = "/jobs/v1/dlq/retry",
    tag = "dead-letter queue",
    operation_id = "redriveDeadLetters",
    params(common::openapi::CommandHeaders),
    request_body = RedriveRequest,
    responses((status = 200, description = "What was requeued", body = common::openapi::Envelope<RedriveResult>))
)]
async fn redrive(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(req): ApiJson<RedriveRequest>,
) -> ApiResult<Response> {
    let mut errors = Vec::new();
    if let Some(t) = &req.job_type {
        check_name("type", t, &mut errors);
    }
    if let Some(q) = &req.queue {
        check_name("queue", q, &mut errors);
    }
    if let Some(c) = &req.error_code {
        check_name("error_code", c, &mut errors);
    }
    if req
        .ids
        .as_ref()
        .is_some_and(|ids| ids.is_empty() || ids.len() > MAX_IDS)
    {
        errors.push(FieldError::new(
            "ids",
            format!("must hold 1 to {MAX_IDS} ids when given"),
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    // Everything dead-lettered until now must be in this instance's model.
    state.engine.catch_up_all().await?;
    let tenant = user.tenant_id();
    // One table of the model at a time: every request waits for its lock, and a tenant's
    // dead-lettered jobs are found by walking every job.
    let mut candidates: Vec<Job> = Vec::new();
    for shard in 0..crate::model::JOB_SHARDS {
        let model = state.engine.model();
        candidates.extend(
            model
                .jobs_in_shard(shard)
                .filter(|j| j.tenant_id == tenant && j.status == events::Status::DeadLettered)
                .filter(|j| req.matches(j))
                .cloned(),
        );
    }
    candidates.sort_by_key(|j| (j.extras().dead_lettered_at, j.id));
    if req.dry_run {
        let would_requeue = candidates.len();
        let mut sample: Vec<Job> = candidates.into_iter().take(SAMPLE).collect();
        state.engine.with_payloads(&mut sample).await?;
        return Ok(envelope(
            StatusCode::OK,
            json!({ "would_requeue": would_requeue, "sample": sample }),
        ));
    }
    let actor = Actor::user(user.actor_id());
    let engine = state.engine.clone();
    let outcomes: Vec<Result<Job, ApiError>> = futures::stream::iter(candidates)
        .map(|j| {
            let (engine, actor) = (engine.clone(), actor.clone());
            async move {
                engine
                    .act(Some(tenant), j.id, &Command::Redrive, &actor, None)
                    .await
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut requeued = 0;
    let mut last_seq = 0;
    for o in outcomes {
        match o {
            Ok(job) => {
                requeued += 1;
                last_seq = last_seq.max(job.last_event_seq);
            }
            // Requeued (or purged) by someone else meanwhile: not ours to count.
            Err(ApiError::InvalidState(_) | ApiError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let mut res = envelope(StatusCode::OK, json!({ "requeued": requeued }));
    res.headers_mut()
        .insert("x-event-seq", axum::http::HeaderValue::from(last_seq));
    Ok(res)
}
