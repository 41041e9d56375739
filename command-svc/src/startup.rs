//! Wiring: connect to NATS, make sure the stream exists, build the engine (write model), the
//! public router and the mTLS worker listener, and run the follower and timers beside them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use axum::extract::FromRef;
use common::auth::JwtVerifier;
use common::metrics::Metrics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::engine::{Engine, EngineMetrics};
use crate::store::{EventStore, StoreMetrics};
use crate::{follower, routes, scheduler, snapshot, tls};

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
    pub store: EventStore,
    pub engine: Arc<Engine>,
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub verifier: Arc<JwtVerifier>,
    pub idempotency: async_nats::jetstream::kv::Store,
    /// Unique-job key claims (`crate::unique`).
    pub unique: async_nats::jetstream::kv::Store,
    pub max_payload_bytes: usize,
    /// The largest body any public route accepts (what idempotency buffers at most).
    pub max_body_bytes: usize,
}

impl FromRef<AppState> for Arc<JwtVerifier> {
    fn from_ref(s: &AppState) -> Self {
        s.verifier.clone()
    }
}

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    worker_listener: TcpListener,
    worker_router: axum::Router,
    tls: Arc<rustls::ServerConfig>,
    engine: Arc<Engine>,
    /// Where the write model's snapshot goes at shutdown, and the stream it is of.
    snapshot: Option<(std::path::PathBuf, snapshot::StreamId)>,
    /// Seconds between periodic snapshots (0: only at shutdown).
    snapshot_seconds: u64,
}

fn required<'a>(
    v: &'a Option<std::path::PathBuf>,
    name: &str,
) -> anyhow::Result<&'a std::path::Path> {
    v.as_deref()
        .ok_or_else(|| anyhow!("{name} must be set: the worker listener needs it"))
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let verifier = config.auth.verifier()?;
        let tls = tls::server_config(
            required(&config.worker_tls_cert, "JOBS_WORKER_TLS_CERT")?,
            required(&config.worker_tls_key, "JOBS_WORKER_TLS_KEY")?,
            required(&config.worker_client_ca, "JOBS_WORKER_CLIENT_CA")?,
        )?;
        let wait = Duration::from_secs(config.nats.nats_connect_wait_seconds);
        let client = common::nats::connect_with_ca(
            &config.nats.nats_url,
            config.nats.nats_ca.as_deref(),
            "command-svc",
            wait,
        )
        .await
        .context("JOBS_NATS_URL")?;
        let js = common::nats::jetstream(&client);
        let mut stream = common::nats::ensure_stream(&js, config.nats.stream_replicas).await?;
        let info = stream.info().await.context("reading JOBS_EVENTS")?;
        let stream_state = snapshot::StreamState {
            id: snapshot::StreamId {
                created_unix_nanos: info.created.unix_timestamp_nanos() as i64,
            },
            first_seq: info.state.first_sequence,
            last_seq: info.state.last_sequence,
        };
        let idempotency = crate::idempotency::bucket(&js, config.nats.stream_replicas).await?;
        let unique = crate::unique::bucket(&js, config.nats.stream_replicas).await?;
        let metrics = Metrics::new();
        let store = EventStore::new(
            client.clone(),
            js.clone(),
            StoreMetrics::new(&metrics),
            config.group_commit,
        );
        let plans = common::plans::Plans::load(config.plans.plans_file.as_deref())?;
        let engine = Engine::new(
            store.clone(),
            js.clone(),
            EngineMetrics::new(&metrics),
            plans,
            config.atomic_leases,
        );
        engine.schedules.register(&metrics);
        engine
            .model()
            .set_payload_budget(config.payload_memory_bytes);
        if let Some(dir) = &config.snapshot_dir {
            snapshot::restore(&engine, dir, stream_state).await;
        }
        let state = AppState(Arc::new(Shared {
            store,
            engine: engine.clone(),
            client,
            js,
            verifier,
            idempotency,
            unique,
            max_payload_bytes: config.max_payload_bytes,
            max_body_bytes: config
                .max_batch_body_bytes
                .max(config.max_payload_bytes + 64 * 1024),
        }));
        let router =
            common::server::finish(routes::router(state.clone(), &config), metrics.clone());
        let worker_router = common::server::finish(routes::worker_router(state), metrics);
        let listener = TcpListener::bind(config.command_addr)
            .await
            .with_context(|| format!("JOBS_COMMAND_ADDR: binding {}", config.command_addr))?;
        let worker_listener = TcpListener::bind(config.worker_addr)
            .await
            .with_context(|| format!("JOBS_WORKER_ADDR: binding {}", config.worker_addr))?;
        Ok(Self {
            listener,
            router,
            worker_listener,
            worker_router,
            tls,
            engine,
            snapshot: config.snapshot_dir.clone().map(|d| (d, stream_state.id)),
            snapshot_seconds: config.snapshot_seconds,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The engine (its write model), for tests that look inside the running instance.
    pub fn engine(&self) -> Arc<Engine> {
        self.engine.clone()
    }

    pub fn worker_port(&self) -> u16 {
        self.worker_listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(0)
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let stop = CancellationToken::new();
        // The follower stops last: with a snapshot to write, only once it has folded what the
        // stream holds when everything else has stopped.
        let follower_stop = CancellationToken::new();
        let follower = tokio::spawn(follower::follow(self.engine.clone(), follower_stop.clone()));
        let timers = tokio::spawn(follower::run_timers(self.engine.clone(), stop.clone()));
        let scheduler = tokio::spawn(scheduler::run(self.engine.clone(), stop.clone()));
        let periodic = match &self.snapshot {
            Some((dir, stream)) if self.snapshot_seconds > 0 => {
                Some(tokio::spawn(snapshot::run_periodic(
                    self.engine.clone(),
                    dir.clone(),
                    *stream,
                    Duration::from_secs(self.snapshot_seconds),
                    stop.clone(),
                )))
            }
            _ => None,
        };
        let workers = {
            let stop = stop.clone();
            tokio::spawn(tls::serve(
                self.worker_listener,
                self.tls,
                self.worker_router,
                async move { stop.cancelled().await },
            ))
        };
        tracing::info!(
            port = self.listener.local_addr().map(|a| a.port()).unwrap_or(0),
            "command-svc listening"
        );
        let served =
            common::server::serve_and_stop(self.listener, self.router, shutdown, stop).await;
        // A periodic snapshot being written finishes first: one writer at a time.
        let _ = tokio::join!(timers, scheduler, workers, async {
            if let Some(p) = periodic {
                let _ = p.await;
            }
        });
        if self.snapshot.is_some() {
            snapshot::catch_up(&self.engine).await;
        }
        follower_stop.cancel();
        let _ = follower.await;
        if let Some((dir, stream)) = self.snapshot {
            snapshot::save(self.engine, dir, stream).await;
        }
        served
    }
}
