//! Pausing and resuming a tenant's queue or job type: `POST /jobs/v1/queues/{queue}/pause`,
//! `/resume`, and the same under `/jobs/v1/types/{type}/`. Each is an event on the tenant's
//! subject (`QueuePaused`, `JobTypeResumed`, ...); every instance folds it from the stream and
//! skips paused work when it leases, so a pause holds across instances and restarts. Paused
//! jobs keep their place: resuming serves them in their old order.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use common::auth::AuthUser;
use common::error::envelope;
use common::json::OptionalJson;
use common::ApiResult;
use events::platform::{PauseTarget, PlatformEvent};
use events::validate::check_name;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::routes::admin::{append, with_seq};
use crate::routes::jobs::EmptyBody;
use crate::startup::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(pause_queue))
        .routes(routes!(resume_queue))
        .routes(routes!(pause_type))
        .routes(routes!(resume_type))
}

/// A queue's or job type's pause state after the command.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct PauseState {
    /// The queue (or, under `/types`, the job type).
    #[schema(example = "default")]
    name: String,
    /// `queue` or `type`.
    kind: String,
    paused: bool,
}

/// Appends the pause or resume unless the target is already in that state (then nothing is
/// written and the answer is the same).
async fn set_paused(
    state: &AppState,
    user: &AuthUser,
    target: PauseTarget,
    pause: bool,
) -> ApiResult<Response> {
    let mut errors = Vec::new();
    let field = match target {
        PauseTarget::Queue(_) => "queue",
        PauseTarget::JobType(_) => "type",
    };
    check_name(field, target.name(), &mut errors);
    if !errors.is_empty() {
        return Err(common::ApiError::Validation(errors));
    }
    let tenant = user.tenant_id();
    let body = json!({ "name": target.name(), "kind": target.kind(), "paused": pause });
    let already = state.engine.model().is_paused(&tenant, &target) == pause;
    if already {
        return Ok(envelope(StatusCode::OK, body));
    }
    let event = match (target, pause) {
        (PauseTarget::Queue(queue), true) => PlatformEvent::QueuePaused {
            tenant_id: tenant,
            queue,
        },
        (PauseTarget::Queue(queue), false) => PlatformEvent::QueueResumed {
            tenant_id: tenant,
            queue,
        },
        (PauseTarget::JobType(job_type), true) => PlatformEvent::JobTypePaused {
            tenant_id: tenant,
            job_type,
        },
        (PauseTarget::JobType(job_type), false) => PlatformEvent::JobTypeResumed {
            tenant_id: tenant,
            job_type,
        },
    };
    let seq = append(state, user, event).await?;
    if !pause {
        // Long-polling workers may take the resumed work now.
        state.engine.waiters.wake_all();
    }
    Ok(with_seq(envelope(StatusCode::OK, body), seq))
}

/// Pause a queue
///
/// The caller's jobs in this queue are not leased until it is resumed (leases already held run
/// on). Pausing a paused queue changes nothing.
#[utoipa::path(
    post,
    path = "/jobs/v1/queues/{queue}/pause",
    tag = "queues",
    operation_id = "pauseQueue",
    params(("queue" = String, Path, description = "The queue"), common::openapi::CommandHeaders),
    request_body(content = Option<EmptyBody>, description = "Optional, empty"),
    responses((status = 200, description = "The queue is paused", body = common::openapi::Envelope<PauseState>))
)]
async fn pause_queue(
    State(state): State<AppState>,
    user: AuthUser,
    Path(queue): Path<String>,
    OptionalJson(_): OptionalJson<EmptyBody>,
) -> ApiResult<Response> {
    set_paused(&state, &user, PauseTarget::Queue(queue), true).await
}

/// Resume a queue
#[utoipa::path(
    post,
    path = "/jobs/v1/queues/{queue}/resume",
    tag = "queues",
    operation_id = "resumeQueue",
    params(("queue" = String, Path, description = "The queue"), common::openapi::CommandHeaders),
    request_body(content = Option<EmptyBody>, description = "Optional, empty"),
    responses((status = 200, description = "The queue is served again", body = common::openapi::Envelope<PauseState>))
)]
async fn resume_queue(
    State(state): State<AppState>,
    user: AuthUser,
    Path(queue): Path<String>,
    OptionalJson(_): OptionalJson<EmptyBody>,
) -> ApiResult<Response> {
    set_paused(&state, &user, PauseTarget::Queue(queue), false).await
}

/// Pause a job type
///
/// The caller's jobs of this type, in every queue, are not leased until it is resumed.
#[utoipa::path(
    post,
    path = "/jobs/v1/types/{type}/pause",
    tag = "queues",
    operation_id = "pauseJobType",
    params(("type" = String, Path, description = "The job type"), common::openapi::CommandHeaders),
    request_body(content = Option<EmptyBody>, description = "Optional, empty"),
    responses((status = 200, description = "The job type is paused", body = common::openapi::Envelope<PauseState>))
)]
async fn pause_type(
    State(state): State<AppState>,
    user: AuthUser,
    Path(job_type): Path<String>,
    OptionalJson(_): OptionalJson<EmptyBody>,
) -> ApiResult<Response> {
    set_paused(&state, &user, PauseTarget::JobType(job_type), true).await
}

/// Resume a job type
#[utoipa::path(
    post,
    path = "/jobs/v1/types/{type}/resume",
    tag = "queues",
    operation_id = "resumeJobType",
    params(("type" = String, Path, description = "The job type"), common::openapi::CommandHeaders),
    request_body(content = Option<EmptyBody>, description = "Optional, empty"),
    responses((status = 200, description = "The job type is served again", body = common::openapi::Envelope<PauseState>))
)]
async fn resume_type(
    State(state): State<AppState>,
    user: AuthUser,
    Path(job_type): Path<String>,
    OptionalJson(_): OptionalJson<EmptyBody>,
) -> ApiResult<Response> {
    set_paused(&state, &user, PauseTarget::JobType(job_type), false).await
}
