//! `GET /jobs/v1/quota`: the caller's effective limits (its plan tier's, or an admin's
//! override), its usage, and whether an override applies.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use common::auth::AuthUser;
use common::error::envelope;
use common::ApiResult;
use events::platform::LimitOverrides;
use serde_json::{json, Value};

use crate::freshness::{stamp, wait_for};
use crate::routes::jobs::db_error;
use crate::startup::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/jobs/v1/quota", get(quota))
}

/// The tenant's override, if an admin set one.
pub async fn overrides(s: &AppState, tenant: uuid::Uuid) -> ApiResult<Option<LimitOverrides>> {
    let v: Option<Value> =
        sqlx::query_scalar("SELECT overrides FROM tenant_overrides WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_optional(&s.pool)
            .await
            .map_err(db_error)?;
    Ok(v.and_then(|v| serde_json::from_value(v).ok()))
}

async fn quota(
    State(s): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let seq = wait_for(&s.projection, &headers).await?;
    let (tier, _) = s.plans.tier(user.claims.plan_tier.as_deref());
    let o = overrides(&s, user.tenant_id()).await?;
    let limits = s.plans.effective(Some(tier), o.as_ref());
    let (active, leased): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status IN ('scheduled', 'pending', 'leased')),
                count(*) FILTER (WHERE status = 'leased')
         FROM jobs WHERE tenant_id = $1 AND status IN ('scheduled', 'pending', 'leased')",
    )
    .bind(user.tenant_id())
    .fetch_one(&s.pool)
    .await
    .map_err(db_error)?;
    let body = json!({
        "plan_tier": tier,
        "limits": {
            "max_active_jobs": limits.max_active_jobs,
            "enqueue_per_second": limits.enqueue_per_second,
            "enqueue_burst": limits.enqueue_burst,
            "max_payload_bytes": limits.max_payload_bytes,
            "max_concurrent_leases": limits.max_concurrent_leases,
        },
        "usage": { "active_jobs": active, "leased_jobs": leased },
        "overridden": o.is_some(),
    });
    Ok(stamp(envelope(StatusCode::OK, body), seq))
}
