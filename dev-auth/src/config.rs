//! jobs-dev-auth configuration: flags, each also an environment variable (see `--help`).

use std::net::SocketAddr;
use std::path::PathBuf;

use common::config::LogArgs;

/// jobs-dev-auth: a development-only login (POST /auth/v1/login, /auth/v1/refresh) that signs
/// tokens with the dev key. Never run it anywhere real: its users' passwords are plaintext.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "jobs-dev-auth", version, about)]
pub struct Config {
    /// Address to listen on; keep it on loopback (the gateway routes /auth/v1/ here).
    #[arg(long, env = "JOBS_DEV_AUTH_LISTEN", default_value = "127.0.0.1:8083")]
    pub listen: SocketAddr,
    /// TOML file of development users (plaintext passwords; see deploy/dev-users.toml).
    #[arg(
        long,
        env = "JOBS_DEV_AUTH_USERS",
        default_value = "deploy/dev-users.toml"
    )]
    pub users: PathBuf,
    /// PEM private key that signs access tokens (RSA → RS256, EC P-256 → ES256).
    #[arg(
        long,
        env = "JOBS_DEV_AUTH_KEY",
        default_value = "deploy/.dev/jwt-private.pem"
    )]
    pub key: PathBuf,
    /// Lifetime of an access token in seconds (the answer's `expiresIn`).
    #[arg(long, env = "JOBS_DEV_AUTH_ACCESS_TTL_SECONDS", default_value_t = 3600,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub access_ttl_seconds: u32,
    /// Lifetime of a refresh token in seconds; each refresh issues a new one.
    #[arg(long, env = "JOBS_DEV_AUTH_REFRESH_TTL_SECONDS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub refresh_ttl_seconds: u32,
    /// `iss` claim of access tokens, for services that check one (as `jobsctl token`).
    #[arg(long, env = "JOBS_JWT_ISSUER")]
    pub issuer: Option<String>,
    /// `aud` claim of access tokens, for services that check one (as `jobsctl token`).
    #[arg(long, env = "JOBS_JWT_AUDIENCE")]
    pub audience: Option<String>,
    #[command(flatten)]
    pub log: LogArgs,
}
