//! Wiring: connect to NATS, make sure the stream exists, build the router, bind the listener.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::FromRef;
use common::auth::JwtVerifier;
use common::metrics::Metrics;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::routes;
use crate::store::{EventStore, StoreMetrics};

#[derive(Clone)]
pub struct AppState {
    pub store: EventStore,
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub verifier: Arc<JwtVerifier>,
    pub max_payload_bytes: usize,
}

impl FromRef<AppState> for Arc<JwtVerifier> {
    fn from_ref(s: &AppState) -> Self {
        s.verifier.clone()
    }
}

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let verifier = config.auth.verifier()?;
        let wait = Duration::from_secs(config.nats.nats_connect_wait_seconds);
        let client = common::nats::connect(&config.nats.nats_url, "command-svc", wait)
            .await
            .context("JOBS_NATS_URL")?;
        let js = common::nats::jetstream(&client);
        common::nats::ensure_stream(&js).await?;
        let metrics = Metrics::new();
        let store = EventStore::new(client.clone(), js.clone(), StoreMetrics::new(&metrics));
        let state = AppState {
            store,
            client,
            js,
            verifier,
            max_payload_bytes: config.max_payload_bytes,
        };
        let router = common::server::finish(routes::router(state, &config), metrics);
        let listener = TcpListener::bind(config.command_addr)
            .await
            .with_context(|| format!("JOBS_COMMAND_ADDR: binding {}", config.command_addr))?;
        Ok(Self { listener, router })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(port = self.port(), "command-svc listening");
        common::server::serve(self.listener, self.router, shutdown).await
    }
}
