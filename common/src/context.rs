//! The per-request context: request id, trace id and (once authenticated) tenant id.
//!
//! The `request_context` middleware creates it and runs the rest of the request inside a
//! task-local scope, so every envelope — including errors raised by extractors — carries the
//! same `meta`, and the response always echoes `x-request-id`.

use std::sync::{Arc, OnceLock};

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use rand::RngCore;
use uuid::Uuid;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

#[derive(Debug)]
pub struct RequestContext {
    pub request_id: String,
    /// 32 lowercase hex characters: from an incoming `traceparent`, else new.
    pub trace_id: String,
    pub tenant_id: OnceLock<Uuid>,
    /// The request's span (logs carry its request_id, trace_id and, once known, tenant_id).
    pub span: tracing::Span,
}

impl RequestContext {
    fn from_headers(headers: &axum::http::HeaderMap) -> Self {
        let request_id = headers
            .get(&REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 200 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_string)
            .unwrap_or_else(|| Uuid::new_v4().to_string());
        let trace_id = headers
            .get(&TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent)
            .unwrap_or_else(new_trace_id);
        Self {
            request_id,
            trace_id,
            tenant_id: OnceLock::new(),
            span: tracing::Span::none(),
        }
    }

    /// A `traceparent` for work this request causes (e.g. an event it appends): the current
    /// span's when spans are exported, else one made from the request's trace id.
    pub fn child_traceparent(&self) -> String {
        if let Some(tp) = crate::telemetry::current_traceparent() {
            return tp;
        }
        let mut span = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut span);
        format!("00-{}-{}-01", self.trace_id, hex::encode(span))
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if well formed.
pub fn parse_traceparent(v: &str) -> Option<String> {
    let parts: Vec<&str> = v.trim().split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if parts.len() >= 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
    {
        let id = parts[1].to_ascii_lowercase();
        if id.bytes().any(|b| b != b'0') {
            return Some(id);
        }
    }
    None
}

pub fn new_trace_id() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

tokio::task_local! {
    static CONTEXT: Arc<RequestContext>;
}

/// The current request's context; a fresh one outside a request (e.g. in a test).
pub fn current() -> Arc<RequestContext> {
    CONTEXT
        .try_with(Arc::clone)
        .unwrap_or_else(|_| Arc::new(RequestContext::from_headers(&Default::default())))
}

/// Middleware: set up the context, run the request in it, echo `x-request-id`.
pub async fn request_context(req: Request, next: Next) -> Response {
    let mut ctx = RequestContext::from_headers(req.headers());
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        request_id = %ctx.request_id,
        trace_id = tracing::field::Empty,
        tenant_id = tracing::field::Empty,
    );
    // When spans are exported, meta.trace_id is the exported trace's id.
    if let Some(id) = crate::telemetry::adopt_request_parent(&span, req.headers()) {
        ctx.trace_id = id;
    }
    span.record("trace_id", ctx.trace_id.as_str());
    ctx.span = span.clone();
    let ctx = Arc::new(ctx);
    let request_id = ctx.request_id.clone();
    let mut res = tracing::Instrument::instrument(CONTEXT.scope(ctx, next.run(req)), span).await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_traceparent_gives_its_trace_id() {
        let tp = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse_traceparent(tp).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(parse_traceparent("garbage"), None);
    }
}
