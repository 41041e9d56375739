//! The layers every public router gets, and serving with graceful shutdown.

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

use crate::error::{not_found_fallback, ApiError};
use crate::metrics::{self, Metrics};

/// The most header bytes (names and values) a request may carry.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

async fn limit_headers(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let size: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if size > MAX_HEADER_BYTES {
        return ApiError::HeadersTooLarge(MAX_HEADER_BYTES).into_response();
    }
    next.run(req).await
}

/// Adds `/healthz` and `/metrics`, the envelope's 404/405, metrics, the request context, and a
/// limit on header size.
/// `/readyz` is the service's own (it knows its dependencies).
pub fn finish(router: Router, metrics: Arc<Metrics>) -> Router {
    let m = metrics.clone();
    router
        .route("/healthz", get(crate::health::healthz))
        .route("/metrics", get(move || async move { m.render() }))
        .fallback(not_found_fallback)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            metrics::track,
        ))
        .layer(TraceLayer::new_for_http())
        .layer(axum::middleware::from_fn(limit_headers))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            BODY_READ_TIMEOUT,
        ))
        .layer(axum::middleware::from_fn(crate::context::request_context))
}

/// A client must send a request's headers within this long of connecting (or, on a kept-alive
/// connection, of its previous response): slow or idle clients are cut off.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// ... and its body within this long.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves until `shutdown` resolves, then drains in-flight requests (for up to 10 s).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let (router, builder, watcher) = (router.clone(), builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            // A connection that sends nothing at all is idle: hyper's header timer only starts
            // with the first byte, so wait for that here.
            let mut first = [0u8; 1];
            let peeked = tokio::time::timeout(HEADER_READ_TIMEOUT, stream.peek(&mut first)).await;
            if !matches!(peeked, Ok(Ok(n)) if n > 0) {
                return;
            }
            let service = hyper::service::service_fn(
                move |req: axum::extract::Request<hyper::body::Incoming>| {
                    router.clone().oneshot(req.map(axum::body::Body::new))
                },
            );
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), graceful.shutdown()).await;
    Ok(())
}

/// Serves until `shutdown` resolves, cancelling `stop` (the process's background work) at that
/// moment, then drains in-flight requests; `stop` is cancelled on every way out.
pub async fn serve_and_stop(
    listener: TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let on_signal = stop.clone();
    let served = serve(listener, router, async move {
        shutdown.await;
        on_signal.cancel();
    })
    .await;
    stop.cancel();
    served
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
