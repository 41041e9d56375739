//! The dead-letter queue's read side: `GET /jobs/v1/dlq` (filters, keyset cursor on
//! (dead_lettered_at, id), newest first) and `GET /jobs/v1/dlq/{id}`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use common::auth::AuthUser;
use common::error::{direct_list_envelope, envelope, Page};
use common::json::ApiQuery;
use common::{ApiError, ApiResult};
use events::validate::check_name;
use serde::Deserialize;
use serde_json::Value;
use sqlx::{Postgres, QueryBuilder, Row};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::freshness::{stamp, wait_for};
use crate::routes::jobs::{check_limit, db_error, parse_id, stored_doc, DEFAULT_LIMIT, MAX_LIMIT};
use crate::startup::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get_one))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DlqQuery {
    /// Only jobs of this type.
    #[serde(rename = "type")]
    #[param(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    job_type: Option<String>,
    /// Only jobs in this queue.
    #[param(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    queue: Option<String>,
    /// Page size (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// `page.next_cursor` of the previous page, with the same filters.
    cursor: Option<String>,
}

/// List the dead-letter queue
///
/// The caller's dead-lettered jobs, most recently dead-lettered first.
#[utoipa::path(
    get,
    path = "/jobs/v1/dlq",
    tag = "dead-letter queue",
    operation_id = "listDeadLetters",
    params(DlqQuery, common::openapi::ReadHeaders),
    responses((status = 200, description = "A page of dead-lettered jobs", body = common::openapi::ListEnvelope<events::Job>))
)]
async fn list(
    State(s): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<DlqQuery>,
) -> ApiResult<Response> {
    let mut errors = Vec::new();
    if let Some(t) = &q.job_type {
        check_name("type", t, &mut errors);
    }
    if let Some(t) = &q.queue {
        check_name("queue", t, &mut errors);
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let limit = check_limit(q.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let scope = format!("dlq|{:?}|{:?}", q.job_type, q.queue);
    let after: Option<(DateTime<Utc>, Uuid)> = q
        .cursor
        .as_deref()
        .map(|c| s.cursor.decode(c, &scope))
        .transpose()?;
    let seq = wait_for(&s.projection, &headers).await?;
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(
        "SELECT doc, dead_lettered_at, id FROM jobs WHERE status = 'dead_lettered' AND tenant_id = ",
    );
    qb.push_bind(user.tenant_id());
    if let Some(t) = &q.job_type {
        qb.push(" AND type = ").push_bind(t.clone());
    }
    if let Some(t) = &q.queue {
        qb.push(" AND queue = ").push_bind(t.clone());
    }
    if let Some((at, id)) = after {
        qb.push(" AND (dead_lettered_at, id) < (")
            .push_bind(at)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    qb.push(" ORDER BY dead_lettered_at DESC, id DESC LIMIT ")
        .push_bind(limit + 1);
    let rows = qb.build().fetch_all(&s.pool).await.map_err(db_error)?;
    let has_more = rows.len() as i64 > limit;
    let mut items = Vec::new();
    let mut last = None;
    for row in rows.into_iter().take(limit as usize) {
        last = Some((
            row.get::<DateTime<Utc>, _>("dead_lettered_at"),
            row.get::<Uuid, _>("id"),
        ));
        items.push(stored_doc(&row));
    }
    let next_cursor = if has_more {
        last.map(|p| s.cursor.encode(&p, &scope))
    } else {
        None
    };
    Ok(stamp(
        direct_list_envelope(
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

/// Get one dead-lettered job
#[utoipa::path(
    get,
    path = "/jobs/v1/dlq/{id}",
    tag = "dead-letter queue",
    operation_id = "getDeadLetter",
    params(("id" = uuid::Uuid, Path, description = "The job's id"), common::openapi::ReadHeaders),
    responses((status = 200, description = "The dead-lettered job", body = common::openapi::Envelope<events::Job>))
)]
async fn get_one(
    State(s): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let seq = wait_for(&s.projection, &headers).await?;
    let doc: Value = sqlx::query_scalar(
        "SELECT doc FROM jobs WHERE id = $1 AND tenant_id = $2 AND status = 'dead_lettered'",
    )
    .bind(id)
    .bind(user.tenant_id())
    .fetch_optional(&s.pool)
    .await
    .map_err(db_error)?
    .ok_or_else(|| ApiError::NotFound("no such job in the dead-letter queue".into()))?;
    Ok(stamp(envelope(StatusCode::OK, doc), seq))
}
