//! What a person does to a job after enqueueing it: `PATCH /jobs/v1/jobs/{id}`, `cancel`,
//! `retry`. The rules are `events::decide`'s; `If-Match` carries the version the caller saw.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{patch, post};
use axum::Router;
use common::auth::AuthUser;
use common::error::envelope;
use common::json::{if_match, ApiJson, OptionalJson};
use common::{ApiError, ApiResult};
use events::validate::UpdateRequest;
use events::{Actor, Command, Job};
use serde::Deserialize;
use uuid::Uuid;

use crate::startup::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/jobs/v1/jobs/{id}", patch(update))
        .route("/jobs/v1/jobs/{id}/cancel", post(cancel))
        .route("/jobs/v1/jobs/{id}/retry", post(retry))
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelRequest {
    #[serde(default)]
    reason: Option<String>,
}

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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmptyBody {}

async fn retry(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    headers: HeaderMap,
    OptionalJson(_): OptionalJson<EmptyBody>,
) -> ApiResult<Response> {
    run(&state, &user, &id, &headers, Command::Retry).await
}
