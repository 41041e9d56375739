//! Periodic jobs, write side: `POST /jobs/v1/schedules`, `PATCH` and `DELETE
//! /jobs/v1/schedules/{id}`, and `POST .../pause` and `.../resume`.
//!
//! A schedule's state is its events on `jobs.schedules.<tenant>.<schedule>`; each command is
//! decided (`events::schedule::decide_schedule`) against the state every instance folds from
//! the stream, and appended conditionally on the schedule's last sequence: a lost race catches
//! up and decides again. Another tenant's schedule answers 404 like a missing one.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use common::auth::AuthUser;
use common::error::envelope;
use common::json::{ApiJson, OptionalJson};
use common::{ApiError, ApiResult};
use events::schedule::{
    decide_schedule, schedule_subject, LastRun, Schedule, ScheduleCommand, ScheduleEnvelope,
    ScheduleEvent, ScheduleRecorded, ScheduleRejection, ScheduleRequest, ScheduleUpdateRequest,
    ScheduleView,
};
use events::{Actor, SCHEMA_VERSION};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::routes::admin::with_seq;
use crate::routes::jobs::{parse_id, EmptyBody};
use crate::startup::AppState;
use crate::store::AppendError;

/// How many times a command is decided again after losing a race before answering 409.
const MAX_RETRIES: usize = 5;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create))
        .routes(routes!(update, delete))
        .routes(routes!(pause))
        .routes(routes!(resume))
}

fn rejection(r: ScheduleRejection) -> ApiError {
    match r {
        ScheduleRejection::NotFound => not_found(),
        ScheduleRejection::AlreadyExists => {
            ApiError::InvalidState("the schedule already exists".into())
        }
        ScheduleRejection::Validation(f) => ApiError::Validation(f),
    }
}

fn not_found() -> ApiError {
    ApiError::NotFound("schedule not found".into())
}

/// The caller's plan tier, and the largest template payload it may schedule.
fn tier_and_max_payload(state: &AppState, user: &AuthUser) -> (String, u64) {
    let tier = state
        .engine
        .plans
        .tier(user.claims.plan_tier.as_deref())
        .0
        .to_string();
    let overrides = state
        .engine
        .model()
        .overrides
        .get(&user.tenant_id())
        .cloned();
    let limits = state
        .engine
        .plans
        .effective(Some(&tier), overrides.as_ref());
    let max = limits.max_payload_bytes.min(state.max_payload_bytes as u64);
    (tier, max)
}

/// 413 when the template's payload is over the caller's limit.
fn check_payload(template: &events::validate::EnqueueRequest, max: u64) -> ApiResult<()> {
    let size = serde_json::to_vec(&template.payload).map_or(0, |b| b.len()) as u64;
    if size > max {
        return Err(ApiError::PayloadTooLarge(format!(
            "a job payload may be at most {max} bytes"
        )));
    }
    Ok(())
}

/// Waits until this instance has folded the schedule's latest event in the stream.
async fn catch_up(state: &AppState, tenant: Uuid, id: Uuid) -> ApiResult<()> {
    let stream = state
        .js
        .get_stream(events::stream::STREAM_NAME)
        .await
        .map_err(|e| ApiError::Unavailable(format!("event store: {e}")))?;
    if let Ok(m) = stream
        .get_last_raw_message_by_subject(&schedule_subject(tenant, id))
        .await
    {
        if !state.engine.wait_for(m.sequence).await {
            return Err(ApiError::Unavailable(
                "the write model is behind the event store".into(),
            ));
        }
    }
    Ok(())
}

/// Appends `events` one after the other (each conditional on the one before) and folds them
/// in. Returns the schedule after them (None once deleted) and the last sequence.
async fn append(
    state: &AppState,
    user: &AuthUser,
    id: Uuid,
    current: Option<&Schedule>,
    events: Vec<ScheduleEvent>,
) -> Result<(Option<Schedule>, u64), AppendError> {
    let traceparent = common::context::current().child_traceparent();
    let mut expected = current.map_or(0, |s| s.last_seq);
    let mut after = current.cloned();
    for event in events {
        let envelope = ScheduleEnvelope {
            event_id: crate::ids::event_id(id, expected),
            schema_version: SCHEMA_VERSION,
            tenant_id: user.tenant_id(),
            at: common::now(),
            actor: Actor::user(user.actor_id()),
            event,
        };
        let seq = state
            .store
            .append_schedule(&envelope, &traceparent, expected)
            .await?;
        let rec = ScheduleRecorded { seq, envelope };
        state.engine.schedules.fold(&rec);
        after = events::schedule::apply_schedule(after.as_ref(), &rec)
            .map_err(|e| AppendError::Other(e.to_string()))?;
        expected = seq;
    }
    Ok((after, expected))
}

/// Runs a command on an existing schedule: decide, append, and on a lost race (or a schedule
/// this instance has not seen yet) catch up and decide again.
async fn act(
    state: &AppState,
    user: &AuthUser,
    id: &str,
    cmd: ScheduleCommand,
) -> ApiResult<(Option<(Schedule, Option<LastRun>)>, Option<u64>)> {
    let id = parse_id(id).map_err(|_| not_found())?;
    let tenant = user.tenant_id();
    let mut caught_up = false;
    for _ in 0..MAX_RETRIES {
        let current = state.engine.schedules.get(tenant, id);
        let decided = decide_schedule(current.as_ref().map(|(s, _)| s), id, &cmd, common::now());
        let events = match decided {
            Ok(events) => events,
            Err(ScheduleRejection::NotFound) if !caught_up => {
                caught_up = true;
                catch_up(state, tenant, id).await?;
                continue;
            }
            Err(r) => return Err(rejection(r)),
        };
        let Some((schedule, last_run)) = current else {
            return Err(not_found());
        };
        if events.is_empty() {
            return Ok((Some((schedule, last_run)), None));
        }
        match append(state, user, id, Some(&schedule), events).await {
            Ok((after, seq)) => return Ok((after.map(|s| (s, last_run)), Some(seq))),
            Err(AppendError::Conflict) => {
                caught_up = true;
                catch_up(state, tenant, id).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::InvalidState(
        "the schedule is changing too fast; retry".into(),
    ))
}

fn answer(
    status: StatusCode,
    schedule: &Schedule,
    last_run: Option<LastRun>,
    seq: Option<u64>,
) -> Response {
    let view = schedule.view(last_run, common::now());
    let mut res = envelope(status, &view);
    if let Some(seq) = seq {
        res = with_seq(res, seq);
    }
    if let Ok(v) = HeaderValue::from_str(&schedule.version.to_string()) {
        res.headers_mut().insert(header::ETAG, v);
    }
    res
}

/// Create a schedule
///
/// A cron expression (read in `timezone`) or a fixed interval, and the job to enqueue at each
/// firing. Each slot enqueues exactly one job, however many command-svc instances run; its
/// metadata carries `schedule_id` and `fire_time`. Firings count against the tenant's limits
/// like any enqueue (a refused one is skipped and counted, not retried).
#[utoipa::path(
    post,
    path = "/jobs/v1/schedules",
    tag = "schedules",
    operation_id = "createSchedule",
    params(common::openapi::CommandHeaders),
    request_body(content = ScheduleRequest, example = json!({
        "name": "nightly report", "cron": "0 3 * * *", "timezone": "Europe/Paris",
        "catch_up": "one", "template": {"type": "report.build", "payload": {"kind": "daily"}}
    })),
    responses(
        (status = 201, description = "The schedule", body = common::openapi::Envelope<ScheduleView>,
         headers(("x-event-seq" = u64, description = "Stream sequence of the appended event"),
                 ("Location" = String, description = "/jobs/v1/schedules/{id}"))),
    )
)]
async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(req): ApiJson<ScheduleRequest>,
) -> ApiResult<Response> {
    let now = common::now();
    let (tier, max_payload) = tier_and_max_payload(&state, &user);
    let mut spec = req.validate(now).map_err(ApiError::Validation)?;
    check_payload(&spec.template.0, max_payload)?;
    spec.plan_tier = Some(tier);
    let id = crate::ids::job_id();
    let events = decide_schedule(None, id, &ScheduleCommand::Create(Box::new(spec)), now)
        .map_err(rejection)?;
    let (schedule, seq) = match append(&state, &user, id, None, events).await {
        Ok((Some(s), seq)) => (s, seq),
        Ok((None, _)) => {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "a new schedule folds to nothing"
            )))
        }
        // The subject is taken: the re-run of an idempotent request whose first run appended
        // (the id derives from the key). Answer with the schedule it created.
        Err(AppendError::Conflict) => {
            catch_up(&state, user.tenant_id(), id).await?;
            let (s, _) = state
                .engine
                .schedules
                .get(user.tenant_id(), id)
                .ok_or_else(|| ApiError::InvalidState("changed concurrently; retry".into()))?;
            let seq = s.last_seq;
            (s, seq)
        }
        Err(e) => return Err(e.into()),
    };
    let mut res = answer(StatusCode::CREATED, &schedule, None, Some(seq));
    if let Ok(v) = HeaderValue::from_str(&format!("/jobs/v1/schedules/{id}")) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

/// Change a schedule
///
/// Any of the fields of a creation but `enabled` (use pause and resume); `null` clears `name`,
/// `start_at` or `end_at`. A change of timing (cron, timezone, interval, start or end) counts
/// slots from the change on; a new template applies from the next firing.
#[utoipa::path(
    patch,
    path = "/jobs/v1/schedules/{id}",
    tag = "schedules",
    operation_id = "updateSchedule",
    params(("id" = Uuid, Path, description = "The schedule's id"), common::openapi::CommandHeaders),
    request_body(content = ScheduleUpdateRequest, example = json!({"interval_seconds": 300})),
    responses(
        (status = 200, description = "The schedule, changed", body = common::openapi::Envelope<ScheduleView>),
        (status = 409, description = "The schedule changed too often meanwhile (`INVALID_STATE`); retry", body = common::openapi::ErrorEnvelope),
    )
)]
async fn update(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ScheduleUpdateRequest>,
) -> ApiResult<Response> {
    let now = common::now();
    let (tier, max_payload) = tier_and_max_payload(&state, &user);
    let mut changes = req.validate(now).map_err(ApiError::Validation)?;
    if let Some(t) = &changes.template {
        check_payload(&t.0, max_payload)?;
    }
    changes.plan_tier = Some(tier);
    let (after, seq) = act(
        &state,
        &user,
        &id,
        ScheduleCommand::Update(Box::new(changes)),
    )
    .await?;
    let (schedule, last_run) = after.ok_or_else(not_found)?;
    Ok(answer(StatusCode::OK, &schedule, last_run, seq))
}

/// The answer of a delete.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct Deleted {
    id: Uuid,
    deleted: bool,
}

/// Delete a schedule
///
/// No more firings; the jobs it enqueued stay, and its events stay in the stream.
#[utoipa::path(
    delete,
    path = "/jobs/v1/schedules/{id}",
    tag = "schedules",
    operation_id = "deleteSchedule",
    params(("id" = Uuid, Path, description = "The schedule's id"), common::openapi::CommandHeaders),
    responses(
        (status = 200, description = "Deleted", body = common::openapi::Envelope<Deleted>),
        (status = 409, description = "The schedule changed too often meanwhile (`INVALID_STATE`); retry", body = common::openapi::ErrorEnvelope),
    )
)]
async fn delete(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (_, seq) = act(&state, &user, &id, ScheduleCommand::Delete).await?;
    let mut res = envelope(StatusCode::OK, json!({ "id": id, "deleted": true }));
    if let Some(seq) = seq {
        res = with_seq(res, seq);
    }
    Ok(res)
}

async fn toggle(
    state: &AppState,
    user: &AuthUser,
    id: &str,
    cmd: ScheduleCommand,
) -> ApiResult<Response> {
    let (after, seq) = act(state, user, id, cmd).await?;
    let (schedule, last_run) = after.ok_or_else(not_found)?;
    Ok(answer(StatusCode::OK, &schedule, last_run, seq))
}

/// Pause a schedule
///
/// No firing until resumed; the slots that pass meanwhile are not caught up later. Pausing a
/// paused schedule changes nothing.
#[utoipa::path(
    post,
    path = "/jobs/v1/schedules/{id}/pause",
    tag = "schedules",
    operation_id = "pauseSchedule",
    params(("id" = Uuid, Path, description = "The schedule's id"), common::openapi::CommandHeaders),
    request_body(content = Option<EmptyBody>, description = "Optional, empty"),
    responses(
        (status = 200, description = "The schedule, paused", body = common::openapi::Envelope<ScheduleView>),
        (status = 409, description = "The schedule changed too often meanwhile (`INVALID_STATE`); retry", body = common::openapi::ErrorEnvelope),
    )
)]
async fn pause(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    OptionalJson(_): OptionalJson<EmptyBody>,
) -> ApiResult<Response> {
    toggle(&state, &user, &id, ScheduleCommand::Pause).await
}

/// Resume a schedule
///
/// Fires again from now on (the slots of the pause are not fired).
#[utoipa::path(
    post,
    path = "/jobs/v1/schedules/{id}/resume",
    tag = "schedules",
    operation_id = "resumeSchedule",
    params(("id" = Uuid, Path, description = "The schedule's id"), common::openapi::CommandHeaders),
    request_body(content = Option<EmptyBody>, description = "Optional, empty"),
    responses(
        (status = 200, description = "The schedule, enabled", body = common::openapi::Envelope<ScheduleView>),
        (status = 409, description = "The schedule changed too often meanwhile (`INVALID_STATE`); retry", body = common::openapi::ErrorEnvelope),
    )
)]
async fn resume(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    OptionalJson(_): OptionalJson<EmptyBody>,
) -> ApiResult<Response> {
    toggle(&state, &user, &id, ScheduleCommand::Resume).await
}
