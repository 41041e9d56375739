//! `GET /jobs/v1/metrics`: the caller's tenant at a glance — jobs by status and by type,
//! throughput over a window, wait and run latency percentiles — from the rollups the projector
//! maintains (never a scan of every job). Percentiles are the upper bound of the histogram
//! bucket that holds them. `projection` says how far the read model trails the stream
//! (service-wide: the projector's checkpoint against the stream's last sequence).

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Duration, Utc};
use common::auth::AuthUser;
use common::error::envelope;
use common::json::ApiQuery;
use common::{ApiError, ApiResult};
use events::Status;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::freshness::{stamp, wait_for};
use crate::routes::jobs::db_error;
use crate::startup::AppState;

pub const WINDOWS: [i64; 3] = [60, 300, 3600];

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct MetricsQuery {
    /// Throughput window in seconds: 60, 300 (default) or 3600.
    #[param(value_type = Option<i64>)]
    window: Option<i64>,
}

/// Jobs by status.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct Counts {
    scheduled: i64,
    pending: i64,
    leased: i64,
    completed: i64,
    dead_lettered: i64,
    cancelled: i64,
    /// Discarded at their `expires_at` (beyond API.md).
    expired: i64,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct TypeCounts {
    #[schema(rename = "type")]
    job_type: String,
    counts: Counts,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct Throughput {
    window_seconds: i64,
    enqueued: i64,
    completed: i64,
    failed: i64,
    dead_lettered: i64,
}

/// Percentiles in milliseconds (upper bound of the histogram bucket); null with no data.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct Latency {
    wait_p50: Option<i64>,
    wait_p95: Option<i64>,
    wait_p99: Option<i64>,
    run_p50: Option<i64>,
    run_p95: Option<i64>,
    run_p99: Option<i64>,
}

/// How far the read model trails the event stream. Service-wide (the projector is shared by
/// every tenant), not the caller's tenant only.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct Projection {
    /// The last stream sequence the read model has applied (the projector's checkpoint).
    checkpoint_seq: i64,
    /// The stream's last sequence; null when the event store did not answer within a second.
    stream_seq: Option<i64>,
    /// Events appended but not applied yet (`stream_seq − checkpoint_seq`, at least 0); null
    /// with `stream_seq`.
    lag_events: Option<i64>,
    /// When the newest job event the read model has applied happened; null before any.
    last_applied_at: Option<DateTime<Utc>>,
    /// 0 when caught up; when behind, an upper bound of how old the oldest unapplied event
    /// is (now − `last_applied_at`); null when unknown (no `stream_seq`, or behind before any
    /// job event was applied).
    lag_ms: Option<i64>,
}

/// The answer of metrics.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct TenantMetrics {
    counts: Counts,
    by_type: Vec<TypeCounts>,
    throughput: Throughput,
    latency_ms: Latency,
    projection: Projection,
}

fn zero_counts() -> Map<String, Value> {
    Status::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), json!(0)))
        .collect()
}

/// The nearest-rank percentile `p` of a histogram (bucket upper bound, count), in order.
pub fn percentile(buckets: &[(i64, i64)], p: f64) -> Option<i64> {
    let total: i64 = buckets.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return None;
    }
    let rank = ((p * total as f64).ceil() as i64).max(1);
    let mut seen = 0;
    for (le, n) in buckets {
        seen += n;
        if seen >= rank {
            return Some(*le);
        }
    }
    buckets.last().map(|(le, _)| *le)
}

/// The stream's last sequence, or None when the event store does not answer within a second
/// (the metrics still answer, without the lag).
async fn stream_seq(js: &async_nats::jetstream::Context) -> Option<u64> {
    let stream = tokio::time::timeout(
        StdDuration::from_secs(1),
        js.get_stream(events::stream::STREAM_NAME),
    )
    .await
    .ok()?
    .ok()?;
    Some(stream.cached_info().state.last_sequence)
}

/// The `projection` object: the checkpoint, the stream's head, and the lag between them.
async fn projection(s: &AppState, now: DateTime<Utc>) -> ApiResult<Value> {
    let (checkpoint, last_applied_at): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT c.last_seq,
                (SELECT e.at FROM job_events e WHERE e.seq <= c.last_seq ORDER BY e.seq DESC LIMIT 1)
         FROM projector_checkpoint c WHERE c.id = 1",
    )
    .fetch_one(&s.pool)
    .await
    .map_err(db_error)?;
    let head = stream_seq(&s.js).await;
    let lag_events = head.map(|h| (h as i64 - checkpoint).max(0));
    let lag_ms = lag_events.and_then(|n| match (n, last_applied_at) {
        (0, _) => Some(0),
        (_, Some(at)) => Some((now - at).num_milliseconds().max(0)),
        // Behind without any job event applied yet: no bound to give.
        (_, None) => None,
    });
    Ok(json!({
        "checkpoint_seq": checkpoint,
        "stream_seq": head,
        "lag_events": lag_events,
        "last_applied_at": last_applied_at,
        "lag_ms": lag_ms,
    }))
}

/// The caller's tenant at a glance
///
/// Jobs by status and type, throughput over a window, wait and run latency percentiles, and
/// how far the (service-wide) read model trails the event stream.
#[utoipa::path(
    get,
    path = "/jobs/v1/metrics",
    tag = "metrics",
    operation_id = "getMetrics",
    params(MetricsQuery, common::openapi::ReadHeaders),
    responses((status = 200, description = "The tenant's metrics", body = common::openapi::Envelope<TenantMetrics>))
)]
async fn metrics(
    State(s): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<MetricsQuery>,
) -> ApiResult<Response> {
    let window = q.window.unwrap_or(300);
    if !WINDOWS.contains(&window) {
        return Err(ApiError::validation("window", "must be 60, 300 or 3600"));
    }
    let seq = wait_for(&s.projection, &headers).await?;
    let tenant = user.tenant_id();
    let now = Utc::now();
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT type, status, n FROM tenant_type_counts WHERE tenant_id = $1 AND n <> 0",
    )
    .bind(tenant)
    .fetch_all(&s.pool)
    .await
    .map_err(db_error)?;
    // Scheduled jobs whose time has come are pending (time passing is not an event).
    let due: Vec<(String, i64)> = sqlx::query_as(
        "SELECT type, count(*) FROM jobs WHERE tenant_id = $1 AND status = 'scheduled' AND run_at <= $2 GROUP BY type",
    )
    .bind(tenant)
    .bind(now)
    .fetch_all(&s.pool)
    .await
    .map_err(db_error)?;
    let mut by_type: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let add = |m: &mut Map<String, Value>, status: &str, n: i64| {
        let cur = m.get(status).and_then(Value::as_i64).unwrap_or(0);
        m.insert(status.to_string(), json!(cur + n));
    };
    for (t, status, n) in &rows {
        add(
            by_type.entry(t.clone()).or_insert_with(zero_counts),
            status,
            *n,
        );
    }
    for (t, n) in &due {
        let m = by_type.entry(t.clone()).or_insert_with(zero_counts);
        add(m, "scheduled", -n);
        add(m, "pending", *n);
    }
    let mut counts = zero_counts();
    for m in by_type.values() {
        for (status, n) in m {
            add(&mut counts, status, n.as_i64().unwrap_or(0));
        }
    }

    let since = now - Duration::seconds(window);
    let (enqueued, completed, failed, dead): (Option<i64>, Option<i64>, Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT sum(enqueued)::int8, sum(completed)::int8, sum(failed)::int8, sum(dead_lettered)::int8
         FROM tenant_throughput WHERE tenant_id = $1 AND second > $2",
    )
    .bind(tenant)
    .bind(since)
    .fetch_one(&s.pool)
    .await
    .map_err(db_error)?;
    let hist: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT kind, le_ms, sum(n)::int8 FROM tenant_latency WHERE tenant_id = $1 AND second > $2
         GROUP BY kind, le_ms ORDER BY kind, le_ms",
    )
    .bind(tenant)
    .bind(since)
    .fetch_all(&s.pool)
    .await
    .map_err(db_error)?;
    let of = |kind: &str| -> Vec<(i64, i64)> {
        hist.iter()
            .filter(|(k, _, _)| k == kind)
            .map(|(_, le, n)| (*le, *n))
            .collect()
    };
    let (wait, run) = (of("wait"), of("run"));
    let projection = projection(&s, now).await?;
    let body = json!({
        "counts": counts,
        "by_type": by_type.into_iter().map(|(t, c)| json!({ "type": t, "counts": c })).collect::<Vec<_>>(),
        "throughput": {
            "window_seconds": window,
            "enqueued": enqueued.unwrap_or(0),
            "completed": completed.unwrap_or(0),
            "failed": failed.unwrap_or(0),
            "dead_lettered": dead.unwrap_or(0),
        },
        "latency_ms": {
            "wait_p50": percentile(&wait, 0.50), "wait_p95": percentile(&wait, 0.95), "wait_p99": percentile(&wait, 0.99),
            "run_p50": percentile(&run, 0.50), "run_p95": percentile(&run, 0.95), "run_p99": percentile(&run, 0.99),
        },
        "projection": projection,
    });
    Ok(stamp(envelope(StatusCode::OK, body), seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_the_bucket_holding_the_nearest_rank() {
        let h = [(1, 50), (10, 45), (100, 4), (1000, 1)];
        assert_eq!(percentile(&h, 0.50), Some(1));
        assert_eq!(percentile(&h, 0.95), Some(10));
        assert_eq!(percentile(&h, 0.99), Some(100));
        assert_eq!(percentile(&h, 1.0), Some(1000));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
