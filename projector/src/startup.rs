//! Wiring: Postgres (migrated at start), NATS, the HTTP listener and the projection loop.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use common::metrics::Metrics;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::consumer::{watch_lag, Projector, ProjectorMetrics};

#[derive(Clone)]
struct AppState {
    pool: PgPool,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
}

pub struct Application {
    listener: TcpListener,
    router: Router,
    projector: Projector,
    maintenance: (
        crate::maintenance::Mode,
        Duration,
        crate::maintenance::UpkeepMetrics,
    ),
    lag: (
        async_nats::jetstream::Context,
        Arc<AtomicU64>,
        ProjectorMetrics,
    ),
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let wait = Duration::from_secs(config.nats.nats_connect_wait_seconds);
        let pool = common::db::connect(&config.database_url, 4, wait).await?;
        common::db::MIGRATOR
            .run(&pool)
            .await
            .context("migrating the read model")?;
        let client = common::nats::connect_with_ca(
            &config.nats.nats_url,
            config.nats.nats_ca.as_deref(),
            "projector",
            wait,
        )
        .await
        .context("JOBS_NATS_URL")?;
        let js = common::nats::jetstream(&client);
        common::nats::ensure_stream(&js, config.nats.stream_replicas).await?;
        let metrics = Metrics::new();
        metrics.watch_pool(pool.clone());
        let pm = ProjectorMetrics::new(&metrics);
        let upkeep = crate::maintenance::UpkeepMetrics::new(&metrics);
        let checkpoint = Arc::new(AtomicU64::new(0));
        let projector = Projector {
            pool: pool.clone(),
            js: js.clone(),
            batch_size: config.batch_size.max(1),
            linger: std::time::Duration::from_millis(config.linger_ms),
            metrics: pm.clone(),
            checkpoint: checkpoint.clone(),
        };
        let state = AppState {
            pool,
            client,
            js: js.clone(),
        };
        let router = Router::new()
            .route("/readyz", get(readyz))
            .with_state(state);
        let router = common::server::finish(router, metrics);
        let listener = TcpListener::bind(config.projector_addr)
            .await
            .with_context(|| format!("JOBS_PROJECTOR_ADDR: binding {}", config.projector_addr))?;
        Ok(Self {
            listener,
            router,
            projector,
            maintenance: (
                config.maintenance,
                Duration::from_secs(config.maintenance_seconds.max(1)),
                upkeep,
            ),
            lag: (js, checkpoint, pm),
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let stop = CancellationToken::new();
        let (js, checkpoint, pm) = self.lag;
        let lag = tokio::spawn(watch_lag(js, checkpoint, pm, stop.clone()));
        let (mode, every, metrics) = self.maintenance;
        let upkeep = tokio::spawn(crate::maintenance::run(
            self.projector.pool.clone(),
            mode,
            every,
            metrics,
            stop.clone(),
        ));
        let projection = tokio::spawn(self.projector.run(stop.clone()));
        tracing::info!(
            port = self.listener.local_addr().map(|a| a.port()).unwrap_or(0),
            "projector listening"
        );
        let served =
            common::server::serve_and_stop(self.listener, self.router, shutdown, stop).await;
        let _ = projection.await;
        let _ = lag.await;
        let _ = upkeep.await;
        served
    }
}

async fn readyz(State(s): State<AppState>) -> Response {
    let mut problems = Vec::new();
    if let Err(e) = common::nats::check_ready(&s.client, &s.js).await {
        problems.push(e);
    }
    if let Err(e) = common::db::check_ready(&s.pool).await {
        problems.push(e);
    }
    common::health::readiness(problems)
}
