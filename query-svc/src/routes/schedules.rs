//! Periodic jobs, read side: `GET /jobs/v1/schedules` (the caller's, newest first, keyset
//! cursor on (created_at, id)) and `GET /jobs/v1/schedules/{id}`. `next_run_at` is computed at
//! read time from the stored definition and last run, with the same code that fires the slots
//! (`events::schedule`), since time passing is not an event.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use common::auth::AuthUser;
use common::error::{envelope, list_envelope, Page};
use common::json::ApiQuery;
use common::{ApiError, ApiResult};
use events::schedule::{LastRun, Schedule, ScheduleView};
use serde::Deserialize;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{Postgres, QueryBuilder, Row};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::freshness::{stamp, wait_for};
use crate::routes::jobs::{check_limit, db_error, DEFAULT_LIMIT, MAX_LIMIT};
use crate::startup::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get_one))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ScheduleQuery {
    /// Only enabled (true) or paused (false) schedules.
    enabled: Option<bool>,
    /// Page size (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// `page.next_cursor` of the previous page, with the same filters.
    cursor: Option<String>,
}

const COLUMNS: &str =
    "doc, created_at, id, last_run_fire_time, last_run_job_id, last_run_enqueued_at";

/// A row as the API shows it, at `now`.
fn view(row: &PgRow, now: DateTime<Utc>) -> ApiResult<ScheduleView> {
    let schedule: Schedule = serde_json::from_value(row.get::<Value, _>("doc"))
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("a stored schedule: {e}")))?;
    let last_run = match (
        row.get::<Option<DateTime<Utc>>, _>("last_run_fire_time"),
        row.get::<Option<Uuid>, _>("last_run_job_id"),
        row.get::<Option<DateTime<Utc>>, _>("last_run_enqueued_at"),
    ) {
        (Some(fire_time), Some(job_id), Some(enqueued_at)) => Some(LastRun {
            fire_time,
            job_id,
            enqueued_at,
        }),
        _ => None,
    };
    Ok(schedule.view(last_run, now))
}

/// List schedules
///
/// The caller's schedules, newest first.
#[utoipa::path(
    get,
    path = "/jobs/v1/schedules",
    tag = "schedules",
    operation_id = "listSchedules",
    params(ScheduleQuery, common::openapi::ReadHeaders),
    responses((status = 200, description = "A page of schedules", body = common::openapi::ListEnvelope<ScheduleView>))
)]
async fn list(
    State(s): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<ScheduleQuery>,
) -> ApiResult<Response> {
    let limit = check_limit(q.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let scope = format!("schedules|{:?}", q.enabled);
    let after: Option<(DateTime<Utc>, Uuid)> = q
        .cursor
        .as_deref()
        .map(|c| s.cursor.decode(c, &scope))
        .transpose()?;
    let seq = wait_for(&s.projection, &headers).await?;
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(format!(
        "SELECT {COLUMNS} FROM schedules WHERE tenant_id = "
    ));
    qb.push_bind(user.tenant_id());
    if let Some(enabled) = q.enabled {
        qb.push(" AND enabled = ").push_bind(enabled);
    }
    if let Some((at, id)) = after {
        qb.push(" AND (created_at, id) < (")
            .push_bind(at)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    qb.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(limit + 1);
    let rows = qb.build().fetch_all(&s.pool).await.map_err(db_error)?;
    let has_more = rows.len() as i64 > limit;
    let now = Utc::now();
    let mut items = Vec::new();
    let mut last = None;
    for row in rows.iter().take(limit as usize) {
        last = Some((
            row.get::<DateTime<Utc>, _>("created_at"),
            row.get::<Uuid, _>("id"),
        ));
        items.push(view(row, now)?);
    }
    let next_cursor = if has_more {
        last.map(|p| s.cursor.encode(&p, &scope))
    } else {
        None
    };
    Ok(stamp(
        list_envelope(
            items,
            Page {
                next_cursor,
                has_more,
                limit: limit as u32,
            },
        ),
        seq,
    ))
}

/// Get a schedule
///
/// With `next_run_at` (computed now) and `last_run` (its latest firing).
#[utoipa::path(
    get,
    path = "/jobs/v1/schedules/{id}",
    tag = "schedules",
    operation_id = "getSchedule",
    params(("id" = Uuid, Path, description = "The schedule's id"), common::openapi::ReadHeaders),
    responses((status = 200, description = "The schedule", body = common::openapi::Envelope<ScheduleView>))
)]
async fn get_one(
    State(s): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let not_found = || ApiError::NotFound("schedule not found".into());
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let seq = wait_for(&s.projection, &headers).await?;
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM schedules WHERE id = $1 AND tenant_id = $2"
    ))
    .bind(id)
    .bind(user.tenant_id())
    .fetch_optional(&s.pool)
    .await
    .map_err(db_error)?
    .ok_or_else(not_found)?;
    Ok(stamp(
        envelope(StatusCode::OK, view(&row, Utc::now())?),
        seq,
    ))
}
