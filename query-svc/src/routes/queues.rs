//! `GET /jobs/v1/queues` and `GET /jobs/v1/types`: the caller's queues (or job types) with how
//! many jobs wait or run in each, and whether it is paused (and since when, by whom). A paused
//! queue with no jobs is listed too.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use common::auth::AuthUser;
use common::error::envelope;
use common::ApiResult;
use serde::Serialize;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::freshness::{stamp, wait_for};
use crate::routes::jobs::db_error;
use crate::startup::AppState;

/// At most this many queues (or types) are listed, by name.
pub const MAX_LISTED: i64 = 1000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_queues))
        .routes(routes!(list_types))
}

/// Jobs waiting or running.
#[derive(Serialize, utoipa::ToSchema)]
struct Depth {
    /// Waiting for `run_at` or a retry backoff.
    scheduled: i64,
    /// Ready for a worker (not leased while paused).
    pending: i64,
    leased: i64,
}

/// One queue (or job type) of the caller's.
#[derive(Serialize, utoipa::ToSchema)]
struct QueueInfo {
    name: String,
    depth: Depth,
    paused: bool,
    paused_at: Option<DateTime<Utc>>,
    /// Who paused it: `{kind, id}`.
    #[schema(value_type = Option<events::Actor>)]
    paused_by: Option<Value>,
}

async fn list(s: &AppState, user: &AuthUser, kind: &str) -> ApiResult<Vec<QueueInfo>> {
    // `kind` is one of two constants: the column and the pause kind.
    let column = if kind == "queue" { "queue" } else { "type" };
    let sql = format!(
        "WITH depth AS (
             SELECT {column} AS name,
                    count(*) FILTER (WHERE status = 'scheduled' AND run_at > $2) AS scheduled,
                    count(*) FILTER (WHERE status = 'pending' OR (status = 'scheduled' AND run_at <= $2)) AS pending,
                    count(*) FILTER (WHERE status = 'leased') AS leased
             FROM jobs WHERE tenant_id = $1 AND status IN ('scheduled', 'pending', 'leased')
             GROUP BY {column}),
         p AS (SELECT name, paused_at, paused_by FROM paused WHERE tenant_id = $1 AND kind = $3)
         SELECT coalesce(depth.name, p.name), coalesce(scheduled, 0), coalesce(pending, 0),
                coalesce(leased, 0), p.paused_at, p.paused_by
         FROM depth FULL JOIN p ON p.name = depth.name
         ORDER BY 1 LIMIT $4"
    );
    type Row = (String, i64, i64, i64, Option<DateTime<Utc>>, Option<Value>);
    let rows: Vec<Row> = sqlx::query_as(&sql)
        .bind(user.tenant_id())
        .bind(Utc::now())
        .bind(kind)
        .bind(MAX_LISTED)
        .fetch_all(&s.pool)
        .await
        .map_err(db_error)?;
    Ok(rows
        .into_iter()
        .map(
            |(name, scheduled, pending, leased, paused_at, paused_by)| QueueInfo {
                name,
                depth: Depth {
                    scheduled,
                    pending,
                    leased,
                },
                paused: paused_at.is_some(),
                paused_at,
                paused_by,
            },
        )
        .collect())
}

/// The caller's queues
///
/// Every queue with jobs waiting or running, and every paused one, by name (at most 1000).
#[utoipa::path(
    get,
    path = "/jobs/v1/queues",
    tag = "queues",
    operation_id = "listQueues",
    params(common::openapi::ReadHeaders),
    responses((status = 200, description = "The queues", body = common::openapi::Envelope<Vec<QueueInfo>>))
)]
async fn list_queues(
    State(s): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let seq = wait_for(&s.projection, &headers).await?;
    let queues = list(&s, &user, "queue").await?;
    Ok(stamp(envelope(StatusCode::OK, queues), seq))
}

/// The caller's job types
///
/// Every job type with jobs waiting or running, and every paused one, by name (at most 1000).
#[utoipa::path(
    get,
    path = "/jobs/v1/types",
    tag = "queues",
    operation_id = "listJobTypes",
    params(common::openapi::ReadHeaders),
    responses((status = 200, description = "The job types", body = common::openapi::Envelope<Vec<QueueInfo>>))
)]
async fn list_types(
    State(s): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let seq = wait_for(&s.projection, &headers).await?;
    let types = list(&s, &user, "type").await?;
    Ok(stamp(envelope(StatusCode::OK, types), seq))
}
