//! Wiring: Postgres, NATS (for readiness), the checkpoint follower, the router.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::FromRef;
use common::auth::JwtVerifier;
use common::metrics::Metrics;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::cursor::CursorKey;
use crate::routes;

/// What every handler shares, behind one `Arc`: axum clones the state for every request, and
/// a clone of the NATS client, contexts and KV handles inside allocates (measured: malloc and
/// those clones were over 40 % of command-svc's CPU under load before this).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub pool: PgPool,
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub verifier: Arc<JwtVerifier>,
    pub cursor: CursorKey,
    pub projection: watch::Receiver<u64>,
    pub plans: Arc<common::plans::Plans>,
}

impl FromRef<AppState> for Arc<JwtVerifier> {
    fn from_ref(s: &AppState) -> Self {
        s.verifier.clone()
    }
}

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    follower: (PgPool, watch::Sender<u64>),
}

/// The cursor secret: configured, else derived from the verification key (shared by every
/// instance that verifies the same tokens).
fn cursor_secret(config: &Config) -> anyhow::Result<Vec<u8>> {
    if let Some(s) = &config.cursor_secret {
        return Ok(s.as_bytes().to_vec());
    }
    let path = config
        .auth
        .jwt_public_key
        .as_ref()
        .or(config.auth.jwks_file.as_ref());
    let material = match path {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        None => Vec::new(),
    };
    Ok(Sha256::new()
        .chain_update(b"jobs-cursor-v1")
        .chain_update(material)
        .finalize()
        .to_vec())
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let verifier = config.auth.verifier()?;
        let wait = Duration::from_secs(config.nats.nats_connect_wait_seconds);
        let pool = common::db::connect(&config.database_url, config.db_pool, wait).await?;
        let client = common::nats::connect_with_ca(
            &config.nats.nats_url,
            config.nats.nats_ca.as_deref(),
            "query-svc",
            wait,
        )
        .await
        .context("JOBS_NATS_URL")?;
        let js = common::nats::jetstream(&client);
        let (tx, rx) = watch::channel(0u64);
        let state = AppState(Arc::new(Shared {
            pool: pool.clone(),
            client,
            js,
            verifier,
            cursor: CursorKey::new(&cursor_secret(&config)?),
            projection: rx,
            plans: Arc::new(common::plans::Plans::load(
                config.plans.plans_file.as_deref(),
            )?),
        }));
        let metrics = Metrics::new();
        metrics.watch_pool(pool.clone());
        let router = common::server::finish(routes::router(state), metrics);
        let listener = TcpListener::bind(config.query_addr)
            .await
            .with_context(|| format!("JOBS_QUERY_ADDR: binding {}", config.query_addr))?;
        Ok(Self {
            listener,
            router,
            follower: (pool, tx),
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
        let (pool, tx) = self.follower;
        let follower = tokio::spawn(crate::freshness::follow(pool, tx, stop.clone()));
        tracing::info!(
            port = self.listener.local_addr().map(|a| a.port()).unwrap_or(0),
            "query-svc listening"
        );
        let served = common::server::serve(self.listener, self.router, shutdown).await;
        stop.cancel();
        let _ = follower.await;
        served
    }
}
