//! Configuration pieces every service has, flattened into each service's own `Config`.
//! Every setting is an environment variable; `--help` lists them with their defaults.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::auth::JwtVerifier;
use crate::telemetry::LogFormat;

/// How callers are authenticated.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// Path to the PEM RSA or EC public key that verifies bearer tokens (RS256 / ES256).
    #[arg(long, env = "JOBS_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// Path to a JWKS file of verification keys (instead of JOBS_JWT_PUBLIC_KEY).
    #[arg(long, env = "JOBS_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// Required `iss` claim, checked when set.
    #[arg(long, env = "JOBS_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, checked when set.
    #[arg(long, env = "JOBS_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
}

impl AuthArgs {
    /// The verifier, or a one-line error naming the variable at fault.
    pub fn verifier(&self) -> anyhow::Result<Arc<JwtVerifier>> {
        let (iss, aud) = (self.jwt_issuer.clone(), self.jwt_audience.clone());
        let v = match (&self.jwt_public_key, &self.jwks_file) {
            (Some(p), _) => JwtVerifier::from_pem_file(p, iss, aud).context("JOBS_JWT_PUBLIC_KEY")?,
            (None, Some(p)) => {
                let bytes = std::fs::read(p).with_context(|| format!("JOBS_JWKS_FILE: reading {}", p.display()))?;
                JwtVerifier::from_jwks(&bytes, iss, aud).context("JOBS_JWKS_FILE")?
            }
            (None, None) => bail!("JOBS_JWT_PUBLIC_KEY (or JOBS_JWKS_FILE) must be set: the key that verifies bearer tokens"),
        };
        Ok(Arc::new(v))
    }
}

/// Where NATS is.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL (2.12 or newer, with JetStream); a cluster's nodes separated by commas.
    #[arg(long, env = "JOBS_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// PEM CA that signed the NATS server's certificate: connect over TLS and verify it.
    #[arg(long, env = "JOBS_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// Replicas of the JOBS_EVENTS stream (and the idempotency bucket) when this process
    /// creates them: 1 on a single server, 3 on a 3-node cluster.
    #[arg(long, env = "JOBS_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,
    /// Seconds to keep trying to reach NATS at start before giving up.
    #[arg(long, env = "JOBS_NATS_CONNECT_WAIT_SECONDS", default_value_t = 30)]
    pub nats_connect_wait_seconds: u64,
}

/// How the process logs.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format: json or pretty. Filtering is by RUST_LOG (default info).
    #[arg(long, env = "JOBS_LOG_FORMAT", default_value = "pretty")]
    pub log_format: LogFormat,
    /// OTLP/HTTP endpoint traces are exported to (e.g. http://127.0.0.1:4318); unset: none.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The service name exported traces carry (default: the binary's name).
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub service_name: Option<String>,
}

impl LogArgs {
    /// Sets up logging and tracing for the process `name`; keep the guard alive.
    pub fn init(&self, name: &str) -> crate::telemetry::Telemetry {
        crate::telemetry::init(
            self.log_format,
            self.service_name.as_deref().unwrap_or(name),
            self.otlp_endpoint.as_deref(),
        )
    }
}

/// Plan tiers.
#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    /// TOML file of plan tiers and their default limits (built-in: deploy/plans.toml).
    #[arg(long, env = "JOBS_PLANS_FILE")]
    pub plans_file: Option<PathBuf>,
}
