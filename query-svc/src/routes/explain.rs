//! `GET /jobs/v1/jobs/{id}/explain`: why a job is not running (yet), from the read model — its
//! schedule, how many of the tenant's jobs are ahead of it, whether any worker has leased its
//! type lately. Counts only ever cover the caller's own jobs.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Duration, Utc};
use common::auth::AuthUser;
use common::error::envelope;
use common::{ApiError, ApiResult};
use events::{Job, Status};
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::freshness::{stamp, wait_for};
use crate::routes::jobs::{db_error, parse_id};
use crate::startup::AppState;

/// A type with no lease for this long counts as having no worker.
pub const WORKER_SILENCE: Duration = Duration::minutes(5);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(explain))
}

fn reason(code: &str, message: String, details: Value) -> Value {
    json!({ "code": code, "message": message, "details": details })
}

/// `DEPENDENCIES_PENDING` while jobs it depends on have not completed.
async fn dependency_reasons(s: &AppState, tenant: uuid::Uuid, job: &Job) -> ApiResult<Vec<Value>> {
    if job.extras().depends_on.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "SELECT id, status FROM jobs WHERE tenant_id = $1 AND id = ANY($2) AND status <> 'completed' ORDER BY id",
    )
    .bind(tenant)
    .bind(&job.extras().depends_on[..])
    .fetch_all(&s.pool)
    .await
    .map_err(db_error)?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let waiting: Vec<Value> = rows
        .iter()
        .map(|(id, status)| json!({ "id": id, "status": status }))
        .collect();
    Ok(vec![reason(
        "DEPENDENCIES_PENDING",
        format!(
            "{} of the {} jobs it depends on have not completed",
            rows.len(),
            job.extras().depends_on.len()
        ),
        json!({ "waiting_for": waiting, "on_dependency_failure": job.extras().on_dependency_failure.unwrap_or_default() }),
    )])
}

/// `QUEUE_PAUSED` / `JOB_TYPE_PAUSED` when the tenant paused the job's queue or type.
async fn paused_reasons(s: &AppState, tenant: uuid::Uuid, job: &Job) -> ApiResult<Vec<Value>> {
    let rows: Vec<(String, String, DateTime<Utc>, Value)> = sqlx::query_as(
        "SELECT kind, name, paused_at, paused_by FROM paused
         WHERE tenant_id = $1 AND ((kind = 'queue' AND name = $2) OR (kind = 'type' AND name = $3))
         ORDER BY kind",
    )
    .bind(tenant)
    .bind(job.queue.as_str())
    .bind(job.job_type.as_str())
    .fetch_all(&s.pool)
    .await
    .map_err(db_error)?;
    Ok(rows
        .into_iter()
        .map(|(kind, name, at, by)| {
            let (code, what) = if kind == "queue" {
                ("QUEUE_PAUSED", format!("the queue {name}"))
            } else {
                ("JOB_TYPE_PAUSED", format!("the job type {name}"))
            };
            reason(
                code,
                format!("{what} is paused: its jobs are not leased until it is resumed"),
                json!({ "kind": kind, "name": name, "paused_at": at, "paused_by": by }),
            )
        })
        .collect())
}

/// Why a job is not running yet, one reason.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct Reason {
    /// `SCHEDULED`, `RETRY_BACKOFF`, `DEPENDENCIES_PENDING`, `QUEUE_PAUSED`, `JOB_TYPE_PAUSED`, `EXPIRED`, `JOBS_AHEAD`,
    /// `TENANT_LEASE_LIMIT`, `NO_WORKER_SEEN`,
    /// `LEASED`, `CANCEL_REQUESTED`, `FINISHED`, `DEAD_LETTERED`, …
    code: String,
    message: String,
    details: Value,
}

/// The answer of explain.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct Explanation {
    status: events::Status,
    reasons: Vec<Reason>,
}

/// Why is this job not running?
///
/// Its schedule or backoff, how many of the tenant's jobs are ahead of it, tenant limits
/// reached, whether any worker has leased its type lately.
#[utoipa::path(
    get,
    path = "/jobs/v1/jobs/{id}/explain",
    tag = "jobs",
    operation_id = "explainJob",
    params(("id" = uuid::Uuid, Path, description = "The job's id"), common::openapi::ReadHeaders),
    responses((status = 200, description = "The job's status and the reasons it is not running", body = common::openapi::Envelope<Explanation>))
)]
async fn explain(
    State(s): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let seq = wait_for(&s.projection, &headers).await?;
    let doc: Value = sqlx::query_scalar("SELECT doc FROM jobs WHERE id = $1 AND tenant_id = $2")
        .bind(id)
        .bind(user.tenant_id())
        .fetch_optional(&s.pool)
        .await
        .map_err(db_error)?
        .ok_or_else(ApiError::not_found)?;
    let job: Job = serde_json::from_value(doc).map_err(|e| ApiError::Internal(e.into()))?;
    let now = Utc::now();
    let status = job.status_at(now);
    let mut reasons = Vec::new();
    match status {
        Status::Expired => reasons.push(reason(
            "EXPIRED",
            "no worker started the job before its expires_at; it was discarded (retry runs it)"
                .into(),
            json!({ "expires_at": job.extras().expires_at }),
        )),
        Status::Completed | Status::Cancelled => reasons.push(reason(
            "FINISHED",
            format!("the job is {}; it runs again only if retried", status.as_str()),
            json!({ "status": status }),
        )),
        Status::DeadLettered => reasons.push(reason(
            "DEAD_LETTERED",
            "the job failed for good and waits in the dead-letter queue; retry or redrive it".into(),
            json!({ "attempts": job.attempts, "max_attempts": job.max_attempts, "last_error": job.extras().last_error }),
        )),
        Status::Leased => {
            let lease = job.lease.as_ref();
            reasons.push(reason(
                "RUNNING",
                "a worker holds the job now".into(),
                json!({ "worker_id": lease.map(|l| &l.worker_id), "expires_at": lease.map(|l| l.expires_at) }),
            ));
            if job.cancel_requested {
                reasons.push(reason(
                    "CANCEL_REQUESTED",
                    "a cancel was requested; the job ends cancelled when the worker stops or its lease ends".into(),
                    json!({}),
                ));
            }
        }
        Status::Scheduled => {
            let (code, message) = if job.attempts > 0 {
                ("RETRY_BACKOFF", "a failed attempt waits for its retry backoff")
            } else {
                ("SCHEDULED", "the job's run_at is in the future")
            };
            reasons.push(reason(
                code,
                message.into(),
                json!({ "run_at": job.run_at, "seconds_until": (job.run_at - now).num_seconds().max(0) }),
            ));
            reasons.extend(dependency_reasons(&s, user.tenant_id(), &job).await?);
            reasons.extend(paused_reasons(&s, user.tenant_id(), &job).await?);
        }
        Status::Pending => {
            reasons.extend(dependency_reasons(&s, user.tenant_id(), &job).await?);
            reasons.extend(paused_reasons(&s, user.tenant_id(), &job).await?);
            let (ahead, higher): (i64, i64) = sqlx::query_as(
                "SELECT count(*), count(*) FILTER (WHERE priority > $4) FROM jobs
                 WHERE tenant_id = $1 AND type = $2 AND id <> $3
                   AND (status = 'pending' OR (status = 'scheduled' AND run_at <= $7))
                   AND (priority > $4 OR (priority = $4 AND (run_at, created_at, id) < ($5, $6, $3)))",
            )
            .bind(user.tenant_id())
            .bind(job.job_type.as_str())
            .bind(job.id)
            .bind(job.priority as i16)
            .bind(job.run_at)
            .bind(job.created_at)
            .bind(now)
            .fetch_one(&s.pool)
            .await
            .map_err(db_error)?;
            if ahead > 0 {
                reasons.push(reason(
                    "JOBS_AHEAD",
                    format!("{ahead} of your {} jobs are ahead of it", job.job_type),
                    json!({ "jobs_ahead": ahead, "higher_priority": higher }),
                ));
            }
            let last: Option<(DateTime<Utc>,)> = sqlx::query_as("SELECT last_leased_at FROM job_type_activity WHERE type = $1")
                .bind(job.job_type.as_str())
                .fetch_optional(&s.pool)
                .await
                .map_err(db_error)?;
            let last = last.map(|(t,)| t);
            if last.is_none_or(|t| now - t > WORKER_SILENCE) {
                reasons.push(reason(
                    "NO_WORKER_SEEN",
                    format!("no worker has leased a {} job in the last {} minutes", job.job_type, WORKER_SILENCE.num_minutes()),
                    json!({ "type": job.job_type, "last_leased_at": last }),
                ));
            }
            // The tenant's concurrent-lease limit: its jobs wait while it holds that many.
            let (tier, _) = s.plans.tier(user.claims.plan_tier.as_deref());
            let overrides = crate::routes::quota::overrides(&s, user.tenant_id()).await?;
            let limit = s.plans.effective(Some(tier), overrides.as_ref()).max_concurrent_leases;
            let leased: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE tenant_id = $1 AND status = 'leased'")
                .bind(user.tenant_id())
                .fetch_one(&s.pool)
                .await
                .map_err(db_error)?;
            if leased as u64 >= limit {
                reasons.push(reason(
                    "TENANT_LEASE_LIMIT",
                    format!("your tenant already runs {leased} jobs, its limit of concurrent leases"),
                    json!({ "leased_jobs": leased, "max_concurrent_leases": limit, "plan_tier": tier }),
                ));
            }
            if reasons.is_empty() {
                reasons.push(reason("READY", "the job is next in line for a worker".into(), json!({})));
            }
        }
    }
    Ok(stamp(
        envelope(
            StatusCode::OK,
            json!({ "status": status, "reasons": reasons }),
        ),
        seq,
    ))
}
