//! The response envelope and the one error type every route answers with.
//!
//! Every JSON response is `{data, error, meta}` (plus `page` on lists). Each `ApiError` variant
//! names its status and code; internal errors are logged with their cause chain and answer a
//! generic body, so no internals leak.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use events::validate::FieldError;
use serde::Serialize;
use serde_json::{json, Value};

use crate::context;

pub type ApiResult<T> = Result<T, ApiError>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 VALIDATION_FAILED; details name the fields.
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    /// 401 UNAUTHENTICATED, with `WWW-Authenticate: Bearer`.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403 FORBIDDEN
    #[error("{0}")]
    Forbidden(String),
    /// 403 TENANT_MISMATCH
    #[error("x-tenant-id does not match the token's tenant")]
    TenantMismatch,
    /// 404 NOT_FOUND
    #[error("{0}")]
    NotFound(String),
    /// 405 METHOD_NOT_ALLOWED
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409 INVALID_STATE, naming the job's current status.
    #[error("the job is {0}")]
    InvalidState(String),
    /// 409 LEASE_LOST
    #[error("the lease expired, was cancelled, or belongs to another worker")]
    LeaseLost,
    /// 409 IDEMPOTENCY_IN_PROGRESS
    #[error("a request with this Idempotency-Key is still in flight")]
    IdempotencyInProgress,
    /// 422 IDEMPOTENCY_KEY_REUSED
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyKeyReused,
    /// 412 PRECONDITION_FAILED
    #[error("the job has moved on: its version is {0}")]
    PreconditionFailed(u64),
    /// 413 PAYLOAD_TOO_LARGE
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 431 REQUEST_HEADER_FIELDS_TOO_LARGE
    #[error("the request's headers are larger than {0} bytes")]
    HeadersTooLarge(usize),
    /// 415 UNSUPPORTED_MEDIA_TYPE
    #[error("send the body as application/json")]
    UnsupportedMediaType,
    /// 429 QUOTA_EXCEEDED, with `Retry-After` (seconds).
    #[error("{message}")]
    QuotaExceeded { message: String, retry_after: u64 },
    /// 429 RATE_LIMITED, with `Retry-After` (seconds).
    #[error("{message}")]
    RateLimited { message: String, retry_after: u64 },
    /// 503 SERVICE_UNAVAILABLE: the event store or database is unreachable; nothing was written.
    #[error("{0}")]
    Unavailable(String),
    /// 500 INTERNAL: logged with its cause chain; the body says nothing more.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// Every code [`ApiError::status_and_code`] can answer, plus the gateway's own.
    pub const CODES: &'static [&'static str] = &[
        "VALIDATION_FAILED",
        "UNAUTHENTICATED",
        "FORBIDDEN",
        "TENANT_MISMATCH",
        "NOT_FOUND",
        "METHOD_NOT_ALLOWED",
        "INVALID_STATE",
        "LEASE_LOST",
        "IDEMPOTENCY_IN_PROGRESS",
        "IDEMPOTENCY_KEY_REUSED",
        "PRECONDITION_FAILED",
        "PAYLOAD_TOO_LARGE",
        "REQUEST_HEADER_FIELDS_TOO_LARGE",
        "UNSUPPORTED_MEDIA_TYPE",
        "QUOTA_EXCEEDED",
        "RATE_LIMITED",
        "SERVICE_UNAVAILABLE",
        "INTERNAL",
        "BAD_GATEWAY",
    ];

    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }

    pub fn not_found() -> Self {
        Self::NotFound("job not found".into())
    }

    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Validation(_) => (StatusCode::BAD_REQUEST, "VALIDATION_FAILED"),
            Self::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "FORBIDDEN"),
            Self::TenantMismatch => (StatusCode::FORBIDDEN, "TENANT_MISMATCH"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
            Self::InvalidState(_) => (StatusCode::CONFLICT, "INVALID_STATE"),
            Self::LeaseLost => (StatusCode::CONFLICT, "LEASE_LOST"),
            Self::IdempotencyInProgress => (StatusCode::CONFLICT, "IDEMPOTENCY_IN_PROGRESS"),
            Self::IdempotencyKeyReused => {
                (StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED")
            }
            Self::PreconditionFailed(_) => (StatusCode::PRECONDITION_FAILED, "PRECONDITION_FAILED"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
            Self::HeadersTooLarge(_) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "REQUEST_HEADER_FIELDS_TOO_LARGE",
            ),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE")
            }
            Self::QuotaExceeded { .. } => (StatusCode::TOO_MANY_REQUESTS, "QUOTA_EXCEEDED"),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        }
    }

    fn details(&self) -> Option<Value> {
        match self {
            Self::Validation(fields) => Some(json!({ "fields": fields })),
            Self::InvalidState(status) => Some(json!({ "status": status })),
            Self::PreconditionFailed(version) => Some(json!({ "version": version })),
            Self::QuotaExceeded { retry_after, .. } | Self::RateLimited { retry_after, .. } => {
                Some(json!({ "retry_after_seconds": retry_after }))
            }
            _ => None,
        }
    }
}

impl From<events::Rejection> for ApiError {
    fn from(r: events::Rejection) -> Self {
        use events::Rejection as R;
        match r {
            R::NotFound => Self::not_found(),
            R::AlreadyExists => Self::InvalidState("already existing".into()),
            R::InvalidState(s) => Self::InvalidState(s.as_str().into()),
            R::LeaseLost => Self::LeaseLost,
            R::Validation(f) => Self::Validation(f),
        }
    }
}

/// The `meta` object of the current request.
pub fn meta() -> Value {
    let ctx = context::current();
    json!({
        "request_id": ctx.request_id,
        "trace_id": ctx.trace_id,
        "tenant_id": ctx.tenant_id.get(),
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            Self::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "internal error");
                "internal error".to_string()
            }
            other => other.to_string(),
        };
        let mut error = json!({ "code": code, "message": message });
        if let Some(d) = self.details() {
            error["details"] = d;
        }
        let body = json!({ "data": null, "error": error, "meta": meta() });
        let mut res = (status, Json(body)).into_response();
        if let Self::QuotaExceeded { retry_after, .. } | Self::RateLimited { retry_after, .. } =
            &self
        {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

/// A page of a list: the cursor to continue from, if any.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Page {
    pub next_cursor: Option<String>,
    pub has_more: bool,
    pub limit: u32,
}

/// A success envelope around `data`, its keys sorted (it goes through a `Value`).
pub fn envelope(status: StatusCode, data: impl Serialize) -> Response {
    direct_envelope(status, json!(data))
}

/// A success envelope around a list, with its page; `data`'s keys sorted (through a `Value`).
pub fn list_envelope(data: impl Serialize, page: Page) -> Response {
    direct_list_envelope(json!(data), page)
}

/// A success envelope written straight from `data`, with no `Value` in between: for stored
/// JSON texts (`RawValue`s) that it copies instead of parsing and printing again. The
/// envelope's keys are in sorted order, as a `Value` map writes them; `data`'s in its own.
#[derive(Serialize)]
struct Direct<T: Serialize> {
    data: T,
    error: Option<()>,
    meta: Value,
    /// Through a `Value` too: its keys sorted, as before.
    #[serde(skip_serializing_if = "Option::is_none")]
    page: Option<Value>,
}

/// [`envelope`], with `data` written as it is (see [`Direct`]).
pub fn direct_envelope(status: StatusCode, data: impl Serialize) -> Response {
    let body = Direct {
        data,
        error: None,
        meta: meta(),
        page: None,
    };
    (status, Json(body)).into_response()
}

/// [`list_envelope`], with `data` written as it is (see [`Direct`]).
pub fn direct_list_envelope(data: impl Serialize, page: Page) -> Response {
    let body = Direct {
        data,
        error: None,
        meta: meta(),
        page: Some(json!(page)),
    };
    (StatusCode::OK, Json(body)).into_response()
}

/// Fallback for unknown routes: a 404 in the envelope.
pub async fn not_found_fallback() -> ApiError {
    ApiError::NotFound("no such route".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body's text with its `meta` (fresh ids outside a request) written as `{}`.
    async fn body(res: Response) -> String {
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .expect("a body");
        without_meta(String::from_utf8(bytes.to_vec()).unwrap())
    }

    fn without_meta(text: String) -> String {
        let v: Value = serde_json::from_str(&text).unwrap();
        text.replace(&v["meta"].to_string(), "{}")
    }

    /// `envelope` and `list_envelope` write the bytes their `json!` bodies wrote (every key
    /// sorted); the direct ones differ only in keeping `data`'s own order.
    #[tokio::test]
    async fn envelopes_write_what_their_value_bodies_wrote() {
        #[derive(Serialize)]
        struct Item {
            z: u8,
            a: &'static str,
        }
        let page = || Page {
            next_cursor: Some("c".into()),
            has_more: true,
            limit: 20,
        };
        let item = || vec![Item { z: 1, a: "x" }];
        let one = json!({ "data": item(), "error": null, "meta": meta() });
        let list = json!({ "data": item(), "error": null, "page": page(), "meta": meta() });
        assert_eq!(
            body(envelope(StatusCode::CREATED, item())).await,
            without_meta(one.to_string())
        );
        assert_eq!(
            body(list_envelope(item(), page())).await,
            without_meta(list.to_string())
        );
        assert_eq!(
            body(direct_list_envelope(item(), page())).await,
            without_meta(list.to_string()).replace(r#"{"a":"x","z":1}"#, r#"{"z":1,"a":"x"}"#)
        );
    }
}
