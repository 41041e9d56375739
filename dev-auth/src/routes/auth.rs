//! `POST /auth/v1/login` and `POST /auth/v1/refresh`, shaped as the seed page's auth-svc:
//! both answer `{data: {accessToken, refreshToken, expiresIn}}` in the envelope. A wrong e-mail
//! or password, and a refused refresh token, are 401 `UNAUTHENTICATED`; a malformed body is
//! the usual 400/415 from `ApiJson`.

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::Response;
use common::error::envelope;
use common::json::ApiJson;
use common::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::startup::AppState;

/// Bodies are two short strings; anything larger is refused (413).
const MAX_BODY_BYTES: usize = 16 * 1024;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(refresh))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    email: String,
    password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RefreshRequest {
    refresh_token: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct TokenPair {
    access_token: String,
    refresh_token: String,
    expires_in: u32,
}

const WRONG_CREDENTIALS: &str = "wrong email or password";

/// Log in (development only)
///
/// For the users of the dev users file (the seed's dev@eventzr.com and admin@eventzr.com,
/// `Password123!`): an access token signed by the dev key and a single-use refresh token.
#[utoipa::path(
    post,
    path = "/auth/v1/login",
    tag = "auth",
    operation_id = "login",
    request_body(content = LoginRequest, example = json!({"email": "dev@eventzr.com", "password": "Password123!"})),
    responses(
        (status = 200, description = "Logged in", body = common::openapi::Envelope<TokenPair>),
        (status = 401, description = "Wrong email or password (`UNAUTHENTICATED`)", body = common::openapi::ErrorEnvelope),
    )
)]
async fn login(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<Response> {
    let Some(user) = s.users.authenticate(&req.email, &req.password) else {
        tracing::info!("login refused");
        return Err(ApiError::Unauthenticated(WRONG_CREDENTIALS.into()));
    };
    let now = chrono::Utc::now().timestamp();
    let access_token = s.access.issue(s.users.get(user), now)?;
    let refresh_token = sessions(&s)?.start(user, now);
    tracing::info!(email = %s.users.get(user).email, "logged in");
    Ok(answer(&s, access_token, refresh_token))
}

/// Refresh a token (development only)
///
/// Each refresh token works once: the answer carries the next one. Reusing a spent one revokes
/// every token of that login.
#[utoipa::path(
    post,
    path = "/auth/v1/refresh",
    tag = "auth",
    operation_id = "refreshToken",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new access token and the next refresh token", body = common::openapi::Envelope<TokenPair>),
        (status = 401, description = "Unknown, spent, revoked or expired refresh token (`UNAUTHENTICATED`)", body = common::openapi::ErrorEnvelope),
    )
)]
async fn refresh(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> ApiResult<Response> {
    let now = chrono::Utc::now().timestamp();
    let rotated = sessions(&s)?.rotate(&req.refresh_token, now);
    let (user, refresh_token) =
        rotated.map_err(|why| ApiError::Unauthenticated(why.message().into()))?;
    let access_token = s.access.issue(s.users.get(user), now)?;
    Ok(answer(&s, access_token, refresh_token))
}

fn sessions(s: &AppState) -> ApiResult<std::sync::MutexGuard<'_, crate::sessions::Sessions>> {
    s.sessions
        .lock()
        .map_err(|_| ApiError::Internal(anyhow::anyhow!("the session store's lock is poisoned")))
}

fn answer(s: &AppState, access_token: String, refresh_token: String) -> Response {
    envelope(
        StatusCode::OK,
        TokenPair {
            access_token,
            refresh_token,
            expires_in: s.access.ttl_seconds(),
        },
    )
}
