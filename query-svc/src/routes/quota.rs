//! `GET /jobs/v1/quota`: the caller's effective limits (its plan tier's, or an admin's
//! override), its usage, and whether an override applies.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use common::auth::AuthUser;
use common::error::envelope;
use common::ApiResult;
use events::platform::LimitOverrides;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::freshness::{stamp, wait_for};
use crate::routes::jobs::db_error;
use crate::startup::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(quota))
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

/// Effective limits of the caller's tenant.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct QuotaLimits {
    max_active_jobs: u64,
    enqueue_per_second: f64,
    enqueue_burst: u64,
    max_payload_bytes: u64,
    max_concurrent_leases: u64,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct QuotaUsage {
    /// Jobs scheduled, pending or leased.
    active_jobs: i64,
    leased_jobs: i64,
}

/// The answer of quota.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct Quota {
    /// The plan tier the token names (`free` when missing or unknown).
    plan_tier: String,
    limits: QuotaLimits,
    usage: QuotaUsage,
    /// Whether an admin's override changes the tier's limits.
    overridden: bool,
}

/// The caller's plan tier, limits and usage
#[utoipa::path(
    get,
    path = "/jobs/v1/quota",
    tag = "quota",
    operation_id = "getQuota",
    params(common::openapi::ReadHeaders),
    responses((status = 200, description = "Limits and usage", body = common::openapi::Envelope<Quota>))
)]
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
