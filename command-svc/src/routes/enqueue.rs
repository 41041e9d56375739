//! `POST /jobs/v1/enqueue` and `POST /jobs/v1/enqueue/batch`.
//!
//! Each job is checked, decided (`events::decide`) and appended as a `JobEnqueued` event on a
//! new subject (expected last sequence 0); the answer is the job as `events::apply` folds it,
//! with the event's stream sequence in `x-event-seq`. A batch is all or none.

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use common::auth::AuthUser;
use common::error::envelope;
use common::json::ApiJson;
use common::{ApiError, ApiResult};
use events::validate::{EnqueueRequest, EnqueueSpec, FieldError};
use events::{apply, decide, Actor, Command, Envelope, Job, Recorded, SCHEMA_VERSION};
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::startup::AppState;
use crate::store::AppendError;
use common::plans::Limits;

/// What `Retry-After` says when the active-jobs quota is full: jobs finish at their own pace.
const ACTIVE_RETRY_AFTER: u64 = 5;

pub const MAX_BATCH: usize = 500;

/// `max_payload_bytes` and `max_batch_body_bytes` bound the bodies (see `Config`).
pub fn router(max_payload_bytes: usize, max_batch_body_bytes: usize) -> OpenApiRouter<AppState> {
    // The single-job body may carry the largest payload plus the other fields.
    let single_limit = max_payload_bytes + 64 * 1024;
    let (schemas, paths, single) = routes!(enqueue);
    let single = (
        schemas,
        paths,
        single.layer(DefaultBodyLimit::max(single_limit)),
    );
    let (schemas, paths, batch) = routes!(enqueue_batch);
    let batch = (
        schemas,
        paths,
        batch.layer(DefaultBodyLimit::max(max_batch_body_bytes)),
    );
    OpenApiRouter::new().routes(single).routes(batch)
}

/// The answer of a batch: every job, in the order sent.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct Batch {
    jobs: Vec<Job>,
}

/// Up to 500 jobs, enqueued all or none.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    jobs: Vec<EnqueueRequest>,
}

/// Checks one request and turns it into the first event of a new job.
/// The caller's plan tier and effective limits.
fn tenancy(state: &AppState, user: &AuthUser) -> (String, Limits) {
    let (tier, _) = state.engine.plans.tier(user.claims.plan_tier.as_deref());
    let tier = tier.to_string();
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
    (tier, limits)
}

/// Checks one request and turns it into the first event of a new job.
fn new_job(
    user: &AuthUser,
    req: EnqueueRequest,
    prefix: &str,
    now: chrono::DateTime<chrono::Utc>,
    (tier, max_payload): (&str, usize),
) -> Result<Envelope, Vec<FieldError>> {
    let mut spec: EnqueueSpec = req.validate(now, prefix)?;
    let size = serde_json::to_vec(&spec.payload).map_or(0, |b| b.len());
    if size > max_payload {
        return Err(vec![FieldError::new(
            format!("{prefix}payload"),
            "too large",
        )]);
    }
    spec.plan_tier = Some(tier.to_string());
    let mut events = decide(None, &Command::Enqueue(spec), now).map_err(|r| match r {
        events::Rejection::Validation(f) => f,
        other => vec![FieldError::new("body", other.to_string())],
    })?;
    let job_id = crate::ids::job_id();
    Ok(Envelope {
        event_id: crate::ids::event_id(job_id, 0),
        schema_version: SCHEMA_VERSION,
        tenant_id: user.tenant_id(),
        job_id,
        at: now,
        actor: Actor::user(user.actor_id()),
        prev_hash: None,
        event: events.remove(0),
    })
}

/// Checks a new job's dependencies: each must be one of the tenant's jobs. Those already
/// completed are dropped (nothing to wait for); one that already ended otherwise makes the job
/// unable to run under the `cancel` policy, which is refused (under `run_anyway` it is dropped).
async fn check_dependencies(
    state: &AppState,
    env: &mut Envelope,
    prefix: &str,
    errors: &mut Vec<FieldError>,
) -> ApiResult<()> {
    let events::JobEvent::Enqueued {
        depends_on,
        on_dependency_failure,
        ..
    } = &mut env.event
    else {
        return Ok(());
    };
    let run_anyway = *on_dependency_failure == Some(events::DependencyFailure::RunAnyway);
    let mut waiting = Vec::with_capacity(depends_on.len());
    for dep in depends_on.iter() {
        let field = format!("{prefix}depends_on");
        match state
            .engine
            .current_state(Some(env.tenant_id), *dep)
            .await?
        {
            None => errors.push(FieldError::new(field, format!("no such job: {dep}"))),
            Some(j) if j.status == events::Status::Completed => {}
            Some(j) if j.status.is_terminal() => {
                if !run_anyway {
                    errors.push(FieldError::new(
                        field,
                        format!(
                            "job {dep} already ended {}: this job could never run (use on_dependency_failure run_anyway)",
                            j.status.as_str()
                        ),
                    ));
                }
            }
            Some(_) => waiting.push(*dep),
        }
    }
    if waiting.is_empty() {
        *on_dependency_failure = None;
    }
    *depends_on = waiting;
    Ok(())
}

/// The tenant's active-jobs quota and enqueue rate, for `n` new jobs. Nothing is appended when
/// either says no.
fn admit(state: &AppState, user: &AuthUser, limits: &Limits, n: u64) -> ApiResult<()> {
    let active = state.engine.model().counts(&user.tenant_id()).active;
    if active + n > limits.max_active_jobs {
        return Err(ApiError::QuotaExceeded {
            message: format!(
                "the tenant has {active} active jobs (scheduled, pending or leased); its limit is {}",
                limits.max_active_jobs
            ),
            retry_after: ACTIVE_RETRY_AFTER,
        });
    }
    state
        .engine
        .rate
        .take(user.tenant_id(), n, limits, std::time::Instant::now())
        .map_err(|retry_after| ApiError::RateLimited {
            message: format!(
                "the tenant may enqueue {} jobs per second",
                limits.enqueue_per_second
            ),
            retry_after,
        })
}

fn payload_too_large(errors: &[FieldError]) -> bool {
    errors
        .iter()
        .any(|e| e.field.ends_with("payload") && e.message == "too large")
}

fn reject(errors: Vec<FieldError>, max: usize) -> ApiError {
    if payload_too_large(&errors) {
        return ApiError::PayloadTooLarge(format!("a job payload may be at most {max} bytes"));
    }
    ApiError::Validation(errors)
}

fn folded(env: Envelope, seq: u64) -> ApiResult<Job> {
    apply(None, &Recorded { seq, envelope: env })
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("the new job does not fold: {e}")))
}

fn with_seq(mut res: Response, seq: u64) -> Response {
    res.headers_mut()
        .insert("x-event-seq", HeaderValue::from(seq));
    res
}

/// Enqueue a job
///
/// Appends a `JobEnqueued` event; the answer is the job as that event folds. `pending` when
/// `run_at` has come, else `scheduled`.
#[utoipa::path(
    post,
    path = "/jobs/v1/enqueue",
    tag = "jobs",
    operation_id = "enqueueJob",
    params(common::openapi::CommandHeaders),
    request_body(content = EnqueueRequest, example = json!({"type": "email.send", "payload": {"to": "user@example.com", "template": "welcome"}, "priority": 5})),
    responses(
        (status = 201, description = "The job, enqueued (with `deduplicated: false` when `unique` was given)", body = common::openapi::Envelope<Job>,
         headers(("x-event-seq" = u64, description = "Stream sequence of the appended event; send it as x-min-event-seq on a later read"))),
        (status = 200, description = "`unique` was given and a job holding the key exists: that job, with `deduplicated: true`; nothing was enqueued", body = common::openapi::Envelope<Job>),
        (status = 429, description = "The tenant's active-jobs quota is full (`QUOTA_EXCEEDED`) or its enqueue rate is exceeded (`RATE_LIMITED`); `Retry-After` says when to retry", body = common::openapi::ErrorEnvelope,
         headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
    )
)]
async fn enqueue(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(req): ApiJson<EnqueueRequest>,
) -> ApiResult<Response> {
    let now = common::now();
    let (tier, limits) = tenancy(&state, &user);
    let max = (limits.max_payload_bytes as usize).min(state.max_payload_bytes);
    let mut env = new_job(&user, req, "", now, (&tier, max)).map_err(|e| reject(e, max))?;
    let mut errors = Vec::new();
    check_dependencies(&state, &mut env, "", &mut errors).await?;
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    admit(&state, &user, &limits, 1)?;
    let unique = match &env.event {
        events::JobEvent::Enqueued { unique, .. } => unique.clone(),
        _ => None,
    };
    if let Some(spec) = &unique {
        let claimed = crate::unique::claim(&state, env.tenant_id, spec, env.job_id, now).await?;
        if let crate::unique::Claimed::Held(job) = claimed {
            return Ok(deduplicated(&job, true, StatusCode::OK));
        }
    }
    let traceparent = common::context::current().child_traceparent();
    let _own = state.engine.own([env.job_id]);
    let seq = match state.store.append(&env, &traceparent, 0).await {
        Ok(seq) => seq,
        // The job's subject is taken: this is the re-run of an idempotent request whose first
        // run appended (the ids derive from the key). Answer with the job it created.
        Err(AppendError::Conflict) => {
            let job = state
                .engine
                .load(env.tenant_id, env.job_id)
                .await?
                .ok_or_else(|| ApiError::InvalidState("changed concurrently; retry".into()))?;
            return Ok(created(&job));
        }
        Err(e) => return Err(e.into()),
    };
    let job = folded(env, seq)?;
    // Into this instance's write model at once: a worker long-polling here is woken now.
    state.engine.enqueued(&tier, [job.clone()]);
    if unique.is_some() {
        return Ok(deduplicated(&job, false, StatusCode::CREATED));
    }
    Ok(created(&job))
}

/// The answer to a unique enqueue: the job with `deduplicated` (true: an existing job holds the
/// key and nothing was enqueued).
fn deduplicated(job: &Job, dedup: bool, status: StatusCode) -> Response {
    let mut data = serde_json::to_value(job).expect("a job serializes");
    data["deduplicated"] = json!(dedup);
    let mut res = with_seq(envelope(status, data), job.last_event_seq);
    if let Ok(v) = HeaderValue::from_str(&format!("/jobs/v1/jobs/{}", job.id)) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

fn created(job: &Job) -> Response {
    let location = format!("/jobs/v1/jobs/{}", job.id);
    let mut res = with_seq(envelope(StatusCode::CREATED, job), job.last_event_seq);
    if let Ok(v) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

/// Enqueue a batch of jobs
///
/// Up to 500 jobs, all or none (one atomic append); a problem with any job refuses the batch and
/// names it (`jobs[3].priority`).
#[utoipa::path(
    post,
    path = "/jobs/v1/enqueue/batch",
    tag = "jobs",
    operation_id = "enqueueBatch",
    params(common::openapi::CommandHeaders),
    request_body = BatchRequest,
    responses(
        (status = 201, description = "Every job, enqueued", body = common::openapi::Envelope<Batch>),
        (status = 429, description = "The tenant's active-jobs quota is full (`QUOTA_EXCEEDED`) or its enqueue rate is exceeded (`RATE_LIMITED`); `Retry-After` says when to retry", body = common::openapi::ErrorEnvelope,
         headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
    )
)]
async fn enqueue_batch(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(req): ApiJson<BatchRequest>,
) -> ApiResult<Response> {
    let n = req.jobs.len();
    if n == 0 || n > MAX_BATCH {
        return Err(ApiError::validation(
            "jobs",
            format!("must hold 1 to {MAX_BATCH} jobs"),
        ));
    }
    let now = common::now();
    let (tier, limits) = tenancy(&state, &user);
    let max = (limits.max_payload_bytes as usize).min(state.max_payload_bytes);
    let mut envs = Vec::with_capacity(n);
    let mut errors = Vec::new();
    for (i, r) in req.jobs.into_iter().enumerate() {
        if r.unique.is_some() {
            errors.push(FieldError::new(
                format!("jobs[{i}].unique"),
                "is not supported in a batch: enqueue unique jobs one by one",
            ));
            continue;
        }
        match new_job(&user, r, &format!("jobs[{i}]."), now, (&tier, max)) {
            Ok(env) => envs.push(env),
            Err(e) => errors.extend(e),
        }
    }
    if !errors.is_empty() {
        return Err(reject(errors, max));
    }
    for (i, env) in envs.iter_mut().enumerate() {
        check_dependencies(&state, env, &format!("jobs[{i}]."), &mut errors).await?;
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    admit(&state, &user, &limits, n as u64)?;
    let traceparent = common::context::current().child_traceparent();
    let _own = state.engine.own(envs.iter().map(|e| e.job_id));
    let seqs = match state.store.append_new_jobs(&envs, &traceparent).await {
        Ok(seqs) => seqs,
        // As for one job: the re-run of an idempotent batch whose first run was stored.
        Err(AppendError::Conflict) => {
            let mut jobs = Vec::with_capacity(envs.len());
            for env in &envs {
                match state.engine.load(env.tenant_id, env.job_id).await? {
                    Some(j) => jobs.push(j),
                    None => {
                        return Err(ApiError::InvalidState("changed concurrently; retry".into()))
                    }
                }
            }
            let last = jobs.iter().map(|j| j.last_event_seq).max().unwrap_or(0);
            return Ok(with_seq(
                envelope(StatusCode::CREATED, json!({ "jobs": jobs })),
                last,
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let last = *seqs.last().unwrap_or(&0);
    let jobs = envs
        .into_iter()
        .zip(seqs)
        .map(|(env, seq)| folded(env, seq))
        .collect::<ApiResult<Vec<_>>>()?;
    state.engine.enqueued(&tier, jobs.iter().cloned());
    Ok(with_seq(envelope(StatusCode::CREATED, json!({ "jobs": jobs })), last).into_response())
}
