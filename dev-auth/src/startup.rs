//! Wiring: the users file, the signing key, the in-memory sessions, the router, the listener.
//! A missing or malformed users file or key stops the start with a one-line reason.

use std::sync::{Arc, Mutex};

use anyhow::Context;
use common::metrics::Metrics;
use common::signing::Signer;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::routes;
use crate::sessions::Sessions;
use crate::tokens::AccessTokens;
use crate::users::Users;

#[derive(Clone)]
pub struct AppState {
    pub users: Arc<Users>,
    pub access: Arc<AccessTokens>,
    pub sessions: Arc<Mutex<Sessions>>,
}

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let users = Users::load(&config.users).context("JOBS_DEV_AUTH_USERS")?;
        let signer = Signer::from_pem_file(&config.key).context("JOBS_DEV_AUTH_KEY")?;
        tracing::warn!(
            users = users.len(),
            file = %config.users.display(),
            alg = ?signer.algorithm(),
            "development login: plaintext passwords, in-memory sessions; never run this anywhere real"
        );
        if !config.listen.ip().is_loopback() {
            tracing::warn!(listen = %config.listen, "the development login listens beyond loopback");
        }
        let state = AppState {
            users: Arc::new(users),
            access: Arc::new(AccessTokens::new(
                signer,
                config.access_ttl_seconds,
                config.issuer.clone(),
                config.audience.clone(),
            )),
            sessions: Arc::new(Mutex::new(Sessions::new(i64::from(
                config.refresh_ttl_seconds,
            )))),
        };
        let router = common::server::finish(routes::router(state), Metrics::new());
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("JOBS_DEV_AUTH_LISTEN: binding {}", config.listen))?;
        Ok(Self { listener, router })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(port = self.port(), "jobs-dev-auth listening");
        common::server::serve(self.listener, self.router, shutdown).await
    }
}
