//! Prometheus metrics: one registry per process, HTTP request counts and latency by route and
//! status (route = the matched path template, never an id), rendered at `/metrics`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

type Hook = Box<dyn Fn() + Send + Sync>;

pub struct Metrics {
    pub registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    /// Run before each scrape, to refresh gauges read from elsewhere (e.g. the DB pool).
    hooks: std::sync::Mutex<Vec<Hook>>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "jobs_http_requests_total",
                "HTTP requests answered, by route and status.",
            ),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "jobs_http_request_duration_seconds",
                "HTTP request latency.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["method", "route"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(http_requests.clone()))
            .expect("register once");
        registry
            .register(Box::new(http_duration.clone()))
            .expect("register once");
        Arc::new(Self {
            registry,
            http_requests,
            http_duration,
            hooks: Default::default(),
        })
    }

    /// Registers a service-specific collector.
    pub fn register<C: prometheus::core::Collector + Clone + 'static>(&self, c: &C) {
        self.registry
            .register(Box::new(c.clone()))
            .expect("metric registered once");
    }

    /// Runs `f` before every scrape.
    pub fn on_scrape(&self, f: impl Fn() + Send + Sync + 'static) {
        self.hooks.lock().expect("hooks lock").push(Box::new(f));
    }

    /// Exports the connection pool's use as `jobs_db_pool_connections{state}`.
    pub fn watch_pool(&self, pool: sqlx::PgPool) {
        let g = prometheus::IntGaugeVec::new(
            Opts::new(
                "jobs_db_pool_connections",
                "Postgres pool connections, by state (idle, in_use, max).",
            ),
            &["state"],
        )
        .expect("valid metric");
        self.register(&g);
        let max = pool.options().get_max_connections() as i64;
        self.on_scrape(move || {
            let (size, idle) = (pool.size() as i64, pool.num_idle() as i64);
            g.with_label_values(&["idle"]).set(idle);
            g.with_label_values(&["in_use"]).set(size - idle);
            g.with_label_values(&["max"]).set(max);
        });
    }

    pub fn render(&self) -> Response {
        for hook in self.hooks.lock().expect("hooks lock").iter() {
            hook();
        }
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding never fails");
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            buf,
        )
            .into_response()
    }
}

/// Middleware: count and time every request.
pub async fn track(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let res = next.run(req).await;
    m.http_requests
        .with_label_values(&[&method, &route, res.status().as_str()])
        .inc();
    m.http_duration
        .with_label_values(&[&method, &route])
        .observe(start.elapsed().as_secs_f64());
    res
}
