//! Admin reads (role admin): a tenant's overrides and the workers registry.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use common::auth::AuthUser;
use common::error::{envelope, list_envelope, Page};
use common::json::ApiQuery;
use common::{ApiError, ApiResult};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::Row;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::freshness::{stamp, wait_for};
use crate::routes::jobs::{check_limit, db_error, DEFAULT_LIMIT, MAX_LIMIT};
use crate::startup::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_overrides))
        .routes(routes!(list_workers))
        .routes(routes!(get_worker))
}

/// A tenant's limit overrides.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct TenantOverrides {
    tenant_id: Uuid,
    /// Empty when none are set.
    overrides: events::platform::LimitOverrides,
    updated_at: Option<DateTime<Utc>>,
    #[schema(value_type = Option<events::Actor>)]
    updated_by: Option<Value>,
}

/// A worker the service has seen.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct WorkerInfo {
    worker_id: String,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    /// Jobs it holds now.
    leased_jobs: i64,
    draining: bool,
}

/// A tenant's limit overrides
#[utoipa::path(
    get,
    path = "/jobs/v1/admin/tenants/{tenant_id}/overrides",
    tag = "admin",
    operation_id = "getTenantOverrides",
    params(("tenant_id" = Uuid, Path, description = "Any tenant"), common::openapi::ReadHeaders),
    responses((status = 200, description = "The overrides (empty when none)", body = common::openapi::Envelope<TenantOverrides>))
)]
async fn get_overrides(
    State(s): State<AppState>,
    _user: AuthUser,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> ApiResult<Response> {
    let tenant = Uuid::parse_str(&tenant)
        .map_err(|_| ApiError::validation("tenant_id", "must be a UUID"))?;
    let seq = wait_for(&s.projection, &headers).await?;
    let row = sqlx::query(
        "SELECT overrides, updated_at, updated_by FROM tenant_overrides WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_optional(&s.pool)
    .await
    .map_err(db_error)?;
    let body = match row {
        Some(r) => json!({
            "tenant_id": tenant,
            "overrides": r.get::<Value, _>("overrides"),
            "updated_at": r.get::<DateTime<Utc>, _>("updated_at"),
            "updated_by": r.get::<Value, _>("updated_by"),
        }),
        None => {
            json!({ "tenant_id": tenant, "overrides": {}, "updated_at": null, "updated_by": null })
        }
    };
    Ok(stamp(envelope(StatusCode::OK, body), seq))
}

const WORKER_COLUMNS: &str = "SELECT w.worker_id, w.first_seen, w.last_seen, w.draining,
        (SELECT count(*) FROM jobs j WHERE j.status = 'leased' AND j.lease_worker_id = w.worker_id) AS leased_jobs
     FROM workers w";

fn worker_json(r: &sqlx::postgres::PgRow) -> Value {
    json!({
        "worker_id": r.get::<String, _>("worker_id"),
        "first_seen": r.get::<DateTime<Utc>, _>("first_seen"),
        "last_seen": r.get::<DateTime<Utc>, _>("last_seen"),
        "leased_jobs": r.get::<i64, _>("leased_jobs"),
        "draining": r.get::<bool, _>("draining"),
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct WorkersQuery {
    /// Page size (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// `page.next_cursor` of the previous page.
    cursor: Option<String>,
}

/// The workers registry
#[utoipa::path(
    get,
    path = "/jobs/v1/admin/workers",
    tag = "admin",
    operation_id = "listWorkers",
    params(WorkersQuery, common::openapi::ReadHeaders),
    responses((status = 200, description = "A page of workers", body = common::openapi::ListEnvelope<WorkerInfo>))
)]
async fn list_workers(
    State(s): State<AppState>,
    _user: AuthUser,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<WorkersQuery>,
) -> ApiResult<Response> {
    let limit = check_limit(q.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let after: String = q
        .cursor
        .as_deref()
        .map(|c| s.cursor.decode(c, "workers"))
        .transpose()?
        .unwrap_or_default();
    let seq = wait_for(&s.projection, &headers).await?;
    let rows = sqlx::query(&format!(
        "{WORKER_COLUMNS} WHERE w.worker_id > $1 ORDER BY w.worker_id LIMIT $2"
    ))
    .bind(&after)
    .bind(limit + 1)
    .fetch_all(&s.pool)
    .await
    .map_err(db_error)?;
    let has_more = rows.len() as i64 > limit;
    let items: Vec<Value> = rows.iter().take(limit as usize).map(worker_json).collect();
    let next_cursor = if has_more {
        items
            .last()
            .and_then(|w| w["worker_id"].as_str())
            .map(|w| s.cursor.encode(&w, "workers"))
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

/// One worker
#[utoipa::path(
    get,
    path = "/jobs/v1/admin/workers/{worker_id}",
    tag = "admin",
    operation_id = "getWorker",
    params(("worker_id" = String, Path, description = "The worker's identity from its certificate"), common::openapi::ReadHeaders),
    responses((status = 200, description = "The worker", body = common::openapi::Envelope<WorkerInfo>))
)]
async fn get_worker(
    State(s): State<AppState>,
    _user: AuthUser,
    headers: HeaderMap,
    Path(worker): Path<String>,
) -> ApiResult<Response> {
    let seq = wait_for(&s.projection, &headers).await?;
    let row = sqlx::query(&format!("{WORKER_COLUMNS} WHERE w.worker_id = $1"))
        .bind(&worker)
        .fetch_optional(&s.pool)
        .await
        .map_err(db_error)?
        .ok_or_else(|| ApiError::NotFound("no such worker".into()))?;
    Ok(stamp(envelope(StatusCode::OK, worker_json(&row)), seq))
}
